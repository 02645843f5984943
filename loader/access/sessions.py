"""Dashboard logins: sessions that expire, failed logins slowed down, every action checked against the role."""

from __future__ import annotations

import functools
import hashlib
import math
import secrets

import psycopg2.extensions
from pydantic import BaseModel, Field

from loader.access.users import (
    MAX_PASSWORD_CHARS,
    AccessError,
    Role,
    check_name,
    hasher,
    lock_user_name,
    password_matches,
    role_allows,
)
from loader.database import one_row
from loader.runs.registry import UtcTime

# Failures in a row before logins of a name are slowed down; then the wait doubles with each failure, up to the cap.
FREE_FAILURES = 3
MAX_WAIT_SECONDS = 300
# Counts of failures older than this are forgotten, so that the table of names tried does not grow without end.
FORGET_FAILURES_AFTER = "1 day"
WRONG = "wrong username or password"
# A token is 43 characters; anything much longer was never issued and is not worth hashing.
_MAX_TOKEN_CHARS = 256


class Session(BaseModel):
    # Only the client holds the token (the database keeps its sha256): kept out of repr, and so out of logs.
    token: str = Field(repr=False)
    user: str
    role: Role
    expires_at: UtcTime


class LoginRefused(Exception):
    """A login that did not succeed; the message never says whether the user exists."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Forbidden(Exception):
    """Not logged in, or the user's role does not allow the action: the message says which role is needed."""


@functools.cache
def _dummy_hash() -> str:
    # What an unknown user's password is checked against, made with the same parameters as real hashes, so that
    # a login of a name that does not exist costs as long as one that does.
    return hasher().hash(secrets.token_urlsafe(16))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def wait_seconds(failures: int) -> float:
    """How long after the last of `failures` failed logins in a row the next attempt is refused."""
    if failures < FREE_FAILURES:
        return 0.0
    return float(min(2 ** min(failures - FREE_FAILURES, 16), MAX_WAIT_SECONDS))


def login(conn: psycopg2.extensions.connection, name: str, password: str, *, ttl_minutes: int = 480) -> Session:
    """A new session for `name` if the password is right; else LoginRefused (wrong, or too many failures)."""
    if ttl_minutes < 1:
        raise AccessError(f"ttl_minutes must be at least 1, not {ttl_minutes}")
    try:
        check_name(name)
    except AccessError:
        # No such user can exist: refused like any wrong password, and just as slowly.
        password_matches(_dummy_hash(), password[:MAX_PASSWORD_CHARS])
        raise LoginRefused(WRONG) from None
    with conn, conn.cursor() as cur:
        outcome = _attempt(cur, name, password, ttl_minutes)
    # Raised only once the transaction is committed: a failed attempt must be recorded to count.
    if isinstance(outcome, LoginRefused):
        raise outcome
    return outcome


def _attempt(cur: psycopg2.extensions.cursor, name: str, password: str, ttl_minutes: int) -> Session | LoginRefused:
    cur.execute("delete from loader_registry.dashboard_sessions where expires_at <= clock_timestamp()")
    cur.execute("delete from loader_registry.login_failures where last_failed_at < clock_timestamp() - %s::interval",
                (FORGET_FAILURES_AFTER,))
    lock_user_name(cur, name)
    cur.execute(
        "select failures, extract(epoch from clock_timestamp() - last_failed_at)::float8"
        " from loader_registry.login_failures where name = %s",
        (name,),
    )
    row = cur.fetchone()
    failures, since_last = (int(row[0]), float(row[1])) if row else (0, math.inf)
    remaining = wait_seconds(failures) - since_last
    if remaining > 0:
        # Refused without checking the password, so a guess costs nothing here and tells nothing.
        return LoginRefused(f"too many failed logins: try again in {math.ceil(remaining)} s", remaining)
    cur.execute("select role, password_hash from loader_registry.dashboard_users where name = %s", (name,))
    user = cur.fetchone()
    stored = user[1] if user else _dummy_hash()
    # Checked whether or not the user exists, so that the time taken does not tell which names do.
    matches = password_matches(stored, password[:MAX_PASSWORD_CHARS])
    if user is None or not matches or len(password) > MAX_PASSWORD_CHARS:
        cur.execute(
            "insert into loader_registry.login_failures (name, failures, last_failed_at)"
            " values (%s, 1, clock_timestamp()) on conflict (name) do update"
            " set failures = login_failures.failures + 1, last_failed_at = excluded.last_failed_at",
            (name,),
        )
        return LoginRefused(WRONG)
    cur.execute("delete from loader_registry.login_failures where name = %s", (name,))
    if hasher().check_needs_rehash(stored):
        cur.execute("update loader_registry.dashboard_users set password_hash = %s where name = %s",
                    (hasher().hash(password), name))
    token = secrets.token_urlsafe(32)
    cur.execute(
        "insert into loader_registry.dashboard_sessions (token_sha256, user_name, expires_at)"
        " values (%s, %s, clock_timestamp() + make_interval(mins => %s)) returning expires_at",
        (_digest(token), name, ttl_minutes),
    )
    return Session(token=token, user=name, role=user[0], expires_at=one_row(cur)[0])


def current(conn: psycopg2.extensions.connection, token: str | None) -> Session | None:
    """The session of `token` with the user's role as it is now; None if missing, unknown, expired or removed."""
    if not token or len(token) > _MAX_TOKEN_CHARS:
        return None
    with conn, conn.cursor() as cur:
        cur.execute(
            "select u.name, u.role, s.expires_at from loader_registry.dashboard_sessions as s"
            " join loader_registry.dashboard_users as u on u.name = s.user_name"
            " where s.token_sha256 = %s and s.expires_at > clock_timestamp()",
            (_digest(token),),
        )
        row = cur.fetchone()
    return Session(token=token, user=row[0], role=row[1], expires_at=row[2]) if row else None


def require(conn: psycopg2.extensions.connection, token: str | None, needed: Role, action: str) -> Session:
    """The session of `token` if its user's role allows `action`; else Forbidden naming the role needed."""
    session = current(conn, token)
    if session is None:
        raise Forbidden(f"log in to {action} (not logged in, or the session expired)")
    if not role_allows(session.role, needed):
        raise Forbidden(f"{needed} role needed to {action}; {session.user} is {session.role}")
    return session


def logout(conn: psycopg2.extensions.connection, token: str | None) -> None:
    """End the session of `token` (nothing happens if there is none)."""
    if not token or len(token) > _MAX_TOKEN_CHARS:
        return
    with conn, conn.cursor() as cur:
        cur.execute("delete from loader_registry.dashboard_sessions where token_sha256 = %s", (_digest(token),))
