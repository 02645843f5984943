"""Runs: recent runs, filtered and paged; refreshes itself while any run is queued or running."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg2.extensions
import streamlit as st

from loader.access.sessions import Session
from loader.runs.registry import RunFilter, RunStatus, find_runs, partners_and_shops, runs_in_flight
from shell import STATUS_BADGES, connected, page, page_offset, pager, when

PER_PAGE = 50
STATUSES: tuple[RunStatus, ...] = ("queued", "running", "completed", "failed", "needs_review", "rejected")
DETAIL = Path(__file__).parent / "run_detail.py"


def _filters(conn: psycopg2.extensions.connection) -> RunFilter:
    shops = partners_and_shops(conn)
    partners = sorted({p for p, _ in shops})
    left, middle, right = st.columns(3)
    partner = left.selectbox("Partner", partners, index=None, placeholder="all partners")
    shop = middle.selectbox("Shop", sorted({s for p, s in shops if partner in (None, p)}), index=None,
                            placeholder="all shops")
    statuses = right.multiselect("Status", STATUSES)
    left, right = st.columns([1, 2])
    dates = left.date_input("Queued between", value=[], max_value=dt.date.today() + dt.timedelta(days=1))
    text = right.text_input("Load key contains", placeholder="partner/shop/load")
    since, until = (dates[0], dates[-1]) if isinstance(dates, tuple) and dates else (None, None)
    return RunFilter(partner=partner, shop=shop, statuses=list(statuses), since=since, until=until,
                     text=text.strip() or None)


def _table(conn: psycopg2.extensions.connection, runs_filter: RunFilter) -> None:
    found = find_runs(conn, runs_filter, PER_PAGE, page_offset("runs_page", PER_PAGE))
    if not found.runs and found.total:
        st.session_state["runs_page"] = 1
        found = find_runs(conn, runs_filter, PER_PAGE, 0)
    st.caption(f"{found.total:,} run(s)")
    if not found.runs:
        st.info("No run matches these filters.")
        return
    header = st.columns([1, 4, 2, 2, 2, 1, 3])
    for column, title in zip(header, ("Run", "Load", "Status", "Queued", "Triggered by", "Errors", "Message"),
                             strict=True):
        column.markdown(f"**{title}**")
    for run in found.runs:
        cells = st.columns([1, 4, 2, 2, 2, 1, 3])
        cells[0].page_link(DETAIL, label=str(run.run_id), query_params={"run": str(run.run_id)})
        cells[1].text(run.load)
        cells[2].markdown(STATUS_BADGES.get(run.status, run.status))
        cells[3].text(when(run.queued_at))
        cells[4].text(run.triggered_by)
        cells[5].text(f"{run.error_count:,}")
        cells[6].text((run.message or "")[:120])
    pager(found.total, PER_PAGE, "runs_page")


def render(conn: psycopg2.extensions.connection, _session: Session) -> None:
    if "run" in st.query_params:
        # Notifications link to {LOADER_DASHBOARD_URL}/?run=N: that run's detail.
        st.switch_page(DETAIL, query_params={"run": st.query_params["run"]})
    st.title("Runs")
    runs_filter = _filters(conn)
    in_flight = runs_in_flight(conn)

    # A fragment reruns on its own, after this script run has closed `conn`: it connects itself.
    @st.fragment(run_every=dt.timedelta(seconds=3) if in_flight else None)
    def live() -> None:
        with connected() as fresh:
            _table(fresh, runs_filter)
            if in_flight and not runs_in_flight(fresh):
                st.rerun()

    if in_flight:
        st.caption(f"{in_flight} run(s) queued or running: this list refreshes itself every few seconds.")
    live()


page(render)
