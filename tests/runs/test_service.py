"""`python scheduler.py` as it runs in production: real processes, a watched folder, kill -9 and SIGTERM."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.database import Warehouse

REPO = Path(__file__).resolve().parents[2]
SCHEDULER = REPO / "scheduler.py"
ROWS = 40


def customers(count: int) -> bytes:
    body = "".join(f"C{i},Ann,Last{i},c{i}@example.com\r\n" for i in range(1, count + 1))
    return ("external_customer_id,first_name,last_name,email\r\n" + body).encode()


def write_connectors(tmp_path: Path, drop: Path, *, every_minutes: int = 60, on_detection: bool = True) -> Path:
    drop.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "connectors.yml"
    path.write_text(f"""connectors:
  - system_code: drop
    name: Test drop folder
    type: local
    active: true
    path: {drop}
    schedule: {{every_minutes: {every_minutes}}}
    on_detection: {str(on_detection).lower()}
""", encoding="utf-8")
    return path


class Scheduler:
    """A `python scheduler.py` process of a test, its output read as it comes (a full pipe would stall it)."""

    def __init__(self, connectors: Path, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, str(SCHEDULER), *args],
                                        env={**os.environ, "LOADER_CONNECTORS_FILE": str(connectors), **env},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(300):
            self.kill()
            raise AssertionError(f"the scheduler did not start: {self.output}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "scheduler: " in line and "worker(s)" in line:
                self.ready.set()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """The scheduler and its workers, at once (a test that failed must not leave them serving the queue)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self, timeout: float = 300) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the scheduler did not stop within {timeout} s of SIGTERM: {self.output}") from None
        self.reader.join(timeout=30)
        return self.process.returncode, self.output


Launch = Callable[..., Scheduler]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Start schedulers; every one still running when the test ends is killed with its workers."""
    started: list[Scheduler] = []

    def start(connectors: Path, *args: str, **env: str) -> Scheduler:
        started.append(Scheduler(connectors, args, env))
        return started[-1]

    yield start
    for scheduler in started:
        scheduler.kill()


def drop_load(drop: Path, staging: Path, load_id: str, shop: str = "shop-1") -> float:
    """Write a load as a partner would (files first, manifest.json last, by rename); returns when it appeared."""
    folder = make_load(staging, {"customers.csv": customers(ROWS)}, shop=shop, load_id=load_id)
    target = drop / "acme" / shop / load_id
    target.mkdir(parents=True)
    for file in folder.iterdir():
        if file.name != "manifest.json":
            shutil.copyfile(file, target / file.name)
    shutil.copyfile(folder / "manifest.json", target / ".manifest.json.part")
    appeared = time.time()
    (target / ".manifest.json.part").rename(target / "manifest.json")
    return appeared


def runs_of(db: Warehouse, load_id: str) -> list[tuple[object, ...]]:
    return query(db, "select run_id, status, triggered_by, attempts from loader_registry.runs where load_id = %s"
                     " order by run_id", (load_id,))


def wait_for(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {seconds} s")


def test_a_load_dropped_in_a_watched_folder_is_queued_within_seconds_and_completes(
        db: Warehouse, tmp_path: Path, launch: Launch) -> None:
    drop = tmp_path / "drop"
    connectors = write_connectors(tmp_path, drop)
    scheduler = launch(connectors, "--concurrency", "1")
    try:
        # The schedule is hourly: only the watcher can take the load this soon.
        appeared = drop_load(drop, tmp_path / "staging", "load-1")
        wait_for(lambda: runs_of(db, "load-1"), 30, "the load being queued")
        [(run_id, _, triggered_by, _)] = runs_of(db, "load-1")
        assert triggered_by == "connector:drop"
        [(queued_at,)] = query(db, "select extract(epoch from queued_at) from loader_registry.runs where run_id = %s",
                               (run_id,))
        assert float(str(queued_at)) - appeared < 5.0
        wait_for(lambda: runs_of(db, "load-1")[0][1] == "completed", 300, "the run completing")
    finally:
        code, out = scheduler.stop()
    assert code == 0, out
    assert "scheduler: stopped" in out
    assert query(db, "select count(*) from prod_sms.customers") == [(ROWS,)]


def test_schedules_survive_a_restart_in_the_job_store(db: Warehouse, tmp_path: Path, launch: Launch) -> None:
    drop = tmp_path / "drop"
    connectors = write_connectors(tmp_path, drop, every_minutes=90, on_detection=False)
    scheduler = launch(connectors, "--concurrency", "1")
    code, out = scheduler.stop()
    assert code == 0, out
    jobs = query(db, "select id, next_run_time from loader_registry.apscheduler_jobs order by id")
    assert [j for j, _ in jobs] == ["poll:drop", "purge"]
    # The first poll ran at start; the next is due 90 minutes on.
    [(_, next_poll)] = [j for j in jobs if j[0] == "poll:drop"]
    assert 85 * 60 < float(str(next_poll)) - time.time() <= 90 * 60
    scheduler = launch(connectors, "--concurrency", "1")
    code, out = scheduler.stop()
    assert code == 0, out
    assert query(db, "select id, next_run_time from loader_registry.apscheduler_jobs order by id") == jobs
    # A connector dropped from connectors.yml loses its job.
    connectors.write_text("connectors: []\n", encoding="utf-8")
    scheduler = launch(connectors, "--concurrency", "1")
    scheduler.stop()
    assert [j for (j,) in query(db, "select id from loader_registry.apscheduler_jobs order by id")] == ["purge"]


def test_a_scheduler_killed_mid_run_and_started_again_completes_the_load_exactly_once(
        db: Warehouse, tmp_path: Path, launch: Launch) -> None:
    drop = tmp_path / "drop"
    connectors = write_connectors(tmp_path, drop)
    env = {"LOADER_LEASE_SECONDS": "5"}
    scheduler = launch(connectors, "--concurrency", "1", **env)
    drop_load(drop, tmp_path / "staging", "load-1")
    wait_for(lambda: runs_of(db, "load-1") and runs_of(db, "load-1")[0][1] == "running", 120, "the run starting")
    # The whole service, workers too, as a lost machine would.
    scheduler.kill()
    assert runs_of(db, "load-1")[0][1] in ("running", "queued")
    scheduler = launch(connectors, "--concurrency", "1", **env)
    try:
        wait_for(lambda: runs_of(db, "load-1")[0][1] == "completed", 300, "the run completing after the restart")
    finally:
        code, out = scheduler.stop()
    assert code == 0, out
    [(run_id, _, _, _)] = runs_of(db, "load-1")
    statuses = [s for (s,) in query(db, "select status from loader_registry.run_status_history where run_id = %s"
                                        " order by history_id", (run_id,))]
    assert statuses.count("running") == 2 and statuses[-1] == "completed"
    assert query(db, "select count(*), count(distinct external_id) from prod_sms.customers") == [(ROWS, ROWS)]
    assert query(db, "select inserted from loader_registry.run_ledger where run_id = %s and entity = 'customers'",
                 (run_id,)) == [(ROWS,)]


def test_sigterm_lets_the_run_in_progress_finish(db: Warehouse, tmp_path: Path, launch: Launch) -> None:
    drop = tmp_path / "drop"
    connectors = write_connectors(tmp_path, drop)
    scheduler = launch(connectors, "--concurrency", "1", "--grace-seconds", "600")
    drop_load(drop, tmp_path / "staging", "load-1")
    wait_for(lambda: runs_of(db, "load-1") and runs_of(db, "load-1")[0][1] == "running", 120, "the run starting")
    code, out = scheduler.stop()
    assert code == 0, out
    assert runs_of(db, "load-1")[0][1] == "completed", out
    # Nothing was taken after SIGTERM: a load dropped now waits for the next scheduler.
    assert "no new polls or runs" in out


def test_sigterm_after_the_grace_period_leaves_the_run_for_another_worker(db: Warehouse, tmp_path: Path,
                                                                          launch: Launch) -> None:
    drop = tmp_path / "drop"
    connectors = write_connectors(tmp_path, drop)
    scheduler = launch(connectors, "--concurrency", "1", "--grace-seconds", "0.2")
    drop_load(drop, tmp_path / "staging", "load-1")
    wait_for(lambda: runs_of(db, "load-1") and runs_of(db, "load-1")[0][1] == "running", 120, "the run starting")
    code, out = scheduler.stop()
    assert code == 0, out
    [(run_id, status, _, _)] = runs_of(db, "load-1")
    assert status == "queued", out
    assert query(db, "select count(*) from loader_registry.run_ledger where run_id = %s", (run_id,)) == [(0,)]


def test_two_schedulers_on_one_database_take_a_load_once(db: Warehouse, tmp_path: Path, launch: Launch) -> None:
    drop = tmp_path / "drop"
    connectors = write_connectors(tmp_path, drop)
    first = launch(connectors, "--concurrency", "1")
    second = launch(connectors, "--concurrency", "1")
    try:
        for n in range(1, 4):
            drop_load(drop, tmp_path / "staging", f"load-{n}")
        wait_for(lambda: [r[1] for r in query(db, "select 1, status from loader_registry.runs")].count("completed")
                 >= 3, 600, "three runs completing")
    finally:
        first.stop()
        second.stop()
    loads = query(db, "select load_id, count(*) from loader_registry.runs group by load_id order by load_id")
    assert loads == [("load-1", 1), ("load-2", 1), ("load-3", 1)]
    assert query(db, "select count(*) from prod_sms.customers") == [(ROWS,)]


def test_a_bad_connectors_file_stops_the_scheduler_at_start_with_exit_2(db: Warehouse, tmp_path: Path) -> None:
    bad = tmp_path / "connectors.yml"
    bad.write_text("connectors:\n  - system_code: x\n    type: ftp\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(SCHEDULER)], env={**os.environ, "LOADER_CONNECTORS_FILE": str(bad)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "connector x" in done.stderr and "Traceback" not in done.stderr


def test_the_daily_purge_job_exists_and_is_daily(db: Warehouse, tmp_path: Path, launch: Launch) -> None:
    drop = tmp_path / "drop"
    scheduler = launch(write_connectors(tmp_path, drop), "--concurrency", "1")
    scheduler.stop()
    [(next_purge,)] = query(db, "select next_run_time from loader_registry.apscheduler_jobs where id = 'purge'")
    due = dt.datetime.fromtimestamp(float(str(next_purge)), dt.UTC)
    assert (due.hour, due.minute) == (3, 17)
    assert 0 < due.timestamp() - time.time() <= 24 * 3600
