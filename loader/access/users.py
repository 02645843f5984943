"""Dashboard users: a name, a role and an argon2id hash of the password, in the registry."""

from __future__ import annotations

import re
from typing import Literal, get_args

import psycopg2.extensions
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel

from loader.runs.registry import UtcTime

Role = Literal["viewer", "operator", "admin"]
# In order of what each may do: every role may do all that the roles before it may.
ROLES: tuple[Role, ...] = get_args(Role)

MAX_PASSWORD_CHARS = 1024
# ASCII only, so that two users can never look alike (a Cyrillic letter in place of the Latin one it resembles).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)


class User(BaseModel):
    name: str
    role: Role
    created_at: UtcTime
    updated_at: UtcTime


class AccessError(ValueError):
    """A bad user name, role or password: the message names which and why."""


def hasher() -> PasswordHasher:
    """argon2id with argon2-cffi's current defaults; hashes made with older parameters are re-hashed at login."""
    return PasswordHasher()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AccessError(f"user name {name[:80]!r} is not allowed: 1 to 64 characters of letters, digits and . _ @ -,"
                          " starting with a letter or a digit")
    return name


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise AccessError(f"role {role[:80]!r} is not one of {', '.join(ROLES)}")


def check_password(password: str) -> str:
    if not password:
        raise AccessError("the password is empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccessError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    return password


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def lock_user_name(cur: psycopg2.extensions.cursor, name: str) -> None:
    """Serialise changes to one user name (add, login) until the transaction ends; other names go on."""
    cur.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"loader dashboard user {name}",))


def add_user(conn: psycopg2.extensions.connection, name: str, role: str, password: str) -> bool:
    """Create a user (True), or set an existing one's role and password (False).

    A new password ends the user's sessions, so that resetting the password of
    an account someone else got into also shuts them out.
    """
    check_name(name)
    checked_role = check_role(role)
    check_password(password)
    new_hash = hasher().hash(password)
    with conn, conn.cursor() as cur:
        lock_user_name(cur, name)
        cur.execute("select password_hash from loader_registry.dashboard_users where name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "insert into loader_registry.dashboard_users (name, role, password_hash) values (%s, %s, %s)",
                (name, checked_role, new_hash),
            )
            return True
        if not password_matches(row[0], password):
            cur.execute("delete from loader_registry.dashboard_sessions where user_name = %s", (name,))
        cur.execute(
            "update loader_registry.dashboard_users set role = %s, password_hash = %s, updated_at = clock_timestamp()"
            " where name = %s",
            (checked_role, new_hash, name),
        )
        return False


def set_role(conn: psycopg2.extensions.connection, name: str, role: str) -> bool:
    """Change an existing user's role, keeping the password; False if there is no such user."""
    checked_role = check_role(role)
    with conn, conn.cursor() as cur:
        cur.execute("update loader_registry.dashboard_users set role = %s, updated_at = clock_timestamp()"
                    " where name = %s", (checked_role, check_name(name)))
        return cur.rowcount == 1


def list_users(conn: psycopg2.extensions.connection) -> list[User]:
    """Every dashboard user, by name."""
    with conn, conn.cursor() as cur:
        cur.execute("select name, role, created_at, updated_at from loader_registry.dashboard_users order by name")
        return [User(name=n, role=r, created_at=c, updated_at=u) for n, r, c, u in cur.fetchall()]


def remove_user(conn: psycopg2.extensions.connection, name: str) -> bool:
    """Remove a user and end its sessions; False if there was no such user."""
    with conn, conn.cursor() as cur:
        lock_user_name(cur, name)
        # The sessions go with the user (on delete cascade).
        cur.execute("delete from loader_registry.dashboard_users where name = %s", (name,))
        return bool(cur.rowcount)


def role_allows(role: Role, needed: Role) -> bool:
    """Whether a user of `role` may do what needs `needed` (viewer < operator < admin)."""
    return ROLES.index(check_role(role)) >= ROLES.index(check_role(needed))
