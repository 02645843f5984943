"""The ledger and exception report of a load, as `loader report` and `loader exceptions` print them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from loader.contracts import load_contract
from loader.intake.load_key import LoadKey
from loader.runs.registry import EXCEPTION_COLUMNS, LEDGER_COLUMNS, RunRecord, latest_run


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
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in EXCEPTION_COLUMNS)
    with conn, conn.cursor() as cur:
        rows: list[tuple[Any, ...]] = []
        if run.status != "rejected":
            cur.execute(
                sql.SQL("select {cols} from loader_registry.run_exceptions where run_id = %s"
                        " and (%s::text is null or entity = %s) order by entity, row_number, rule, field").format(
                    cols=cols),
                (run.run_id, entity, entity),
            )
            rows = cur.fetchall()
        if not rows:
            # Refused, or failed before dbt wrote its exceptions: what the loader found in the files.
            # A file's problems are about its header: row 0, line 1, as in dbt's exception report.
            cur.execute(
                "select coalesce(entity, ''), 0, case when entity is null then 0 else 1 end,"
                " coalesce(field, file_name, ''), rule, severity, file_name, message"
                " from loader_registry.run_problems where run_id = %s"
                " and (%s::text is null or entity = %s) order by problem_id",
                (run.run_id, entity, entity),
            )
            rows = cur.fetchall()
    return [dict(zip(EXCEPTION_COLUMNS, r, strict=True)) for r in rows]


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def exceptions_csv(rows: list[dict[str, Any]]) -> str:
    """The exception report as CSV for people (partners open it in spreadsheets)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXCEPTION_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


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
