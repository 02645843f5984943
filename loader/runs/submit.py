"""Queueing a load folder, as `loader submit` and the dashboard's upload do it: one function, so they never differ."""

from __future__ import annotations

import contextlib
from pathlib import Path

from loader.database import Warehouse
from loader.runs.inbox import check_submittable, keep, manifest_contract
from loader.runs.registry import start_run


def submit_folder(warehouse: Warehouse, folder: Path, triggered_by: str, inbox: Path) -> int:
    """Keep the folder's files in the inbox and queue a run of them; returns the run id.

    Raises NotALoadFolder (bad path parts, no manifest.json) before anything is
    copied, and InboxError when the files could not be kept; nothing is queued then.
    """
    key = check_submittable(folder)
    kept = keep(folder, inbox)
    with contextlib.closing(warehouse.connect()) as conn:
        return start_run(conn, (key.partner_id, key.shop_id, key.load_id), manifest_contract(kept), triggered_by,
                         str(kept), submitted_from=str(folder.absolute()))
