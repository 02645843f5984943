"""Imported data: a shop's production rows, and where one of them came from.

A production row names the load that inserted it (first_load_id) and the last
load that changed its values (load_id; a load that finds it unchanged leaves
it). The raw layer keeps every file a completed run used until retention
purges it (landed_files.state 'purged'), each raw row with its row and line
number; the row's key there is the production external id before staging
trimmed it. So, for each completed run of the shop (in the order they
published), the row's appearances in that run's file, and what the run did:

- rejected: the row has an error in the run's exception report, nothing of it was written;
- inserted: the first appearance that was not rejected;
- changed / unchanged: its values, trimmed as staging trims them, differ from (or equal) those of the
  appearance that last wrote it;
- unknown: a run in between had its raw data purged, so there is nothing to compare with (unless this run's
  load is the one that inserted the row).

The comparison is of text: staging also normalises some types (the case of an
e-mail, a phone's punctuation, a date's format), so a row whose only change
is such a spelling shows as changed though production kept its values. A run
after the last one that changed the row and that shows as changed is such a
case. Finding the row in a file reads all of that file's raw rows (the raw
tables are indexed by file only, so that landing stays a plain COPY).
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg2.extensions
from psycopg2 import sql
from pydantic import BaseModel

from loader.contracts import Contract, Entity
from loader.contracts.model import WHITE_SPACE
from loader.database import one_row
from loader.publish.transaction import business_columns
from loader.runs.registry import UtcTime, check_page

# Columns of a production row shown before and after its values.
_LEADING = ("external_id", "source", "load_id", "first_load_id")
_TRAILING = ("created_at", "updated_at", "id")

Action = Literal["inserted", "changed", "unchanged", "rejected", "unknown"]


def _entity(contract: Contract, name: str) -> Entity:
    try:
        return contract.entity(name)
    except KeyError:
        known = ", ".join(e.name for e in contract.entities)
        raise ValueError(f"entity {name!r} is not one of contract {contract.name}'s: {known}") from None


def _shop_key(cur: psycopg2.extensions.cursor, partner: str, shop: str) -> int | None:
    cur.execute("select shop_key from loader_registry.shops where partner_id = %s and shop_id = %s", (partner, shop))
    row = cur.fetchone()
    return None if row is None else int(row[0])


def production_rows(
    conn: psycopg2.extensions.connection, contract: Contract, partner: str, shop: str, entity: str, limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the shop's production rows of `entity`, by external id, and how many it has.

    Each row: external_id, source (the page badges imported rows), load_id, first_load_id, the entity's
    values, created_at, updated_at and the internal id. A shop never loaded has none.
    """
    _entity(contract, entity)
    check_page(limit, offset)
    with conn, conn.cursor() as cur:
        cur.execute("set transaction isolation level repeatable read, read only")
        key = _shop_key(cur, partner, shop)
        if key is None:
            return [], 0
        columns = [*_LEADING, *business_columns(cur, contract.production_schema, entity), *_TRAILING]
        table = sql.Identifier(contract.production_schema, entity)
        cur.execute(sql.SQL("select count(*) from {} where shop_key = %s").format(table), (key,))
        total = int(one_row(cur)[0])
        cur.execute(sql.SQL("select {} from {} where shop_key = %s order by external_id limit %s offset %s").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), table), (key, limit, offset))
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()], total


class Appearance(BaseModel):
    """The row in the file one completed run used."""

    run_id: int
    load_id: str
    completed_at: UtcTime
    file_name: str
    row_number: int
    line_number: int
    action: Action


class Lineage(BaseModel):
    entity: str
    external_id: str
    in_production: bool
    source: str | None = None
    # The load that last wrote the row's values, and the one that inserted it.
    load_id: str | None = None
    first_load_id: str | None = None
    created_at: UtcTime | None = None
    updated_at: UtcTime | None = None
    # Oldest first, in the order the runs published.
    appearances: list[Appearance]
    # Completed loads whose file of the entity was purged: the row may have been in them.
    purged_loads: list[str]


def _cleaned(column: str) -> sql.Composable:
    """A raw value as staging cleans it: trimmed of WHITE_SPACE, NULL when empty."""
    return sql.SQL("nullif(btrim({}, {}), '')").format(sql.Identifier(column), sql.Literal(WHITE_SPACE))


def row_lineage(
    conn: psycopg2.extensions.connection, contract: Contract, partner: str, shop: str, entity: str,
    external_id: str,
) -> Lineage:
    """Where the shop's row of `entity` with `external_id` came from (see the module's docstring).

    A row that is not in production (rejected every time, or never sent) still lists where it appeared.
    """
    spec = _entity(contract, entity)
    with conn, conn.cursor() as cur:
        cur.execute("set transaction isolation level repeatable read, read only")
        lineage = Lineage(entity=entity, external_id=external_id, in_production=False, appearances=[],
                          purged_loads=[])
        key = _shop_key(cur, partner, shop)
        if key is not None:
            cur.execute(sql.SQL("select source, load_id, first_load_id, created_at, updated_at from {}"
                                " where shop_key = %s and external_id = %s").format(
                sql.Identifier(contract.production_schema, entity)), (key, external_id))
            found = cur.fetchone()
            if found is not None:
                lineage = lineage.model_copy(update=dict(
                    zip(("source", "load_id", "first_load_id", "created_at", "updated_at"), found, strict=True),
                    in_production=True))
        # By completion, as the publishes happened: a failed run rerun later keeps its older id.
        cur.execute(
            "select r.run_id, r.load_id, r.completed_at, f.file_id, f.file_name, f.state"
            " from loader_registry.runs as r"
            " join loader_registry.run_files as rf on rf.run_id = r.run_id and rf.entity = %s"
            " join loader_registry.landed_files as f on f.file_id = rf.file_id"
            " where r.partner_id = %s and r.shop_id = %s and r.contract = %s and r.status = 'completed'"
            " order by r.completed_at, r.run_id",
            (entity, partner, shop, contract.name),
        )
        runs = cur.fetchall()
        kept = sorted({file_id for _, _, _, file_id, _, state in runs if state != "purged"})
        occurrences: dict[int, list[tuple[int, int, tuple[Any, ...]]]] = {}
        if kept:
            cur.execute(sql.SQL(
                "select _file_id, _row_number, _line_number, {values} from {raw}"
                " where _file_id = any(%s) and {key} = %s order by _file_id, _row_number"
            ).format(values=sql.SQL(", ").join(_cleaned(c) for c in spec.column_names),
                     raw=sql.Identifier(contract.raw_dataset, entity), key=_cleaned(spec.key)), (kept, external_id))
            for file_id, row_number, line_number, *values in cur.fetchall():
                occurrences.setdefault(file_id, []).append((row_number, line_number, (*values,)))
        rejected: set[tuple[int, int]] = set()
        numbers = sorted({n for rows in occurrences.values() for n, _, _ in rows})
        if numbers:
            cur.execute("select run_id, row_number from loader_registry.run_exceptions where run_id = any(%s)"
                        " and entity = %s and severity = 'error' and row_number = any(%s)",
                        ([r[0] for r in runs], entity, numbers))
            rejected = {(int(run_id), int(n)) for run_id, n in cur.fetchall()}
    written: tuple[Any, ...] | None = None
    gap = False
    for run_id, load_id, completed_at, file_id, file_name, state in runs:
        if state == "purged":
            lineage.purged_loads.append(load_id)
            gap = True
            continue
        accepted: tuple[Any, ...] | None = None
        for row_number, line_number, cleaned in occurrences.get(file_id, []):
            action: Action
            if (run_id, row_number) in rejected:
                action = "rejected"
            elif gap:
                action = "inserted" if written is None and load_id == lineage.first_load_id else "unknown"
            elif written is None:
                action = "inserted"
            else:
                action = "unchanged" if cleaned == written else "changed"
            if action != "rejected":
                accepted = cleaned
            lineage.appearances.append(Appearance(run_id=run_id, load_id=load_id, completed_at=completed_at,
                                                  file_name=file_name, row_number=row_number,
                                                  line_number=line_number, action=action))
        if accepted is not None:
            written, gap = accepted, False
    return lineage
