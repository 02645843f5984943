"""Fixtures: a real PostgreSQL for the whole session and load folders built by hand.

LOADER_TEST_DATABASE_URL names a server to test against (a fresh database is
created on it and dropped afterwards); without it an embedded server is started
in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import empty_warehouse, point_loader_at

from loader.database import Warehouse, start_embedded, warehouse_from_url


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    url = os.environ.get("LOADER_TEST_DATABASE_URL")
    if not url:
        yield start_embedded(tmp_path_factory.mktemp("pg-home"), keep_running=False)
        return
    server = warehouse_from_url(url)
    name = f"loader_test_{uuid.uuid4().hex[:12]}"
    admin = server.connect()
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute(f"create database {name}")
    yield Warehouse(server.host, server.port, server.user, server.password, name, embedded=False,
                    options=server.options)
    admin = server.connect()
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute(f"drop database {name} with (force)")


@pytest.fixture(scope="session")
def dbt_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home's dbt folder (slot target folders, slot lock files) for every test of the session."""
    return tmp_path_factory.mktemp("dbt-state")


@pytest.fixture(scope="session", autouse=True)
def dbt_by_hand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Where tests that run dbt by hand in dbt_project/ keep its target and logs: the session's own folder.

    Not dbt_project/target, which a suite running at the same time against the other server would share.
    """
    folder = tmp_path_factory.mktemp("dbt-by-hand")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_TARGET_PATH", str(folder / "target"))
        patch.setenv("DBT_LOG_PATH", str(folder / "logs"))
        yield


@pytest.fixture
def db(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dbt_state: Path) -> Iterator[Warehouse]:
    """An empty warehouse for one test, with the loader's environment pointing at it."""
    point_loader_at(empty_warehouse(warehouse), tmp_path, dbt_state, monkeypatch)
    yield warehouse
