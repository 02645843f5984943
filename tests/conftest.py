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
    """An empty warehouse for one test, with the loader's environment pointing at it.

    The test's LOADER_HOME shares its dbt folder with the session's other tests, as a user's home keeps it from
    one load to the next: dbt's partial parse then stays cached instead of every test parsing the project anew.
    """
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        # Every schema the loader, dlt and dbt made: raw, registry, production, dbt's layers.
        cur.execute("select nspname from pg_namespace where nspname not like 'pg\\_%' and nspname not in"
                    " ('public', 'information_schema')")
        for (schema,) in cur.fetchall():
            cur.execute(f'drop schema "{schema}" cascade')
    monkeypatch.setenv("LOADER_DATABASE_URL", warehouse.url)
    home = tmp_path / "loader-home"
    home.mkdir()
    (home / "dbt").symlink_to(dbt_state, target_is_directory=True)
    monkeypatch.setenv("LOADER_HOME", str(home))
    monkeypatch.setenv("LOADER_PARTNERS_FILE", str(tmp_path / "partners.yml"))
    yield warehouse
