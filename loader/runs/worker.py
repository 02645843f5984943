"""Serving the queue: workers that take runs and execute them, and `loader run` waiting for its own.

A worker process serves one run at a time (dbt builds in-process, and a
process builds in one slot); `loader worker --concurrency N` starts N such
processes and watches them. Whatever a run's end, the worker records it:
done, failed, or after a transient failure queued again with a backoff (or
failed once its attempts are spent). A worker stopped with SIGTERM puts its
run back in the queue for another to take.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

import psycopg2
import psycopg2.extensions

from loader.database import SchemaVersionError, Warehouse, WarehouseUnavailable
from loader.intake.load_key import LoadKey
from loader.intake.manifest import capped, verify_folder
from loader.intake.partners import PartnersFile, load_partners
from loader.runs.inbox import NotALoadFolder, check_submittable, keep, manifest_contract
from loader.runs.logs import ensure_configured, lines, run_context
from loader.runs.notify import send_now, sending
from loader.runs.pipeline import LeaseLost, Runner, RunOutcome, describe_problems, execute, parts_of
from loader.runs.progress import LogProgress, Progress
from loader.runs.queue import ClaimedRun, claim, held_ahead, listen, take_back_expired, wait, work_left
from loader.runs.registry import (
    FINAL_STATUSES,
    ensure_registry,
    kept_files,
    latest_run,
    move,
    record_problems,
    run_record,
    set_status,
    start_run,
)
from loader.runs.retry import TransientFailure, backoff_seconds
from loader.settings import LoaderSettings

log = logging.getLogger(__name__)

DONE_STATUSES = FINAL_STATUSES | {"needs_review"}


@dataclass(frozen=True)
class QueuePolicy:
    """The queue's timing settings (LOADER_LEASE_SECONDS, LOADER_MAX_ATTEMPTS, ...)."""

    lease_seconds: float = 30.0
    max_attempts: int = 3
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    poll_seconds: float = 2.0

    @classmethod
    def of(cls, settings: LoaderSettings) -> QueuePolicy:
        return cls(settings.lease_seconds, settings.max_attempts, settings.retry_base_seconds,
                   settings.retry_max_seconds, settings.poll_seconds)


def worker_name(role: str = "worker") -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


def process(runner: Runner, claimed: ClaimedRun, policy: QueuePolicy, *,
            when_stopped: Literal["requeue", "fail"]) -> RunOutcome | None:
    """Execute a claimed run and record how it ended; None when it is not over (retried, or taken back).

    Every line logged meanwhile, by any thread of the process, names the run.
    """
    ensure_configured()
    with run_context(claimed.run_id, claimed.load, runner.worker):
        try:
            return execute(runner, claimed)
        except LeaseLost as exc:
            log.warning("%s; leaving it to the worker that took it", exc)
            return None
        except TransientFailure as exc:
            _after_transient(runner, claimed, policy, str(exc))
            return None
        except SchemaVersionError as exc:
            # Not this run's fault and not a bug: the database belongs to a newer loader.
            _record_quietly(runner, claimed.run_id, "failed", str(exc), policy)
            return RunOutcome(claimed.run_id, "failed", None, message=str(exc))
        except Exception as exc:
            # A bug or an unforeseen failure: the run must not stay `running` after this.
            log.debug("run %s failed unexpectedly", claimed.run_id, exc_info=True)
            message = f"internal error: {type(exc).__name__}: {exc}"
            _record_quietly(runner, claimed.run_id, "failed", message, policy)
            return RunOutcome(claimed.run_id, "failed", None, message=message)
        except BaseException:
            if when_stopped == "requeue":
                _record_quietly(runner, claimed.run_id, "queued",
                                f"worker {runner.worker} was stopped during the run; queued to run again", policy)
            else:
                _record_quietly(runner, claimed.run_id, "failed",
                                "interrupted: the loader was stopped during the run", policy)
            raise


def _with_database(runner: Runner, policy: QueuePolicy, write: Callable[[psycopg2.extensions.connection], None],
                   what: str) -> bool:
    """Do `write` on a fresh connection, trying again for about two lease times while the database is away.

    After that the run's lease has run out, and whichever worker sees the
    database first takes the run back; nothing is lost by giving up here.
    """
    deadline = time.monotonic() + 2 * policy.lease_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            with contextlib.closing(runner.warehouse.connect()) as conn:
                write(conn)
            return True
        except (psycopg2.Error, WarehouseUnavailable) as exc:
            if time.monotonic() > deadline:
                log.warning("could not %s: %s", what, exc)
                return False
            time.sleep(min(backoff_seconds(attempt, 0.5, 5.0), max(0.0, deadline - time.monotonic())))


def _record_quietly(runner: Runner, run_id: int, status: Literal["failed", "queued"], message: str,
                    policy: QueuePolicy) -> None:
    def write(conn: psycopg2.extensions.connection) -> None:
        set_status(conn, run_id, status, message[:4000], owner=runner.worker)

    _with_database(runner, policy, write, f"record run {run_id} as {status}")


def _after_transient(runner: Runner, claimed: ClaimedRun, policy: QueuePolicy, reason: str) -> None:
    """Queue the run again after a backoff, or fail it once its attempts are spent (the dead-letter list)."""
    attempt = claimed.attempts
    said = f"attempt {attempt} of {policy.max_attempts} failed: {reason}"
    if attempt >= policy.max_attempts:
        detail, delay = f"{said}; giving up (loader rerun takes it back)", None
        status: Literal["failed", "queued"] = "failed"
    else:
        delay = backoff_seconds(attempt, policy.retry_base_seconds, policy.retry_max_seconds)
        detail, status = f"{said}; retrying in {delay:.1f} s", "queued"
    runner.progress.status(f"run {claimed.run_id}: {detail}")

    def write(conn: psycopg2.extensions.connection) -> None:
        set_status(conn, claimed.run_id, status, detail[:4000], owner=runner.worker, not_before=delay)

    _with_database(runner, policy, write, f"record the failed attempt of run {claimed.run_id}")


_said = lines("loader.worker", lambda: sys.stdout, "%Y-%m-%d %H:%M:%S")


def say(text: str) -> None:
    """One line of a worker's log on stdout: `[time] text`, or a JSON object (flushed: usually a pipe or a file)."""
    ensure_configured()
    _said.info(text)


def serve(runner: Runner, policy: QueuePolicy, *, once: bool, stop: threading.Event,
          report: Callable[[str], None] = say) -> None:
    """Take and execute runs until `stop` is set (or, with `once`, until no run is queued or running)."""
    conn: psycopg2.extensions.connection | None = None
    failures = 0
    try:
        while not stop.is_set():
            try:
                if conn is None:
                    conn = runner.warehouse.connect()
                    listen(conn)
                for taken in take_back_expired(conn, policy.lease_seconds, policy.max_attempts):
                    report(f"run {taken.run_id}: {taken.reason}; {'queued again' if taken.requeued else 'failed'}")
                claimed = claim(conn, runner.worker)
                failures = 0
                if claimed is not None:
                    with run_context(claimed.run_id, claimed.load, runner.worker):
                        report(f"run {claimed.run_id} {claimed.load}: started (attempt {claimed.attempts})")
                        outcome = process(runner, claimed, policy, when_stopped="requeue")
                        if outcome is not None:
                            report(f"run {claimed.run_id} {claimed.load}: {outcome.status}"
                                   + (f" ({outcome.message})" if outcome.message else ""))
                            if outcome.status == "rejected" and outcome.verification is not None:
                                for line in describe_problems(capped(outcome.verification.refusals)):
                                    report(line)
                    continue
                if once and not work_left(conn):
                    return
                wait(conn, policy.poll_seconds)
            except (psycopg2.Error, WarehouseUnavailable) as exc:
                failures += 1
                delay = backoff_seconds(failures, 1.0, max(policy.poll_seconds, 30.0))
                report(f"the database is not answering ({_first_line(exc)}); trying again in {delay:.1f} s")
                if conn is not None:
                    with contextlib.suppress(psycopg2.Error):
                        conn.close()
                conn = None
                stop.wait(delay)
    finally:
        if conn is not None:
            conn.close()


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def run_in_foreground(runner: Runner, policy: QueuePolicy, folder: Path, *, triggered_by: str,
                      inbox: Path) -> RunOutcome:
    """`loader run PATH`: keep the folder's files, queue the run, and serve its shop's queue until it is done.

    Then the run's webhooks are sent in one round bounded by the webhook
    timeout: the outcome is committed by then, and a hook that fails is
    retried by a worker's sender, never changing the outcome or exit code.
    """
    try:
        key = check_submittable(folder)
    except NotALoadFolder:
        outcome = refuse_in_place(runner, folder, triggered_by)
    else:
        kept = keep(folder, inbox)
        with contextlib.closing(runner.warehouse.connect()) as conn:
            run_id = start_run(conn, (key.partner_id, key.shop_id, key.load_id), manifest_contract(kept),
                               triggered_by, os.fspath(kept), submitted_from=os.fspath(folder.absolute()))
        outcome = serve_until_done(runner, policy, run_id)
    send_now(runner.warehouse, runner.partners, run_id=outcome.run_id)
    return outcome


def run_load(
    warehouse: Warehouse,
    partners: PartnersFile,
    folder: Path,
    *,
    triggered_by: str,
    progress: Progress,
    home: Path,
    land_workers: int = 2,
    transform: bool = True,
    recheck_unchanged: bool = False,
    production_partitions: int = 0,
    policy: QueuePolicy | None = None,
) -> RunOutcome:
    """One load in the foreground, as `loader run` does it (the benches and tests call this)."""
    ensure_registry(warehouse)
    policy = policy or QueuePolicy()
    runner = Runner(warehouse, partners, home, worker_name("cli"), progress, lease_seconds=policy.lease_seconds,
                    land_workers=land_workers, transform=transform, recheck_unchanged=recheck_unchanged,
                    production_partitions=production_partitions)
    return run_in_foreground(runner, policy, folder, triggered_by=triggered_by, inbox=home / "inbox")


def refuse_in_place(runner: Runner, folder: Path, triggered_by: str) -> RunOutcome:
    """A path that is not a load folder at all: recorded as a refused run with every problem, nothing kept."""
    verification = verify_folder(folder, runner.partners.for_partner, count_records=True)
    with contextlib.closing(runner.warehouse.connect()) as conn:
        run_id = start_run(conn, parts_of(folder), verification.contract.name if verification.contract
                           else manifest_contract(folder), triggered_by, None,
                           submitted_from=os.fspath(folder.absolute()))
        problems = verification.refusals + verification.findings
        record_problems(conn, run_id, problems)
        reason = f"refused: {len(verification.refusals)} problem(s) with the folder"
        with conn, conn.cursor() as cur:
            move(cur, run_id, "running", f"checked by {triggered_by}")
            move(cur, run_id, "rejected", reason, error_count=len(verification.refusals))
    return RunOutcome(run_id, "rejected", verification, message=reason)


def serve_until_done(runner: Runner, policy: QueuePolicy, run_id: int) -> RunOutcome:
    """Serve the queue of the run's shop (earlier runs of the shop first) until the run is done or held.

    Another worker may take the run or the shop's earlier runs; this waits
    for them. The outcome is this process's own where it ran the run, else
    what the registry says. A database that goes away is waited for, about
    two lease times, before this gives up (the run stays queued for a worker).
    """
    waiting = _Waiting(runner, policy, run_id)
    lost_since: float | None = None
    failures = 0
    while True:
        try:
            with contextlib.closing(runner.warehouse.connect()) as conn:
                listen(conn)
                lost_since, failures = None, 0
                outcome = waiting.serve(conn)
                if outcome is not None:
                    return outcome
        except (psycopg2.Error, WarehouseUnavailable) as exc:
            failures += 1
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 2 * policy.lease_seconds:
                raise WarehouseUnavailable(f"lost the database while running run {run_id}: {_first_line(exc)};"
                                           " the run stays in the queue for a worker (or loader rerun)") from None
            delay = backoff_seconds(failures, 0.5, 5.0)
            runner.progress.status(f"the database is not answering ({_first_line(exc)}); trying again in"
                                   f" {delay:.1f} s")
            time.sleep(delay)


@dataclass
class _Waiting:
    """`serve_until_done`'s state, kept across reconnections."""

    runner: Runner
    policy: QueuePolicy
    run_id: int
    own: RunOutcome | None = None
    said: bool = False

    def serve(self, conn: psycopg2.extensions.connection) -> RunOutcome | None:
        """Serve the shop's queue on `conn` until the run is done; raises psycopg2.Error if `conn` is lost."""
        record = run_record(conn, self.run_id)
        assert record is not None, "the run was registered"
        partner, shop, _ = record.load.split("/", 2)
        while True:
            take_back_expired(conn, self.policy.lease_seconds, self.policy.max_attempts)
            claimed = claim(conn, self.runner.worker, shop=(partner, shop))
            if claimed is not None:
                if claimed.run_id != self.run_id:
                    self.runner.progress.status(f"running run {claimed.run_id} ({claimed.load}) first: it was"
                                                " queued earlier for this shop")
                outcome = process(self.runner, claimed, self.policy, when_stopped="fail")
                if claimed.run_id == self.run_id:
                    self.own = outcome
                continue
            record = run_record(conn, self.run_id)
            assert record is not None
            if record.status in DONE_STATUSES:
                if self.own is not None and self.own.status == record.status:
                    return self.own
                return RunOutcome(self.run_id, record.status, None, message=record.message)
            held = held_ahead(conn, self.run_id)
            if held is not None:
                return RunOutcome(self.run_id, "queued", None, message=(
                    f"queued behind load {held[1]} (run {held[0]}), which is held for review: loads of a shop go"
                    " one at a time, so this one starts once that one is approved or rejected (loader approve,"
                    " loader reject), taken by a worker (loader worker)"))
            if not self.said:
                self.runner.progress.status(f"run {self.run_id} is {record.status}: waiting for its turn in the"
                                            " shop's queue (runs of one shop go one at a time, in the order they"
                                            " were queued)")
                self.said = True
            wait(conn, self.policy.poll_seconds)


class RerunRefused(Exception):
    """The load cannot run again from its kept files; the message says why and what to do instead."""


def queue_rerun(conn: psycopg2.extensions.connection, key: LoadKey, by: str) -> int:
    """The run id that will run `key` again from its kept files: its failed or held run requeued, else a new run.

    Raises RerunRefused when the load is unknown, still queued or running, purged, or has no kept files.
    """
    run = latest_run(conn, key)
    if run is None:
        raise RerunRefused(f"unknown load {key}")
    if run.status in ("queued", "running"):
        raise RerunRefused(f"run {run.run_id} of {key} is already {run.status}")
    if run.purged_at is not None:
        raise RerunRefused(f"{key} was purged on {run.purged_at:%Y-%m-%d} (retention): its raw data and kept files"
                           " are gone; its report and exceptions remain. Send the folder again with `loader run PATH`")
    kept = kept_files(conn, run.run_id)
    if kept is None:
        raise RerunRefused(f"{key} has no kept files: its folder was refused before anything was kept"
                           f" ({run.message}); run the folder again with `loader run PATH`")
    if not Path(kept).is_dir():
        raise RerunRefused(f"the kept files of {key} are gone: {kept} does not exist")
    # A failed or held run goes back in the queue; a finished one is run again as a new run of the same files.
    if requeue_for_rerun(conn, run.run_id, by):
        return run.run_id
    return start_run(conn, (key.partner_id, key.shop_id, key.load_id), run.contract, by, kept,
                     submitted_from=f"rerun of run {run.run_id}")


def requeue_for_rerun(conn: psycopg2.extensions.connection, run_id: int, by: str) -> bool:
    """A failed or held run back in the queue, to run again from its kept files.

    False if its status does not allow that.
    """
    with conn, conn.cursor() as cur:
        cur.execute("select status from loader_registry.runs where run_id = %s for update", (run_id,))
        row = cur.fetchone()
        if row is None or row[0] not in ("failed", "needs_review"):
            return False
        return move(cur, run_id, "queued", f"rerun by {by}")


def _die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent (the supervising worker) dies, even by kill -9."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop_on(stop: threading.Event) -> None:
    """SIGTERM and SIGINT stop the worker after (or, by unwinding, during) the current run."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _finish_on(stop: threading.Event) -> None:
    """SIGUSR1 asks for a drain: finish the run in progress, take no new one (SIGTERM still stops at once)."""
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGUSR1, handler)


def _child(make_runner: Callable[[str], Runner], policy: QueuePolicy, once: bool) -> None:
    _die_with_parent()
    stop = threading.Event()
    _stop_on(stop)
    _finish_on(stop)
    runner = make_runner(worker_name())
    with contextlib.suppress(SystemExit, KeyboardInterrupt):
        serve(runner, policy, once=once, stop=stop)


def run_workers(make_runner: Callable[[str], Runner], policy: QueuePolicy, *, concurrency: int, once: bool,
                grace_seconds: float | None = None, on_stop: Callable[[], None] | None = None,
                on_ready: Callable[[], None] | None = None) -> int:
    """`loader worker`: serve the queue with `concurrency` processes until SIGTERM (or, with `once`, until idle).

    Webhooks are sent from this (the supervising) process, beside the
    workers, so a slow hook never holds up a run; with `once`, one last
    bounded round sends what the last runs left.

    SIGTERM stops the workers at once: a run in progress is rolled back and
    queued again. With `grace_seconds` (the scheduler), SIGTERM first lets
    the runs in progress finish, taking no new ones, and stops what is still
    running only when the grace period is over. `on_stop` is called at the
    first SIGTERM, `on_ready` once SIGTERM is handled this way.
    """
    stop = threading.Event()
    own = make_runner(worker_name("notify"))
    with sending(own.warehouse, own.partners, finish=once):
        # Every worker is a child process when draining, so that "stop now" can be sent after the grace period.
        if concurrency == 1 and grace_seconds is None:
            _stop_on(stop)
            if on_ready is not None:
                on_ready()
            with contextlib.suppress(SystemExit, KeyboardInterrupt):
                serve(make_runner(worker_name()), policy, once=once, stop=stop)
            return 0
        context = multiprocessing.get_context("spawn")
        children = [context.Process(target=_child, args=(make_runner, policy, once), name=f"loader-worker-{n}")
                    for n in range(1, concurrency + 1)]
        for child in children:
            child.start()

        def send(signum: int) -> None:
            for child in children:
                if child.pid is not None and child.is_alive():
                    os.kill(child.pid, signum)

        def forward(signum: int, _frame: FrameType | None) -> None:
            first = not stop.is_set()
            stop.set()
            if first and on_stop is not None:
                # Not in the handler itself: it interrupts this thread anywhere, and on_stop may take locks
                # (the scheduler's, logging's) that other threads hold.
                threading.Thread(target=on_stop, name="loader-on-stop", daemon=True).start()
            if grace_seconds is None or not first:
                send(signal.SIGTERM)
                return
            send(signal.SIGUSR1)
            timer = threading.Timer(grace_seconds, send, args=(signal.SIGTERM,))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        if on_ready is not None:
            on_ready()
        for child in children:
            child.join()
        return 0


def make_runner_for(
    settings: LoaderSettings, warehouse: Warehouse, *, transform: bool = True
) -> Callable[[str], Runner]:
    """A picklable maker of this process's (or a child process's) Runner."""
    return _RunnerMaker(settings, warehouse, transform)


@dataclass(frozen=True)
class _RunnerMaker:
    settings: LoaderSettings
    warehouse: Warehouse
    transform: bool

    def __call__(self, worker: str) -> Runner:
        return Runner(self.warehouse, load_partners(self.settings.partners_file), self.settings.home_dir, worker,
                      LogProgress(sys.stderr), lease_seconds=self.settings.lease_seconds,
                      land_workers=self.settings.land_workers, transform=self.transform,
                      recheck_unchanged=self.settings.recheck_unchanged,
                      production_partitions=self.settings.production_partitions)

