"""End to end: `loader` on generated shops against a hand-written floor, in one run, in a database of its own.

    .venv/bin/python bench/e2e.py [--rows 2000000] [--others 5] [--changed 0.01]
                                  [--big-rows 4000000] [--huge-rows 10000000]

The floor is what a skilled engineer would write by hand for the production
shape, with no validation, lineage, crosswalk or report: in one transaction,
per entity in dependency order, COPY into a text staging table, then one typed
INSERT ... SELECT with the same deterministic uuid keys, references resolved by
joining the parent tables on (shop, external id), ON CONFLICT (shop, external
id) DO UPDATE ... WHERE ... IS DISTINCT FROM; tables with a uuid primary key
and one unique (partner, shop, external id) constraint, no other index.

Measured, each a `run_load` in a fresh process against a fresh database on
LOADER_DATABASE_URL's server (the embedded one by default):

1. shop A's first load into an empty production, beside the floor's;
2. its identical rerun;
3. a reload of shop A in which `--changed` of every entity's rows changed,
   beside the floor's reload of the same folder;
4. with `--others` shops of the same size in production (A and copies of it
   under other shop ids), the first load of a new shop B, beside 1;
5. the first load of a `--big-rows` shop and of a `--huge-rows` shop, with
   peak RSS (0 skips either).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
sys.path.insert(0, str(REPO))

import psycopg2.extensions  # noqa: E402
from quiet import settle  # noqa: E402
from scratch import fresh_database  # noqa: E402

from loader.contracts import Contract, Entity, load_contract  # noqa: E402
from loader.database import Warehouse, resolve_warehouse  # noqa: E402
from loader.publish.transaction import ensure_production  # noqa: E402
from loader.runs.registry import ensure_registry  # noqa: E402
from loader.samples.sms_v1 import ExportSpec, rows_for_total, write_export  # noqa: E402
from loader.settings import LoaderSettings  # noqa: E402

PARTNER = "demo-partner"
# A column of each entity whose value a partner's re-export may change without breaking a rule.
REVISED = {"customers": "first_name", "vehicles": "color", "invoices": "invoice_number",
           "line_items": "description", "payments": "reference", "inventory_parts": "description",
           "suppliers": "name"}


@dataclass(frozen=True)
class Timed:
    seconds: float
    peak_rss_mb: float
    steps: str


def export(root: Path, rows: int, shop: str) -> Path:
    spec = ExportSpec(partner_id=PARTNER, shop_id=shop, load_id="e2e-1", customers=rows_for_total(rows),
                      plant_errors=False, seed=11)
    return write_export(root, spec).folder


def copy_as(folder: Path, shop: str) -> Path:
    """The same export as another shop's (the manifest names no shop)."""
    target = folder.parents[1] / shop / folder.name
    shutil.copytree(folder, target)
    return target


def revise(folder: Path, share: float) -> Path:
    """A later export of the same shop: every entity's rows, with `share` of them changed in one value."""
    target = folder.with_name("e2e-2")
    target.mkdir()
    step = max(1, round(1 / share))
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    contract = load_contract(manifest["contract"])
    for entry in manifest["files"]:
        entity = next(e for e in contract.entities if entry["name"] in e.file_names)
        with (folder / entry["name"]).open(newline="", encoding="utf-8") as src, \
                (target / entry["name"]).open("w", newline="", encoding="utf-8") as dst:
            reader, writer = csv.reader(src), csv.writer(dst, lineterminator="\r\n")
            header = next(reader)
            writer.writerow(header)
            column = header.index(REVISED[entity.name])
            for number, row in enumerate(reader, start=1):
                if number % step == 0:
                    row[column] = (row[column] + " rev").strip()
                writer.writerow(row)
        entry["sha256"] = hashlib.sha256((target / entry["name"]).read_bytes()).hexdigest()
    manifest["load_id"] = target.name
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target


def _internal_id(partner: str, shop: str, entity: str, value: str) -> str:
    """The loader's deterministic internal id of an external key, in SQL (see the sms_internal_id macro)."""
    prefix = "".join(f"{len(p)}:{p}" for p in (partner, shop, entity))
    return f"md5('{prefix}' || length({value}) || ':' || {value})::uuid"


class Floor:
    """The hand-written loader: tables shaped as production's, two indexes each, one transaction per load."""

    def __init__(self, warehouse: Warehouse, contract: Contract) -> None:
        self.warehouse = warehouse
        self.contract = contract
        self.shapes: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
            cur.execute("drop schema if exists floor cascade; create schema floor")
            for e in contract.entities:
                self.shapes[e.name] = self._shape(cur, e)
                targets, _, _ = self._mapping(e, "shop")
                types = self.shapes[e.name][0]
                cur.execute(f"create table floor.{e.name} (id uuid primary key, partner_id text not null,"
                            f" shop_id text not null, load_id text not null,"
                            f" {', '.join(f'{t} {types[t]}' for t in targets if t != 'id')},"
                            f" created_at timestamptz not null, updated_at timestamptz not null,"
                            f" unique (partner_id, shop_id, external_id))")

    def _shape(self, cur: psycopg2.extensions.cursor, e: Entity) -> tuple[dict[str, str], dict[str, str]]:
        """Production's column types and the column that holds each parent's id."""
        table = f"{self.contract.production_schema}.{e.name}"
        cur.execute("select attname, format_type(atttypid, atttypmod) from pg_attribute"
                    " where attrelid = %s::regclass and attnum > 0 and not attisdropped order by attnum", (table,))
        types = dict(cur.fetchall())
        # A foreign key's last column names the parent row (the first ones, the shop).
        cur.execute("select a.attname, p.relname from pg_constraint c join pg_class p on p.oid = c.confrelid"
                    " join pg_attribute a on a.attrelid = c.conrelid"
                    " and a.attnum = c.conkey[array_upper(c.conkey, 1)]"
                    " where c.contype = 'f' and c.conrelid = %s::regclass", (table,))
        return types, {parent: column for column, parent in cur.fetchall()}

    def _mapping(self, e: Entity, shop: str) -> tuple[list[str], list[str], list[str]]:
        """The entity's target columns, the value of each from staging row `s`, and the joins they need."""
        types, reference_column = self.shapes[e.name]
        key = f"nullif(trim(s.{e.key}), '')"
        targets, values, joins = ["id", "external_id"], [_internal_id(PARTNER, shop, e.name, key), key], []
        for n, c in enumerate(e.columns):
            value = f"nullif(trim(s.{c.name}), '')"
            if c.name == e.key:
                continue
            if c.references == e.name:
                # A line's parent is in the same file: its key is worked out, not looked up.
                targets.append(reference_column[c.references])
                values.append(_internal_id(PARTNER, shop, e.name, value))
            elif c.references:
                kind = "inner" if c.required else "left"
                joins.append(f"{kind} join floor.{c.references} as p{n} on p{n}.partner_id = '{PARTNER}'"
                             f" and p{n}.shop_id = '{shop}' and p{n}.external_id = {value}")
                targets.append(reference_column[c.references])
                values.append(f"p{n}.id")
            else:
                name = f"source_{c.name}" if f"source_{c.name}" in types else c.name
                targets.append(name)
                cast = f"{value}::{types[name]}"
                values.append(f"coalesce({cast}, '{c.default}')" if c.default else cast)
        return targets, values, joins

    def _upsert(self, e: Entity, shop: str, load: str) -> str:
        targets, values, joins = self._mapping(e, shop)
        changed = [t for t in targets if t not in ("id", "external_id")]
        return (
            f"insert into floor.{e.name} as t (partner_id, shop_id, load_id, created_at, updated_at,"
            f" {', '.join(targets)})"
            f" select '{PARTNER}', '{shop}', '{load}', now(), now(), {', '.join(values)}"
            f" from floor_stage_{e.name} as s {' '.join(joins)}"
            f" on conflict (partner_id, shop_id, external_id) do update set load_id = excluded.load_id,"
            f" updated_at = now(), {', '.join(f'{t} = excluded.{t}' for t in changed)}"
            f" where ({', '.join(f't.{t}' for t in changed)}) is distinct from"
            f" ({', '.join(f'excluded.{t}' for t in changed)})"
        )

    def load(self, folder: Path) -> float:
        """Load one export folder; returns seconds."""
        shop, load = folder.parent.name, folder.name
        with contextlib.closing(self.warehouse.connect()) as conn:
            start = time.perf_counter()
            with conn, conn.cursor() as cur:
                for e in self.contract.entities:
                    cur.execute(f"create temp table floor_stage_{e.name}"
                                f" ({', '.join(f'{c} text' for c in e.column_names)}) on commit drop")
                    with (folder / e.file).open("rb") as fh:
                        cur.copy_expert(f"copy floor_stage_{e.name} ({', '.join(_header(folder / e.file))})"
                                        " from stdin with (format csv, header true)", fh, size=1 << 20)
                    # Fresh statistics, or PostgreSQL plans the joins for empty tables (nested loops).
                    cur.execute(f"analyze floor_stage_{e.name}")
                    cur.execute(self._upsert(e, shop, load))
                    cur.execute(f"analyze floor.{e.name}")
            return time.perf_counter() - start


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig") as fh:
        return [h.strip().lower() for h in fh.readline().strip().split(",")]


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
        seconds = time.perf_counter() - start
    # Linux gives kilobytes.
    queue.put((outcome.status, outcome.message, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def loader_run(folder: Path, home: Path, database_url: str) -> Timed:
    """One `run_load` in a fresh process; its step log goes to bench/data/e2e-<shop>-<load>.log."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue[Any] = ctx.Queue()
    log_path = DATA / f"e2e-{folder.parent.name}-{folder.name}.log"
    os.environ["LOADER_DATABASE_URL"] = database_url
    # The log is appended to (a rerun uses its folder's): this run's lines start here.
    start = log_path.stat().st_size if log_path.exists() else 0
    proc = ctx.Process(target=_child, args=(str(folder), str(home), str(log_path), queue))
    proc.start()
    status, message, seconds, rss = queue.get()
    proc.join()
    if status != "completed":
        raise SystemExit(f"loader run of {folder} ended {status}: {message}")
    return Timed(float(seconds), float(rss), _dbt_timing(log_path, start))


def _dbt_timing(log_path: Path, start: int) -> str:
    """The run's own log line on its dbt build's node time and slowest nodes (where to look next)."""
    with log_path.open(encoding="utf-8") as log:
        log.seek(start)
        timings = [line.split("] ", 1)[-1].strip() for line in log if "] dbt: " in line]
    return timings[-1] if timings else "no dbt build"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--others", type=int, default=5, help="shops in production before shop B's load")
    parser.add_argument("--changed", type=float, default=0.01, help="share of every entity's rows a reload changes")
    parser.add_argument("--big-rows", type=int, default=4_000_000)
    parser.add_argument("--huge-rows", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the run's database (to look into it)")
    args = parser.parse_args()
    os.environ.setdefault("LOADER_HOME", str(DATA / ".loader"))
    server = resolve_warehouse(LoaderSettings())
    root = DATA / "e2e"
    shutil.rmtree(root, ignore_errors=True)
    home = DATA / ".loader-e2e"
    shutil.rmtree(home, ignore_errors=True)
    contract = load_contract("sms_v1")
    with fresh_database(server, "e2e", keep=args.keep) as warehouse:
        ensure_registry(warehouse)
        with contextlib.closing(warehouse.connect()) as conn:
            ensure_production(conn, contract)
        print(f"server: {server.display}; database {warehouse.dbname}; cpus: {os.cpu_count()}")

        def run(folder: Path) -> Timed:
            settle(warehouse, vacuum=True)
            return loader_run(folder, home, warehouse.url)

        def show(label: str, timed: Timed, against: str = "") -> None:
            print(f"{label:<58}: {timed.seconds:8.2f} s  {against}")
            print(f"{'':<60}peak RSS {timed.peak_rss_mb:.0f} MB; {timed.steps}")

        folder = export(root, args.rows, "shop-a")
        floor = Floor(warehouse, contract)
        settle(warehouse, vacuum=True)
        floor_first = floor.load(folder)
        print(f"{'floor, first load of shop A':<58}: {floor_first:8.2f} s")
        first = run(folder)
        show(f"1. loader, first load of shop A ({args.rows:,} rows)", first,
             f"{first.seconds / floor_first:.2f}x the floor (goal 2.0x)")
        rerun = run(folder)
        show("2. identical rerun", rerun, f"{rerun.seconds / first.seconds:.0%} of the first (goal: within 10%)")
        revised = revise(folder, args.changed)
        settle(warehouse, vacuum=True)
        floor_reload = floor.load(revised)
        print(f"{f'floor, reload with {args.changed:.0%} of the rows changed':<58}: {floor_reload:8.2f} s")
        reload = run(revised)
        show(f"3. loader, reload with {args.changed:.0%} changed", reload,
             f"{reload.seconds / first.seconds:.0%} of the first (goal 25%),"
             f" {reload.seconds / floor_reload:.2f}x the floor's reload (goal 1.0x)")
        for n in range(1, args.others):
            filled = run(copy_as(folder, f"shop-fill-{n}"))
            print(f"   (production filler shop {n}: {filled.seconds:.1f} s)")
        if args.others:
            later = run(export(root, args.rows, "shop-b"))
            show(f"4. loader, first load of shop B after {args.others} shops", later,
                 f"{later.seconds / first.seconds:.2f}x shop A's (goal 1.15x)")
        if args.big_rows:
            big = run(export(root, args.big_rows, "shop-big"))
            show(f"5. loader, first load at {args.big_rows:,} rows", big,
                 f"{big.seconds / first.seconds:.2f}x the {args.rows:,}-row time (goal 2.2x)")
        if args.huge_rows:
            huge = run(export(root, args.huge_rows, "shop-huge"))
            show(f"5. loader, first load at {args.huge_rows:,} rows", huge,
                 f"peak RSS {huge.peak_rss_mb:.0f} MB against {first.peak_rss_mb:.0f} MB at {args.rows:,}"
                 " (goal: at most 1 GiB, flat)")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
