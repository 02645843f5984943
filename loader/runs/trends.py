"""Trends of the registry for the dashboard's charts, aggregated in the database: per UTC day, or per run up
to a bound, never every row of a table."""

from __future__ import annotations

import datetime as dt

import psycopg2.extensions
from pydantic import BaseModel

from loader.runs.registry import UtcTime

# Queue lag is one point per run: at most this many, the newest.
QUEUE_LAG_POINTS = 1000


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


class LoadRowsDay(BaseModel):
    """Completed loads of one UTC day (by completion) and the rows they landed, all entities together."""

    day: dt.date
    loads: int
    rows: int
    average: float
    largest: int


def rows_per_load(
    conn: psycopg2.extensions.connection, since: dt.date, partner: str | None = None
) -> list[LoadRowsDay]:
    """Per day since `since`, oldest first: how many loads completed and how many rows each landed."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select day, count(*), sum(rows), avg(rows), max(rows)
            from (
                select (r.completed_at at time zone 'UTC')::date as day, sum(l.landed_rows) as rows
                from loader_registry.runs as r
                join loader_registry.run_ledger as l on l.run_id = r.run_id
                where r.status = 'completed' and r.completed_at >= %(since)s
                    and (%(partner)s::text is null or r.partner_id = %(partner)s)
                group by r.run_id
            ) as loads
            group by day order by day
            """,
            {"since": _day_start(since), "partner": partner},
        )
        return [LoadRowsDay(day=day, loads=n, rows=int(total), average=round(float(avg), 1), largest=int(top))
                for day, n, total, avg, top in cur.fetchall()]


class StepDay(BaseModel):
    """How long one step took in the completed runs that started it on one UTC day."""

    day: dt.date
    step: str
    runs: int
    median_seconds: float
    p95_seconds: float
    rows: int


def step_durations(
    conn: psycopg2.extensions.connection, since: dt.date, partner: str | None = None
) -> list[StepDay]:
    """Per day since `since` and step (in the steps' order): the median and 95th percentile of its seconds."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select (s.started_at at time zone 'UTC')::date as day, s.step, count(*),
                percentile_cont(0.5) within group (order by s.seconds),
                percentile_cont(0.95) within group (order by s.seconds),
                coalesce(sum(s.rows), 0), min(s.step_order)
            from loader_registry.run_steps as s
            join loader_registry.runs as r on r.run_id = s.run_id
            where r.status = 'completed' and s.started_at >= %(since)s
                and (%(partner)s::text is null or r.partner_id = %(partner)s)
            group by day, s.step
            order by day, min(s.step_order), s.step
            """,
            {"since": _day_start(since), "partner": partner},
        )
        return [StepDay(day=day, step=step, runs=n, median_seconds=round(median, 3), p95_seconds=round(p95, 3),
                        rows=int(rows))
                for day, step, n, median, p95, rows, _ in cur.fetchall()]


class RejectRateDay(BaseModel):
    """The share of landed rows rejected in one partner's loads completed on one UTC day."""

    partner: str
    day: dt.date
    landed_rows: int
    rejected_rows: int
    # None when nothing was landed.
    rate: float | None


def reject_rate(conn: psycopg2.extensions.connection, since: dt.date) -> list[RejectRateDay]:
    """Per partner and day since `since`: rejected_rows / landed_rows over the ledgers of completed runs."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select r.partner_id, (r.completed_at at time zone 'UTC')::date as day,
                sum(l.landed_rows), sum(l.rejected_rows)
            from loader_registry.runs as r
            join loader_registry.run_ledger as l on l.run_id = r.run_id
            where r.status = 'completed' and r.completed_at >= %s
            group by r.partner_id, day
            order by r.partner_id, day
            """,
            (_day_start(since),),
        )
        return [RejectRateDay(partner=partner, day=day, landed_rows=int(landed), rejected_rows=int(rejected),
                              rate=round(int(rejected) / int(landed), 6) if landed else None)
                for partner, day, landed, rejected in cur.fetchall()]


class QueueLag(BaseModel):
    """How long a run waited in the queue: from queued to taken up by a worker."""

    run_id: int
    load: str
    queued_at: UtcTime
    seconds: float


def queue_lag(
    conn: psycopg2.extensions.connection, since: dt.date, limit: int = QUEUE_LAG_POINTS
) -> list[QueueLag]:
    """started_at - queued_at of the newest `limit` runs queued since `since` that started, oldest first."""
    if limit < 1:
        raise ValueError(f"limit must be 1 or more, got {limit}")
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select run_id, load, queued_at, seconds from (
                select run_id, partner_id || '/' || shop_id || '/' || load_id as load, queued_at,
                    extract(epoch from started_at - queued_at)::float8 as seconds
                from loader_registry.runs
                where queued_at >= %s and started_at is not null
                order by queued_at desc, run_id desc
                limit %s
            ) as newest
            order by queued_at, run_id
            """,
            (_day_start(since), limit),
        )
        return [QueueLag(run_id=run_id, load=load, queued_at=at, seconds=round(seconds, 3))
                for run_id, load, at, seconds in cur.fetchall()]
