"""Trends: rows per load, duration per step, reject rate per partner over time, queue lag."""

from __future__ import annotations

import datetime as dt

import psycopg2.extensions
import streamlit as st

from loader.access.sessions import Session
from loader.runs import trends
from loader.runs.registry import partners_and_shops
from shell import page


def render(conn: psycopg2.extensions.connection, _session: Session) -> None:
    st.title("Trends")
    left, right = st.columns(2)
    days = left.selectbox("Period", [7, 30, 90, 365], index=1, format_func=lambda d: f"last {d} days")
    partner = right.selectbox("Partner", sorted({p for p, _ in partners_and_shops(conn)}), index=None,
                              placeholder="all partners")
    since = dt.date.today() - dt.timedelta(days=days - 1)

    st.subheader("Rows per load")
    loads = trends.rows_per_load(conn, since, partner)
    if loads:
        st.line_chart({"average rows per load": {d.day.isoformat(): d.average for d in loads},
                       "largest load": {d.day.isoformat(): d.largest for d in loads}}, x_label="day")
    else:
        st.caption("No completed load in this period.")

    st.subheader("Duration per step (median seconds)")
    steps = trends.step_durations(conn, since, partner)
    if steps:
        chart: dict[str, dict[str, float]] = {}
        for s in steps:
            chart.setdefault(s.step, {})[s.day.isoformat()] = s.median_seconds
        st.bar_chart(chart, x_label="day", y_label="seconds", stack=False)
    else:
        st.caption("No timed step in this period.")

    st.subheader("Reject rate per partner")
    rates = [r for r in trends.reject_rate(conn, since) if partner in (None, r.partner) and r.rate is not None]
    if rates:
        by_partner: dict[str, dict[str, float]] = {}
        for r in rates:
            by_partner.setdefault(r.partner, {})[r.day.isoformat()] = 100 * (r.rate or 0)
        st.line_chart(by_partner, x_label="day", y_label="% of landed rows rejected")
    else:
        st.caption("No landed row in this period.")

    st.subheader("Queue lag (seconds from queued to started)")
    lags = trends.queue_lag(conn, since)
    if lags:
        st.scatter_chart({"seconds": {lag.queued_at.isoformat(): lag.seconds for lag in lags}}, x_label="queued at")
    else:
        st.caption("No run started in this period.")


page(render)
