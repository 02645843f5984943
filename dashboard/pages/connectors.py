"""Connectors: each intake connector's schedule, last poll, what it took, checkpoints, last error; poll now."""

from __future__ import annotations

import psycopg2.extensions
import streamlit as st

from loader.access.actions import record_action
from loader.access.sessions import Session
from loader.access.users import role_allows
from loader.connectors.config import ConnectorSettingsError, load_connectors
from loader.connectors.poll import connector_status, poll_all
from shell import authorize, context, page, rows_table, when


def render(conn: psycopg2.extensions.connection, session: Session) -> None:
    st.title("Connectors")
    settings, warehouse = context()
    try:
        # The file's shape only: a folder or secret gone missing shows as that connector's failed poll.
        configured = load_connectors(settings.connectors_file, check_environment=False)
    except ConnectorSettingsError as exc:
        st.error(str(exc))
        return
    if not configured.connectors:
        st.info(f"No connector is configured ({settings.connectors_file} has none). Loads arrive by upload or"
                " `loader submit`.")
        return
    for status in connector_status(conn, configured.connectors):
        with st.container(border=True):
            st.subheader(f"{status.system_code}: {status.name}")
            state = "active" if status.active else "inactive"
            st.markdown(f"`{status.type}` `{status.location}` · {state} · schedule {status.schedule}"
                        f" · after success: {status.after_success}")
            last = status.last_poll
            if last is None:
                st.caption("Not polled yet.")
            else:
                st.markdown(f"Last poll {when(last.finished_at or last.started_at)}: found {last.found}, took"
                            f" {last.taken}, {len(last.waiting)} waiting, {len(last.skipped)} skipped")
                if last.waiting or last.skipped:
                    rows_table([{"what": "waiting", "where": w.where, "why": w.reason} for w in last.waiting]
                               + [{"what": "skipped", "where": s.where, "why": s.reason} for s in last.skipped])
            if status.last_error is not None:
                st.error(f"Last error {when(status.last_error.at)}: {status.last_error.reason}:"
                         f" {status.last_error.message}")
            if status.checkpoints:
                st.caption("Checkpoints: the latest load taken per shop")
                rows_table([{"partner": c.partner_id, "shop": c.shop_id, "load": c.load_id,
                             "since": when(c.updated_at)} for c in status.checkpoints])
            if role_allows(session.role, "operator") and status.active and st.button(
                    "Poll now", key=f"poll_{status.system_code}"):
                acting = authorize(conn, "operator", "poll a connector")
                with st.spinner(f"Polling {status.system_code}..."):
                    [result] = poll_all(warehouse, settings, only=status.system_code)
                record_action(conn, acting, "poll", status.system_code,
                              f"took {len(result.taken)}" if not result.error_reason else result.error_reason)
                if result.error_reason:
                    st.error(f"{result.error_reason}: {result.error}")
                else:
                    st.success(f"Found {result.found}, took {len(result.taken)}: "
                               + (", ".join(f"{t.load} (run {t.run_id})" for t in result.taken) or "nothing new"))


page(render)
