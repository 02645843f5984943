"""One run of one load folder: verify, land, and record what happened."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.extensions

from loader.contracts import Contract
from loader.database import Warehouse
from loader.dbt.runner import dbt_build
from loader.formats.header import CsvFileError
from loader.intake.load_key import LoadKey
from loader.intake.manifest import DEFAULT_CONTRACT, Problem, Verification, record_count_problems, verify_folder
from loader.intake.partners import PartnersFile
from loader.landing.raw_copy import LandingError
from loader.landing.spool import LandedFile, load, preload_unless_landed, prepare
from loader.publish.identical_rerun import carry_over, fingerprint, previous_identical_run
from loader.publish.transaction import Publisher, PublishError, ensure_production
from loader.runs.progress import Progress
from loader.runs.registry import (
    RunStatus,
    ensure_registry,
    exception_counts,
    record_problems,
    record_run_files,
    set_dbt_context,
    set_fingerprint,
    set_status,
    shop_lock,
    start_run,
    transform_lock,
)

log = logging.getLogger(__name__)

EXIT_CODES: dict[str, int] = {"completed": 0, "failed": 1, "rejected": 2, "needs_review": 3}


@dataclass
class RunOutcome:
    run_id: int
    status: RunStatus
    verification: Verification
    landed: list[LandedFile] = field(default_factory=list)
    message: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


def _parts_of(folder: Path) -> tuple[str, str, str]:
    """The would-be load key of a refused path, for the registry only (stored as data)."""
    parts = ["?", "?", "?", *os.fspath(folder).rstrip("/").split("/")]
    return parts[-3], parts[-2], parts[-1]


def _refuse(
    conn: psycopg2.extensions.connection, run_id: int, verification: Verification, problems: list[Problem]
) -> RunOutcome:
    verification.refusals += problems
    record_problems(conn, run_id, verification.refusals + verification.findings)
    reason = f"refused: {len(verification.refusals)} problem(s) with the folder"
    set_status(conn, run_id, "rejected", reason, error_count=len(verification.refusals))
    return RunOutcome(run_id, "rejected", verification, message=reason)


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
) -> RunOutcome:
    """Verify, land, then (unless `transform` is off, as for the landing benchmark) validate and publish."""
    ensure_registry(warehouse)
    with contextlib.closing(warehouse.connect()) as conn:
        progress.status(f"verifying {folder}")
        preload_unless_landed(conn, folder)
        # Record counts are checked below, from the landing parse, before anything is written.
        verification = verify_folder(folder, partners.for_partner, count_records=False,
                                     on_file=lambda name: progress.status(f"checking {name}"))
        contract_name = verification.contract.name if verification.contract else DEFAULT_CONTRACT
        parts = (
            (verification.key.partner_id, verification.key.shop_id, verification.key.load_id)
            if verification.key else _parts_of(folder)
        )
        run_id = start_run(conn, parts, contract_name, triggered_by, os.fspath(folder.absolute()))
        try:
            return _run_started(warehouse, conn, partners, folder, run_id, verification, progress=progress,
                                home=home, land_workers=land_workers, transform=transform)
        except Exception as exc:
            # A bug or an unforeseen failure: the run must not stay `running` after this process ends.
            log.debug("run %s failed unexpectedly", run_id, exc_info=True)
            message = f"internal error: {type(exc).__name__}: {exc}"
            _fail_quietly(conn, run_id, message)
            return RunOutcome(run_id, "failed", verification, message=message)
        except BaseException:
            _fail_quietly(conn, run_id, "interrupted: the loader was stopped during the run")
            raise


def _fail_quietly(conn: psycopg2.extensions.connection, run_id: int, message: str) -> None:
    """Record a run as failed on the way out of an error; the connection may be broken, so try a fresh state."""
    try:
        conn.rollback()
        set_status(conn, run_id, "failed", message[:4000])
    except psycopg2.Error:
        log.warning("could not record run %s as failed: the database connection is gone", run_id)


def _run_started(
    warehouse: Warehouse,
    conn: psycopg2.extensions.connection,
    partners: PartnersFile,
    folder: Path,
    run_id: int,
    verification: Verification,
    *,
    progress: Progress,
    home: Path,
    land_workers: int,
    transform: bool,
) -> RunOutcome:
    if not verification.ok:
        # A refused folder is not landed, so count its records here to report every problem at once.
        verification = verify_folder(folder, partners.for_partner, count_records=True)
        return _refuse(conn, run_id, verification, [])

    assert verification.key is not None and verification.contract is not None
    key, contract = verification.key, verification.contract
    settings = partners.for_partner(key.partner_id)
    with contextlib.closing(warehouse.connect()) as lock_conn, shop_lock(lock_conn, key):
        try:
            prepared = prepare(conn, key, verification.files, settings.encoding, land_workers, progress)
        except CsvFileError as exc:
            return _refuse(conn, run_id, verification,
                           [Problem("csv", f"cannot be read as CSV: {exc}", file=exc.file_name)])
        counts = [p for pf in prepared.files for p in record_count_problems(pf.file, pf.records)]
        if counts:
            prepared.discard()
            return _refuse(conn, run_id, verification, counts)

        record_problems(conn, run_id, verification.findings)
        try:
            landed = load(warehouse, conn, contract, key, prepared, land_workers, progress)
        except LandingError as exc:
            log.debug("landing failed", exc_info=True)
            return _failed(conn, run_id, verification, [], str(exc))
        record_run_files(conn, run_id, [(lf.entity, lf.file_id, vf.manifest_rows, lf.newly_landed)
                                        for lf, vf in zip(landed, verification.files, strict=True)])
        if not transform:
            errors, warnings = _finding_counts(verification)
            errors += sum(lf.problem_rows for lf in landed)
            set_status(conn, run_id, "completed", f"landed in {contract.raw_dataset} (not transformed)",
                       error_count=errors, warning_count=warnings)
            return RunOutcome(run_id, "completed", verification, landed)
        return _transform_and_publish(warehouse, conn, lock_conn, contract, key, run_id, verification, landed,
                                      settings.encoding, settings.date_format, home, progress)


def _transform_and_publish(
    warehouse: Warehouse,
    conn: psycopg2.extensions.connection,
    lock_conn: psycopg2.extensions.connection,
    contract: Contract,
    key: LoadKey,
    run_id: int,
    verification: Verification,
    landed: list[LandedFile],
    encoding: str,
    date_format: str | None,
    home: Path,
    progress: Progress,
) -> RunOutcome:
    """dbt build (validate, map, plan, audit), publishing each plan in one transaction that commits after it."""
    ensure_production(conn, contract)
    target = home / "dbt" / "target"
    digest = fingerprint(contract.name, {lf.entity: lf.file_id for lf in landed}, encoding, date_format)
    # dbt's staging, intermediate and plan relations are shared by all loads, so one build at a time.
    with transform_lock(lock_conn):
        previous = previous_identical_run(conn, key, run_id, digest)
        if previous is not None:
            try:
                carry_over(conn, target, previous, run_id, key)
            except PublishError:
                previous = None
        if previous is None:
            progress.status(f"validating and mapping with dbt, publishing into {contract.production_schema}")
            set_dbt_context(conn, run_id, key, date_format)
            with contextlib.closing(warehouse.connect()) as publish_conn:
                publisher = Publisher(publish_conn, contract, key)
                publisher.start()
                outcome = dbt_build(warehouse, home, on_model_built=publisher.model_built)
                try:
                    publisher.finish(commit=outcome.success)
                except PublishError as exc:
                    return _failed(conn, run_id, verification, landed, str(exc), target)
            if not outcome.success:
                return _failed(conn, run_id, verification, landed, outcome.summary(), target)
        set_fingerprint(conn, run_id, digest)
    errors, warnings = exception_counts(conn, target, run_id)
    message = (f"identical to run {previous}: every valid row unchanged, nothing to publish" if previous
               else f"published into {contract.production_schema}")
    set_status(conn, run_id, "completed", message, error_count=errors, warning_count=warnings)
    return RunOutcome(run_id, "completed", verification, landed, message=message if previous else None)


def _finding_counts(verification: Verification) -> tuple[int, int]:
    """(errors, warnings) among the file-level findings of a folder."""
    errors = sum(1 for p in verification.findings if p.severity == "error")
    return errors, len(verification.findings) - errors


def _failed(
    conn: psycopg2.extensions.connection,
    run_id: int,
    verification: Verification,
    landed: list[LandedFile],
    message: str,
    target: Path | None = None,
) -> RunOutcome:
    """Record a failed run with what it found: its exception rows where dbt got that far, else its file findings."""
    errors, warnings = exception_counts(conn, target, run_id) if target is not None else (0, 0)
    if errors == warnings == 0:
        errors, warnings = _finding_counts(verification)
    set_status(conn, run_id, "failed", message[:4000], error_count=errors, warning_count=warnings)
    return RunOutcome(run_id, "failed", verification, landed, message=message)


def describe_problems(problems: list[Problem]) -> list[str]:
    return [f"  [{p.rule}] {p}" for p in problems]
