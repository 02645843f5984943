"""Retention: the raw rows, dbt relations and kept files of runs past their days go; what they did stays.

A run is past retention when it ended (completed, failed or rejected) more
than the retention days ago. Purging it deletes its files' raw rows (a raw
file that a newer run also used stays), the kept plan of a held load if one
is left, the worker slot relations its build left behind (when it was the
slot's last build) and its kept inbox folder (unless a newer run reads the
same one). Its ledger, exceptions and status history stay, so `report` and
`exceptions` still answer; `rerun` says it was purged. Its finished webhook
deliveries go too. A file purged and sent again is landed anew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.extensions
from psycopg2 import sql

from loader.database import Warehouse, one_row
from loader.formats.csv_reader import EXTRA_VALUES_TABLE
from loader.runs.review import discard_plan
from loader.runs.slots import Slot, slot_lock

# Statuses of runs that are over; a queued, running or held run is never purged.
_ENDED = ("completed", "failed", "rejected")


@dataclass(frozen=True)
class PurgedRun:
    run_id: int
    load: str
    status: str
    ended_at: dt.datetime


@dataclass(frozen=True)
class RawFile:
    file_id: int
    raw_table: str
    rows: int
    bytes: int


@dataclass
class PurgePlan:
    """What a purge removes (or, on a dry run, would remove)."""

    cutoff: dt.datetime
    runs: list[PurgedRun] = field(default_factory=list)
    raw_files: list[RawFile] = field(default_factory=list)
    kept_folders: dict[str, int] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)

    @property
    def raw_rows(self) -> int:
        return sum(f.rows for f in self.raw_files)

    @property
    def bytes(self) -> int:
        return (sum(f.bytes for f in self.raw_files) + sum(self.kept_folders.values())
                + sum(self.slots.values()))


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def plan_purge(conn: psycopg2.extensions.connection, older_than_days: int, home: Path) -> PurgePlan:
    """What purging runs that ended more than `older_than_days` ago would remove (reads only)."""
    with conn, conn.cursor() as cur:
        cur.execute("select now() - make_interval(days => %s)", (older_than_days,))
        plan = PurgePlan(one_row(cur)[0])
        cur.execute(
            "select run_id, partner_id || '/' || shop_id || '/' || load_id, status, coalesce(completed_at, queued_at)"
            " from loader_registry.runs where status = any(%s) and purged_at is null"
            " and coalesce(completed_at, queued_at) < %s order by run_id",
            (list(_ENDED), plan.cutoff),
        )
        plan.runs = [PurgedRun(*row) for row in cur.fetchall()]
        ids = [r.run_id for r in plan.runs]
        if not ids:
            return plan
        # A file or folder a run outside the purge also uses stays.
        cur.execute(
            """
            select f.file_id, f.raw_table, coalesce(f.rows, 0)
            from loader_registry.landed_files as f
            where f.state <> 'purged'
                and exists (select from loader_registry.run_files as rf where rf.file_id = f.file_id
                            and rf.run_id = any(%(ids)s))
                and not exists (select from loader_registry.run_files as rf where rf.file_id = f.file_id
                                and rf.run_id <> all(%(ids)s))
            order by f.file_id
            """,
            {"ids": ids},
        )
        files = cur.fetchall()
        widths = _row_widths(cur, {table for _, table, _ in files})
        plan.raw_files = [RawFile(file_id, table, rows, rows * widths.get(table, 0)) for file_id, table, rows in files]
        cur.execute(
            """
            select distinct r.source_path from loader_registry.runs as r
            where r.run_id = any(%(ids)s) and r.source_path is not null
                and not exists (select from loader_registry.runs as o where o.source_path = r.source_path
                                and o.run_id <> all(%(ids)s))
            """,
            {"ids": ids},
        )
        plan.kept_folders = {path: _folder_bytes(Path(path)) for (path,) in cur.fetchall() if Path(path).is_dir()}
        cur.execute("select slot from loader_registry.build_context where run_id = any(%s) order by slot", (ids,))
        for (number,) in cur.fetchall():
            plan.slots[number] = _slot_bytes(cur, Slot(number, home))
    return plan


def _row_widths(cur: psycopg2.extensions.cursor, tables: set[str]) -> dict[str, int]:
    """Average bytes per row of each raw table, from its size and row estimate (no scan)."""
    widths = {}
    for table in tables:
        cur.execute("select pg_total_relation_size(to_regclass(%s)), greatest(reltuples, 0) from pg_class"
                    " where oid = to_regclass(%s)", (table, table))
        row = cur.fetchone()
        if row is not None and row[0] and row[1]:
            widths[table] = int(row[0] / row[1])
        elif row is not None and row[0]:
            cur.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(*table.split(".", 1))))
            count = int(one_row(cur)[0])
            widths[table] = int(row[0] / count) if count else 0
    return widths


def _slot_schemas(cur: psycopg2.extensions.cursor, slot: Slot) -> list[str]:
    """The schemas dbt builds a slot's relations in (<schema>_staging, ...); slot 1's exclude other slots'."""
    cur.execute("select nspname from pg_namespace where nspname like %s and (%s or nspname !~ '^analytics_slot[0-9]')"
                " order by nspname", (slot.schema.replace("_", "\\_") + "\\_%", slot.number != 1))
    return [name for (name,) in cur.fetchall()]


def _slot_bytes(cur: psycopg2.extensions.cursor, slot: Slot) -> int:
    schemas = _slot_schemas(cur, slot)
    if not schemas:
        return 0
    cur.execute("select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class as c"
                " inner join pg_namespace as n on n.oid = c.relnamespace where n.nspname = any(%s)"
                " and c.relkind in ('r', 'm')", (schemas,))
    return int(one_row(cur)[0])


def purge(warehouse: Warehouse, older_than_days: int, home: Path, *, dry_run: bool) -> PurgePlan:
    """Purge runs that ended more than `older_than_days` ago; with `dry_run`, only say what would go."""
    with contextlib.closing(warehouse.connect()) as conn:
        plan = plan_purge(conn, older_than_days, home)
        if dry_run or not plan.runs:
            return plan
        ids = [r.run_id for r in plan.runs]
        with conn, conn.cursor() as cur:
            for table in sorted({f.raw_table for f in plan.raw_files}):
                schema, name = table.split(".", 1)
                file_ids = [f.file_id for f in plan.raw_files if f.raw_table == table]
                cur.execute(sql.SQL("delete from {} where _file_id = any(%s)").format(sql.Identifier(schema, name)),
                            (file_ids,))
                cur.execute(sql.SQL("delete from {} where _file_id = any(%s)").format(
                    sql.Identifier(schema, EXTRA_VALUES_TABLE)), (file_ids,))
            cur.execute("update loader_registry.landed_files set state = 'purged' where file_id = any(%s)",
                        ([f.file_id for f in plan.raw_files],))
            for run_id in ids:
                discard_plan(cur, run_id)
            cur.execute("update loader_registry.runs set purged_at = now() where run_id = any(%s)", (ids,))
            _forget_notifications(cur, ids)
        for number in plan.slots:
            _drop_slot_relations(conn, Slot(number, home), ids)
    # Files last: a folder removed is gone, so the database says purged first.
    for path in plan.kept_folders:
        shutil.rmtree(path, ignore_errors=True)
    return plan


def _forget_notifications(cur: psycopg2.extensions.cursor, run_ids: list[int]) -> None:
    """The webhook deliveries of purged runs that are over (delivered or given up), their attempts and events."""
    finished = ("select delivery_id from loader_registry.webhook_deliveries where run_id = any(%(ids)s)"
                " and (delivered_at is not null or gave_up_at is not null)")
    cur.execute(f"delete from loader_registry.webhook_attempts where delivery_id in ({finished})", {"ids": run_ids})
    cur.execute(f"delete from loader_registry.webhook_deliveries where delivery_id in ({finished})",
                {"ids": run_ids})
    cur.execute("delete from loader_registry.run_events as e where e.run_id = any(%(ids)s)"
                " and e.expanded_at is not null and not exists (select from loader_registry.webhook_deliveries"
                " as d where d.event_id = e.event_id)", {"ids": run_ids})


def _drop_slot_relations(conn: psycopg2.extensions.connection, slot: Slot, run_ids: list[int]) -> None:
    """Drop a slot's dbt relations if its last build was of a purged run and no build holds it now."""
    with slot_lock(conn, slot.number) as held:
        if not held:
            return
        with conn, conn.cursor() as cur:
            cur.execute("select run_id from loader_registry.build_context where slot = %s", (slot.number,))
            row = cur.fetchone()
            if row is None or row[0] not in run_ids:
                return
            for schema in _slot_schemas(cur, slot):
                cur.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))
            cur.execute("delete from loader_registry.build_context where slot = %s", (slot.number,))
