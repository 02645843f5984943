"""Run detail: status timeline, steps, the reconciled ledger, failed dbt tests, exceptions (with CSV), rerun."""

from __future__ import annotations

import psycopg2.extensions
import streamlit as st

from loader.access.actions import record_action
from loader.access.sessions import Session
from loader.access.users import role_allows
from loader.intake.load_key import LoadKey
from loader.runs import reports, review
from loader.runs.registry import LEDGER_COLUMNS, RunRecord, latest_run, run_history, run_record, run_steps
from loader.runs.worker import RerunRefused, queue_rerun
from shell import STATUS_BADGES, authorize, connected, page, page_offset, pager, rows_table, when, who

PER_PAGE = 100
LAST = "run_detail_last"


def _chosen_run(conn: psycopg2.extensions.connection) -> RunRecord | None:
    """The run named by `?run=N`, or by a load key typed here (its latest run)."""
    # The run of the link followed, else the one this browser session looked at last.
    typed = st.text_input("Run id or load key", value=st.query_params.get("run", st.session_state.get(LAST, "")),
                          placeholder="42 or partner/shop/load")
    typed = typed.strip()
    if not typed:
        st.info("Choose a run on the Runs page, or type its id or load key.")
        return None
    if typed.isdigit():
        run = run_record(conn, int(typed))
    else:
        try:
            run = latest_run(conn, LoadKey.parse(typed))
        except ValueError as exc:
            st.error(str(exc))
            return None
    if run is None:
        st.error(f"No run {typed!r}.")
        return None
    st.query_params["run"] = st.session_state[LAST] = str(run.run_id)
    return run


def _reconciles(counts: dict[str, int]) -> bool:
    return (counts["manifest_rows"] == counts["landed_rows"] == counts["valid_rows"] + counts["rejected_rows"]
            and counts["valid_rows"] == counts["inserted"] + counts["updated"] + counts["unchanged"])


def _ledger(conn: psycopg2.extensions.connection, run: RunRecord) -> None:
    st.subheader("Ledger")
    entities = reports.ledger(conn, run)
    if entities is None:
        st.info(f"No ledger: {reports.no_ledger_reason(run)}.")
        return
    rows = [{"entity": name, **counts, "reconciles": "✔" if _reconciles(counts) else "✘ DOES NOT RECONCILE"}
            for name, counts in entities.items()]
    broken = [name for name, counts in entities.items() if not _reconciles(counts)]
    if broken:
        st.error(f"The ledger does not reconcile for {', '.join(broken)}: an invariant failed. Do not trust this"
                 " load's counts; report it.")
    rows_table(rows, column_order=["entity", *LEDGER_COLUMNS, "reconciles"])
    st.download_button("Download the ledger (CSV)", reports.table_csv(rows, ["entity", *LEDGER_COLUMNS]),
                       file_name=f"{run.load.replace('/', '_')}_ledger.csv", mime="text/csv", on_click="ignore")


def _timeline(conn: psycopg2.extensions.connection, run: RunRecord) -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Status history")
        rows_table([{"at": when(h.at), "status": h.status, "by": h.by or "", "message": h.message or ""}
                    for h in run_history(conn, run.run_id)])
    with right:
        st.subheader("Steps")
        steps = run_steps(conn, run.run_id)
        if not steps:
            st.caption("No step has been timed yet.")
        else:
            rows_table([s.model_dump() for s in steps])
            st.bar_chart({s.step: s.seconds for s in steps}, horizontal=True, y_label="seconds")


def _dbt_failures(conn: psycopg2.extensions.connection, run: RunRecord) -> None:
    failures = reports.dbt_failures(conn, run.run_id)
    if not failures:
        return
    st.subheader("dbt tests that failed")
    for failure in failures:
        rows = "" if failure.failing_rows is None else f" ({failure.failing_rows:,} failing rows)"
        with st.expander(f"{failure.node}: {failure.status}{rows}", expanded=True):
            st.text(failure.message)
            if failure.sample:
                st.caption("Sample failing rows")
                rows_table(failure.sample)


def _exceptions(conn: psycopg2.extensions.connection, run: RunRecord) -> None:
    st.subheader("Exceptions")
    groups = reports.exception_groups(conn, run.run_id)
    if not groups:
        st.caption("No exception rows.")
        return
    left, right = st.columns([2, 3])
    with left:
        rows_table([g.model_dump() for g in groups])
    with right:
        chart: dict[str, dict[str, int]] = {}
        for g in groups:
            by_entity = chart.setdefault(g.rule, {})
            by_entity[g.entity] = by_entity.get(g.entity, 0) + g.rows
        st.bar_chart(chart, x_label="entity", y_label="rows", stack=True)
    a, b, c = st.columns(3)
    entity = a.selectbox("Entity", sorted({g.entity for g in groups}), index=None, placeholder="all")
    rule = b.selectbox("Rule", sorted({g.rule for g in groups if entity in (None, g.entity)}), index=None,
                       placeholder="all")
    severity = c.selectbox("Severity", ["error", "warning"], index=None, placeholder="all")
    rows, total = reports.exceptions_page(conn, run.run_id, entity=entity, rule=rule, severity=severity,
                                          limit=PER_PAGE, offset=page_offset("exceptions_page", PER_PAGE))
    rows_table(rows)
    pager(total, PER_PAGE, "exceptions_page")

    def csv_of_run() -> str:
        # Runs on its own thread when the button is pressed, after this script run closed `conn`.
        with connected() as fresh:
            return "".join(reports.exceptions_csv_chunks(fresh, run.run_id, entity))

    scope = f"of {entity}" if entity else "of every entity"
    st.download_button(f"Download the exceptions {scope} (CSV for the partner)", csv_of_run,
                       file_name=f"{run.load.replace('/', '_')}_run{run.run_id}_exceptions.csv", mime="text/csv",
                       on_click="ignore")


def _rerun(conn: psycopg2.extensions.connection, session: Session, run: RunRecord) -> None:
    if run.status not in ("failed", "needs_review") or not role_allows(session.role, "operator"):
        return
    if st.button("Rerun from the kept files", type="primary"):
        acting = authorize(conn, "operator", "rerun a load")
        try:
            run_id = queue_rerun(conn, LoadKey.parse(run.load), who(acting))
        except RerunRefused as exc:
            st.error(str(exc))
            return
        record_action(conn, acting, "rerun", run.load, f"run {run_id}")
        st.success(f"Queued run {run_id}: a worker (`loader worker` or scheduler.py) will take it.")


def render(conn: psycopg2.extensions.connection, session: Session) -> None:
    st.title("Run detail")
    run = _chosen_run(conn)
    if run is None:
        return
    st.text(run.load)
    st.markdown(f"Run **{run.run_id}** · {STATUS_BADGES.get(run.status, run.status)} · contract `{run.contract}`"
                f" · triggered by `{run.triggered_by}` · attempts {run.attempts}")
    if run.message:
        st.caption(run.message)
    if run.held_because:
        st.warning(f"Held for review: {review.held_because(run)}")
    _rerun(conn, session, run)
    _timeline(conn, run)
    _ledger(conn, run)
    _dbt_failures(conn, run)
    _exceptions(conn, run)


page(render)
