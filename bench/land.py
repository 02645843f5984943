"""Landing speed: `loader` against a plain COPY of the same file, in the same run.

    .venv/bin/python bench/land.py [--rows 2000000] [--memory-rows 1000000 4000000] [--repeat 3]

Writes generated files under bench/data/ (kept between runs), uses
LOADER_DATABASE_URL or an embedded server under bench/data/.loader, and prints
rows/s for both, the ratio, and the loader's peak RSS at each memory size.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
sys.path.insert(0, str(REPO))

from quiet import settle  # noqa: E402

from loader.contracts import load_contract  # noqa: E402
from loader.database import Warehouse, one_row, resolve_warehouse  # noqa: E402
from loader.runs.registry import ensure_registry  # noqa: E402
from loader.samples.sms_v1 import write_line_items_file  # noqa: E402
from loader.settings import LoaderSettings  # noqa: E402


def data_file(rows: int) -> Path:
    path = DATA / f"line_items_{rows}.csv"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_line_items_file(tmp, rows, seed=7)
        tmp.rename(path)
    return path


def load_folder(big: Path, rows: int) -> Path:
    """A complete sms_v1 folder around the big file (hard-linked, not copied), under a fresh shop."""
    folder = DATA / "imports" / "bench" / f"shop-{uuid.uuid4().hex[:8]}" / f"land-{rows}"
    folder.mkdir(parents=True)
    entries = []
    for entity in load_contract("sms_v1").entities:
        target = folder / entity.file
        if entity.name == "line_items":
            os.link(big, target)
            count = rows
        else:
            header = ",".join(entity.column_names) + "\r\n"
            body = "C1,Bench\r\n" if entity.name == "customers" else ""
            if entity.name == "customers":
                header = "external_customer_id,last_name\r\n"
            target.write_text(header + body)
            count = 1 if body else 0
        digest = hashlib.sha256(target.read_bytes()).hexdigest() if entity.name != "line_items" else file_sha(big)
        entries.append({"name": entity.file, "rows": count, "sha256": digest})
    (folder / "manifest.json").write_text(json.dumps({"load_id": folder.name, "files": entries}))
    return folder


_SHA: dict[Path, str] = {}


def file_sha(path: Path) -> str:
    if path not in _SHA:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        _SHA[path] = h.hexdigest()
    return _SHA[path]


def plain_copy(warehouse: Warehouse, path: Path) -> float:
    columns = load_contract("sms_v1").entity("line_items").column_names
    with contextlib.closing(warehouse.connect()) as conn:
        with conn, conn.cursor() as cur:
            cur.execute("drop table if exists public.bench_copy")
            cur.execute("create table public.bench_copy (" + ", ".join(f"{c} text" for c in columns) + ")")
        start = time.perf_counter()
        with conn, conn.cursor() as cur, path.open("rb") as fh:
            cur.copy_expert("copy public.bench_copy from stdin with (format csv, header true)", fh, size=1 << 20)
        elapsed = time.perf_counter() - start
        with conn, conn.cursor() as cur:
            cur.execute("drop table public.bench_copy")
    return elapsed


def _child(folders: list[str], url: str, queue: mp.Queue[Any]) -> None:
    from loader.database import warehouse_from_url
    from loader.intake.partners import PartnersFile
    from loader.runs.progress import LogProgress
    from loader.runs.worker import run_load

    warehouse = warehouse_from_url(url)
    times = []
    with open(os.devnull, "w") as quiet:
        for folder in folders:
            settle(warehouse)
            start = time.perf_counter()
            outcome = run_load(warehouse, PartnersFile(), Path(folder), triggered_by="bench",
                               progress=LogProgress(quiet), home=DATA / ".loader",
                               land_workers=LoaderSettings().land_workers, transform=False)
            times.append(time.perf_counter() - start)
            if outcome.status != "completed":
                break
    queue.put((outcome.status, times, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def loader_land(warehouse: Warehouse, folders: list[Path]) -> tuple[list[float], float]:
    """Land the folders one after another in one fresh process (so peak RSS is its own).

    Returns each run's seconds and the peak MB: the first run is what a
    one-shot `loader run` sees (it also imports dlt and sets up its
    pipeline); the later ones are what a long-running process sees (the
    scheduler, the dashboard).
    """
    queue: mp.Queue[Any] = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_child, args=([str(f) for f in folders], warehouse.url, queue))
    proc.start()
    status, times, peak = queue.get()
    proc.join()
    if status != "completed":
        raise SystemExit(f"loader run ended {status}")
    return times, peak


def cleanup(warehouse: Warehouse) -> None:
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute("select to_regclass('raw_sms_v1.line_items') is not null")
        if one_row(cur)[0]:
            cur.execute("truncate raw_sms_v1.line_items, raw_sms_v1.customers")
    shutil.rmtree(DATA / "imports", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[1_000_000, 4_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each side")
    args = parser.parse_args()

    os.environ.setdefault("LOADER_HOME", str(DATA / ".loader"))
    warehouse = resolve_warehouse(LoaderSettings())
    ensure_registry(warehouse)
    print(f"database: {warehouse.display}; cpus: {os.cpu_count()}")

    big = data_file(args.rows)
    size_mb = big.stat().st_size / 1e6
    copy_s, cold_s, warm_s, peak = [], [], [], 0.0
    for _ in range(args.repeat):
        cleanup(warehouse)
        settle(warehouse)
        copy_s.append(plain_copy(warehouse, big))
        times, peak_mb = loader_land(warehouse, [load_folder(big, args.rows), load_folder(big, args.rows)])
        cold_s.append(times[0])
        warm_s.append(times[1])
        peak = max(peak, peak_mb)
    copy_rate = args.rows / min(copy_s)
    print(f"file: {big.name}, {args.rows:,} rows, {size_mb:.0f} MB")
    print(f"plain COPY into an all-text table     : {min(copy_s):6.2f} s  {copy_rate:>10,.0f} rows/s")
    for label, seconds in (("loader, first run in a fresh process", min(cold_s)),
                           ("loader, next run in the same process", min(warm_s))):
        rate = args.rows / seconds
        print(f"{label} : {seconds:6.2f} s  {rate:>10,.0f} rows/s  {rate / copy_rate:4.0%} of COPY (goal: 60%)")
    print(f"peak RSS of those runs                : {peak:6.0f} MB")

    for rows in args.memory_rows:
        cleanup(warehouse)
        [seconds], peak_mb = loader_land(warehouse, [load_folder(data_file(rows), rows)])
        print(f"peak RSS at {rows:>9,} rows: {peak_mb:6.0f} MB  ({seconds:.1f} s, {rows / seconds:,.0f} rows/s)")
    cleanup(warehouse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
