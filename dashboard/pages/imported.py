"""Imported data: a shop's production rows per entity, and where any one of them came from."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
import streamlit as st

from loader.access.sessions import Session
from loader.contracts import load_contract
from loader.contracts.model import available_contracts
from loader.publish.lineage import production_rows, row_lineage
from loader.runs.registry import partners_and_shops
from shell import page, page_offset, pager, rows_table, when

PER_PAGE = 100
IMPORTED = "Imported"


def _lineage(conn: psycopg2.extensions.connection, contract: str, partner: str, shop: str, entity: str,
             external_id: str) -> None:
    found = row_lineage(conn, load_contract(contract), partner, shop, entity, external_id)
    st.subheader(f"Where {entity} {external_id} came from")
    if found.in_production:
        st.markdown(f"In production: inserted by load `{found.first_load_id}` ({when(found.created_at)}), values"
                    f" last written by load `{found.load_id}` ({when(found.updated_at)}); source `{found.source}`.")
    else:
        st.warning("Not in production: every load that sent it rejected it, or none sent it.")
    if found.appearances:
        rows_table([{"run": a.run_id, "load": a.load_id, "completed": when(a.completed_at), "file": a.file_name,
                     "row": a.row_number, "line": a.line_number, "what the load did": a.action}
                    for a in found.appearances])
    if found.purged_loads:
        st.caption("Purged by retention (their raw files are gone, so the row may have been in them): "
                   + ", ".join(found.purged_loads))


def render(conn: psycopg2.extensions.connection, _session: Session) -> None:
    st.title("Imported data")
    shops = partners_and_shops(conn)
    if not shops:
        st.info("Nothing has been loaded yet.")
        return
    a, b, c, d = st.columns(4)
    contract = a.selectbox("Contract", available_contracts())
    partner = b.selectbox("Partner", sorted({p for p, _ in shops}))
    shop = c.selectbox("Shop", sorted({s for p, s in shops if p == partner}))
    entity = d.selectbox("Entity", [e.name for e in load_contract(contract).entities])
    key = f"imported_page_{contract}_{partner}_{shop}_{entity}"
    rows, total = production_rows(conn, load_contract(contract), partner, shop, entity, PER_PAGE,
                                  page_offset(key, PER_PAGE))
    st.caption(f"{total:,} {entity} in production for {partner}/{shop}")
    shown: list[dict[str, Any]] = [{"": IMPORTED if r.get("source") == "import" else "", **r} for r in rows]
    picked = st.dataframe(shown, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                          key=f"{key}_table")
    pager(total, PER_PAGE, key)
    chosen_rows = picked.selection.rows if picked is not None else []
    typed = st.text_input("External id (or pick a row above)", key=f"{key}_id")
    external_id = typed.strip() or (str(rows[chosen_rows[0]]["external_id"]) if chosen_rows else "")
    if external_id:
        _lineage(conn, contract, partner, shop, entity, external_id)


page(render)
