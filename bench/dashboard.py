"""The dashboard's reads at scale: each page's queries against a registry of 10,000 runs and 1,000,000
exception rows, in a database of its own, beside unpaged baselines measured in the same run.

    .venv/bin/python bench/dashboard.py [--runs 10000] [--exceptions 1000000] [--raw-rows 200000] [--repeat 5]

The registry is filled in SQL: 50 shops (10 partners x 5) with `--runs` runs over
a year (89% completed, the rest failed, refused, held, queued or
running), each with its status history; completed and held runs with steps and
a ledger of every entity. Of the exception rows, 80% belong to three big runs
(50%, 30% and 20% of those) and the rest to 100-row reports of other runs.
One shop also has `--raw-rows` production customers and five completed loads
whose customers files are kept in the raw layer, for the Imported data page.

Each function is called `--repeat` times after a VACUUM ANALYZE and a
CHECKPOINT; the table shows the median and the slowest call in ms. The
baselines are what a page would do without paging: the unpaged `exceptions()`
of the biggest run (every row as a dict) and `recent_runs` of every run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg2.extensions  # noqa: E402
from quiet import settle  # noqa: E402
from scratch import fresh_database  # noqa: E402

from loader.contracts import load_contract  # noqa: E402
from loader.database import one_row, resolve_warehouse  # noqa: E402
from loader.intake.load_key import LoadKey  # noqa: E402
from loader.landing.spool import ensure_raw_tables  # noqa: E402
from loader.publish.lineage import production_rows, row_lineage  # noqa: E402
from loader.publish.transaction import ensure_production  # noqa: E402
from loader.runs import reports, review, trends  # noqa: E402
from loader.runs.registry import (  # noqa: E402
    RunFilter,
    RunRecord,
    ensure_registry,
    find_runs,
    partners_and_shops,
    recent_runs,
    run_history,
    run_record,
    run_steps,
    runs_in_flight,
)
from loader.settings import LoaderSettings  # noqa: E402

CONTRACT = load_contract("sms_v1")
ENTITIES = [e.name for e in CONTRACT.entities]
# Rules of the exception rows, with their severity.
RULES = (("format", "error"), ("required", "error"), ("orphan", "error"), ("duplicate", "error"),
         ("short_phone", "warning"), ("future_date", "warning"))
LINEAGE_SHOP = ("partner-3", "shop-2")
LINEAGE_LOADS = 5


def fill_runs(cur: psycopg2.extensions.cursor, runs: int) -> None:
    """`runs` runs over the year before now, through the state machine (its trigger checks every move)."""
    cur.execute(
        """
        insert into loader_registry.runs (partner_id, shop_id, load_id, contract, status, triggered_by, queued_at)
        select 'partner-' || mod(g, 10), 'shop-' || mod(g / 10, 5), to_char(date '2026-01-01' + g / 50, 'YYYY-MM-DD')
            || '_' || g, 'sms_v1', 'queued', case when mod(g, 3) = 0 then 'connector:sftp' else 'operator' end,
            now() - make_interval(secs => (%(runs)s - g) * 365 * 86400.0 / %(runs)s)
        from generate_series(1, %(runs)s) as g
        """,
        {"runs": runs},
    )
    # The newest ten stay queued or running; of the others every 100: 6 failed, 3 refused, 2 held.
    cur.execute("""
        create temporary table fates as
        select run_id, case
            when run_id > max(run_id) over () - 5 then 'queued'
            when run_id > max(run_id) over () - 10 then 'running'
            when run_id % 100 < 6 then 'failed'
            when run_id % 100 < 9 then 'rejected'
            when run_id % 100 < 11 then 'needs_review'
            else 'completed' end as fate
        from loader_registry.runs
        """)
    cur.execute("""
        update loader_registry.runs as r set status = 'running', attempts = 1,
            started_at = r.queued_at + make_interval(secs => r.run_id % 97 * 0.7)
        from fates as f where f.run_id = r.run_id and f.fate <> 'queued'
        """)
    cur.execute("""
        update loader_registry.runs as r set status = f.fate,
            completed_at = case when f.fate <> 'needs_review' then r.started_at
                           + make_interval(secs => 5 + r.run_id % 113) end,
            message = case f.fate when 'completed' then 'published into prod_sms'
                      when 'failed' then 'dbt build failed: 1 test(s) failed'
                      when 'rejected' then 'the folder was refused' else 'held for review' end,
            held_because = case when f.fate = 'needs_review' then jsonb_build_array(jsonb_build_object(
                'threshold', 'max_reject_pct', 'entity', 'customers', 'value', 7.5, 'limit', 5)) end
        from fates as f where f.run_id = r.run_id and f.fate not in ('queued', 'running')
        """)
    cur.execute("""
        insert into loader_registry.run_status_history (run_id, status, changed_at, detail)
        select r.run_id, s.status, s.at, 'bench'
        from loader_registry.runs as r
        cross join lateral (values (1, 'queued', r.queued_at), (2, 'running', r.started_at),
                                   (3, r.status, coalesce(r.completed_at, r.started_at))) as s (n, status, at)
        where s.at is not null and (s.n < 3 or r.status not in ('queued', 'running'))
        """)
    cur.execute("""
        insert into loader_registry.run_steps (run_id, step, step_order, started_at, seconds, rows)
        select r.run_id, s.step, s.n, r.started_at + make_interval(secs => s.n), 0.2 + (r.run_id + s.n) % 17 * 0.3,
            1000 + r.run_id % 5000
        from loader_registry.runs as r
        cross join (values (0, 'verify'), (1, 'land'), (2, 'compare'), (3, 'dbt build'), (4, 'publish')) as s (n, step)
        where r.status in ('completed', 'needs_review')
        """)
    cur.execute(
        """
        insert into loader_registry.run_ledger
        select r.run_id, e.entity, e.n, rows, rows, valid, rows - valid, (rows - valid) / 2,
            valid / 3, valid / 5, valid - valid / 3 - valid / 5
        from loader_registry.runs as r
        cross join unnest(%s::text[]) with ordinality as e (entity, n)
        cross join lateral (select 100 + mod(r.run_id * e.n, 4000) as rows) as c
        cross join lateral (select c.rows - mod(r.run_id + e.n, 40) as valid) as v
        where r.status in ('completed', 'needs_review')
        """,
        (ENTITIES,),
    )
    cur.execute("""
        insert into loader_registry.run_problems (run_id, file_name, entity, field, rule, severity, message)
        select run_id, 'customers.csv', 'customers', 'customers.csv', p.rule, 'error', p.message
        from loader_registry.runs
        cross join (values ('digest', 'sha256 differs from manifest.json'),
                           ('row_count', 'has 9 data records, manifest.json says 10')) as p (rule, message)
        where status = 'rejected'
        """)


def fill_exceptions(cur: psycopg2.extensions.cursor, total: int) -> list[int]:
    """`total` exception rows; returns the three big runs, biggest first."""
    cur.execute("select run_id from loader_registry.runs where status = 'completed' order by run_id desc limit 3")
    big = [int(r) for (r,) in cur.fetchall()]
    shares = (0.4, 0.24, 0.16)
    rules = [r for r, _ in RULES]
    severities = [s for _, s in RULES]
    for run_id, share in zip(big, shares, strict=True):
        _exceptions(cur, "select %(run_id)s::bigint as run_id, g from generate_series(1, %(rows)s) as g",
                    {"run_id": run_id, "rows": int(total * share), "rules": rules, "severities": severities})
    small = int(total * (1 - sum(shares))) // 100
    _exceptions(cur, """
        select r.run_id, g from (select run_id from loader_registry.runs where status in ('completed', 'failed')
            and run_id <> all(%(big)s) order by run_id desc limit %(small)s) as r
        cross join generate_series(1, 100) as g
        """, {"big": big, "small": small, "rules": rules, "severities": severities})
    return big


def _exceptions(cur: psycopg2.extensions.cursor, rows: str, params: dict[str, Any]) -> None:
    # Most rows of a big report are of one entity and one rule, as in a real bad export.
    cur.execute(
        f"""
        insert into loader_registry.run_exceptions (run_id, entity, row_number, line_number, field, rule, severity,
                                                    value, message)
        select run_id, entity, g, g + 1, 'field_' || mod(g, 4), rule, (%(severities)s::text[])[k],
            case when mod(g, 50) = 0 then '=HYPERLINK("x")' else 'value ' || g end, 'broken rule ' || rule
        from ({rows}) as source
        cross join lateral (select case when mod(g, 10) < 6 then 'line_items' when mod(g, 10) < 8 then 'invoices'
                                   else 'customers' end as entity,
                                   case when mod(g, 10) < 5 then 1 else 1 + mod(g, 6) end as k) as pick
        cross join lateral (select (%(rules)s::text[])[k] as rule) as named
        """,
        params,
    )


def fill_lineage(conn: psycopg2.extensions.connection, rows: int) -> None:
    """One shop's production customers and the five completed loads that wrote them, their files kept raw."""
    ensure_production(conn, CONTRACT)
    ensure_raw_tables(conn, CONTRACT)
    partner, shop = LINEAGE_SHOP
    with conn, conn.cursor() as cur:
        cur.execute("insert into loader_registry.shops (partner_id, shop_id) values (%s, %s) returning shop_key",
                    LINEAGE_SHOP)
        shop_key = int(one_row(cur)[0])
        cur.execute("select run_id, load_id from loader_registry.runs where partner_id = %s and shop_id = %s"
                    " and status = 'completed' order by completed_at desc limit %s", (*LINEAGE_SHOP, LINEAGE_LOADS))
        loads = list(reversed(cur.fetchall()))
        for n, (run_id, load_id) in enumerate(loads):
            cur.execute(
                "insert into loader_registry.landed_files (partner_id, shop_id, entity, sha256, contract, raw_table,"
                " file_name, first_load_id, rows, problem_rows, header, state, landed_at) values (%s, %s,"
                " 'customers', md5(%s) || md5(%s), 'sms_v1', 'raw_sms_v1.customers', 'customers.csv', %s, %s, 0,"
                " '{}', 'landed', now()) returning file_id",
                (partner, shop, load_id, load_id, load_id, rows))
            file_id = int(one_row(cur)[0])
            cur.execute("insert into loader_registry.run_files (run_id, entity, file_id, manifest_rows, newly_landed)"
                        " values (%s, 'customers', %s, %s, true)", (run_id, file_id, rows))
            # Load n has changed the e-mails of the first n tenths of the customers.
            cur.execute(
                "insert into raw_sms_v1.customers (external_customer_id, first_name, last_name, email, _file_id,"
                " _row_number, _line_number) select 'C' || g, 'First' || g, 'Last' || g,"
                " case when mod(g, 10) < %s then 'new' else 'c' end || g || '@example.com', %s, g, g + 1"
                " from generate_series(1, %s) as g",
                (n, file_id, rows))
        first, last = loads[0][1], loads[-1][1]
        cur.execute(
            "insert into prod_sms.customers (id, partner_id, shop_id, external_id, load_id, first_name, last_name,"
            " email, created_at, updated_at, first_load_id, shop_key) select md5('C' || g)::uuid, %s, %s, 'C' || g,"
            " case when mod(g, 10) < %s then %s else %s end, 'First' || g, 'Last' || g,"
            " case when mod(g, 10) < %s then 'new' else 'c' end || g || '@example.com', now(), now(), %s, %s"
            " from generate_series(1, %s) as g",
            (partner, shop, LINEAGE_LOADS - 1, last, first, LINEAGE_LOADS - 1, first, shop_key, rows))


def timed(call: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Median and slowest ms of `repeat` calls, and the last call's result."""
    times = []
    result: object = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), result


def size(result: object) -> str:
    """How many rows a result holds, for the table."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int) and isinstance(result[0], list):
        return f"{len(result[0])} of {result[1]:,}"
    if hasattr(result, "runs") and hasattr(result, "total"):
        return f"{len(result.runs)} of {result.total:,}"
    if hasattr(result, "appearances"):
        return f"{len(result.appearances)} appearances"
    if isinstance(result, Sized):
        return f"{len(result):,}"
    return str(result)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--exceptions", type=int, default=1_000_000)
    parser.add_argument("--raw-rows", type=int, default=200_000, help="production customers of the lineage shop")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the run's database (to look into it)")
    args = parser.parse_args()
    if args.runs < 1000 or args.exceptions < 10_000 or args.raw_rows < 100 or args.repeat < 1:
        parser.error("--runs must be at least 1000, --exceptions 10000, --raw-rows 100 and --repeat 1")
    os.environ.setdefault("LOADER_HOME", str(REPO / "bench" / "data" / ".loader"))
    server = resolve_warehouse(LoaderSettings())
    with fresh_database(server, "dashboard", keep=args.keep) as warehouse:
        ensure_registry(warehouse)
        started = time.perf_counter()
        with contextlib.closing(warehouse.connect()) as conn:
            with conn, conn.cursor() as cur:
                fill_runs(cur, args.runs)
            with conn, conn.cursor() as cur:
                big = fill_exceptions(cur, args.exceptions)
            fill_lineage(conn, args.raw_rows)
        settle(warehouse, vacuum=True)
        print(f"server: {server.display}; database {warehouse.dbname}; cpus: {os.cpu_count()};"
              f" filled in {time.perf_counter() - started:.0f} s")
        with contextlib.closing(warehouse.connect()) as conn:
            print(report(conn, big, args.repeat))
    return 0


def report(conn: psycopg2.extensions.connection, big: list[int], repeat: int) -> str:
    with conn, conn.cursor() as cur:
        cur.execute("select count(*), (select count(*) from loader_registry.run_exceptions),"
                    " (select count(*) from loader_registry.run_exceptions where run_id = %s),"
                    " (select count(*) from raw_sms_v1.customers) from loader_registry.runs", (big[0],))
        runs, exceptions, biggest, raw = one_row(cur)
    since = dt.date.today() - dt.timedelta(days=90)
    partner, shop = LINEAGE_SHOP
    held = find_runs(conn, RunFilter(statuses=["needs_review"]), 1, 0).total
    key = LoadKey.parse(_run(conn, big[0]).load)
    deep = int(biggest) - 100
    some_run = big[1]
    small = _small_run(conn, big)
    _, customers_short_phone = reports.exceptions_page(conn, big[0], entity="customers", rule="short_phone", limit=0)
    cases: list[tuple[str, str, Callable[[], object]]] = [
        ("Runs", "find_runs, first page", lambda: find_runs(conn, RunFilter(), 50, 0)),
        ("Runs", "find_runs, last page", lambda: find_runs(conn, RunFilter(), 50, int(runs) - 50)),
        ("Runs", "find_runs, partner + shop", lambda: find_runs(conn, RunFilter(partner="partner-3", shop="shop-2"),
                                                                50, 0)),
        ("Runs", "find_runs, status failed, page 3", lambda: find_runs(conn, RunFilter(statuses=["failed"]), 50, 100)),
        ("Runs", "find_runs, 30 days", lambda: find_runs(conn, RunFilter(
            since=dt.date.today() - dt.timedelta(days=30), until=dt.date.today()), 50, 0)),
        ("Runs", "find_runs, text '_99'", lambda: find_runs(conn, RunFilter(text="_99"), 50, 0)),
        ("Runs", "partners_and_shops", lambda: partners_and_shops(conn)),
        ("Runs", "runs_in_flight", lambda: runs_in_flight(conn)),
        ("Runs", "baseline: recent_runs of every run", lambda: recent_runs(conn, int(runs))),
        ("Run detail", "run_record + history + steps", lambda: (run_record(conn, some_run), run_history(
            conn, some_run), run_steps(conn, some_run))),
        ("Run detail", "ledger", lambda: reports.ledger(conn, _run(conn, some_run))),
        ("Run detail", "exception_groups, biggest run", lambda: reports.exception_groups(conn, big[0])),
        ("Run detail", "exceptions_page, first page", lambda: reports.exceptions_page(conn, big[0])),
        ("Run detail", f"exceptions_page, offset {deep:,}", lambda: reports.exceptions_page(conn, big[0],
                                                                                            offset=deep)),
        ("Run detail", "exceptions_page, entity + rule", lambda: reports.exceptions_page(
            conn, big[0], entity="customers", rule="short_phone")),
        ("Run detail", "exceptions_page, entity + rule, last page", lambda: reports.exceptions_page(
            conn, big[0], entity="customers", rule="short_phone", offset=customers_short_phone - 100)),
        ("Run detail", "exceptions_page, severity warning", lambda: reports.exceptions_page(
            conn, big[0], severity="warning")),
        ("Run detail", "exceptions_page, a 100-row run", lambda: reports.exceptions_page(conn, small)),
        ("Run detail", "baseline: exceptions(), biggest run", lambda: reports.exceptions(conn, key)),
        ("Review", "held_runs, first page", lambda: review.held_runs(conn, 50, 0)),
        ("Trends", "rows_per_load, 90 days", lambda: trends.rows_per_load(conn, since)),
        ("Trends", "rows_per_load, 90 days, one partner", lambda: trends.rows_per_load(conn, since, "partner-3")),
        ("Trends", "step_durations, 90 days", lambda: trends.step_durations(conn, since)),
        ("Trends", "reject_rate, 90 days", lambda: trends.reject_rate(conn, since)),
        ("Trends", "queue_lag, 90 days", lambda: trends.queue_lag(conn, since)),
        ("Imported data", "production_rows, first page", lambda: production_rows(
            conn, CONTRACT, partner, shop, "customers", 100, 0)),
        ("Imported data", "production_rows, last page", lambda: production_rows(
            conn, CONTRACT, partner, shop, "customers", 100, int(raw) // LINEAGE_LOADS - 100)),
        ("Imported data", f"row_lineage, {LINEAGE_LOADS} kept files", lambda: row_lineage(
            conn, CONTRACT, partner, shop, "customers", f"C{int(raw) // LINEAGE_LOADS // 2}")),
    ]
    lines = [f"{runs:,} runs ({held} held), {exceptions:,} exception rows ({biggest:,} in the biggest run),"
             f" {raw:,} raw customers rows in {LINEAGE_LOADS} kept files; median and slowest of {repeat} calls",
             "", "| page | function | ms (median) | ms (max) | rows |", "|---|---|---|---|---|"]
    # The CSV first, while this process's peak RSS is still that of its start: each adds its own peak to it.
    before = peak_rss_mb()
    median, slowest, result = timed(lambda: sum(len(c) for c in reports.exceptions_csv_chunks(conn, key)), 1)
    after_chunks = peak_rss_mb()
    csv_lines = [f"| Run detail | exceptions_csv_chunks, biggest run | {median:,.1f} | {slowest:,.1f} |"
                 f" {result:,} characters; peak RSS +{after_chunks - before:.0f} MB |"]

    def whole_csv() -> int:
        rows = reports.exceptions(conn, key)
        return len(reports.exceptions_csv(rows or []))

    median, slowest, result = timed(whole_csv, 1)
    csv_lines.append(f"| Run detail | baseline: exceptions_csv(exceptions()), biggest run | {median:,.1f} |"
                     f" {slowest:,.1f} | {result:,} characters; peak RSS +{peak_rss_mb() - after_chunks:.0f} MB |")
    for page, name, call in cases:
        median, slowest, result = timed(call, repeat)
        lines.append(f"| {page} | {name} | {median:,.1f} | {slowest:,.1f} | {size(result)} |")
    lines += csv_lines
    return "\n".join(lines)


def _run(conn: psycopg2.extensions.connection, run_id: int) -> RunRecord:
    found = run_record(conn, run_id)
    if found is None:
        raise RuntimeError(f"run {run_id} was not filled in")
    return found


def _small_run(conn: psycopg2.extensions.connection, big: list[int]) -> int:
    """A run with a 100-row exception report."""
    with conn, conn.cursor() as cur:
        cur.execute("select run_id from loader_registry.run_exceptions where row_number = 100 and run_id <> all(%s)"
                    " order by run_id limit 1", (big,))
        return int(one_row(cur)[0])


if __name__ == "__main__":
    raise SystemExit(main())
