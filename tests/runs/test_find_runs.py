"""The Runs and Review pages' reads: runs filtered and paged, the filter's choices, runs in flight, held runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2.extensions
import pytest
from helpers import query
from pydantic import ValidationError

from loader.database import Warehouse
from loader.runs.registry import (
    RunFilter,
    RunStatus,
    ensure_registry,
    find_runs,
    partners_and_shops,
    runs_in_flight,
    set_status,
    start_run,
)
from loader.runs.review import held_runs

# The moves that bring a new (queued) run to each status.
PATHS: dict[str, list[RunStatus]] = {
    "queued": [], "running": ["running"], "completed": ["running", "completed"], "failed": ["running", "failed"],
    "needs_review": ["running", "needs_review"], "rejected": ["running", "rejected"],
}
STATUSES = list(PATHS)
DAY = dt.date(2026, 3, 1)


@dataclass(frozen=True)
class Made:
    run_id: int
    partner: str
    shop: str
    load: str
    status: str
    queued_at: dt.datetime

    @property
    def key(self) -> str:
        return f"{self.partner}/{self.shop}/{self.load}"


@pytest.fixture
def conn(db: Warehouse) -> Iterator[psycopg2.extensions.connection]:
    ensure_registry(db)
    with contextlib.closing(db.connect()) as connection:
        yield connection


def make_runs(db: Warehouse, conn: psycopg2.extensions.connection) -> list[Made]:
    """36 runs: 3 partners x 2 shops x 6 loads, every status, queued one per 5 hours from DAY on (UTC)."""
    made = []
    statuses = itertools.cycle(STATUSES)
    for n, (partner, shop, i) in enumerate(itertools.product(("acme", "Bolt", "cog"), ("shop-1", "shop-2"),
                                                             range(6))):
        load = f"2026-03-0{i + 1}_{'Weekly' if i % 2 else 'full'}" if i < 5 else "load.5"
        run_id = start_run(conn, (partner, shop, load), "sms_v1", "test", None)
        status = next(statuses)
        for step in PATHS[status]:
            assert set_status(conn, run_id, step)
        queued = dt.datetime.combine(DAY, dt.time(), dt.UTC) + dt.timedelta(hours=5 * n)
        # Registered now; shown as queued days ago (a started run started an hour after that).
        query(db, "update loader_registry.runs set queued_at = %s, started_at = case when started_at is not null"
                  " then %s end where run_id = %s", (queued, queued + dt.timedelta(hours=1), run_id))
        made.append(Made(run_id, partner, shop, load, status, queued))
    return made


def expected(made: list[Made], f: RunFilter) -> list[int]:
    """The runs `f` should find, worked out here from what was made, newest first."""
    def matches(m: Made) -> bool:
        day = m.queued_at.date()
        return ((f.partner is None or m.partner == f.partner) and (f.shop is None or m.shop == f.shop)
                and (not f.statuses or m.status in f.statuses) and (f.since is None or day >= f.since)
                and (f.until is None or day <= f.until) and (f.text is None or f.text.lower() in m.key.lower()))
    return sorted((m.run_id for m in made if matches(m)), reverse=True)


FILTERS = [
    RunFilter(),
    RunFilter(partner="acme"),
    RunFilter(partner="Bolt", shop="shop-2"),
    RunFilter(shop="shop-1"),
    RunFilter(statuses=["failed", "needs_review"]),
    RunFilter(statuses=["completed"], partner="cog"),
    RunFilter(since=DAY + dt.timedelta(days=2)),
    RunFilter(until=DAY + dt.timedelta(days=1)),
    RunFilter(since=DAY + dt.timedelta(days=3), until=DAY + dt.timedelta(days=3)),
    RunFilter(text="WEEKLY"),
    RunFilter(text="bolt/SHOP-1/"),
    # Matched as typed: an underscore is not a wildcard, nor is a dot a regular expression.
    RunFilter(text="_w"),
    RunFilter(text="."),
    RunFilter(text="load.5"),
    RunFilter(text="%"),
    RunFilter(partner="acme", statuses=["queued", "running"], since=DAY, until=DAY + dt.timedelta(days=9),
              text="03"),
    RunFilter(partner="nobody"),
]


@pytest.mark.parametrize("runs_filter", FILTERS, ids=[f.model_dump_json(exclude_defaults=True) for f in FILTERS])
def test_each_filter_finds_exactly_the_runs_it_says(db: Warehouse, conn: psycopg2.extensions.connection,
                                                    runs_filter: RunFilter) -> None:
    made = make_runs(db, conn)
    want = expected(made, runs_filter)
    found = find_runs(conn, runs_filter, 1000, 0)
    assert [r.run_id for r in found.runs] == want
    assert found.total == len(want)
    by_id = {m.run_id: m for m in made}
    for run in found.runs:
        assert run.load == by_id[run.run_id].key and run.status == by_id[run.run_id].status


def test_the_filters_of_the_table_cut_where_they_should(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    """Hand-counted, independently of `expected`: the days are UTC days, both ends inclusive."""
    made = make_runs(db, conn)
    # Runs n = 0..4 are queued on DAY (hours 0, 5, 10, 15, 20); n = 5 at 25 h is the next day's first.
    assert find_runs(conn, RunFilter(until=DAY), 100, 0).total == 5
    assert find_runs(conn, RunFilter(since=DAY + dt.timedelta(days=1), until=DAY + dt.timedelta(days=1)), 100,
                     0).total == 5
    assert find_runs(conn, RunFilter(text="_weekly"), 100, 0).total == 3 * 2 * 2
    assert find_runs(conn, RunFilter(statuses=["completed"]), 100, 0).total == 6
    assert {r.run_id for r in find_runs(conn, RunFilter(text="load.5"), 100, 0).runs} == {
        m.run_id for m in made if m.load == "load.5"}


def test_pages_cover_every_run_exactly_once_newest_first(db: Warehouse,
                                                           conn: psycopg2.extensions.connection) -> None:
    made = make_runs(db, conn)
    for runs_filter in (RunFilter(), RunFilter(statuses=["completed", "failed", "queued"]), RunFilter(text="-1/")):
        want = expected(made, runs_filter)
        pages = [find_runs(conn, runs_filter, 5, offset) for offset in range(0, len(want) + 5, 5)]
        assert all(p.total == len(want) for p in pages)
        assert [r.run_id for p in pages for r in p.runs] == want
        assert pages[-1].runs == []
        oldest = find_runs(conn, runs_filter, 5, 0, oldest_first=True)
        assert [r.run_id for r in oldest.runs] == sorted(want)[:5]


def test_bad_filters_and_pages_say_which_setting(conn: psycopg2.extensions.connection) -> None:
    with pytest.raises(ValidationError, match=re.escape("since (2026-03-05) is after until (2026-03-01)")):
        RunFilter(since=DAY + dt.timedelta(days=4), until=DAY)
    with pytest.raises(ValidationError, match="statuses"):
        RunFilter.model_validate({"statuses": ["done"]})
    with pytest.raises(ValidationError, match="partnr"):
        RunFilter.model_validate({"partnr": "acme"})
    with pytest.raises(ValueError, match="limit must be 0 or more, got -1"):
        find_runs(conn, RunFilter(), -1, 0)
    with pytest.raises(ValueError, match="offset must be 0 or more, got -5"):
        held_runs(conn, 10, -5)


def test_filter_choices_and_runs_in_flight(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    assert partners_and_shops(conn) == [] and runs_in_flight(conn) == 0
    made = make_runs(db, conn)
    assert partners_and_shops(conn) == [("Bolt", "shop-1"), ("Bolt", "shop-2"), ("acme", "shop-1"),
                                        ("acme", "shop-2"), ("cog", "shop-1"), ("cog", "shop-2")]
    flying = [m for m in made if m.status in ("queued", "running")]
    assert runs_in_flight(conn) == len(flying) == 12
    for m in flying:
        set_status(conn, m.run_id, "running")
        assert set_status(conn, m.run_id, "failed")
    assert runs_in_flight(conn) == 0


def test_held_runs_oldest_first_with_their_reasons(db: Warehouse, conn: psycopg2.extensions.connection) -> None:
    made = make_runs(db, conn)
    held = [m for m in made if m.status == "needs_review"]
    for n, m in enumerate(held):
        query(db, "update loader_registry.runs set held_because = %s::jsonb where run_id = %s",
              (f'[{{"threshold": "max_reject_pct", "entity": "customers", "value": {n}.5, "limit": 1.0}}]',
               m.run_id))
    pages = [held_runs(conn, 4, offset) for offset in (0, 4, 8)]
    assert [r.run_id for page in pages for r in page] == sorted(m.run_id for m in held)
    assert all(r.status == "needs_review" for page in pages for r in page)
    first = pages[0][0]
    assert first.held_because == [{"threshold": "max_reject_pct", "entity": "customers", "value": 0.5,
                                   "limit": 1.0}]
    assert held_runs(conn, 0, 0) == []
