"""Dashboard logins and sessions: one answer for every refusal, guessing slowed down, roles checked every time."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Iterator

import psycopg2.extensions
import pytest
from argon2 import PasswordHasher
from helpers import query

from loader.access.sessions import Forbidden, LoginRefused, current, login, logout, require, wait_seconds
from loader.access.users import add_user, remove_user
from loader.database import Warehouse
from loader.runs.registry import ensure_registry

WRONG = "wrong username or password"


@pytest.fixture
def conn(db: Warehouse) -> Iterator[psycopg2.extensions.connection]:
    ensure_registry(db)
    with contextlib.closing(db.connect()) as connection:
        add_user(connection, "ann", "viewer", "ann's password")
        yield connection


def refused(conn: psycopg2.extensions.connection, name: str, password: str) -> LoginRefused:
    with pytest.raises(LoginRefused) as err:
        login(conn, name, password)
    return err.value


def set_last_failure_back(db: Warehouse, name: str, seconds: float) -> None:
    query(db, "update loader_registry.login_failures set last_failed_at = last_failed_at - make_interval(secs => %s)"
              " where name = %s", (seconds, name))


def test_a_login_gives_a_session_whose_token_only_the_client_has(conn, db: Warehouse) -> None:
    before = dt.datetime.now(dt.UTC)
    session = login(conn, "ann", "ann's password", ttl_minutes=30)
    assert (session.user, session.role) == ("ann", "viewer")
    assert len(session.token) >= 43
    assert dt.timedelta(minutes=29) < session.expires_at - before < dt.timedelta(minutes=31)
    [(stored, user)] = query(db, "select token_sha256, user_name from loader_registry.dashboard_sessions")
    assert (stored, user) == (hashlib.sha256(session.token.encode()).hexdigest(), "ann")
    assert session.token not in repr(session) and session.token not in str(session)
    assert current(conn, session.token) == session
    assert login(conn, "ann", "ann's password").token != session.token


@pytest.mark.parametrize(("name", "password"), [
    ("ann", "wrong"), ("ann", ""), ("ann", "ann's password "), ("Ann", "ann's password"), ("nobody", "x"),
    ("", "x"), ("not a valid name", "x"), ("ann", "x" * 5000),
])
def test_every_wrong_login_gets_the_same_answer(conn, db: Warehouse, name: str, password: str) -> None:
    err = refused(conn, name, password)
    assert str(err) == WRONG and err.retry_after is None
    assert query(db, "select count(*) from loader_registry.dashboard_sessions") == [(0,)]


def seconds_to_refuse(conn: psycopg2.extensions.connection, name: str) -> float:
    start = time.perf_counter()
    refused(conn, name, "wrong")
    return time.perf_counter() - start


def test_an_unknown_name_costs_as_long_as_a_wrong_password(conn) -> None:
    # Each name is tried fewer than four times, so that no attempt is throttled (refused without a hash check).
    known = min(seconds_to_refuse(conn, "ann") for _ in range(3))
    unknown = min(seconds_to_refuse(conn, f"nobody{i}") for i in range(3))
    invalid = min(seconds_to_refuse(conn, f"not valid {i}") for i in range(3))
    # An argon2 verify is tens of milliseconds; a refusal without one, a few. The margin absorbs a busy machine.
    assert unknown > 0.3 * known and invalid > 0.3 * known, (known, unknown, invalid)


def test_an_unknown_name_is_not_made_a_user(conn, db: Warehouse) -> None:
    refused(conn, "mallory", "guess")
    assert query(db, "select name from loader_registry.dashboard_users") == [("ann",)]
    assert query(db, "select name, failures from loader_registry.login_failures") == [("mallory", 1)]


@pytest.mark.parametrize(("failures", "seconds"), [
    (0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 4), (10, 128), (11, 256), (12, 300), (40, 300), (10**6, 300),
])
def test_the_wait_doubles_after_three_failures_up_to_five_minutes(failures: int, seconds: float) -> None:
    assert wait_seconds(failures) == seconds


def fail(conn: psycopg2.extensions.connection, db: Warehouse, name: str, times: int) -> None:
    """`times` failed logins in a row, each once the wait after the one before is over."""
    for _ in range(times):
        set_last_failure_back(db, name, 3600)
        assert str(refused(conn, name, "wrong")) == WRONG


@pytest.mark.parametrize("name", ["ann", "nobody"])
def test_after_four_failures_the_right_password_waits(conn, db: Warehouse, name: str) -> None:
    fail(conn, db, name, 3)
    # The fourth attempt comes too soon after the third: refused without counting.
    assert refused(conn, name, "wrong").retry_after is not None
    set_last_failure_back(db, name, 1.5)
    assert str(refused(conn, name, "wrong")) == WRONG
    assert query(db, "select failures from loader_registry.login_failures where name = %s", (name,)) == [(4,)]

    err = refused(conn, name, "ann's password")
    assert err.retry_after is not None and 1.5 < err.retry_after <= 2
    assert str(err) == "too many failed logins: try again in 2 s"
    assert query(db, "select failures from loader_registry.login_failures where name = %s", (name,)) == [(4,)]

    set_last_failure_back(db, name, 1.0)
    err = refused(conn, name, "ann's password")
    assert err.retry_after is not None and 0 < err.retry_after <= 1
    set_last_failure_back(db, name, 1.1)
    if name == "nobody":
        assert str(refused(conn, name, "ann's password")) == WRONG
        return
    assert login(conn, name, "ann's password").user == "ann"
    assert query(db, "select count(*) from loader_registry.login_failures") == [(0,)], "a success resets the count"
    assert str(refused(conn, name, "wrong")) == WRONG
    assert login(conn, name, "ann's password").user == "ann", "one failure after the reset does not slow down"


def test_throttling_is_per_name(conn, db: Warehouse) -> None:
    add_user(conn, "bob", "viewer", "bob's password")
    fail(conn, db, "ann", 6)
    assert refused(conn, "ann", "ann's password").retry_after is not None
    assert login(conn, "bob", "bob's password").user == "bob"


def test_failures_long_ago_are_forgotten(conn, db: Warehouse) -> None:
    fail(conn, db, "mallory", 5)
    set_last_failure_back(db, "mallory", 2 * 86400)
    login(conn, "ann", "ann's password")
    assert query(db, "select count(*) from loader_registry.login_failures") == [(0,)]


def test_an_expired_session_is_over_and_deleted_at_the_next_login(conn, db: Warehouse) -> None:
    session = login(conn, "ann", "ann's password")
    query(db, "update loader_registry.dashboard_sessions set expires_at = clock_timestamp() - interval '1 second'")
    assert current(conn, session.token) is None
    with pytest.raises(Forbidden, match="log in"):
        require(conn, session.token, "viewer", "see runs")
    fresh = login(conn, "ann", "ann's password")
    assert query(db, "select token_sha256 from loader_registry.dashboard_sessions") == [
        (hashlib.sha256(fresh.token.encode()).hexdigest(),)]


@pytest.mark.parametrize("token", [None, "", "not-a-token", "x" * 100_000])
def test_no_token_or_an_unknown_one_is_no_session(conn, token: str | None) -> None:
    login(conn, "ann", "ann's password")
    assert current(conn, token) is None


def test_removing_a_user_ends_its_sessions(conn, db: Warehouse) -> None:
    session = login(conn, "ann", "ann's password")
    remove_user(conn, "ann")
    assert current(conn, session.token) is None
    assert query(db, "select count(*) from loader_registry.dashboard_sessions") == [(0,)]
    # A new user of the same name does not inherit the old one's session.
    add_user(conn, "ann", "admin", "ann's password")
    assert current(conn, session.token) is None


def test_a_role_change_takes_effect_at_the_next_check(conn) -> None:
    session = login(conn, "ann", "ann's password")
    with pytest.raises(Forbidden) as err:
        require(conn, session.token, "operator", "approve")
    assert str(err.value).startswith("operator role needed to approve")
    add_user(conn, "ann", "operator", "ann's password")
    assert require(conn, session.token, "operator", "approve").role == "operator"
    with pytest.raises(Forbidden, match="admin role needed to manage users"):
        require(conn, session.token, "admin", "manage users")
    add_user(conn, "ann", "viewer", "ann's password")
    with pytest.raises(Forbidden, match="operator role needed to reject"):
        require(conn, session.token, "operator", "reject")
    assert require(conn, session.token, "viewer", "see runs").user == "ann"


def test_require_without_a_session_is_forbidden(conn) -> None:
    for token in (None, "forged"):
        with pytest.raises(Forbidden, match="log in to approve"):
            require(conn, token, "viewer", "approve")


def test_logout_ends_only_that_session(conn) -> None:
    first = login(conn, "ann", "ann's password")
    second = login(conn, "ann", "ann's password")
    logout(conn, first.token)
    assert current(conn, first.token) is None
    assert current(conn, second.token) is not None
    logout(conn, first.token)
    logout(conn, None)


def test_a_hash_made_with_weaker_parameters_is_replaced_at_login(conn, db: Warehouse) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("ann's password")
    query(db, "update loader_registry.dashboard_users set password_hash = %s where name = 'ann'", (weak,))
    assert str(refused(conn, "ann", "wrong")) == WRONG
    [(unchanged,)] = query(db, "select password_hash from loader_registry.dashboard_users")
    assert unchanged == weak
    login(conn, "ann", "ann's password")
    [(stored,)] = query(db, "select password_hash from loader_registry.dashboard_users")
    assert isinstance(stored, str) and stored != weak
    assert not PasswordHasher().check_needs_rehash(stored) and PasswordHasher().verify(stored, "ann's password")


def test_a_session_lasts_as_long_as_asked(conn) -> None:
    with pytest.raises(ValueError, match="ttl_minutes"):
        login(conn, "ann", "ann's password", ttl_minutes=0)
    short = login(conn, "ann", "ann's password", ttl_minutes=1)
    long = login(conn, "ann", "ann's password", ttl_minutes=600)
    assert dt.timedelta(minutes=598) < long.expires_at - short.expires_at < dt.timedelta(minutes=600)
