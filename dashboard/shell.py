"""What every dashboard page shares: settings, the warehouse, the signed-in user and role checks.

Pages are thin: they draw widgets and call the functions the CLI calls. Every
action asks `authorize` again, against the database, right before it acts: a
page hidden from a role is not the protection, the check is (a forged widget
event from a viewer's browser reaches `authorize` and stops there).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import streamlit as st
from pydantic import ValidationError

from loader.access.sessions import Forbidden, Session, current, require
from loader.access.users import Role
from loader.database import SchemaVersionError, Warehouse, WarehouseUnavailable, WarehouseUrlError, resolve_warehouse
from loader.runs.registry import ensure_registry
from loader.settings import LoaderSettings, settings_error

TOKEN = "loader_session_token"
# The session token is also kept in a browser cookie, so that a reloaded tab (a new Streamlit session) stays
# logged in until the session expires; LOGGED_OUT stops a cookie the browser sent before a logout from counting.
COOKIE = "loader_session"
LOGGED_OUT = "loader_logged_out"
REMEMBER = "loader_remember_session"

STATUS_BADGES = {
    "queued": ":gray-badge[queued]",
    "running": ":blue-badge[running]",
    "completed": ":green-badge[completed]",
    "failed": ":red-badge[failed]",
    "needs_review": ":orange-badge[needs review]",
    "rejected": ":violet-badge[rejected]",
}


class Unavailable(Exception):
    """The dashboard cannot reach its database or read its settings; the message says which and why."""


@st.cache_resource(show_spinner="Connecting to the warehouse...",
                   hash_funcs={LoaderSettings: lambda s: s.model_dump_json()})
def _warehouse(settings: LoaderSettings) -> Warehouse:
    warehouse = resolve_warehouse(settings)
    ensure_registry(warehouse)
    return warehouse


def context() -> tuple[LoaderSettings, Warehouse]:
    """The settings and their warehouse; resolved once per dashboard process and set of settings."""
    try:
        settings = LoaderSettings()
        return settings, _warehouse(settings)
    except ValidationError as exc:
        raise Unavailable(settings_error(exc)) from None
    except (WarehouseUnavailable, WarehouseUrlError, SchemaVersionError) as exc:
        raise Unavailable(str(exc)) from None


@contextlib.contextmanager
def connected() -> Iterator[psycopg2.extensions.connection]:
    _, warehouse = context()
    try:
        conn = warehouse.connect()
    except WarehouseUnavailable as exc:
        raise Unavailable(str(exc)) from None
    with contextlib.closing(conn):
        yield conn


def signed_in(conn: psycopg2.extensions.connection) -> Session | None:
    """This tab's session: the one it logged in with, or the one its cookie names when the tab was reloaded."""
    if TOKEN not in st.session_state and not st.session_state.get(LOGGED_OUT):
        cookie = st.context.cookies.get(COOKIE)
        # Only what a browser sends: text (a test harness without a browser has no cookies to give).
        if isinstance(cookie, str) and cookie:
            st.session_state[TOKEN] = cookie
    return current(conn, st.session_state.get(TOKEN))


def cookie_script(session: Session | None) -> str:
    """A script that keeps `session`'s token in the browser's cookie until it expires, or forgets it (None)."""
    if session is None:
        return f"<script>document.cookie = '{COOKIE}=; path=/; max-age=0; samesite=strict';</script>"
    seconds = max(0, int((session.expires_at - dt.datetime.now(dt.UTC)).total_seconds()))
    # The token is URL-safe base64: nothing in it needs quoting in a cookie or in this script.
    return ("<script>document.cookie = '" + f"{COOKIE}={session.token}; path=/; max-age={seconds}; samesite=strict"
            "' + (location.protocol === 'https:' ? '; secure' : '');</script>")


def authorize(conn: psycopg2.extensions.connection, needed: Role, action: str) -> Session:
    """The signed-in session if its role (read now, from the database) allows `action`; else Forbidden."""
    return require(conn, st.session_state.get(TOKEN), needed, action)


def who(session: Session) -> str:
    """How the registry's history names a dashboard user."""
    return f"dashboard:{session.user}"


def page(render: Callable[[psycopg2.extensions.connection, Session], None], needed: Role = "viewer") -> None:
    """Run one page: a connection for this script run, the role check, and plain messages for foreseeable failures."""
    try:
        with connected() as conn:
            session = authorize(conn, needed, "open this page")
            render(conn, session)
    except Forbidden as exc:
        st.error(str(exc))
    except Unavailable as exc:
        st.error(f"The dashboard cannot reach its database: {exc}")
    except psycopg2.OperationalError as exc:
        st.error(f"The database connection failed: {str(exc).strip().splitlines()[0]}. Reload the page to retry.")


def when(at: dt.datetime | None) -> str:
    return "" if at is None else at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def page_offset(key: str, per_page: int) -> int:
    """The first row of the page chosen in `pager(key=key)` (read before the table is queried)."""
    return (int(st.session_state.get(key, 1)) - 1) * per_page


def pager(total: int, per_page: int, key: str) -> None:
    """A page number control under a table of `total` rows."""
    pages = max(1, -(-total // per_page))
    if int(st.session_state.get(key, 1)) > pages:
        st.session_state[key] = pages
    if pages > 1:
        st.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, step=1, key=key)


def rows_table(rows: list[dict[str, Any]], **kwargs: Any) -> None:
    st.dataframe(rows, hide_index=True, width="stretch", **kwargs)
