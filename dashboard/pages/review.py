"""Review (operator): held loads, why each is held, the change preview, approve or reject with a reason."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
import streamlit as st

from loader.access.actions import record_action
from loader.access.sessions import Session
from loader.intake.load_key import LoadKey
from loader.runs import reports, review
from loader.runs.registry import RunRecord
from shell import authorize, context, page, page_offset, pager, rows_table, when, who

PER_PAGE = 50
NOTICE = "review_notice"
PREVIEW_COLUMNS = ["entity", "action", "external_id", "row_number", "column", "now", "after"]


def _preview_rows(preview: review.Diff) -> list[dict[str, Any]]:
    """The change preview as flat rows: one per inserted row, and one per changed column of an updated row."""
    rows: list[dict[str, Any]] = []
    for name, e in preview.entities.items():
        for r in e.inserts:
            rows.append({"entity": name, "action": "insert", "external_id": r["external_id"],
                         "row_number": r["row_number"], "column": "", "now": "",
                         "after": ", ".join(f"{c}={v}" for c, v in r["values"].items() if v is not None)})
        for r in e.updates:
            for column, change in r["changes"].items():
                rows.append({"entity": name, "action": "update", "external_id": r["external_id"],
                             "row_number": r["row_number"], "column": column, "now": change["now"],
                             "after": change["after"]})
    return rows


def _preview(run: RunRecord) -> None:
    _, warehouse = context()
    key = LoadKey.parse(run.load)
    whole = review.diff(warehouse, key, None, 0)
    st.subheader("What publishing would do")
    rows_table([{"entity": name, "insert": e.insert, "update": e.update, "unchanged": e.unchanged,
                 "changed columns": ", ".join(f"{c} ({n:,})" for c, n in e.columns.items()),
                 "changed in production since the plan": e.changed_since_plan}
                for name, e in whole.entities.items()])
    stale = [name for name, e in whole.entities.items() if e.changed_since_plan]
    if stale:
        st.warning(f"Production rows of {', '.join(stale)} changed since the plan was made: approve will refuse"
                   " it. Rerun the load to plan again.")
    if not whole.entities:
        return
    entity = st.selectbox("Entity", list(whole.entities), key=f"review_entity_{run.run_id}")
    e = whole.entities[entity]
    offset = page_offset(f"review_page_{run.run_id}_{entity}", PER_PAGE)
    shown = review.diff(warehouse, key, entity, PER_PAGE, offset=offset)
    rows = _preview_rows(shown)
    if rows:
        rows_table(rows, column_order=PREVIEW_COLUMNS)
    else:
        st.caption("Nothing to insert or update.")
    pager(max(e.insert, e.update), PER_PAGE, f"review_page_{run.run_id}_{entity}")
    st.download_button("Download this page of the preview (CSV)", reports.table_csv(rows, PREVIEW_COLUMNS),
                       file_name=f"{run.load.replace('/', '_')}_{entity}_preview.csv", mime="text/csv",
                       on_click="ignore")


def _decide(conn: psycopg2.extensions.connection, run: RunRecord) -> None:
    _, warehouse = context()
    key = LoadKey.parse(run.load)
    reason = st.text_input("Reason (recorded with your name)", key=f"reason_{run.run_id}")
    approve, reject = st.columns(2)
    if approve.button("Approve and publish", type="primary", key=f"approve_{run.run_id}"):
        acting = authorize(conn, "operator", "approve a load")
        try:
            approved = review.approve(warehouse, key, who(acting))
        except review.ReviewError as exc:
            st.error(str(exc))
            return
        record_action(conn, acting, "approve", run.load, reason.strip() or None)
        st.session_state[NOTICE] = (f"Published {run.load} (run {approved.run_id}): {approved.inserted:,} inserted,"
                                    f" {approved.updated:,} updated.")
        st.rerun()
    if reject.button("Reject", key=f"reject_{run.run_id}"):
        acting = authorize(conn, "operator", "reject a load")
        try:
            run_id = review.reject(warehouse, key, who(acting), reason.strip() or None)
        except review.ReviewError as exc:
            st.error(str(exc))
            return
        record_action(conn, acting, "reject", run.load, reason.strip() or None)
        st.session_state[NOTICE] = f"Rejected {run.load} (run {run_id}); production untouched."
        st.rerun()


def render(conn: psycopg2.extensions.connection, _session: Session) -> None:
    st.title("Review")
    # What the last approve or reject did, shown above the list it has just left.
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        st.success(notice)
    held = review.held_runs(conn, limit=PER_PAGE, offset=0)
    if not held:
        st.info("No load is held for review.")
        return
    rows_table([{"run": r.run_id, "load": r.load, "held since": when(r.completed_at or r.started_at),
                 "held because": review.held_because(r)} for r in held])
    chosen = st.selectbox("Load to review", held, format_func=lambda r: f"{r.load} (run {r.run_id})")
    st.text(chosen.load)
    st.markdown(f"**Held because:** {review.held_because(chosen)}")
    _preview(chosen)
    _decide(conn, chosen)


page(render, needed="operator")
