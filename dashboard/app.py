"""Streamlit status page (stub): recent runs from the run registry.

The full dashboard (ledgers, exceptions, upload, review) is a later issue;
this page already reads the same registry the `loader status` command does.
"""

from __future__ import annotations

import contextlib

import streamlit as st

from loader.database import resolve_warehouse
from loader.runs.registry import recent_runs
from loader.settings import LoaderSettings


def main() -> None:
    st.set_page_config(page_title="Loader runs", layout="wide")
    st.title("Loader runs")
    warehouse = resolve_warehouse(LoaderSettings())
    with contextlib.closing(warehouse.connect()) as conn:
        runs = recent_runs(conn, 50)
    st.dataframe([r.model_dump() for r in runs], use_container_width=True)


main()
