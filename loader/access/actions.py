"""The dashboard's action log: who did what to which load, and when; append-only in the database."""

from __future__ import annotations

import psycopg2.extensions
from pydantic import BaseModel

from loader.access.sessions import Session
from loader.runs.registry import UtcTime, storable

MAX_PAGE = 1000


class Action(BaseModel):
    action_id: int
    user: str
    action: str
    target: str
    detail: str | None
    at: UtcTime


def record_action(conn: psycopg2.extensions.connection, session_or_user: Session | str, action: str, target: str,
                  detail: str | None = None) -> None:
    """Append one action ("approve", "reject", "rerun", "upload", "users add", ...) by a session's user or a name.

    The user is stored as text, not a reference: the log outlives the users it names.
    """
    user = session_or_user.user if isinstance(session_or_user, Session) else session_or_user
    if not user:
        raise ValueError("record_action needs the user who acted")
    if not action:
        raise ValueError("record_action needs the action")
    with conn, conn.cursor() as cur:
        # Targets and details may quote what a partner sent (a load key, a file name): stored as text PostgreSQL takes.
        cur.execute(
            "insert into loader_registry.dashboard_actions (user_name, action, target, detail) values (%s, %s, %s, %s)",
            (storable(user), storable(action), storable(target), storable(detail)),
        )


def recent_actions(conn: psycopg2.extensions.connection, limit: int = 100, offset: int = 0) -> list[Action]:
    """The newest actions first, `limit` of them after skipping `offset`."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, not {offset}")
    with conn, conn.cursor() as cur:
        cur.execute(
            "select action_id, user_name, action, target, detail, at from loader_registry.dashboard_actions"
            " order by action_id desc limit %s offset %s",
            (limit, offset),
        )
        rows = cur.fetchall()
    return [Action(action_id=i, user=u, action=a, target=t, detail=d, at=at) for i, u, a, t, d, at in rows]
