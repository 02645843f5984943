"""`dbt docs generate` documents every model and every column of the project."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_load

from loader.cli import main
from loader.database import Warehouse
from loader.dbt.runner import DBT_PROJECT, PROFILES_DIR, build_vars
from loader.intake.load_key import LoadKey


def test_docs_cover_every_model_and_column(db: Warehouse, tmp_path: Path, monkeypatch) -> None:
    from dbt.cli.main import dbtRunner

    assert main(["run", str(make_load(tmp_path))]) == 0
    for name, value in db.env().items():
        monkeypatch.setenv(name, value)
    target = tmp_path / "docs-target"
    dbt_vars = json.dumps(build_vars(1, LoadKey.parse("acme/shop-1/load-1"), None))
    result = dbtRunner().invoke(["docs", "generate", "--project-dir", str(DBT_PROJECT), "--profiles-dir",
                                 str(PROFILES_DIR), "--target-path", str(target), "--vars", dbt_vars, "--quiet"])
    assert result.success, result.exception
    manifest = json.loads((target / "manifest.json").read_text())
    catalog = json.loads((target / "catalog.json").read_text())
    models = {k: n for k, n in manifest["nodes"].items() if n["resource_type"] == "model"}
    assert {n["name"] for n in models.values()} >= {"stg_sms__customers", "publish_customers", "ledger",
                                                    "exceptions"}
    undocumented = []
    for unique_id, node in models.items():
        if not node["description"].strip():
            undocumented.append(node["name"])
        documented = {c.lower() for c, col in node["columns"].items() if col["description"].strip()}
        built = {c.lower() for c in catalog["nodes"].get(unique_id, {}).get("columns", {})}
        assert built, f"{node['name']} is not in the catalog"
        undocumented += [f"{node['name']}.{c}" for c in sorted(built - documented)]
    assert undocumented == []
