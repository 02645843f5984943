"""`loader users add|list|remove` through the console script, the password on standard input."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import subprocess

import pytest
from helpers import LOADER

from loader.access.actions import recent_actions
from loader.access.sessions import login
from loader.database import Warehouse


def loader(*args: str, stdin: str | bytes = "") -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([str(LOADER), *args], env={**os.environ}, input=data, capture_output=True, timeout=120,
                          check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def users_json() -> list[dict[str, str]]:
    proc = loader("users", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    users: list[dict[str, str]] = json.loads(proc.stdout)
    return users


def test_add_change_list_and_remove(db: Warehouse) -> None:
    proc = loader("users", "add", "ann", "--role", "viewer", stdin="  secret with spaces \n")
    assert proc.returncode == 0, proc.stderr
    assert "added dashboard user ann (viewer)" in proc.stdout
    assert "secret" not in proc.stdout + proc.stderr

    [ann] = users_json()
    assert set(ann) == {"name", "role", "created_at", "updated_at"}
    assert (ann["name"], ann["role"]) == ("ann", "viewer")
    for field in ("created_at", "updated_at"):
        assert ann[field].endswith("Z")
        at = dt.datetime.fromisoformat(ann[field])
        assert at.utcoffset() == dt.timedelta(0)
        assert abs(dt.datetime.now(dt.UTC) - at) < dt.timedelta(minutes=5)

    # Only the line's end was taken off the password.
    with contextlib.closing(db.connect()) as conn:
        assert login(conn, "ann", "  secret with spaces ").role == "viewer"

    proc = loader("users", "add", "ann", "--role", "operator", stdin="new secret\r\n")
    assert proc.returncode == 0, proc.stderr
    assert "updated dashboard user ann (operator)" in proc.stdout
    assert loader("users", "add", "bob", "--role", "admin", stdin="bob").returncode == 0
    assert [(u["name"], u["role"]) for u in users_json()] == [("ann", "operator"), ("bob", "admin")]
    with contextlib.closing(db.connect()) as conn:
        assert login(conn, "ann", "new secret").role == "operator"

    table = loader("users", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "role"]
    assert [line.split()[:2] for line in lines[1:]] == [["ann", "operator"], ["bob", "admin"]]

    proc = loader("users", "remove", "ann")
    assert proc.returncode == 0, proc.stderr
    assert "removed dashboard user ann" in proc.stdout
    proc = loader("users", "remove", "ann")
    assert proc.returncode == 0, proc.stderr
    assert "no dashboard user ann" in proc.stdout
    assert [u["name"] for u in users_json()] == ["bob"]

    with contextlib.closing(db.connect()) as conn:
        actions = recent_actions(conn)
    me = f"cli:{getpass.getuser()}"
    assert [(a.user, a.action, a.target) for a in reversed(actions)] == [
        (me, "users add", "ann"), (me, "users add", "ann"), (me, "users add", "bob"), (me, "users remove", "ann")]
    assert not any("secret" in (a.detail or "") for a in actions)


def test_no_users_yet(db: Warehouse) -> None:
    assert users_json() == []
    proc = loader("users", "list")
    assert proc.returncode == 0 and "no dashboard users yet" in proc.stdout


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_an_empty_password_exits_2(db: Warehouse, stdin: str) -> None:
    proc = loader("users", "add", "ann", "--role", "viewer", stdin=stdin)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "loader: the password is empty"
    assert users_json() == []


def test_a_password_that_is_not_utf8_exits_2(db: Warehouse) -> None:
    proc = loader("users", "add", "ann", "--role", "viewer", stdin=b"caf\xe9\n")
    assert proc.returncode == 2
    assert "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr


def test_a_password_that_is_too_long_exits_2(db: Warehouse) -> None:
    proc = loader("users", "add", "ann", "--role", "viewer", stdin="x" * 2000 + "\n")
    assert proc.returncode == 2
    assert "longer than 1024" in proc.stderr and "x" * 20 not in proc.stderr


@pytest.mark.parametrize("role", ["boss", "Admin", ""])
def test_a_wrong_role_exits_2_naming_it(db: Warehouse, role: str) -> None:
    proc = loader("users", "add", "ann", "--role", role, stdin="secret\n")
    assert proc.returncode == 2
    assert "--role" in proc.stderr and f"'{role}'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["-x", "has space", ".dot", "a" * 65])
def test_a_bad_name_exits_2_naming_it(db: Warehouse, name: str) -> None:
    args = ["users", "add", "--role", "viewer", "--", name] if name.startswith("-") else \
        ["users", "add", name, "--role", "viewer"]
    proc = loader(*args, stdin="secret\n")
    assert proc.returncode == 2
    assert "user name" in proc.stderr and "Traceback" not in proc.stderr
    assert users_json() == []
