"""The registry's schema: set up once per version, and run states moved only as the state machine allows."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from helpers import LOADER, make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.runs.registry import ensure_registry, set_status, start_run


def test_a_reader_idle_in_a_transaction_does_not_block_commands(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 0
    with contextlib.closing(db.connect()) as reader, reader.cursor() as cur:
        # Holds ACCESS SHARE on the registry's tables until it ends, as a forgotten psql session would.
        cur.execute("select count(*) from loader_registry.runs")
        proc = subprocess.run([str(LOADER), "status"], env={**os.environ}, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "acme/shop-1/load-1" in proc.stdout
        reader.rollback()


def test_the_schema_is_applied_again_when_it_changes(db: Warehouse) -> None:
    ensure_registry(db)
    query(db, "update loader_registry.schema_version set digest = 'older'")
    query(db, "drop table loader_registry.run_transitions cascade")
    ensure_registry(db)
    assert query(db, "select count(*) > 0 from loader_registry.run_transitions") == [(True,)]
    assert query(db, "select digest <> 'older' from loader_registry.schema_version") == [(True,)]


ALLOWED = {
    ("queued", "running"), ("running", "completed"), ("running", "failed"), ("running", "needs_review"),
    ("running", "rejected"), ("running", "queued"), ("failed", "queued"), ("needs_review", "queued"),
    ("needs_review", "completed"), ("needs_review", "rejected"),
}
STATUSES = ("queued", "running", "completed", "failed", "needs_review", "rejected")
# A path to each status through allowed moves, from a new (queued) run.
PATH_TO = {
    "queued": [], "running": ["running"], "completed": ["running", "completed"], "failed": ["running", "failed"],
    "needs_review": ["running", "needs_review"], "rejected": ["running", "rejected"],
}


@pytest.mark.parametrize(("source", "target"), [(s, t) for s in STATUSES for t in STATUSES if s != t])
def test_every_move_the_state_machine_does_not_allow_is_refused_by_the_database(
        db: Warehouse, source: str, target: str) -> None:
    ensure_registry(db)
    with contextlib.closing(db.connect()) as conn:
        run_id = start_run(conn, ("acme", "shop-1", "load-1"), "sms_v1", "test", None)
        for status in PATH_TO[source]:
            set_status(conn, run_id, status)  # type: ignore[arg-type]
        if (source, target) in ALLOWED:
            set_status(conn, run_id, target)  # type: ignore[arg-type]
            assert query(db, "select status from loader_registry.runs") == [(target,)]
            return
        # Straight SQL, as any code path or a person at psql would write it, also in a session that
        # turns ordinary triggers off (the publish does, to skip foreign-key triggers).
        for role in ("origin", "replica"):
            with pytest.raises(psycopg2.errors.CheckViolation, match="is not an allowed move"), \
                    conn, conn.cursor() as cur:
                cur.execute("set local session_replication_role = %s", (role,))
                cur.execute("update loader_registry.runs set status = %s where run_id = %s", (target, run_id))
    assert query(db, "select status from loader_registry.runs") == [(source,)]


def test_a_run_cannot_be_born_in_another_state(db: Warehouse) -> None:
    ensure_registry(db)
    with pytest.raises(psycopg2.errors.CheckViolation, match="a new run starts queued"):
        query(db, "insert into loader_registry.runs (partner_id, shop_id, load_id, contract, status, triggered_by)"
                  " values ('a', 'b', 'c', 'sms_v1', 'completed', 'psql')")


def test_a_foreground_run_is_queued_then_started_and_counts_its_attempt(db: Warehouse, tmp_path: Path,
                                                                         capsys) -> None:
    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 0
    capsys.readouterr()
    assert main(["show", "acme/shop-1/load-1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [h["status"] for h in body["history"]] == ["queued", "running", "completed"]
    assert body["attempts"] == 1
    assert body["queued_at"] <= body["started_at"] <= body["completed_at"]
