"""The Trends page's reads: rows per load, step durations, reject rate and queue lag, aggregated by the database."""

from __future__ import annotations

import contextlib
import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2.extensions
import pytest
from helpers import query

from loader.database import Warehouse
from loader.runs.registry import RunStatus, ensure_registry, set_status, start_run
from loader.runs.trends import queue_lag, reject_rate, rows_per_load, step_durations

DAY = dt.date(2026, 5, 10)
START = dt.datetime.combine(DAY, dt.time(), dt.UTC)
STEPS = ("verify", "land", "dbt build", "publish")


@dataclass(frozen=True)
class Made:
    run_id: int
    partner: str
    status: str
    queued_at: dt.datetime
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    # (entity, landed, rejected) per entity of its ledger.
    ledger: tuple[tuple[str, int, int], ...]
    # (step, started, seconds, rows) per step.
    steps: tuple[tuple[str, dt.datetime, float, int], ...]


@pytest.fixture
def conn(db: Warehouse) -> Iterator[psycopg2.extensions.connection]:
    ensure_registry(db)
    with contextlib.closing(db.connect()) as connection:
        yield connection


def make(db: Warehouse, conn: psycopg2.extensions.connection, n: int, partner: str, status: RunStatus,
         queued: dt.datetime) -> Made:
    """A run of `partner` queued at `queued`, waiting n minutes, its steps n + k seconds, n * 100 rows per entity."""
    run_id = start_run(conn, (partner, "shop-1", f"load-{n}"), "sms_v1", "test", None)
    started = completed = None
    ledger: tuple[tuple[str, int, int], ...] = ()
    steps: tuple[tuple[str, dt.datetime, float, int], ...] = ()
    if status != "queued":
        assert set_status(conn, run_id, "running")
        started = queued + dt.timedelta(minutes=n)
        steps = tuple((step, started + dt.timedelta(seconds=10 * k), n + k + 0.25, n * 10 + k)
                      for k, step in enumerate(STEPS))
    if status in ("completed", "failed"):
        assert set_status(conn, run_id, status)
        completed = (started or queued) + dt.timedelta(minutes=30)
        ledger = (("customers", n * 100, n), ("vehicles", n * 50, 2 * n % 7))
    query(db, "update loader_registry.runs set queued_at = %s, started_at = %s, completed_at = %s where run_id = %s",
          (queued, started, completed, run_id))
    for order, (entity, landed, rejected) in enumerate(ledger):
        query(db, "insert into loader_registry.run_ledger values (%s, %s, %s, %s, %s, %s, %s, 0, %s, 0, 0)",
              (run_id, entity, order, landed, landed, landed - rejected, rejected, landed - rejected))
    for order, (step, at, seconds, rows) in enumerate(steps):
        query(db, "insert into loader_registry.run_steps values (%s, %s, %s, %s, %s, %s)",
              (run_id, step, order, at, seconds, rows))
    return Made(run_id, partner, status, queued, started, completed, ledger, steps)


def history(db: Warehouse, conn: psycopg2.extensions.connection) -> list[Made]:
    """Runs of two partners over four UTC days (the first before `since`), some ending after midnight."""
    plan: tuple[tuple[int, str, RunStatus], ...] = ((1, "acme", "completed"), (9, "bolt", "completed"),
                                                 (15, "acme", "failed"), (23, "bolt", "completed"),
                                                 (23, "acme", "completed"))
    made = []
    n = 0
    for day in range(4):
        for hour, partner, status in plan:
            n += 1
            at = START + dt.timedelta(days=day, hours=hour, minutes=n)
            made.append(make(db, conn, n, partner, status, at))
    made.append(make(db, conn, 50, "acme", "queued", START + dt.timedelta(days=3, hours=2)))
    made.append(make(db, conn, 51, "bolt", "running", START + dt.timedelta(days=3, hours=3)))
    return made


def utc_day(at: dt.datetime) -> dt.date:
    return at.astimezone(dt.UTC).date()


def test_rows_per_load_per_day_of_completion(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    made = history(db, conn)
    since = DAY + dt.timedelta(days=1)
    for partner in (None, "acme", "bolt"):
        loads: dict[dt.date, list[int]] = defaultdict(list)
        for m in made:
            if m.status == "completed" and m.completed_at and utc_day(m.completed_at) >= since and (
                    partner is None or m.partner == partner):
                loads[utc_day(m.completed_at)].append(sum(landed for _, landed, _ in m.ledger))
        got = rows_per_load(conn, since, partner)
        assert [(d.day, d.loads, d.rows, d.largest) for d in got] == [
            (day, len(rows), sum(rows), max(rows)) for day, rows in sorted(loads.items())]
        assert [d.average for d in got] == [round(statistics.mean(rows), 1) for _, rows in sorted(loads.items())]
    # A 23:xx run completes after midnight: it counts on the next day.
    assert max(d.day for d in rows_per_load(conn, DAY)) == DAY + dt.timedelta(days=4)


def test_step_durations_median_and_p95_per_day(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    made = history(db, conn)
    since = DAY + dt.timedelta(days=2)
    seconds: dict[tuple[dt.date, str], list[float]] = defaultdict(list)
    rows: dict[tuple[dt.date, str], int] = defaultdict(int)
    for m in made:
        if m.status == "completed" and m.partner == "acme":
            for step, at, secs, n in m.steps:
                if utc_day(at) >= since:
                    seconds[(utc_day(at), step)].append(secs)
                    rows[(utc_day(at), step)] += n
    got = step_durations(conn, since, "acme")
    expected = sorted(seconds, key=lambda k: (k[0], STEPS.index(k[1])))
    assert [(s.day, s.step) for s in got] == expected and len(expected) >= 2 * len(STEPS)
    assert any(s.runs > 1 for s in got), "some day has several runs to take a median of"
    for s in got:
        values = sorted(seconds[(s.day, s.step)])
        assert s.runs == len(values) and s.rows == rows[(s.day, s.step)]
        assert s.median_seconds == pytest.approx(statistics.median(values), abs=1e-3)
        # percentile_cont: linear between the two closest ranks.
        rank = 0.95 * (len(values) - 1)
        low = int(rank)
        p95 = values[low] + (values[min(low + 1, len(values) - 1)] - values[low]) * (rank - low)
        assert s.p95_seconds == pytest.approx(p95, abs=1e-3)
    assert step_durations(conn, DAY + dt.timedelta(days=30)) == []


def test_reject_rate_per_partner_per_day(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    made = history(db, conn)
    since = DAY + dt.timedelta(days=1)
    sums: dict[tuple[str, dt.date], list[int]] = defaultdict(lambda: [0, 0])
    for m in made:
        if m.status == "completed" and m.completed_at and utc_day(m.completed_at) >= since:
            for _, landed, rejected in m.ledger:
                sums[(m.partner, utc_day(m.completed_at))][0] += landed
                sums[(m.partner, utc_day(m.completed_at))][1] += rejected
    got = reject_rate(conn, since)
    assert [(r.partner, r.day, r.landed_rows, r.rejected_rows) for r in got] == [
        (partner, day, landed, rejected) for (partner, day), (landed, rejected) in sorted(sums.items())]
    assert all(r.rate == pytest.approx(r.rejected_rows / r.landed_rows, abs=1e-6) for r in got)
    assert any(r.rate for r in got) and {r.partner for r in got} == {"acme", "bolt"}


def test_queue_lag_per_run_newest_bounded(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    made = history(db, conn)
    since = DAY + dt.timedelta(days=2)
    started = sorted((m for m in made if m.started_at and utc_day(m.queued_at) >= since),
                     key=lambda m: m.queued_at)
    got = queue_lag(conn, since)
    assert len(got) == len(started) >= 6
    assert [(q.run_id, q.seconds) for q in got] == [
        (m.run_id, (m.started_at - m.queued_at).total_seconds()) for m in started if m.started_at]
    assert all(q.load == f"{m.partner}/shop-1/load-{q.seconds / 60:.0f}" for q, m in zip(got, started, strict=True))
    # Bounded: the newest ones, still oldest first.
    assert [q.run_id for q in queue_lag(conn, since, limit=3)] == [m.run_id for m in started[-3:]]
    with pytest.raises(ValueError, match="limit must be 1 or more"):
        queue_lag(conn, since, limit=0)
