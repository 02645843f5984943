"""The run registry: runs, their append-only status history, and their problems."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

import psycopg2.extensions
from psycopg2 import sql
from pydantic import BaseModel, PlainSerializer

from loader.database import Warehouse, one_row
from loader.dbt.relations import built_relation
from loader.intake.load_key import LoadKey
from loader.intake.manifest import Problem

REGISTRY_SQL = Path(__file__).parent / "registry.sql"

# Times in JSON are UTC ("Z"), whatever time zone the server's sessions use.
UtcTime = Annotated[
    dt.datetime,
    PlainSerializer(lambda at: at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"), when_used="json"),
]

RunStatus = Literal["queued", "running", "completed", "failed", "needs_review", "rejected"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "rejected"})


class RunRecord(BaseModel):
    run_id: int
    load: str
    contract: str
    status: RunStatus
    triggered_by: str
    attempts: int
    queued_at: UtcTime
    started_at: UtcTime | None
    completed_at: UtcTime | None
    error_count: int
    warning_count: int
    message: str | None


_RUN_COLUMNS = """
    run_id, partner_id || '/' || shop_id || '/' || load_id, contract, status, triggered_by, attempts,
    queued_at, started_at, completed_at, error_count, warning_count, message
"""


def storable(text: str | None) -> str | None:
    """Text PostgreSQL can store, whatever bytes a partner put in it.

    Problem messages quote headers, values and paths; PostgreSQL's text holds
    no NUL, and a path or header read with surrogateescape holds lone
    surrogates that do not encode. Both are shown escaped (\\x00, \\xe9).
    """
    if text is None:
        return None
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _record(row: Sequence[object]) -> RunRecord:
    names = list(RunRecord.model_fields)
    return RunRecord.model_validate(dict(zip(names, row, strict=True)))


def start_run(
    conn: psycopg2.extensions.connection,
    parts: tuple[str, str, str],
    contract: str,
    triggered_by: str,
    source_path: str | None,
    *,
    start: bool = True,
) -> int:
    """Register a run, `queued`, and (with `start`, for a run in the foreground) take it up at once.

    `parts` may be unchecked text from a refused path: it is only ever stored
    as data, cut to a sane length.
    """
    partner, shop, load = (storable(p[:200]) for p in parts)
    with conn, conn.cursor() as cur:
        cur.execute(
            "insert into loader_registry.runs (partner_id, shop_id, load_id, contract, status, triggered_by,"
            " source_path) values (%s, %s, %s, %s, 'queued', %s, %s) returning run_id",
            (partner, shop, load, contract, storable(triggered_by), storable(source_path)),
        )
        run_id = int(one_row(cur)[0])
        cur.execute(
            "insert into loader_registry.run_status_history (run_id, status, detail) values (%s, 'queued', %s)",
            (run_id, storable(f"queued by {triggered_by}")),
        )
    if start:
        set_status(conn, run_id, "running", f"started by {triggered_by}")
    return run_id


def set_status(
    conn: psycopg2.extensions.connection,
    run_id: int,
    status: RunStatus,
    detail: str | None = None,
    *,
    error_count: int | None = None,
    warning_count: int | None = None,
) -> None:
    detail = storable(detail)
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            update loader_registry.runs set
                status = %(status)s,
                started_at = case when %(status)s = 'running' then clock_timestamp() else started_at end,
                attempts = attempts + (%(status)s = 'running')::int,
                completed_at = case when %(final)s then clock_timestamp() end,
                message = coalesce(%(detail)s, message),
                error_count = coalesce(%(errors)s, error_count),
                warning_count = coalesce(%(warnings)s, warning_count)
            where run_id = %(run_id)s
            """,
            {"status": status, "final": status in FINAL_STATUSES, "detail": detail, "errors": error_count,
             "warnings": warning_count, "run_id": run_id},
        )
        cur.execute(
            "insert into loader_registry.run_status_history (run_id, status, detail) values (%s, %s, %s)",
            (run_id, status, detail),
        )


def set_fingerprint(conn: psycopg2.extensions.connection, run_id: int, digest: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("update loader_registry.runs set fingerprint = %s where run_id = %s", (digest, run_id))


def set_dbt_context(
    conn: psycopg2.extensions.connection, run_id: int, key: LoadKey, date_format: str | None
) -> None:
    """Name the load the next dbt build validates (call it under the transform lock)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "insert into loader_registry.dbt_context (run_id, partner_id, shop_id, load_id, date_format)"
            " values (%s, %s, %s, %s, %s) on conflict (singleton) do update set run_id = excluded.run_id,"
            " partner_id = excluded.partner_id, shop_id = excluded.shop_id, load_id = excluded.load_id,"
            " date_format = excluded.date_format, set_at = clock_timestamp()",
            (run_id, key.partner_id, key.shop_id, key.load_id, date_format),
        )


def record_problems(conn: psycopg2.extensions.connection, run_id: int, problems: Sequence[Problem]) -> None:
    if not problems:
        return
    with conn, conn.cursor() as cur:
        cur.executemany(
            "insert into loader_registry.run_problems (run_id, file_name, entity, field, rule, severity, message)"
            " values (%s, %s, %s, %s, %s, %s, %s)",
            [(run_id, storable(p.file), p.entity, storable(p.field), p.rule, p.severity, storable(p.message))
             for p in problems],
        )


def recent_runs(
    conn: psycopg2.extensions.connection, limit: int = 20, status: RunStatus | None = None
) -> list[RunRecord]:
    """The newest runs first, of one status if given."""
    with conn, conn.cursor() as cur:
        cur.execute(
            f"select {_RUN_COLUMNS} from loader_registry.runs where %(status)s::text is null or status = %(status)s"
            " order by run_id desc limit %(limit)s",
            {"status": status, "limit": limit},
        )
        return [_record(r) for r in cur.fetchall()]


class HistoryEntry(BaseModel):
    status: RunStatus
    at: UtcTime
    message: str | None


def run_history(conn: psycopg2.extensions.connection, run_id: int) -> list[HistoryEntry]:
    """Every status change of a run, oldest first."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "select status, changed_at, detail from loader_registry.run_status_history where run_id = %s"
            " order by history_id",
            (run_id,),
        )
        return [HistoryEntry(status=s, at=at, message=m) for s, at, m in cur.fetchall()]


def kept_source(conn: psycopg2.extensions.connection, key: LoadKey) -> str | None:
    """The folder a load's latest run read, where a rerun finds its files; None for an unknown load."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "select source_path from loader_registry.runs where partner_id = %s and shop_id = %s and load_id = %s"
            " and source_path is not null order by run_id desc limit 1",
            (key.partner_id, key.shop_id, key.load_id),
        )
        row = cur.fetchone()
    return row[0] if row else None


def record_run_files(conn: psycopg2.extensions.connection, run_id: int,
                     files: Sequence[tuple[str, int, int, bool]]) -> None:
    """Which landed file the run used for each entity: (entity, file_id, manifest_rows, newly_landed)."""
    with conn, conn.cursor() as cur:
        cur.executemany(
            "insert into loader_registry.run_files (run_id, entity, file_id, manifest_rows, newly_landed)"
            " values (%s, %s, %s, %s, %s)",
            [(run_id, *f) for f in files],
        )


def latest_run(conn: psycopg2.extensions.connection, key: LoadKey) -> RunRecord | None:
    with conn, conn.cursor() as cur:
        cur.execute(
            f"select {_RUN_COLUMNS} from loader_registry.runs"
            " where partner_id = %s and shop_id = %s and load_id = %s order by run_id desc limit 1",
            (key.partner_id, key.shop_id, key.load_id),
        )
        row = cur.fetchone()
    return _record(row) if row else None


def exception_counts(conn: psycopg2.extensions.connection, target_dir: Path, run_id: int) -> tuple[int, int]:
    """(errors, warnings) in the run's exception report."""
    with conn, conn.cursor() as cur:
        relation = built_relation(cur, target_dir, "exceptions")
        if relation is None:
            return 0, 0
        cur.execute(
            sql.SQL("select count(*) filter (where severity = 'error'), count(*) filter (where severity = 'warning')"
                    " from {} where run_id = %s").format(relation.ident()),
            (run_id,),
        )
        errors, warnings = one_row(cur)
    return int(errors), int(warnings)


@contextlib.contextmanager
def transform_lock(conn: psycopg2.extensions.connection) -> Iterator[None]:
    """One dbt build and publish at a time across all loads."""
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(hashtextextended('loader transform', 0))")
    conn.commit()
    try:
        yield
    finally:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_unlock(hashtextextended('loader transform', 0))")
        conn.commit()


@contextlib.contextmanager
def shop_lock(conn: psycopg2.extensions.connection, key: LoadKey, wait: bool = True) -> Iterator[bool]:
    """Hold the shop's advisory lock for the duration: two loads of one shop never run at once."""
    lock_key = f"loader shop {key.partner_id}/{key.shop_id}"
    with conn.cursor() as cur:
        if wait:
            cur.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (lock_key,))
            got = True
        else:
            cur.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key,))
            got = bool(one_row(cur)[0])
    conn.commit()
    try:
        yield got
    finally:
        if got:
            with conn.cursor() as cur:
                cur.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key,))
            conn.commit()


def _applied_digest(cur: psycopg2.extensions.cursor) -> str | None:
    cur.execute("select to_regclass('loader_registry.schema_version') is not null")
    if not one_row(cur)[0]:
        return None
    cur.execute("select digest from loader_registry.schema_version")
    row = cur.fetchone()
    return str(row[0]) if row else None


def ensure_registry(warehouse: Warehouse) -> None:
    """Create or update the run registry schema, once per version of registry.sql.

    The common case reads one row and takes no lock a reader could block;
    the DDL runs only when the file changed, under an advisory lock so that
    two processes do not apply it at once.
    """
    ddl = REGISTRY_SQL.read_text(encoding="utf-8")
    digest = hashlib.sha256(ddl.encode()).hexdigest()
    conn = warehouse.connect()
    with contextlib.closing(conn):
        with conn, conn.cursor() as cur:
            if _applied_digest(cur) == digest:
                return
        with conn, conn.cursor() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('loader_registry ddl'))")
            if _applied_digest(cur) == digest:
                return
            cur.execute(ddl)
            cur.execute(
                "insert into loader_registry.schema_version (digest) values (%s) on conflict (singleton)"
                " do update set digest = excluded.digest, applied_at = clock_timestamp()",
                (digest,),
            )
