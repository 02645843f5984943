"""The `site` fixture: a dashboard site built once per test module (see dashboard_site.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_site import PASSWORDS, ROLES, Site, customers
from helpers import empty_warehouse, make_load, point_loader_at

from loader.access.users import add_user
from loader.cli import main
from loader.database import Warehouse
from loader.samples.sms_v1 import ExportSpec, write_export


@pytest.fixture(scope="module")
def site(warehouse: Warehouse, tmp_path_factory: pytest.TempPathFactory, dbt_state: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard-site")
    with pytest.MonkeyPatch.context() as patch:
        point_loader_at(empty_warehouse(warehouse), root, dbt_state, patch)
        spec = ExportSpec(partner_id="demo-partner", shop_id="shop-001", load_id="2026-11-22_demo", customers=40)
        assert main(["run", str(write_export(root / "imports", spec).folder)]) == 0
        base = [(f"C{i}", f"Last{i}", f"c{i}@example.com") for i in range(1, 11)]
        assert main(["run", str(make_load(root / "loads", {"customers.csv": customers(base)}))]) == 0
        (root / "partners.yml").write_text("partners:\n  acme:\n    thresholds: {max_update_pct: 20}\n",
                                           encoding="utf-8")
        changed = [(c, last, f"new{c}@example.com" if c in ("C2", "C5", "C9") else email) for c, last, email in base]
        folder = make_load(root / "loads", {"customers.csv": customers(changed)}, load_id="load-2")
        assert main(["run", str(folder)]) == 3
        # Three of ten customers without a valid e-mail: 30% rejected holds beta's first load.
        (root / "partners.yml").write_text("partners:\n  acme:\n    thresholds: {max_update_pct: 20}\n"
                                           "  beta:\n    thresholds: {max_reject_pct: 20}\n", encoding="utf-8")
        bad = [(c, last, "not-an-email" if c in ("C3", "C4", "C7") else email) for c, last, email in base]
        assert main(["run", str(make_load(root / "loads", {"customers.csv": customers(bad)}, partner="beta",
                                          shop="shop-9"))]) == 3
        with contextlib.closing(warehouse.connect()) as conn:
            for name, password in PASSWORDS.items():
                add_user(conn, name, ROLES[name], password)
        yield Site(warehouse, root, f"{spec.partner_id}/{spec.shop_id}/{spec.load_id}", "acme/shop-1/load-2",
                   "beta/shop-9/load-1")
