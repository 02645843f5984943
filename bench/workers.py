"""The run queue: 20 loads of 5 shops, one of them big, served by 1 and then 2 `loader worker` processes.

    .venv/bin/python bench/workers.py [--big-rows 2000000] [--small-customers 40]

Shop A's first load is big (--big-rows rows over all seven files); every
other load is small. All 20 are submitted at once, A's big one first, and
served by one `loader worker --concurrency 1` process, then, on a fresh
database, by two of them (the baseline of the same run is the single
worker). The workers are started first and the loads submitted one after
another, as they would arrive. Prints the total time,
each load's queue lag (from queued to started, from the registry) and how
long the small loads of other shops waited while the big one ran.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data" / "queue"
sys.path.insert(0, str(REPO))

from loader.database import Warehouse, resolve_warehouse  # noqa: E402
from loader.runs.registry import ensure_registry  # noqa: E402
from loader.samples.sms_v1 import ExportSpec, rows_for_total, write_export  # noqa: E402
from loader.settings import LoaderSettings  # noqa: E402

LOADER = Path(sys.executable).parent / "loader"
SHOPS = [f"shop-{c}" for c in "abcde"]


def exports(big_rows: int, small_customers: int) -> list[Path]:
    """20 folders: 4 loads per shop, shop-a's first one big; in submission order (round robin over shops)."""
    folders = []
    for n in range(4):
        for shop in SHOPS:
            customers = rows_for_total(big_rows) if (shop, n) == ("shop-a", 0) else small_customers
            spec = ExportSpec(partner_id="bench", shop_id=shop, load_id=f"load-{n}", customers=customers,
                              plant_errors=False, seed=100 + n)
            folder = DATA / "imports" / "bench" / shop / f"load-{n}"
            if not folder.is_dir():
                write_export(DATA / "imports", spec)
            folders.append(folder)
    return folders


def reset(warehouse: Warehouse) -> None:
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute("select nspname from pg_namespace where nspname in ('prod_sms', 'raw_sms_v1', 'loader_registry')"
                    " or nspname like 'analytics%'")
        for (schema,) in cur.fetchall():
            cur.execute(f'drop schema "{schema}" cascade')
    ensure_registry(warehouse)


@dataclass(frozen=True)
class Served:
    total: float
    lags: list[float]
    big_seconds: float
    other_lag_median: float
    other_lag_max: float
    other_done_before_big: int
    others: int


def _unfinished(warehouse: Warehouse) -> bool:
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute("select count(*) filter (where status in ('queued', 'running')), count(*)"
                    " from loader_registry.runs")
        row = cur.fetchone()
    return row is None or row[0] > 0 or row[1] < 20


def serve(warehouse: Warehouse, folders: list[Path], workers: int) -> Served:
    reset(warehouse)
    env = {**os.environ, **warehouse.env(), "LOADER_HOME": str(DATA / ".loader")}
    # Workers first, as in production: a load is taken as soon as it is queued (LISTEN/NOTIFY).
    procs = [subprocess.Popen([str(LOADER), "worker", "--concurrency", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(workers)]
    time.sleep(5)
    start = time.perf_counter()
    for folder in folders:
        subprocess.run([str(LOADER), "submit", str(folder), "--triggered-by", "bench"], env=env, check=True,
                       capture_output=True)
    while _unfinished(warehouse):
        time.sleep(0.5)
    total = time.perf_counter() - start
    for proc in procs:
        proc.terminate()
        proc.wait()
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute("""
            select r.shop_id, r.load_id, r.status,
                   extract(epoch from r.started_at - r.queued_at),
                   extract(epoch from r.completed_at - r.started_at),
                   r.completed_at
            from loader_registry.runs r order by r.run_id""")
        runs = cur.fetchall()
    bad = [r for r in runs if r[2] != "completed"]
    if bad:
        raise SystemExit(f"not every load completed: {bad}")
    big = next(r for r in runs if (r[0], r[1]) == ("shop-a", "load-0"))
    others = [r for r in runs if r[0] != "shop-a"]
    before_big = sum(1 for r in others if r[5] < big[5])
    return Served(total, [float(r[3]) for r in runs], float(big[4]), statistics.median(float(r[3]) for r in others),
                  max(float(r[3]) for r in others), before_big, len(others))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-rows", type=int, default=2_000_000)
    parser.add_argument("--small-customers", type=int, default=40)
    args = parser.parse_args()
    warehouse = resolve_warehouse(LoaderSettings())
    folders = exports(args.big_rows, args.small_customers)
    print(f"20 loads of 5 shops, shop-a's first of {args.big_rows:,} rows, the rest of"
          f" {args.small_customers} customers each; {warehouse.display}")
    results = {}
    for workers in (1, 2):
        results[workers] = r = serve(warehouse, folders, workers)
        print(f"{workers} worker(s): total {r.total:.1f} s; the big load ran {r.big_seconds:.1f} s;"
              f" other shops' loads: queue lag median {r.other_lag_median:.1f} s, max {r.other_lag_max:.1f} s;"
              f" {r.other_done_before_big} of {r.others} done before the big load")
        print("  queue lag per load (s): " + " ".join(f"{lag:.1f}" for lag in r.lags))
    one, two = results[1], results[2]
    print(f"2 workers vs 1: total {two.total / one.total:.2f}x; other shops' median lag {two.other_lag_median:.1f} s"
          f" vs {one.other_lag_median:.1f} s")

if __name__ == "__main__":
    main()
