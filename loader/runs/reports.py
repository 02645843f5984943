"""The ledger and exception report of a load, as `loader report` and `loader exceptions` print them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg2.extensions
from psycopg2 import sql
from pydantic import BaseModel, ConfigDict

from loader.contracts import load_contract
from loader.database import one_row
from loader.intake.load_key import LoadKey
from loader.runs.registry import EXCEPTION_COLUMNS, LEDGER_COLUMNS, RunRecord, check_page, latest_run, run_record


def ledger(conn: psycopg2.extensions.connection, run: RunRecord) -> dict[str, dict[str, int]] | None:
    """Every entity of the contract (zeros for an empty file), or None when the run never got as far as a ledger."""
    contract = load_contract(run.contract)
    rows: dict[str, dict[str, int]] = {e.name: dict.fromkeys(LEDGER_COLUMNS, 0) for e in contract.entities}
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("select entity, {cols} from loader_registry.run_ledger where run_id = %s order by entity_order")
            .format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in LEDGER_COLUMNS)),
            (run.run_id,),
        )
        found = cur.fetchall()
    if not found:
        return None
    for entity, *values in found:
        if entity in rows:
            rows[entity] = {c: int(v or 0) for c, v in zip(LEDGER_COLUMNS, values, strict=True)}
    return rows


def no_ledger_reason(run: RunRecord) -> str:
    """Why a run has no ledger, for people: what happened to it instead."""
    what = {
        "rejected": "the folder was refused before anything was landed",
        "failed": "the run failed before its ledger was written",
        "queued": "the run has not started yet",
        "running": "the run is still running",
    }.get(run.status, f"the run is {run.status} without a ledger")
    return f"{what}: {run.message}" if run.message and run.status in ("rejected", "failed") else what


def report(conn: psycopg2.extensions.connection, key: LoadKey) -> dict[str, Any] | None:
    run = latest_run(conn, key)
    if run is None:
        return None
    entities = ledger(conn, run)
    body: dict[str, Any] = {
        "load": str(key),
        "contract": run.contract,
        "status": run.status,
        "started_at": _utc(run.started_at) if run.started_at else None,
        "completed_at": _utc(run.completed_at) if run.completed_at else None,
        "entities": entities or {},
    }
    if entities is None:
        body["no_ledger"] = no_ledger_reason(run)
    if run.held_because is not None:
        # The counters of a held (or, after review, rejected) run are what publishing would have done.
        body["held_because"] = run.held_because
    return body


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def exceptions(
    conn: psycopg2.extensions.connection, key: LoadKey, entity: str | None = None
) -> list[dict[str, Any]] | None:
    """The latest run's exception rows; for a refused load, its refusal reasons (row 0)."""
    run = latest_run(conn, key)
    if run is None:
        return None
    return list(_exception_dicts(conn, run, entity))


# The exception report's order, every column in it: rows tied on the first four (a row broken twice the same
# way) still come in one order, so that pages of it cover each row exactly once.
_EXCEPTION_ORDER = sql.SQL("order by entity, row_number, rule, field, severity, value, message")
# Refused, or failed before dbt wrote its exceptions: what the loader found in the files.
# A file's problems are about its header: row 0, line 1, as in dbt's exception report.
_PROBLEM_ROWS = sql.SQL(
    "select coalesce(entity, '') as entity, 0 as row_number, case when entity is null then 0 else 1 end"
    " as line_number, coalesce(field, file_name, '') as field, rule, severity, file_name as value, message,"
    " problem_id from loader_registry.run_problems")
_REPORT_FILTER = sql.SQL("(%(rule)s::text is null or rule = %(rule)s)"
                         " and (%(severity)s::text is null or severity = %(severity)s)")
_EXCEPTION_ROWS_PER_FETCH = 10_000


def _report_source(
    cur: psycopg2.extensions.cursor, run_id: int, entity: str | None
) -> tuple[sql.Composable, sql.Composable]:
    """The rows of the run's exception report (of `entity`) and their order, as `exceptions` chooses them: its
    dbt exception rows, or else the problems the loader found. LookupError for a run that does not exist."""
    cur.execute("select status from loader_registry.runs where run_id = %s", (run_id,))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"unknown run {run_id}")
    of_entity = sql.SQL("run_id = %(run_id)s and (%(entity)s::text is null or entity = %(entity)s)")
    if row[0] != "rejected":
        cur.execute(sql.SQL("select exists (select from loader_registry.run_exceptions where {})").format(of_entity),
                    {"run_id": run_id, "entity": entity})
        if one_row(cur)[0]:
            return (sql.SQL("(select * from loader_registry.run_exceptions where {}) as e").format(of_entity),
                    _EXCEPTION_ORDER)
    # The entity filter is on the stored entity: a folder-level problem (no entity) only shows unfiltered.
    return sql.SQL("({} where {}) as p").format(_PROBLEM_ROWS, of_entity), sql.SQL("order by problem_id")


def _exception_dicts(
    conn: psycopg2.extensions.connection, run: RunRecord, entity: str | None
) -> Iterator[dict[str, Any]]:
    """The run's exception report row by row, fetched in batches: a run may have millions of rows."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in EXCEPTION_COLUMNS)
    params = {"run_id": run.run_id, "entity": entity}
    with conn:
        with conn.cursor() as cur:
            source, order = _report_source(cur, run.run_id, entity)
        # A server-side cursor: the rows reach Python a batch at a time, never all at once.
        with conn.cursor(name=f"exceptions_{uuid.uuid4().hex}") as named:
            named.itersize = _EXCEPTION_ROWS_PER_FETCH
            named.execute(sql.SQL("select {} from {} {}").format(cols, source, order), params)
            for row in named:
                yield dict(zip(EXCEPTION_COLUMNS, row, strict=True))


class ExceptionGroup(BaseModel):
    entity: str
    rule: str
    severity: str
    rows: int


def exception_groups(conn: psycopg2.extensions.connection, run_id: int) -> list[ExceptionGroup]:
    """How many rows of the run's exception report each (entity, rule, severity) has; LookupError: no such run."""
    with conn, conn.cursor() as cur:
        cur.execute("set transaction isolation level repeatable read, read only")
        source, _ = _report_source(cur, run_id, None)
        cur.execute(sql.SQL("select entity, rule, severity, count(*) from {} group by entity, rule, severity"
                            " order by entity, rule, severity").format(source), {"run_id": run_id, "entity": None})
        return [ExceptionGroup(entity=e, rule=r, severity=s, rows=n) for e, r, s, n in cur.fetchall()]


def exceptions_page(
    conn: psycopg2.extensions.connection,
    run_id: int,
    *,
    entity: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the run's exception report (rows as `exceptions` gives them, in its order) and how many rows
    match in all. LookupError for a run that does not exist."""
    check_page(limit, offset)
    params = {"run_id": run_id, "entity": entity, "rule": rule, "severity": severity, "limit": limit,
              "offset": offset}
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in EXCEPTION_COLUMNS)
    with conn, conn.cursor() as cur:
        # The page and its total from one snapshot, even while the run is saving its report.
        cur.execute("set transaction isolation level repeatable read, read only")
        source, order = _report_source(cur, run_id, entity)
        cur.execute(sql.SQL("select count(*) from {} where {}").format(source, _REPORT_FILTER), params)
        total = int(one_row(cur)[0])
        cur.execute(sql.SQL("select {} from {} where {} {} limit %(limit)s offset %(offset)s").format(
            cols, source, _REPORT_FILTER, order), params)
        rows = [dict(zip(EXCEPTION_COLUMNS, r, strict=True)) for r in cur.fetchall()]
    return rows, total


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


_CSV_ROWS_PER_CHUNK = 10_000


def csv_chunks(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    """CSV for people (partners open it in spreadsheets), a few thousand rows per chunk: header first, CRLF
    line ends, formulas neutralised, keys of a row that are not in `columns` left out."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n", extrasaction="ignore")
    writer.writeheader()
    for done, row in enumerate(rows, start=1):
        writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})
        if done % _CSV_ROWS_PER_CHUNK == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue()


def table_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Any table of the dashboard as CSV, written as the exception report is."""
    return "".join(csv_chunks(rows, columns))


def exceptions_csv(rows: list[dict[str, Any]]) -> str:
    """The exception report as CSV for people (partners open it in spreadsheets)."""
    return table_csv(rows, EXCEPTION_COLUMNS)


def exceptions_csv_chunks(
    conn: psycopg2.extensions.connection, load: LoadKey | int, entity: str | None = None
) -> Iterator[str]:
    """The CSV `loader exceptions LOAD --format csv` writes, in chunks, the rows read a batch at a time.

    `load`: a load key (its latest run, as the command) or a run id. LookupError when there is no such load
    or run, raised here rather than at the first chunk.
    """
    run = latest_run(conn, load) if isinstance(load, LoadKey) else run_record(conn, load)
    if run is None:
        raise LookupError(f"unknown load {load}" if isinstance(load, LoadKey) else f"unknown run {load}")
    return csv_chunks(_exception_dicts(conn, run, entity), EXCEPTION_COLUMNS)


def exceptions_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, ensure_ascii=False)


def ledger_table(entities: dict[str, dict[str, int]]) -> str:
    """The ledger as a readable table for a terminal."""
    headers = ("entity", *LEDGER_COLUMNS)
    body = [(name, *(f"{v[c]:,}" for c in LEDGER_COLUMNS)) for name, v in entities.items()]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                          strict=True)))

    return "\n".join([line(headers), *(line(r) for r in body)])


class DbtFailure(BaseModel):
    """A dbt node that failed in a run; for a test, how many rows it found and a few of them."""

    model_config = ConfigDict(frozen=True)

    node: str
    status: str
    message: str
    failing_rows: int | None
    # Up to 5 rows, each value as text cut short (numbers and booleans as they are), keys in the query's order.
    sample: list[dict[str, Any]] | None
    sample_columns: list[str]
    # Why there is no sample (the query failed or timed out), or what it leaves out.
    sample_note: str | None


def dbt_failures(conn: psycopg2.extensions.connection, run_id: int) -> list[DbtFailure]:
    """The dbt nodes that failed in the run, by node name; empty when none did (or dbt never ran)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "select node, status, message, failing_rows, sample, coalesce(sample_columns, '{}'), sample_note"
            " from loader_registry.run_dbt_failures where run_id = %s order by node",
            (run_id,),
        )
        found = cur.fetchall()
    return [
        DbtFailure(node=node, status=status, message=message, failing_rows=failing_rows,
                   # jsonb keeps no key order: the columns' order is stored beside it.
                   sample=None if sample is None else [{c: row.get(c) for c in columns} for row in sample],
                   sample_columns=list(columns), sample_note=note)
        for node, status, message, failing_rows, sample, columns, note in found
    ]
