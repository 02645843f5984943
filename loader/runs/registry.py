"""The run registry: runs, their append-only status history, and their problems."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg2.extensions
from psycopg2 import sql
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from loader.database import Warehouse, declared_version, one_row, refuse_newer
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
    # The thresholds a held run crossed: {"threshold", "entity", "value", "limit"} each.
    held_because: list[dict[str, Any]] | None = None
    # When retention removed its raw data and kept files (loader purge).
    purged_at: UtcTime | None = None


_RUN_COLUMNS = """
    run_id, partner_id || '/' || shop_id || '/' || load_id, contract, status, triggered_by, attempts,
    queued_at, started_at, completed_at, error_count, warning_count, message, held_because, purged_at
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
    submitted_from: str | None = None,
) -> int:
    """Register a run, `queued`, with the folder of its kept files.

    `parts` may be unchecked text from a refused path: it is only ever stored
    as data, cut to a sane length.
    """
    partner, shop, load = (storable(p[:200]) for p in parts)
    with conn, conn.cursor() as cur:
        cur.execute(
            "insert into loader_registry.runs (partner_id, shop_id, load_id, contract, status, triggered_by,"
            " source_path, submitted_from) values (%s, %s, %s, %s, 'queued', %s, %s, %s) returning run_id",
            (partner, shop, load, contract, storable(triggered_by), storable(source_path), storable(submitted_from)),
        )
        run_id = int(one_row(cur)[0])
        cur.execute(
            "insert into loader_registry.run_status_history (run_id, status, detail) values (%s, 'queued', %s)",
            (run_id, storable(f"queued by {triggered_by}")),
        )
        # Idle workers wait on this channel, so a submitted run starts at once rather than at the next poll.
        cur.execute("select pg_notify('loader_queue', %s)", (str(run_id),))
    return run_id


def move(
    cur: psycopg2.extensions.cursor,
    run_id: int,
    status: RunStatus,
    detail: str | None = None,
    *,
    error_count: int | None = None,
    warning_count: int | None = None,
    owner: str | None = None,
    not_before: float | None = None,
    by: str | None = None,
) -> bool:
    """Move a run to `status` inside the caller's transaction; the database refuses a move not allowed.

    With `owner`, only while that worker holds the run's lease: a worker that
    was given up for dead (and whose run another worker took) moves nothing.
    Returns whether the run moved. `not_before` (seconds from now) delays a
    queued run's next start. `by`: the person who moved it (approve, reject),
    kept in its history.
    """
    detail = storable(detail)
    cur.execute(
        """
        update loader_registry.runs as r set
            status = %(status)s,
            started_at = case %(status)s when 'running' then clock_timestamp() when 'queued' then null
                         else r.started_at end,
            -- A rerun joins the back of its shop's queue; a run taken back keeps its place.
            queued_at = case when %(status)s = 'queued' and r.status <> 'running' then clock_timestamp()
                        else r.queued_at end,
            attempts = case when %(status)s = 'queued' and r.status <> 'running' then 0
                       else r.attempts + (%(status)s = 'running')::int end,
            not_before = case when %(status)s = 'queued' and %(delay)s::float8 is not null
                         then clock_timestamp() + make_interval(secs => %(delay)s::float8) end,
            completed_at = case when %(final)s then clock_timestamp() end,
            message = coalesce(%(detail)s, r.message),
            error_count = coalesce(%(errors)s, r.error_count),
            warning_count = coalesce(%(warnings)s, r.warning_count)
        where r.run_id = %(run_id)s and (%(owner)s::text is null or (r.status = 'running' and exists (
            select from loader_registry.run_leases as l where l.run_id = r.run_id and l.worker = %(owner)s
        )))
        """,
        {"status": status, "final": status in FINAL_STATUSES, "detail": detail, "errors": error_count,
         "warnings": warning_count, "run_id": run_id, "owner": owner, "delay": not_before},
    )
    if cur.rowcount == 0:
        return False
    cur.execute(
        "insert into loader_registry.run_status_history (run_id, status, detail, changed_by) values (%s, %s, %s, %s)",
        (run_id, status, detail, by),
    )
    if status != "running":
        cur.execute("delete from loader_registry.run_leases where run_id = %s", (run_id,))
    if status == "queued" or by is not None:
        # Queued, or a held run decided: its shop's next run may start.
        cur.execute("select pg_notify('loader_queue', %s)", (str(run_id),))
    return True


def set_status(
    conn: psycopg2.extensions.connection,
    run_id: int,
    status: RunStatus,
    detail: str | None = None,
    *,
    error_count: int | None = None,
    warning_count: int | None = None,
    owner: str | None = None,
    not_before: float | None = None,
) -> bool:
    """`move` in a transaction of its own."""
    with conn, conn.cursor() as cur:
        return move(cur, run_id, status, detail, error_count=error_count, warning_count=warning_count, owner=owner,
                    not_before=not_before)


def set_fingerprint(conn: psycopg2.extensions.connection, run_id: int, digest: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("update loader_registry.runs set fingerprint = %s where run_id = %s", (digest, run_id))


def shop_key(cur: psycopg2.extensions.cursor, key: LoadKey) -> int:
    """The shop's number (loader_registry.shops), handed out on first use."""
    cur.execute("insert into loader_registry.shops (partner_id, shop_id) values (%s, %s)"
                " on conflict (partner_id, shop_id) do nothing", (key.partner_id, key.shop_id))
    found = known_shop_key(cur, key)
    if found is None:
        raise RuntimeError(f"shop {key.partner_id}/{key.shop_id} has no row in loader_registry.shops")
    return found


def known_shop_key(cur: psycopg2.extensions.cursor, key: LoadKey) -> int | None:
    """The shop's number, or None for a shop that has never been built (it has no production rows)."""
    cur.execute("select shop_key from loader_registry.shops where partner_id = %s and shop_id = %s",
                (key.partner_id, key.shop_id))
    row = cur.fetchone()
    return None if row is None else int(row[0])


def set_build_context(
    conn: psycopg2.extensions.connection, slot: int, run_id: int, key: LoadKey, date_format: str | None
) -> None:
    """Name the load that the next dbt build of worker slot `slot` validates, and its shop's key."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "insert into loader_registry.build_context (slot, run_id, partner_id, shop_id, shop_key, load_id,"
            " date_format) values (%s, %s, %s, %s, %s, %s, %s) on conflict (slot) do update set"
            " run_id = excluded.run_id, partner_id = excluded.partner_id, shop_id = excluded.shop_id,"
            " shop_key = excluded.shop_key, load_id = excluded.load_id, date_format = excluded.date_format,"
            " set_at = clock_timestamp()",
            (slot, run_id, key.partner_id, key.shop_id, shop_key(cur, key), key.load_id, date_format),
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


class RunFilter(BaseModel):
    """Which runs a page lists; every condition given must hold. Days are UTC days of queued_at, both inclusive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partner: str | None = None
    shop: str | None = None
    statuses: list[RunStatus] = Field(default_factory=list)
    since: dt.date | None = None
    until: dt.date | None = None
    # A case-insensitive part of the load key "partner/shop/load".
    text: str | None = None

    @model_validator(mode="after")
    def _days_in_order(self) -> RunFilter:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"since ({self.since}) is after until ({self.until})")
        return self


class RunPage(BaseModel):
    runs: list[RunRecord]
    # Every run the filter matches, not only this page's.
    total: int


def check_page(limit: int, offset: int) -> None:
    """Refuse a page that cannot be asked for, naming the setting."""
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")


def _utc_day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def find_runs(conn: psycopg2.extensions.connection, f: RunFilter, limit: int, offset: int, *,
              oldest_first: bool = False) -> RunPage:
    """One page of the runs that match `f`, newest first (as `recent_runs`) unless `oldest_first`, and how many
    match in all."""
    check_page(limit, offset)
    params: dict[str, Any] = {
        "partner": f.partner, "shop": f.shop, "statuses": list(f.statuses) or None,
        "since": None if f.since is None else _utc_day_start(f.since),
        "until": None if f.until is None else _utc_day_start(f.until + dt.timedelta(days=1)),
        "text": f.text.lower() if f.text else None, "limit": limit, "offset": offset,
    }
    # strpos, not LIKE: the text is matched as typed, % and _ included.
    where = """
        (%(partner)s::text is null or partner_id = %(partner)s)
        and (%(shop)s::text is null or shop_id = %(shop)s)
        and (%(statuses)s::text[] is null or status = any(%(statuses)s::text[]))
        and (%(since)s::timestamptz is null or queued_at >= %(since)s)
        and (%(until)s::timestamptz is null or queued_at < %(until)s)
        and (%(text)s::text is null or strpos(lower(partner_id || '/' || shop_id || '/' || load_id), %(text)s) > 0)
    """
    with conn, conn.cursor() as cur:
        # The page and its total from one snapshot: a run registered in between changes neither alone.
        cur.execute("set transaction isolation level repeatable read, read only")
        cur.execute(f"select count(*) from loader_registry.runs where {where}", params)
        total = int(one_row(cur)[0])
        order = "run_id" if oldest_first else "run_id desc"
        cur.execute(f"select {_RUN_COLUMNS} from loader_registry.runs where {where}"
                    f" order by {order} limit %(limit)s offset %(offset)s", params)
        return RunPage(runs=[_record(r) for r in cur.fetchall()], total=total)


def partners_and_shops(conn: psycopg2.extensions.connection) -> list[tuple[str, str]]:
    """Every (partner, shop) that has a run, sorted: the choices of the runs filter."""
    with conn, conn.cursor() as cur:
        cur.execute("select distinct partner_id, shop_id from loader_registry.runs")
        # Sorted here: the database's collation may not sort by code point.
        return sorted((str(p), str(s)) for p, s in cur.fetchall())


def runs_in_flight(conn: psycopg2.extensions.connection) -> int:
    """How many runs are queued or running now."""
    with conn, conn.cursor() as cur:
        cur.execute("select count(*) from loader_registry.runs where status in ('queued', 'running')")
        return int(one_row(cur)[0])


class HistoryEntry(BaseModel):
    status: RunStatus
    at: UtcTime
    message: str | None
    by: str | None = None


def run_history(conn: psycopg2.extensions.connection, run_id: int) -> list[HistoryEntry]:
    """Every status change of a run, oldest first."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "select status, changed_at, detail, changed_by from loader_registry.run_status_history"
            " where run_id = %s order by history_id",
            (run_id,),
        )
        return [HistoryEntry(status=s, at=at, message=m, by=by) for s, at, m, by in cur.fetchall()]


def run_record(conn: psycopg2.extensions.connection, run_id: int) -> RunRecord | None:
    with conn, conn.cursor() as cur:
        cur.execute(f"select {_RUN_COLUMNS} from loader_registry.runs where run_id = %s", (run_id,))
        row = cur.fetchone()
    return _record(row) if row else None


def kept_files(conn: psycopg2.extensions.connection, run_id: int) -> str | None:
    """The folder of a run's kept files."""
    with conn, conn.cursor() as cur:
        cur.execute("select source_path from loader_registry.runs where run_id = %s", (run_id,))
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


LEDGER_COLUMNS = ("manifest_rows", "landed_rows", "valid_rows", "rejected_rows", "warning_rows",
                  "inserted", "updated", "unchanged")
EXCEPTION_COLUMNS = ("entity", "row_number", "line_number", "field", "rule", "severity", "value", "message")


def save_audit(cur: psycopg2.extensions.cursor, target_dir: Path, run_id: int, *, with_ledger: bool = True) -> None:
    """Copy the run's exceptions, and its ledger, from its dbt build into the registry (in the caller's transaction).

    A failed run keeps its exceptions but no ledger: nothing it counted was
    published. A model dbt did not get to leaves its part out; a run that
    runs again replaces what it saved before.
    """
    parts: list[tuple[str, str, tuple[str, ...]]] = [("exceptions", "run_exceptions", EXCEPTION_COLUMNS)]
    if with_ledger:
        parts.append(("ledger", "run_ledger", ("entity", "entity_order", *LEDGER_COLUMNS)))
    for model, table, columns in parts:
        registry_table = sql.Identifier("loader_registry", table)
        cur.execute(sql.SQL("delete from {} where run_id = %s").format(registry_table), (run_id,))
        relation = built_relation(cur, target_dir, model)
        if relation is None:
            continue
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in ("run_id", *columns))
        cur.execute(
            sql.SQL("insert into {table} ({cols}) select {cols} from {built} where run_id = %s").format(
                table=registry_table, cols=cols, built=relation.ident()),
            (run_id,),
        )


def save_steps(cur: psycopg2.extensions.cursor, run_id: int,
               steps: Sequence[tuple[str, float, float, int | None]]) -> None:
    """Replace the run's step timings: (step, started as a Unix time, seconds, rows) each."""
    cur.execute("delete from loader_registry.run_steps where run_id = %s", (run_id,))
    cur.executemany(
        "insert into loader_registry.run_steps (run_id, step, step_order, started_at, seconds, rows)"
        " values (%s, %s, %s, to_timestamp(%s), %s, %s)",
        [(run_id, name, order, started, seconds, rows) for order, (name, started, seconds, rows) in enumerate(steps)],
    )


class StepTiming(BaseModel):
    step: str
    seconds: float
    rows: int | None
    rows_per_second: float | None


def run_steps(conn: psycopg2.extensions.connection, run_id: int) -> list[StepTiming]:
    """How long each step of the run's last attempt took, in order."""
    with conn, conn.cursor() as cur:
        cur.execute("select step, seconds, rows from loader_registry.run_steps where run_id = %s order by step_order",
                    (run_id,))
        return [StepTiming(step=step, seconds=round(seconds, 3), rows=rows,
                           rows_per_second=round(rows / seconds, 1) if rows and seconds > 0 else None)
                for step, seconds, rows in cur.fetchall()]


def exception_counts(cur: psycopg2.extensions.cursor, run_id: int) -> tuple[int, int]:
    """(errors, warnings) in the run's saved exception report."""
    cur.execute(
        "select count(*) filter (where severity = 'error'), count(*) filter (where severity = 'warning')"
        " from loader_registry.run_exceptions where run_id = %s",
        (run_id,),
    )
    errors, warnings = one_row(cur)
    return int(errors), int(warnings)


@contextlib.contextmanager
def shop_lock(conn: psycopg2.extensions.connection, key: LoadKey) -> Iterator[None]:
    """Hold the shop's advisory lock for the duration: two loads of one shop never run at once.

    The queue already gives a shop's runs out one at a time; this also holds
    against a worker that was given up for dead but still runs.
    """
    lock_key = f"loader shop {key.partner_id}/{key.shop_id}"
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (lock_key,))
    conn.commit()
    try:
        yield
    finally:
        with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
            cur.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key,))
            conn.commit()


def _applied(cur: psycopg2.extensions.cursor) -> tuple[str | None, int]:
    """The digest and version of the registry DDL applied last: (None, 0) for none, version 1 before versions."""
    cur.execute("select to_regclass('loader_registry.schema_version') is not null")
    if not one_row(cur)[0]:
        return None, 0
    # As JSON, so that a registry from before the version column reads too.
    cur.execute("select to_jsonb(v) from loader_registry.schema_version as v")
    row = cur.fetchone()
    if row is None:
        return None, 0
    return str(row[0]["digest"]), int(row[0].get("version") or 1)


def ensure_registry(warehouse: Warehouse) -> None:
    """Create or update the run registry schema, once per version of registry.sql.

    The common case reads one row and takes no lock a reader could block;
    the DDL runs only when the file changed, under an advisory lock so that
    two processes do not apply it at once. A registry written by a newer
    loader (a higher schema version) is refused: SchemaVersionError.
    """
    ddl = REGISTRY_SQL.read_text(encoding="utf-8")
    digest = hashlib.sha256(ddl.encode()).hexdigest()
    version = declared_version(REGISTRY_SQL, ddl)
    conn = warehouse.connect()
    with contextlib.closing(conn):
        with conn, conn.cursor() as cur:
            if _applied(cur) == (digest, version):
                return
        with conn, conn.cursor() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('loader_registry ddl'))")
            applied_digest, applied_version = _applied(cur)
            if (applied_digest, applied_version) == (digest, version):
                return
            refuse_newer(f"the run registry (loader_registry) in {warehouse.display}", applied_version, version)
            cur.execute(ddl)
            cur.execute(
                "insert into loader_registry.schema_version (digest, version) values (%s, %s) on conflict (singleton)"
                " do update set digest = excluded.digest, version = excluded.version, applied_at = clock_timestamp()",
                (digest, version),
            )
