"""Dashboard users and roles, and the action log: what the database keeps and what it refuses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import pytest
from argon2 import PasswordHasher
from helpers import query

from loader.access.actions import recent_actions, record_action
from loader.access.sessions import current, login
from loader.access.users import AccessError, add_user, list_users, remove_user, role_allows
from loader.database import Warehouse
from loader.runs.registry import ensure_registry


@pytest.fixture
def conn(db: Warehouse) -> Iterator[psycopg2.extensions.connection]:
    ensure_registry(db)
    with contextlib.closing(db.connect()) as connection:
        yield connection


def test_a_user_is_added_then_its_role_changed(conn, db: Warehouse) -> None:
    assert add_user(conn, "ann", "viewer", "first secret") is True
    [(role, created, updated)] = query(db, "select role, created_at, updated_at from loader_registry.dashboard_users"
                                           " where name = 'ann'")
    assert role == "viewer" and created == updated
    assert add_user(conn, "ann", "operator", "first secret") is False
    assert add_user(conn, "bob", "admin", "another") is True
    users = list_users(conn)
    assert [(u.name, u.role) for u in users] == [("ann", "operator"), ("bob", "admin")]
    assert users[0].created_at == created and users[0].updated_at > updated


def test_the_stored_hash_is_argon2id_and_not_the_password(conn, db: Warehouse) -> None:
    add_user(conn, "ann", "viewer", "correct horse")
    [(stored,)] = query(db, "select password_hash from loader_registry.dashboard_users where name = 'ann'")
    assert isinstance(stored, str) and stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert PasswordHasher().verify(stored, "correct horse")
    add_user(conn, "bob", "viewer", "correct horse")
    [(other,)] = query(db, "select password_hash from loader_registry.dashboard_users where name = 'bob'")
    assert other != stored, "each hash has its own salt"


@pytest.mark.parametrize("name", ["a", "Ann.Smith", "ops@example.com", "x_1-2", "9lives", "a" * 64])
def test_good_names(conn, name: str) -> None:
    assert add_user(conn, name, "viewer", "pw") is True
    assert [u.name for u in list_users(conn)] == [name]


@pytest.mark.parametrize("name", ["", "a" * 65, ".hidden", "-dash", "_under", "@at", "with space", "semi;colon",
                                  "slash/name", "quote'", "ann\n", "\u00e9mile", "\u0430nn", "tab\t"])
def test_bad_names_are_refused_naming_the_user_name(conn, db: Warehouse, name: str) -> None:
    with pytest.raises(AccessError, match="user name"):
        add_user(conn, name, "viewer", "pw")
    assert query(db, "select count(*) from loader_registry.dashboard_users") == [(0,)]


@pytest.mark.parametrize(("role", "password", "message"), [
    ("boss", "pw", "role 'boss' is not one of viewer, operator, admin"),
    ("Admin", "pw", "role 'Admin'"),
    ("viewer", "", "the password is empty"),
    ("viewer", "x" * 1025, "longer than 1024"),
])
def test_bad_roles_and_passwords_are_refused(conn, db: Warehouse, role: str, password: str, message: str) -> None:
    with pytest.raises(AccessError) as err:
        add_user(conn, "ann", role, password)
    assert message in str(err.value)
    assert query(db, "select count(*) from loader_registry.dashboard_users") == [(0,)]


def test_a_password_of_the_longest_length_is_accepted(conn) -> None:
    password = "p" * 1024
    add_user(conn, "ann", "viewer", password)
    assert login(conn, "ann", password).user == "ann"


def test_the_database_refuses_a_role_it_does_not_know(conn, db: Warehouse) -> None:
    add_user(conn, "ann", "viewer", "pw")
    with pytest.raises(psycopg2.errors.CheckViolation):
        query(db, "update loader_registry.dashboard_users set role = 'root' where name = 'ann'")


def test_removing_a_user(conn, db: Warehouse) -> None:
    add_user(conn, "ann", "viewer", "pw")
    add_user(conn, "bob", "viewer", "pw")
    assert remove_user(conn, "ann") is True
    assert remove_user(conn, "ann") is False
    assert remove_user(conn, "nobody") is False
    assert [u.name for u in list_users(conn)] == ["bob"]


def test_a_new_password_ends_the_users_sessions_and_the_same_one_does_not(conn) -> None:
    add_user(conn, "ann", "viewer", "old password")
    session = login(conn, "ann", "old password")
    add_user(conn, "ann", "operator", "old password")
    assert current(conn, session.token) is not None
    add_user(conn, "ann", "operator", "new password")
    assert current(conn, session.token) is None
    assert login(conn, "ann", "new password").role == "operator"


@pytest.mark.parametrize(("role", "allowed"), [
    ("viewer", {"viewer"}),
    ("operator", {"viewer", "operator"}),
    ("admin", {"viewer", "operator", "admin"}),
])
def test_roles_are_ordered_viewer_operator_admin(role: str, allowed: set[str]) -> None:
    for needed in ("viewer", "operator", "admin"):
        assert role_allows(role, needed) is (needed in allowed), (role, needed)


def test_actions_are_listed_newest_first_and_paged(conn) -> None:
    add_user(conn, "ann", "operator", "pw")
    session = login(conn, "ann", "pw")
    record_action(conn, session, "approve", "acme/shop-1/load-1")
    record_action(conn, "cli:root", "users add", "bob", "created with role viewer")
    record_action(conn, "ann", "reject", "acme/shop-1/load-2", "bad prices")
    actions = recent_actions(conn)
    assert [(a.user, a.action, a.target, a.detail) for a in actions] == [
        ("ann", "reject", "acme/shop-1/load-2", "bad prices"),
        ("cli:root", "users add", "bob", "created with role viewer"),
        ("ann", "approve", "acme/shop-1/load-1", None),
    ]
    assert actions[0].at >= actions[1].at >= actions[2].at
    assert [a.action for a in recent_actions(conn, limit=1, offset=1)] == ["users add"]
    assert recent_actions(conn, limit=5, offset=3) == []
    with pytest.raises(ValueError, match="limit"):
        recent_actions(conn, limit=0)


def test_the_action_log_outlives_its_users(conn) -> None:
    add_user(conn, "ann", "operator", "pw")
    record_action(conn, "ann", "rerun", "acme/shop-1/load-1")
    remove_user(conn, "ann")
    assert [(a.user, a.action) for a in recent_actions(conn)] == [("ann", "rerun")]


@pytest.mark.parametrize("statement", [
    "update loader_registry.dashboard_actions set user_name = 'someone else'",
    "delete from loader_registry.dashboard_actions",
    "truncate loader_registry.dashboard_actions",
])
def test_the_action_log_is_append_only(conn, db: Warehouse, statement: str) -> None:
    record_action(conn, "ann", "approve", "acme/shop-1/load-1")
    with pytest.raises(psycopg2.errors.RaiseException, match="append-only"):
        query(db, statement)
    assert query(db, "select user_name, action from loader_registry.dashboard_actions") == [("ann", "approve")]


def test_the_action_log_is_append_only_also_for_replication_sessions(conn, db: Warehouse) -> None:
    record_action(conn, "ann", "approve", "acme/shop-1/load-1")
    with pytest.raises(psycopg2.errors.RaiseException, match="append-only"):
        query(db, "set session_replication_role = replica; delete from loader_registry.dashboard_actions")
