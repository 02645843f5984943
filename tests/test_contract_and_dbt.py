"""The contract file drives the dbt sources; dbt reaches the same database as the loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import make_load, query

from loader import dbt_sources
from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse

REPO = Path(__file__).resolve().parent.parent
SHARED_CONTRACT = REPO.parent / "shared" / "contracts" / "sms_v1.md"


def test_dbt_sources_are_generated_from_the_contract() -> None:
    assert dbt_sources.main(["--check"]) == 0


def test_contract_lists_entities_in_dependency_order() -> None:
    contract = load_contract("sms_v1")
    seen: set[str] = set()
    for entity in contract.entities:
        for column in entity.columns:
            assert column.references in (None, entity.name) or column.references in seen
        seen.add(entity.name)
    assert [e.name for e in contract.entities][:5] == ["customers", "vehicles", "invoices", "line_items", "payments"]


@pytest.mark.skipif(not SHARED_CONTRACT.exists(), reason="shared/contracts is not beside this checkout")
def test_contract_yaml_matches_the_partner_facing_document() -> None:
    text = SHARED_CONTRACT.read_text(encoding="utf-8")
    contract = load_contract("sms_v1")
    for entity in contract.entities:
        section = text.split(f"### {entity.file}")[1].split("###")[0]
        names: list[str] = []
        for line in section.splitlines():
            cell = line.split("|")[1].strip() if line.startswith("|") else ""
            if cell and cell not in ("column",) and not set(cell) <= {"-"}:
                names += [n.strip() for n in cell.split(",")]
        required = [m.group(1) for m in re.finditer(r"^\| (?!column \|)(\w+) \| [^|]+ \| R \|", section, re.MULTILINE)]
        assert sorted(names) == sorted(entity.column_names), entity.name
        assert sorted(required) == sorted(c.name for c in entity.columns if c.required), entity.name


def test_dbt_debug_connects_to_the_loader_database(db: Warehouse, tmp_path: Path, monkeypatch, capsys) -> None:
    from dbt.cli.main import dbtRunner

    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 0
    for name, value in db.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO / "dbt_project")
    result = dbtRunner().invoke(["debug", "--profiles-dir", str(REPO)])
    assert result.success, result.exception
    # The same database: dbt sees the rows dlt landed.
    inline = "select count(*) as n from {{ source('raw_sms_v1', 'customers') }}"
    shown = dbtRunner().invoke(["show", "--profiles-dir", str(REPO), "--inline", inline, "--output", "json"])
    assert shown.success, shown.exception
    assert query(db, "select count(*) from raw_sms_v1.customers") == [(2,)]
    assert '"n": 2' in capsys.readouterr().out
