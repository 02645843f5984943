"""Polling a local folder connector against a real PostgreSQL: taken once, in order, checked, queued, recorded."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import psycopg2
import pytest
from helpers import CUSTOMERS, LOADER, make_load, query

from loader.connectors.config import ConnectorSettingsError, LocalConnectorSettings, Schedule
from loader.connectors.poll import PollResult, connector_status, poll_all, poll_connector, reset_checkpoints
from loader.database import Warehouse
from loader.runs.registry import REGISTRY_SQL, ensure_registry
from loader.settings import LoaderSettings


@pytest.fixture
def registry(db: Warehouse) -> Warehouse:
    ensure_registry(db)
    return db


def local(path: Path, code: str = "drop", after_success: str = "keep") -> LocalConnectorSettings:
    return LocalConnectorSettings.model_validate({"system_code": code, "type": "local", "path": path,
                                                 "schedule": Schedule(every_minutes=5),
                                                 "after_success": after_success})


def poll(db: Warehouse, cfg: LocalConnectorSettings) -> PollResult:
    return poll_connector(db, LoaderSettings(), cfg)


def runs(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select run_id, partner_id || '/' || shop_id || '/' || load_id, status, triggered_by"
                     " from loader_registry.runs order by run_id")


def kept_files(db: Warehouse, run_id: int) -> dict[str, bytes]:
    [(source,)] = query(db, "select source_path from loader_registry.runs where run_id = %s", (run_id,))
    return {p.name: p.read_bytes() for p in Path(str(source)).iterdir()}


def fetch_root() -> Path:
    return Path(os.environ["LOADER_HOME"]) / "intake"


def write_connectors(path: Path, *entries: tuple[str, Path]) -> Path:
    lines = ["connectors:"]
    for code, folder in entries:
        lines += [f"  - system_code: {code}", "    type: local", f"    path: {folder}",
                  "    schedule: {every_minutes: 5}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_complete_load_is_taken_once_and_queued(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    folder = make_load(drop, partner="acme", shop="shop-17", load_id="2026-01-05_a")
    first = poll(registry, local(drop))
    assert first.error_reason is None and first.found == 1 and first.waiting == [] and first.skipped == []
    [taken] = first.taken
    assert taken.load == "acme/shop-17/2026-01-05_a"
    assert runs(registry) == [(taken.run_id, "acme/shop-17/2026-01-05_a", "queued", "connector:drop")]
    assert kept_files(registry, taken.run_id) == {p.name: p.read_bytes() for p in folder.iterdir()}
    assert query(registry, "select partner_id, shop_id, load_id, run_id from loader_registry.connector_checkpoints"
                           " where system_code = 'drop'") == [("acme", "shop-17", "2026-01-05_a", taken.run_id)]
    assert query(registry, "select load_id, run_id, moved_at from loader_registry.connector_taken") == [
        ("2026-01-05_a", taken.run_id, None)]
    # The temporary copy is gone; the partner's folder is left as it was (after_success: keep).
    assert list(fetch_root().iterdir()) == [] and folder.is_dir()
    second = poll(registry, local(drop))
    assert (second.found, second.taken, second.error_reason) == (0, [], None)
    assert len(runs(registry)) == 1
    assert query(registry, "select found, taken, error_reason from loader_registry.connector_polls"
                           " order by poll_id") == [(1, 1, None), (0, 0, None)]


def test_a_csv_missing_or_still_being_written_waits_and_is_taken_once_complete(registry: Warehouse,
                                                                               tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    folder = make_load(drop)
    vehicles = (folder / "vehicles.csv").read_bytes()
    (folder / "vehicles.csv").unlink()
    missing = poll(registry, local(drop))
    assert (missing.found, missing.taken) == (0, [])
    assert [(w.where, w.reason) for w in missing.waiting] == [
        (str(folder), "manifest.json lists vehicles.csv, not there yet as a regular file")]
    (folder / "vehicles.csv").write_bytes(vehicles)
    # Half of customers.csv is there: its size and digest are not the manifest's yet.
    (folder / "customers.csv").write_bytes(CUSTOMERS[: len(CUSTOMERS) // 2])
    growing = poll(registry, local(drop))
    assert (growing.found, growing.taken) == (1, [])
    assert [(w.where, w.reason) for w in growing.waiting] == [
        (str(folder), "customers.csv: sha256 does not match manifest.json yet")]
    assert runs(registry) == [] and query(registry, "select count(*) from loader_registry.connector_checkpoints") \
        == [(0,)]
    assert list(fetch_root().iterdir()) == []
    (folder / "customers.csv").write_bytes(CUSTOMERS)
    done = poll(registry, local(drop))
    assert [t.load for t in done.taken] == ["acme/shop-1/load-1"] and done.waiting == []
    assert [r[1:] for r in runs(registry)] == [("acme/shop-1/load-1", "queued", "connector:drop")]


def test_a_csv_not_in_the_manifest_yet_waits(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    folder = make_load(drop)
    (folder / "customers_extra.csv").write_bytes(CUSTOMERS)
    result = poll(registry, local(drop))
    assert result.taken == []
    assert [w.reason for w in result.waiting] == ["customers_extra.csv: not listed in manifest.json yet"]


def test_fifo_per_shop_a_later_load_never_overtakes_an_incomplete_one(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    first = make_load(drop, load_id="load-1")
    make_load(drop, load_id="load-2")
    make_load(drop, shop="shop-2", load_id="load-1")
    # load-1 of shop-1 is still being written: a digest that is not the manifest's yet.
    (first / "customers.csv").write_bytes(CUSTOMERS.replace(b"Smith", b"Smi"))
    result = poll(registry, local(drop))
    assert [t.load for t in result.taken] == ["acme/shop-2/load-1"]
    assert [(w.where, w.reason) for w in result.waiting] == [
        (str(first), "customers.csv: sha256 does not match manifest.json yet"),
        (str(drop / "acme" / "shop-1" / "load-2"),
         "waits for acme/shop-1/load-1, which comes first and is not complete yet"),
    ]
    # Also when the listing already sees load-1 as incomplete (its manifest is not written yet).
    (first / "manifest.json").rename(first.parent / "manifest.later")
    again = poll(registry, local(drop))
    assert again.taken == [] and [w.reason for w in again.waiting] == [
        "no manifest.json yet", "waits for acme/shop-1/load-1, which comes first and is not complete yet"]
    (first.parent / "manifest.later").rename(first / "manifest.json")
    (first / "customers.csv").write_bytes(CUSTOMERS)
    done = poll(registry, local(drop))
    assert [t.load for t in done.taken] == ["acme/shop-1/load-1", "acme/shop-1/load-2"]
    # Queued in load_id order, so the queue (FIFO per shop) runs them in that order too.
    assert [r[1] for r in runs(registry)] == ["acme/shop-2/load-1", "acme/shop-1/load-1", "acme/shop-1/load-2"]


def test_load_ids_are_taken_in_byte_order(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    ids = ["2026-01-05_b", "2026-01-05_B", "2026-01-05_a", "2026-01-05-z", "2026-01-05.a"]
    for load_id in ids:
        make_load(drop, load_id=load_id)
    result = poll(registry, local(drop))
    order = sorted(ids, key=lambda i: i.encode())
    assert [t.load.split("/")[-1] for t in result.taken] == order
    assert query(registry, "select load_id from loader_registry.connector_checkpoints") == [(order[-1],)]


def test_a_load_arriving_after_a_later_one_is_reported_not_taken(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    make_load(drop, load_id="load-2")
    assert len(poll(registry, local(drop)).taken) == 1
    late = make_load(drop, load_id="load-1")
    result = poll(registry, local(drop))
    assert result.taken == [] and [s.where for s in result.skipped] == [str(late)]
    assert "sorts before 'load-2'" in result.skipped[0].reason
    assert "loader checkpoint reset" in result.skipped[0].reason


def test_bad_names_and_links_are_skipped_and_reported(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    make_load(drop, load_id="good")
    make_load(drop, load_id="it's")
    outside = make_load(tmp_path / "outside", partner="other", shop="shop-9", load_id="secret")
    (drop / "acme" / "shop-1" / "linked").symlink_to(outside, target_is_directory=True)
    linked_file = make_load(drop, shop="shop-2")
    (linked_file / "customers.csv").unlink()
    (linked_file / "customers.csv").symlink_to(outside / "customers.csv")
    result = poll(registry, local(drop))
    assert [t.load for t in result.taken] == ["acme/shop-1/good"]
    skipped = {s.where: s.reason for s in result.skipped}
    assert set(skipped) == {str(drop / "acme" / "shop-1" / "it's"), str(drop / "acme" / "shop-1" / "linked"),
                            str(linked_file / "customers.csv")}
    assert skipped[str(linked_file / "customers.csv")] == "a symbolic link, which is never followed"
    assert [w.where for w in result.waiting] == [str(linked_file)]
    [(recorded,)] = query(registry, "select skipped from loader_registry.connector_polls")
    assert {s["where"]: s["reason"] for s in recorded} == skipped  # type: ignore[attr-defined]
    assert [r[1] for r in runs(registry)] == ["acme/shop-1/good"]


def test_move_to_processed_only_after_the_run_completed(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    folder = make_load(drop)
    cfg = local(drop, after_success="move_to_processed")
    [taken] = poll(registry, cfg).taken
    # Queued, not run yet: the folder stays.
    assert poll(registry, cfg).taken == [] and folder.is_dir()
    worker = subprocess.run([str(LOADER), "worker", "--once", "--concurrency", "1"], capture_output=True, text=True,
                            timeout=900, check=False)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert query(registry, "select status from loader_registry.runs where run_id = %s", (taken.run_id,)) == [
        ("completed",)]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = poll(registry, cfg)
    assert result.error_reason is None and result.taken == []
    moved = drop / "processed" / "acme" / "shop-1" / "load-1"
    assert not folder.exists() and {p.name: p.read_bytes() for p in moved.iterdir()} == before
    [(moved_at, checkpoint_moved_at)] = query(
        registry, "select t.moved_at, c.moved_at from loader_registry.connector_taken t"
                  " join loader_registry.connector_checkpoints c using (system_code, partner_id, shop_id)")
    assert moved_at is not None and checkpoint_moved_at is not None
    # Moved once: the processed folder is never looked at as a partner's.
    assert poll(registry, cfg) == PollResult(system_code="drop")


def test_a_checkpoint_reset_replays_and_is_recorded_with_who(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    make_load(drop, shop="shop-1")
    make_load(drop, shop="shop-2")
    first = poll(registry, local(drop))
    assert len(first.taken) == 2
    assert reset_checkpoints(registry, "drop", "acme", "shop-2", by="cli:tester") == 1
    assert query(registry, "select system_code, partner_id, shop_id, load_id, reset_by"
                           " from loader_registry.connector_checkpoint_resets") == [
        ("drop", "acme", "shop-2", "load-1", "cli:tester")]
    replay = poll(registry, local(drop))
    assert [t.load for t in replay.taken] == ["acme/shop-2/load-1"]
    assert [r[1] for r in runs(registry)].count("acme/shop-2/load-1") == 2
    assert [r[1] for r in runs(registry)].count("acme/shop-1/load-1") == 1
    assert reset_checkpoints(registry, "drop", by="cli:tester") == 2
    assert reset_checkpoints(registry, "drop", by="cli:tester") == 0
    assert len(poll(registry, local(drop)).taken) == 2


def test_the_database_refuses_a_checkpoint_moving_back_or_deleted_without_a_reset(registry: Warehouse,
                                                                                  tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    make_load(drop, load_id="load-2")
    poll(registry, local(drop))
    refused = [
        ("update loader_registry.connector_checkpoints set load_id = 'load-1'", "only moves forward"),
        ("update loader_registry.connector_checkpoints set load_id = 'load-2'", "only moves forward"),
        ("update loader_registry.connector_checkpoints set shop_id = 'shop-9', load_id = 'load-3'",
         "belongs to its connector and shop"),
        ("delete from loader_registry.connector_checkpoints", "deleted only by loader checkpoint reset"),
        ("truncate loader_registry.connector_checkpoints", "append-only"),
        ("delete from loader_registry.connector_taken", "forgotten only by loader checkpoint reset"),
        ("set session_replication_role = replica;"
         " update loader_registry.connector_checkpoints set load_id = 'load-1'", "only moves forward"),
    ]
    for statement, says in refused:
        with pytest.raises(psycopg2.Error, match=says):
            query(registry, statement)
    assert query(registry, "select load_id from loader_registry.connector_checkpoints") == [("load-2",)]
    # Forward is allowed; a reset's record is never changed or removed.
    query(registry, "update loader_registry.connector_checkpoints set load_id = 'load-3'")
    reset_checkpoints(registry, "drop", by="someone")
    for statement in ("update loader_registry.connector_checkpoint_resets set reset_by = 'nobody'",
                      "delete from loader_registry.connector_checkpoint_resets"):
        with pytest.raises(psycopg2.Error, match="append-only"):
            query(registry, statement)
    assert query(registry, "select load_id, reset_by from loader_registry.connector_checkpoint_resets") == [
        ("load-3", "someone")]


def test_one_failing_connector_does_not_stop_another(registry: Warehouse, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    gone, fine = tmp_path / "gone", tmp_path / "fine"
    make_load(gone)
    make_load(fine)
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(write_connectors(tmp_path / "connectors.yml",
                                                                      ("first", gone), ("second", fine))))
    # Deleted after start-up: the scheduler read connectors.yml while the folder was there.
    shutil.rmtree(gone)
    failed, good = poll_all(registry, LoaderSettings())
    assert (failed.system_code, failed.error_reason, failed.taken) == ("first", "not found", [])
    assert str(gone) in (failed.error or "") and "setting path" in (failed.error or "")
    assert (good.system_code, [t.load for t in good.taken], good.error_reason) == ("second", ["acme/shop-1/load-1"],
                                                                                  None)
    assert query(registry, "select system_code, error_reason from loader_registry.connector_polls order by poll_id") \
        == [("first", "not found"), ("second", None)]
    with contextlib.closing(registry.connect()) as conn:
        statuses = connector_status(conn, [local(gone, "first"), local(fine, "second")])
    assert [(s.system_code, s.last_error.reason if s.last_error else None) for s in statuses] == [
        ("first", "not found"), ("second", None)]
    assert [(c.partner_id, c.shop_id, c.load_id, c.run_id) for c in statuses[1].checkpoints] == [
        ("acme", "shop-1", "load-1", good.taken[0].run_id)]
    assert statuses[1].last_poll is not None and statuses[1].last_poll.taken == 1
    assert statuses[0].schedule == "every 5 minutes" and statuses[0].last_poll is not None


def test_an_unknown_or_inactive_connector_is_a_usage_error(registry: Warehouse, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "drop").mkdir()
    path = write_connectors(tmp_path / "connectors.yml", ("drop", tmp_path / "drop"))
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(path))
    with pytest.raises(ConnectorSettingsError, match=r"no connector 'nope' \(configured: drop\)"):
        poll_all(registry, LoaderSettings(), only="nope")
    path.write_text(path.read_text() + "    active: false\n")
    with pytest.raises(ConnectorSettingsError, match="connector drop: active: false"):
        poll_all(registry, LoaderSettings(), only="drop")
    assert poll_all(registry, LoaderSettings()) == []


def test_two_polls_at_once_take_a_load_once(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    for n in range(1, 4):
        make_load(drop, shop=f"shop-{n}")
    results: list[PollResult] = []
    threads = [threading.Thread(target=lambda: results.append(poll(registry, local(drop)))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(t.load for r in results for t in r.taken) == [f"acme/shop-{n}/load-1" for n in range(1, 4)]
    assert len(runs(registry)) == 3


@pytest.mark.parametrize("point", ["poll-claimed", "poll-submitted"])
def test_a_poll_killed_mid_take_neither_loses_nor_doubles_the_load(registry: Warehouse, tmp_path: Path,
                                                                   point: str) -> None:
    drop = tmp_path / "drop"
    folder = make_load(drop)
    connectors = write_connectors(tmp_path / "connectors.yml", ("drop", drop))
    env = {**os.environ, "LOADER_CONNECTORS_FILE": str(connectors)}
    killed = subprocess.run([str(LOADER), "poll"], env={**env, "LOADER_KILL_AT": point}, capture_output=True,
                            text=True, timeout=300, check=False)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    [(run_id, submitted_from)] = query(registry, "select run_id, submitted_from from loader_registry.connector_taken")
    assert run_id is None and Path(str(submitted_from)).parts[-3:] == folder.parts[-3:]
    assert len(runs(registry)) == (1 if point == "poll-submitted" else 0)
    again = subprocess.run([str(LOADER), "poll", "--json"], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    [(run, load, status, by)] = runs(registry)
    assert (load, status, by) == ("acme/shop-1/load-1", "queued", "connector:drop")
    assert query(registry, "select run_id from loader_registry.connector_taken") == [(run,)]
    assert query(registry, "select run_id from loader_registry.connector_checkpoints") == [(run,)]
    assert kept_files(registry, int(str(run))) == {p.name: p.read_bytes() for p in folder.iterdir()}
    third = subprocess.run([str(LOADER), "poll", "--json"], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert third.returncode == 0 and '"taken": []' in third.stdout and len(runs(registry)) == 1


def test_digests_are_checked_on_the_copy_not_trusted_from_the_listing(registry: Warehouse, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    folder = make_load(drop)
    data = (folder / "customers.csv").read_bytes()
    assert hashlib.sha256(data).hexdigest() in (folder / "manifest.json").read_text()
    (folder / "customers.csv").write_bytes(data.replace(b"Ann", b"Anne"))
    result = poll(registry, local(drop))
    assert result.taken == [] and result.waiting[0].reason == "customers.csv: sha256 does not match manifest.json yet"


def test_the_registry_ddl_applies_again_over_checkpoints_and_keeps_guarding_them(registry: Warehouse,
                                                                                 tmp_path: Path) -> None:
    """Every statement of registry.sql is idempotent: a newer version applies over this one's tables and rows."""
    drop = tmp_path / "drop"
    make_load(drop)
    [taken] = poll(registry, local(drop)).taken
    with contextlib.closing(registry.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute(REGISTRY_SQL.read_text(encoding="utf-8"))
    assert query(registry, "select load_id, run_id from loader_registry.connector_checkpoints") == [
        ("load-1", taken.run_id)]
    with pytest.raises(psycopg2.Error, match="only moves forward"):
        query(registry, "update loader_registry.connector_checkpoints set load_id = 'load-0'")
    assert poll(registry, local(drop)).taken == []
