"""Upload (operator): a shop's export as files or one zip, verified as `loader submit` verifies it, then queued."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg2.extensions
import streamlit as st

from loader.access.actions import record_action
from loader.access.sessions import Session
from loader.connectors.upload import (
    UploadedFile,
    UploadError,
    draft_manifest,
    stage_upload,
    submit_upload,
    verify_upload,
    write_manifest,
)
from loader.contracts import load_contract
from loader.contracts.model import available_contracts
from loader.intake.partners import PartnerSettingsError, load_partners
from loader.runs.registry import partners_and_shops, run_record
from shell import STATUS_BADGES, authorize, connected, context, page, who

DETAIL = Path(__file__).parent / "run_detail.py"
STAGED = "upload_staged"
DRAFT = "upload_draft"
QUEUED = "upload_run"


def _forget_staged() -> None:
    staged = st.session_state.pop(STAGED, None)
    st.session_state.pop(DRAFT, None)
    if staged:
        shutil.rmtree(Path(staged).parents[2], ignore_errors=True)


def _stage(conn: psycopg2.extensions.connection) -> None:
    settings, _ = context()
    known = partners_and_shops(conn)
    left, middle, right = st.columns(3)
    partner = left.text_input("Partner", placeholder=known[0][0] if known else "acme")
    shop = middle.text_input("Shop", placeholder=known[0][1] if known else "shop-17")
    load_id = right.text_input("Load", value=f"{dt.date.today():%Y-%m-%d}_upload")
    contract = st.selectbox("Contract", available_contracts())
    files = st.file_uploader("The export's files (CSV and manifest.json), or one zip of the folder",
                             accept_multiple_files=True, type=["csv", "json", "zip"])
    drafting = st.checkbox("Write the manifest for me (rows and digests computed from these files)")
    st.caption(f"At most {settings.upload_limit_mb:,} MB in all (LOADER_UPLOAD_LIMIT_MB).")
    if not st.button("Check the files", type="primary", disabled=not files):
        return
    authorize(conn, "operator", "upload a load")
    _forget_staged()
    into = settings.home_dir / "uploads" / uuid.uuid4().hex
    try:
        folder = stage_upload([UploadedFile(name=f.name, data=f.getvalue()) for f in files or []],
                              partner.strip(), shop.strip(), load_id.strip(), into,
                              limit_bytes=settings.upload_limit_mb * 1024 * 1024)
        if drafting:
            encoding = load_partners(settings.partners_file).for_partner(partner.strip()).encoding
            st.session_state[DRAFT] = draft_manifest(folder, load_contract(contract), encoding=encoding)
    except (UploadError, PartnerSettingsError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        st.error(str(exc))
        return
    st.session_state[STAGED] = str(folder)


def _confirm_draft(draft: dict[str, Any]) -> bool:
    """True once the operator has confirmed the drafted manifest (it is then written into the folder)."""
    st.subheader("The manifest written for you")
    st.code(json.dumps(draft, indent=2), language="json")
    confirm, cancel = st.columns(2)
    if cancel.button("Start again"):
        _forget_staged()
        st.rerun()
    if not confirm.button("The manifest is right: use it", type="primary"):
        return False
    write_manifest(Path(st.session_state[STAGED]), draft)
    st.session_state.pop(DRAFT)
    return True


def _verify_and_queue(conn: psycopg2.extensions.connection) -> None:
    settings, warehouse = context()
    folder = Path(st.session_state[STAGED])
    problems = verify_upload(folder, settings)
    if problems:
        st.error("The folder was refused; nothing was queued:\n\n" + "\n".join(f"- {p}" for p in problems))
        if st.button("Start again"):
            _forget_staged()
            st.rerun()
        return
    st.success(f"Verified: {folder.parents[1].name}/{folder.parent.name}/{folder.name} is complete and intact.")
    if st.button("Queue the load", type="primary"):
        acting = authorize(conn, "operator", "upload a load")
        run_id = submit_upload(warehouse, folder, who(acting))
        record_action(conn, acting, "upload", f"{folder.parents[1].name}/{folder.parent.name}/{folder.name}",
                      f"run {run_id}")
        _forget_staged()
        st.session_state[QUEUED] = run_id
        st.rerun()


@st.fragment(run_every=dt.timedelta(seconds=2))
def _follow(run_id: int) -> None:
    with connected() as conn:
        run = run_record(conn, run_id)
    if run is None:
        st.error(f"Run {run_id} is gone.")
        return
    st.markdown(f"Run **{run.run_id}** of `{run.load}`: {STATUS_BADGES.get(run.status, run.status)}")
    if run.message:
        st.caption(run.message)
    if run.status == "queued":
        st.caption("Waiting for a worker (`loader worker` or scheduler.py) to take it.")
    st.page_link(DETAIL, label="Open the run", query_params={"run": str(run.run_id)})


def render(conn: psycopg2.extensions.connection, _session: Session) -> None:
    st.title("Upload an export")
    if QUEUED in st.session_state:
        _follow(int(st.session_state[QUEUED]))
        if st.button("Upload another"):
            st.session_state.pop(QUEUED, None)
            st.rerun()
        return
    if STAGED not in st.session_state:
        _stage(conn)
    if STAGED not in st.session_state:
        return
    draft = st.session_state.get(DRAFT)
    if draft is not None and not _confirm_draft(draft):
        return
    _verify_and_queue(conn)


page(render, needed="operator")
