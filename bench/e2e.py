"""End to end: `loader` on a generated shop against a hand-written floor, in the same run.

    .venv/bin/python bench/e2e.py [--rows 2000000] [--big-rows 4000000]

The floor is what a careful hand-rolled script would do with no validation,
lineage or reporting: COPY each file into a text table, then one typed
INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM per
entity in dependency order. Prints both times and the ratio, the time of an
identical rerun, and the time at --big-rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
sys.path.insert(0, str(REPO))

import psycopg2.extensions  # noqa: E402

from loader.contracts import Entity, load_contract  # noqa: E402
from loader.database import Warehouse, resolve_warehouse  # noqa: E402
from loader.runs.registry import ensure_registry  # noqa: E402
from loader.samples.sms_v1 import ExportSpec, rows_for_total, write_export  # noqa: E402
from loader.settings import LoaderSettings  # noqa: E402

SQL_TYPES = {"int": "bigint", "decimal": "numeric", "money": "numeric(14, 2)", "date": "date",
             "datetime": "timestamptz"}


def export(rows: int, shop: str) -> Path:
    spec = ExportSpec(shop_id=shop, load_id=f"e2e-{rows}", customers=rows_for_total(rows), plant_errors=False,
                      seed=11)
    # A new shop each time, so the first run is a real first load.
    return write_export(DATA / "e2e", spec).folder


def floor(warehouse: Warehouse, folder: Path) -> float:
    """COPY into text tables, then one typed upsert per entity; returns seconds."""
    contract = load_contract("sms_v1")
    with contextlib.closing(warehouse.connect()) as conn:
        with conn, conn.cursor() as cur:
            cur.execute("drop schema if exists floor_raw cascade; drop schema if exists floor cascade;"
                        " create schema floor_raw; create schema floor")
            for e in contract.entities:
                cur.execute(f"create table floor_raw.{e.name} ({', '.join(f'{c} text' for c in e.column_names)})")
                typed = ", ".join(f"{c.name} {SQL_TYPES.get(c.type, 'text')}" for c in e.columns)
                cur.execute(f"create table floor.{e.name} ({typed}, primary key ({e.key}))")
        start = time.perf_counter()
        for e in contract.entities:
            with conn, conn.cursor() as cur, (folder / e.file).open("rb") as fh:
                cur.copy_expert(f"copy floor_raw.{e.name} ({', '.join(_header(folder / e.file))})"
                                " from stdin with (format csv, header true)", fh, size=1 << 20)
        with conn, conn.cursor() as cur:
            for e in contract.entities:
                cur.execute(_upsert(e))
        return time.perf_counter() - start


def floor_into_production_schema(warehouse: Warehouse, folder: Path, shop: str) -> float:
    """The same COPY, then the writes the product's production schema needs, still without validation.

    Typed rows go into a copy of prod_sms (uuid keys, foreign keys and
    indexes), with the same deterministic ids and crosswalk rows as the
    publish step and its foreign-key handling; returns seconds.
    """
    contract = load_contract("sms_v1")
    ddl = contract.production_ddl.read_text(encoding="utf-8").replace("prod_sms", "floor_prod")
    with contextlib.closing(warehouse.connect()) as conn:
        with conn, conn.cursor() as cur:
            cur.execute("drop schema if exists floor_prod cascade")
            cur.execute(ddl)
        start = time.perf_counter()
        for e in contract.entities:
            with conn, conn.cursor() as cur, (folder / e.file).open("rb") as fh:
                cur.execute(f"truncate floor_raw.{e.name}")
                cur.copy_expert(f"copy floor_raw.{e.name} ({', '.join(_header(folder / e.file))})"
                                " from stdin with (format csv, header true)", fh, size=1 << 20)
        with conn, conn.cursor() as cur:
            cur.execute("set local session_replication_role = replica")
            for e in contract.entities:
                for statement in _production_inserts(cur, e, shop):
                    cur.execute(statement)
        return time.perf_counter() - start


def _production_inserts(cur: psycopg2.extensions.cursor, e: Entity, shop: str) -> list[str]:
    table = f"floor_prod.{e.name}"
    cur.execute("select attname, format_type(atttypid, atttypmod) from pg_attribute"
                " where attrelid = %s::regclass and attnum > 0 and not attisdropped", (table,))
    types = dict(cur.fetchall())
    cur.execute("select a.attname, p.relname from pg_constraint c join pg_class p on p.oid = c.confrelid"
                " join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1]"
                " where c.contype = 'f' and c.conrelid = %s::regclass", (table,))
    fk_column = {parent: column for column, parent in cur.fetchall()}

    def uuid_of(entity: str, value: str) -> str:
        prefix = "".join(f"{len(p)}:{p}" for p in ("demo-partner", shop, entity))
        return f"md5('{prefix}' || length({value}) || ':' || {value})::uuid"

    targets, values = [], []
    for c in e.columns:
        value = f"nullif(trim({c.name}), '')"
        if c.name == e.key:
            targets += ["id", "external_id"]
            values += [uuid_of(e.name, value), value]
        elif c.references:
            targets.append(fk_column[c.references])
            values.append(uuid_of(c.references, value))
        else:
            name = f"source_{c.name}" if f"source_{c.name}" in types else c.name
            targets.append(name)
            values.append(f"{value}::{types[name]}")
    return [
        f"insert into floor_prod.{e.name} (partner_id, shop_id, load_id, created_at, updated_at, {', '.join(targets)})"
        f" select distinct on ({e.key}) 'demo-partner', '{shop}', 'floor', now(), now(), {', '.join(values)}"
        f" from floor_raw.{e.name} order by {e.key}",
        "insert into floor_prod.id_crosswalk (internal_id, partner_id, shop_id, entity_type, external_id,"
        " first_load_id, last_load_id, first_seen_at, last_seen_at)"
        f" select id, partner_id, shop_id, '{e.name}', external_id, load_id, load_id, now(), now()"
        f" from floor_prod.{e.name}",
    ]


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig") as fh:
        return [h.strip().lower() for h in fh.readline().strip().split(",")]


def _upsert(e: Entity) -> str:
    casts = ", ".join(f"nullif(trim({c.name}), '')::{SQL_TYPES.get(c.type, 'text')}" for c in e.columns)
    cols = ", ".join(e.column_names)
    rest = [c for c in e.column_names if c != e.key]
    sets = ", ".join(f"{c} = excluded.{c}" for c in rest)
    current = ", ".join(f"floor.{e.name}.{c}" for c in rest)
    incoming = ", ".join(f"excluded.{c}" for c in rest)
    return (f"insert into floor.{e.name} ({cols}) select distinct on ({e.key}) {casts} from floor_raw.{e.name}"
            f" on conflict ({e.key}) do update set {sets} where ({current}) is distinct from ({incoming})")


def _child(folder: str, home: str, log_path: str, queue: mp.Queue[Any]) -> None:
    from loader.database import resolve_warehouse
    from loader.intake.partners import PartnersFile
    from loader.runs.progress import LogProgress
    from loader.runs.worker import run_load

    warehouse = resolve_warehouse(LoaderSettings())
    with open(log_path, "a", encoding="utf-8") as log:
        progress = LogProgress(log)
        start = time.perf_counter()
        outcome = run_load(warehouse, PartnersFile(), Path(folder), triggered_by="bench", progress=progress,
                           home=Path(home))
        progress.status(f"run ended {outcome.status}")
        queue.put((outcome.status, outcome.message, time.perf_counter() - start))


def loader_run(folder: Path) -> float:
    """One `run_load` in a fresh process; its step log goes to bench/data/<folder>.log."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue[Any] = ctx.Queue()
    log_path = DATA / f"{folder.parent.name}-{folder.name}.log"
    proc = ctx.Process(target=_child, args=(str(folder), str(DATA / ".loader"), str(log_path), queue))
    proc.start()
    status, message, seconds = queue.get()
    proc.join()
    if status != "completed":
        raise SystemExit(f"loader run ended {status}: {message}")
    print(f"  steps: {log_path}; slowest dbt nodes: {_slowest_dbt_nodes()}")
    return float(seconds)


def _slowest_dbt_nodes(top: int = 6) -> str:
    """The dbt nodes of the last build that took longest (where to look next)."""
    results = DATA / ".loader" / "dbt" / "target" / "run_results.json"
    if not results.exists():
        return "no dbt build"
    nodes = json.loads(results.read_text(encoding="utf-8"))["results"]
    slowest = sorted(nodes, key=lambda n: n["execution_time"], reverse=True)[:top]
    total = sum(n["execution_time"] for n in nodes)
    return f"{total:.1f} s in all; " + ", ".join(
        f"{n['unique_id'].split('.')[-1]} {n['execution_time']:.1f} s" for n in slowest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--big-rows", type=int, default=4_000_000)
    args = parser.parse_args()
    os.environ.setdefault("LOADER_HOME", str(DATA / ".loader"))
    warehouse = resolve_warehouse(LoaderSettings())
    ensure_registry(warehouse)
    print(f"database: {warehouse.display}; cpus: {os.cpu_count()}")

    folder = export(args.rows, f"e2e-{os.getpid()}")
    floor_s = floor(warehouse, folder)
    floor_prod_s = floor_into_production_schema(warehouse, folder, folder.parent.name)
    first = loader_run(folder)
    rerun = loader_run(folder)
    print(f"shop of {args.rows:,} rows ({folder})")
    print(f"floor (COPY + one typed upsert per entity): {floor_s:7.2f} s")
    print(f"floor into the production schema          : {floor_prod_s:7.2f} s   (same COPY; uuid keys, indexes,"
          " crosswalk)")
    print(f"loader run, end to end                    : {first:7.2f} s   ratio {first / floor_s:.2f}x  (goal 2.0x)")
    print(f"identical rerun                           : {rerun:7.2f} s   {rerun / first:.0%} of the first run")
    if args.big_rows:
        big = export(args.big_rows, f"e2e-big-{os.getpid()}")
        big_s = loader_run(big)
        print(f"loader run at {args.big_rows:,} rows         : {big_s:7.2f} s   {big_s / first:.2f}x the"
              f" {args.rows:,}-row time (goal 2.2x)")
    shutil.rmtree(DATA / "e2e", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
