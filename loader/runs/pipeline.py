"""One run of one load, from its kept files: verify, land, validate and publish, and record what happened.

A run is executed by whoever took it from the queue (a worker, or `loader
run` in the foreground) and holds its lease. Every status it writes is fenced
by that lease, and its outcome (status, ledger, exceptions) is committed in
the same transaction as its publish: a worker killed at any point leaves
either a run still `running` (taken back when its lease runs out) or a run
whose record says exactly what it did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.extensions
from psycopg2.extras import Json

from loader.contracts import Contract
from loader.database import Warehouse
from loader.dbt.relations import Relation, built_relation, dbt_relation
from loader.dbt.runner import NodeProblem, dbt_build
from loader.formats.header import CsvFileError
from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest import Problem, Verification, record_count_problems, verify_folder
from loader.intake.partners import PartnersFile, Thresholds
from loader.landing.raw_copy import LandingError
from loader.landing.spool import LandedFile, load, preload_unless_landed, prepare
from loader.publish.identical_rerun import carry_over, dbt_project_digest, fingerprint, previous_identical_run
from loader.publish.transaction import Publisher, PublishError, ensure_production
from loader.publish.unchanged_rows import carry_unchanged, record_rules
from loader.runs import faults
from loader.runs.progress import Progress
from loader.runs.queue import ClaimedRun, Heartbeat, hold_lease, run_connection_name
from loader.runs.registry import (
    RunStatus,
    exception_counts,
    move,
    record_problems,
    record_run_files,
    save_audit,
    save_steps,
    set_build_context,
    shop_key,
    shop_lock,
)
from loader.runs.retry import TransientFailure, is_transient, transient_dbt_failure
from loader.runs.review import Crossed, crossed_thresholds, discard_plan, keep_plan
from loader.runs.slots import Slot, build_slot

log = logging.getLogger(__name__)

# A run left queued behind a held load of its shop is held too, for the person who ran it.
EXIT_CODES: dict[str, int] = {"completed": 0, "failed": 1, "rejected": 2, "needs_review": 3, "queued": 3}


class LeaseLost(RuntimeError):
    """The worker no longer holds the run: it was given up for dead and the run taken back."""


@dataclass
class RunOutcome:
    run_id: int
    status: RunStatus
    verification: Verification | None
    landed: list[LandedFile] = field(default_factory=list)
    message: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


@dataclass(frozen=True)
class Runner:
    """What a process needs to execute runs it took from the queue."""

    warehouse: Warehouse
    partners: PartnersFile
    home: Path
    worker: str
    progress: Progress
    lease_seconds: float = 30.0
    land_workers: int = 2
    # Off for the landing benchmark and `loader run --land-only`: verify and land only.
    transform: bool = True
    # LOADER_RECHECK_UNCHANGED: check every row of a reload, also those identical to the previous load's.
    recheck_unchanged: bool = False
    # LOADER_PRODUCTION_PARTITIONS: production tables created by this runner are hash-partitioned by shop.
    production_partitions: int = 0


@dataclass
class _Step:
    """A step of a run, timed from `started` until it ends (or until the run's outcome is saved, if sooner)."""

    name: str
    started: float
    clock: float
    seconds: float | None = None
    # What the step handled, where that is known.
    rows: int | None = None

    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.monotonic() - self.clock


@dataclass
class _Run:
    """One execution of a claimed run: its connection, the worker that holds it and how long its steps took."""

    runner: Runner
    claimed: ClaimedRun
    conn: psycopg2.extensions.connection
    warehouse: Warehouse
    heartbeat: Heartbeat
    steps: list[_Step] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[_Step]:
        """Time a step; the steps so far are saved with the run's outcome."""
        timed = _Step(name, time.time(), time.monotonic())
        self.steps.append(timed)
        try:
            yield timed
        finally:
            timed.seconds = timed.elapsed()

    @property
    def run_id(self) -> int:
        return self.claimed.run_id

    def set(self, status: RunStatus, detail: str | None, *, errors: int | None = None,
            warnings: int | None = None, cur: psycopg2.extensions.cursor | None = None) -> None:
        """Move the run, only while this worker holds it; raises LeaseLost otherwise."""
        if cur is None:
            with self.conn, self.conn.cursor() as own:
                self.set(status, detail, errors=errors, warnings=warnings, cur=own)
            return
        self.heartbeat.ending()
        if not move(cur, self.run_id, status, detail, error_count=errors, warning_count=warnings,
                    owner=self.runner.worker):
            raise self.lost()
        save_steps(cur, self.run_id, [(s.name, s.started, s.elapsed(), s.rows) for s in self.steps])

    def hold(self, cur: psycopg2.extensions.cursor) -> None:
        """Lock the run for the outcome this transaction commits; raises LeaseLost if the worker lost it."""
        if not hold_lease(cur, self.run_id, self.runner.worker):
            raise self.lost()

    def lost(self) -> LeaseLost:
        return LeaseLost(f"run {self.run_id} was taken back from worker {self.runner.worker}; nothing was written")


def execute(runner: Runner, claimed: ClaimedRun) -> RunOutcome:
    """Execute a run this process took from the queue (and holds the lease of).

    Raises TransientFailure for what may pass (a lost connection, a full
    disk), LeaseLost when the run was taken back; records every other outcome.
    """
    warehouse = runner.warehouse.named(run_connection_name(claimed.run_id))
    with contextlib.closing(warehouse.connect()) as conn, \
            Heartbeat(warehouse, claimed.run_id, runner.worker, runner.lease_seconds) as heartbeat:
        run = _Run(runner, claimed, conn, warehouse, heartbeat)
        try:
            return _execute(run)
        except (LeaseLost, TransientFailure):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise TransientFailure(_describe(exc)) from exc
            raise


def _describe(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _forget_earlier_attempt(conn: psycopg2.extensions.connection, run_id: int) -> None:
    """What an earlier attempt of this run recorded about its files: this attempt finds it again."""
    with conn, conn.cursor() as cur:
        for table in ("run_problems", "run_files", "run_ledger", "run_exceptions", "run_steps",
                      "run_dbt_failures"):
            cur.execute(f"delete from loader_registry.{table} where run_id = %s", (run_id,))
        # A held run run again makes a new plan, checked afresh.
        discard_plan(cur, run_id)
        cur.execute("update loader_registry.runs set held_because = null where run_id = %s", (run_id,))


def _execute(run: _Run) -> RunOutcome:
    runner, conn = run.runner, run.conn
    _forget_earlier_attempt(conn, run.run_id)
    folder = Path(run.claimed.source_path or "")
    if not run.claimed.source_path or not folder.is_dir():
        message = f"the kept files of this run are gone: {folder} is not a folder"
        run.set("failed", message)
        return RunOutcome(run.run_id, "failed", None, message=message)
    runner.progress.status(f"verifying {folder}")
    preload_unless_landed(conn, folder)
    # Record counts are checked below, from the landing parse, before anything is written.
    with run.step("verify"):
        verification = verify_folder(folder, runner.partners.for_partner, count_records=False,
                                     on_file=lambda name: runner.progress.status(f"checking {name}"))
    faults.reach("verified")
    if not verification.ok:
        # A refused folder is not landed, so count its records here to report every problem at once.
        verification = verify_folder(folder, runner.partners.for_partner, count_records=True)
        return _refuse(run, verification, [])
    assert verification.key is not None and verification.contract is not None
    key, contract = verification.key, verification.contract
    if contract.name != run.claimed.contract:
        with conn, conn.cursor() as cur:
            cur.execute("update loader_registry.runs set contract = %s where run_id = %s",
                        (contract.name, run.run_id))
    settings = runner.partners.for_partner(key.partner_id)
    with contextlib.closing(run.warehouse.connect()) as lock_conn, shop_lock(lock_conn, key), \
            build_slot(lock_conn, runner.home) as slot:
        with run.step("land") as landing:
            try:
                prepared = prepare(conn, key, verification.files, settings.encoding, runner.land_workers,
                                   runner.progress, slot.scratch)
            except CsvFileError as exc:
                return _refuse(run, verification, [Problem("csv", f"cannot be read as CSV: {exc}",
                                                           file=exc.file_name)])
            counts = [p for pf in prepared.files for p in record_count_problems(pf.file, pf.records)]
            if counts:
                prepared.discard()
                return _refuse(run, verification, counts)

            record_problems(conn, run.run_id, verification.findings)
            try:
                landed = load(run.warehouse, conn, contract, key, prepared, runner.land_workers, runner.progress,
                              slot.scratch)
            except LandingError as exc:
                if is_transient(exc):
                    raise TransientFailure(str(exc)) from exc
                log.debug("landing failed", exc_info=True)
                return _failed(run, verification, [], str(exc))
            landing.rows = sum(lf.rows for lf in landed)
        record_run_files(conn, run.run_id, [(lf.entity, lf.file_id, vf.manifest_rows, lf.newly_landed)
                                            for lf, vf in zip(landed, verification.files, strict=True)])
        # Numbered once it has landed, so that dbt by hand finds the shop's key too.
        with conn, conn.cursor() as cur:
            shop_key(cur, key)
        if not runner.transform:
            errors, warnings = _finding_counts(verification)
            errors += sum(lf.problem_rows for lf in landed)
            run.set("completed", f"landed in {contract.raw_dataset} (not transformed)", errors=errors,
                    warnings=warnings)
            return RunOutcome(run.run_id, "completed", verification, landed)
        return _transform_and_publish(run, contract, key, verification, landed, settings.encoding,
                                      settings.date_format, slot)


def _refuse(run: _Run, verification: Verification, problems: list[Problem]) -> RunOutcome:
    verification.refusals += problems
    record_problems(run.conn, run.run_id, verification.refusals + verification.findings)
    reason = f"refused: {len(verification.refusals)} problem(s) with the folder"
    run.set("rejected", reason, errors=len(verification.refusals))
    return RunOutcome(run.run_id, "rejected", verification, message=reason)


def _transform_and_publish(
    run: _Run,
    contract: Contract,
    key: LoadKey,
    verification: Verification,
    landed: list[LandedFile],
    encoding: str,
    date_format: str | None,
    slot: Slot,
) -> RunOutcome:
    """dbt build (validate, map, plan, audit) in the slot's relations, each plan published as it is built.

    The publish commits after the build, in one transaction with the run's
    ledger, exceptions and `completed` status.
    """
    conn = run.conn
    ensure_production(conn, contract, run.runner.production_partitions)
    # Read and hashed once: both fingerprints include every file of the dbt project.
    dbt_digest = dbt_project_digest()
    digest = fingerprint(contract.name, {lf.entity: lf.file_id for lf in landed}, encoding, date_format, dbt_digest)
    rules = fingerprint(contract.name, {}, encoding, date_format, dbt_digest)
    previous = previous_identical_run(conn, key, run.run_id, digest)
    if previous is not None:
        message = f"identical to run {previous}: every valid row unchanged, nothing to publish"
        with conn, conn.cursor() as cur:
            run.hold(cur)
            carry_over(cur, previous, run.run_id)
            record_rules(cur, run.run_id, rules)
            _complete(run, cur, digest, message)
        return RunOutcome(run.run_id, "completed", verification, landed, message=message)

    with run.step("compare") as comparing:
        carried = carry_unchanged(conn, contract, key, run.run_id, rules, recheck=run.runner.recheck_unchanged)
        comparing.rows = sum(c.rows for c in carried)
    if carried:
        run.runner.progress.status(f"{comparing.rows:,} row(s) identical to run {carried[0].from_run}'s accepted"
                                   " rows: carried over as valid and unchanged, not checked again")
    run.runner.progress.status(f"validating and mapping with dbt, publishing into {contract.production_schema}")
    set_build_context(conn, slot.number, run.run_id, key, date_format)
    message = f"published into {contract.production_schema}"

    def record_outcome(cur: psycopg2.extensions.cursor) -> None:
        publishing.rows = sum(d.inserted + d.updated for d in publisher.done)
        run.hold(cur)
        save_audit(cur, slot.target_dir, run.run_id)
        _complete(run, cur, digest, message)
        faults.reach("publish")

    def model_built(model: str, relation: Relation) -> None:
        faults.reach("dbt")
        publisher.model_built(model, relation)

    rows = sum(lf.rows for lf in landed)
    thresholds = run.runner.partners.for_partner(key.partner_id).thresholds_for(key.shop_id)
    with contextlib.closing(run.warehouse.connect()) as publish_conn:
        publisher = Publisher(publish_conn, contract)
        publisher.start()
        with run.step("dbt build") as building:
            building.rows = rows
            outcome = dbt_build(run.warehouse, slot, on_model_built=model_built)
        if outcome.node_seconds:
            run.runner.progress.status(outcome.timing())
        transient = transient_dbt_failure(outcome)
        held = _crossed(run, thresholds, contract, key, slot) if outcome.success else []
        with run.step("publish") as publishing:
            try:
                publisher.finish(commit=outcome.success and not held, before_commit=record_outcome)
                faults.reach("committed")
            except PublishError as exc:
                if is_transient(exc):
                    raise TransientFailure(str(exc)) from exc
                return _failed(run, verification, landed, str(exc), slot)
            finally:
                if said := publisher.timing():
                    run.runner.progress.status(said)
    if transient is not None:
        raise TransientFailure(transient)
    if not outcome.success:
        return _failed(run, verification, landed, outcome.summary(), slot, outcome.failures)
    if held:
        return _hold(run, contract, key, verification, landed, slot, held, digest)
    return RunOutcome(run.run_id, "completed", verification, landed)


def _crossed(run: _Run, thresholds: Thresholds, contract: Contract, key: LoadKey, slot: Slot) -> list[Crossed]:
    """The thresholds the plan crosses, against production as it is before this load (run.conn sees no publish)."""
    if thresholds.max_reject_pct is None and thresholds.max_update_pct is None:
        return []
    with run.conn, run.conn.cursor() as cur:
        ledger = built_relation(cur, slot.target_dir, "ledger")
        return [] if ledger is None else crossed_thresholds(cur, thresholds, contract, key, ledger, run.run_id)


def _hold(run: _Run, contract: Contract, key: LoadKey, verification: Verification, landed: list[LandedFile],
          slot: Slot, held: list[Crossed], digest: str) -> RunOutcome:
    """Keep the plan that was checked, with the would-be ledger, and hold the run for review (nothing published)."""
    message = "held for review: " + "; ".join(str(c) for c in held)
    plans = {f"publish_{e.name}": dbt_relation(slot.target_dir, f"publish_{e.name}") for e in contract.entities}
    with run.conn, run.conn.cursor() as cur:
        run.hold(cur)
        keep_plan(cur, contract, key, run.run_id, plans)
        save_audit(cur, slot.target_dir, run.run_id)
        cur.execute("update loader_registry.runs set held_because = %s, fingerprint = %s where run_id = %s",
                    (Json([c.as_json() for c in held]), digest, run.run_id))
        errors, warnings = exception_counts(cur, run.run_id)
        run.set("needs_review", message, errors=errors, warnings=warnings, cur=cur)
    return RunOutcome(run.run_id, "needs_review", verification, landed, message=message)


def _complete(run: _Run, cur: psycopg2.extensions.cursor, digest: str, message: str) -> None:
    cur.execute("update loader_registry.runs set fingerprint = %s where run_id = %s", (digest, run.run_id))
    errors, warnings = exception_counts(cur, run.run_id)
    run.set("completed", message, errors=errors, warnings=warnings, cur=cur)


def _finding_counts(verification: Verification) -> tuple[int, int]:
    """(errors, warnings) among the file-level findings of a folder."""
    errors = sum(1 for p in verification.findings if p.severity == "error")
    return errors, len(verification.findings) - errors


def _failed(
    run: _Run,
    verification: Verification,
    landed: list[LandedFile],
    message: str,
    slot: Slot | None = None,
    dbt_failures: list[NodeProblem] | None = None,
) -> RunOutcome:
    """Record a failed run with what it found: its exception rows where dbt got that far, else its file findings.

    dbt's failed nodes are kept each with its message and, for a test, a sample of the rows it found.
    """
    with run.conn, run.conn.cursor() as cur:
        if slot is not None:
            save_audit(cur, slot.target_dir, run.run_id, with_ledger=False)
        if dbt_failures:
            _save_dbt_failures(cur, run.run_id, dbt_failures)
        errors, warnings = exception_counts(cur, run.run_id)
        if errors == warnings == 0:
            errors, warnings = _finding_counts(verification)
        run.set("failed", message[:4000], errors=errors, warnings=warnings, cur=cur)
    return RunOutcome(run.run_id, "failed", verification, landed, message=message)


def _save_dbt_failures(cur: psycopg2.extensions.cursor, run_id: int, failures: list[NodeProblem]) -> None:
    # One row per node name (the key): a name dbt reported twice must not cost the run its failed status.
    by_name: dict[str, NodeProblem] = {}
    for failure in failures:
        by_name.setdefault(failure.name, failure)
    cur.execute("delete from loader_registry.run_dbt_failures where run_id = %s", (run_id,))
    cur.executemany(
        "insert into loader_registry.run_dbt_failures (run_id, node, status, message, failing_rows, sample,"
        " sample_columns, sample_note) values (%s, %s, %s, %s, %s, %s, %s, %s)",
        [(run_id, f.name, f.status, f.message, f.failing_rows,
          Json(list(f.sample.rows)) if f.sample and f.sample.columns else None,
          list(f.sample.columns) if f.sample and f.sample.columns else None,
          f.sample.note if f.sample else None) for f in by_name.values()],
    )


def parts_of(folder: Path) -> tuple[str, str, str]:
    """The would-be load key of a refused path, for the registry only (stored as data)."""
    try:
        key = LoadKey.from_folder(folder)
    except LoadKeyError:
        parts = ["?", "?", "?", *os.fspath(folder).rstrip("/").split("/")]
        return parts[-3], parts[-2], parts[-1]
    return key.partner_id, key.shop_id, key.load_id


def describe_problems(problems: list[Problem]) -> list[str]:
    return [f"  [{p.rule}] {p}" for p in problems]
