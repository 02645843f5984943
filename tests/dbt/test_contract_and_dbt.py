"""The contract file drives the dbt sources and contract macro; dbt reaches the same database as the loader."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
from helpers import make_load, query

from loader.cli import main
from loader.contracts import Contract, load_contract
from loader.contracts.model import available_contracts
from loader.database import Warehouse
from loader.dbt import sources as dbt_sources
from loader.dbt.contract_macro import render_contract_macro

REPO = Path(__file__).resolve().parents[2]
SHARED_CONTRACT = REPO.parent / "shared" / "contracts" / "sms_v1.md"
# How the staging macros read a rule key a column spec leaves out.
ABSENT_RULES = {"required": False, "values": [], "default": None, "min": None, "max_years_ahead": None,
                "nonzero": False, "sum_of": []}


def test_dbt_sources_are_generated_from_the_contract() -> None:
    assert dbt_sources.main(["--check"]) == 0


def contract_macro_result(text: str, contract_name: str) -> dict:
    """What `<contract>_contract()` in `text` returns, with dbt's return() stood in for."""

    class Returned(Exception):
        pass

    def dbt_return(value: object) -> None:
        raise Returned(value)

    env = jinja2.Environment(extensions=["jinja2.ext.do"])
    module = env.from_string(text).make_module({"return": dbt_return})
    with pytest.raises(Returned) as returned:
        getattr(module, f"{contract_name}_contract")()
    return returned.value.args[0]


@pytest.mark.parametrize("name", available_contracts())
def test_committed_contract_macro_is_the_rendering(name: str) -> None:
    contract = load_contract(name)
    path = dbt_sources.contract_macro_path(contract)
    assert path.read_text(encoding="utf-8") == render_contract_macro(contract), "run python -m loader.dbt.sources"


@pytest.mark.parametrize("name", available_contracts())
def test_contract_macro_returns_the_contract_columns_and_rules(name: str) -> None:
    contract = load_contract(name)
    spec = contract_macro_result(render_contract_macro(contract), name)
    assert list(spec) == [e.name for e in contract.entities]
    for entity in contract.entities:
        assert set(spec[entity.name]) <= {"columns", "required_one_of"}, entity.name
        columns = spec[entity.name]["columns"]
        assert [c["name"] for c in columns] == list(entity.column_names), entity.name
        for rendered, column in zip(columns, entity.columns, strict=True):
            bounds = contract.types.of(column.type)
            assert set(rendered) <= {"name", "type", *ABSENT_RULES, *bounds}, (entity.name, column.name)
            assert {key: rendered[key] for key in bounds} == bounds, (entity.name, column.name)
            expected = {"type": column.type, "required": column.required, "values": list(column.values),
                        "default": column.default, "min": column.min, "max_years_ahead": column.max_years_ahead,
                        "nonzero": column.nonzero, "sum_of": list(column.sum_of)}
            got = {"type": rendered["type"], **{key: rendered.get(key, absent) for key, absent in ABSENT_RULES.items()}}
            assert got == expected, (entity.name, column.name)
        groups = [{"columns": list(g.columns), "report_field": g.report_field} for g in entity.required_one_of]
        assert spec[entity.name].get("required_one_of", []) == groups, entity.name


def test_contract_macro_keeps_awkward_strings_intact() -> None:
    # Enum values are free text: quotes, backslashes and Jinja delimiters must survive as literals.
    awkward = ["it's", "back\\slash", 'say "hi"', "%} {{ x }}", "two\nlines", "naïve"]
    column = {"description": "-"}
    contract = Contract.model_validate({
        "name": "awkward", "title": "-", "raw_dataset": "raw_awkward", "production_schema": "prod_awkward",
        "types": load_contract("sms_v1").types.model_dump(),
        "entities": [{"name": "things", "file": "things.csv", "key": "id", "description": "-", "columns": [
            {**column, "name": "id", "type": "id", "required": True},
            {**column, "name": "kind", "type": "enum", "values": awkward, "default": awkward[0]},
        ]}],
    })
    [_, kind] = contract_macro_result(render_contract_macro(contract), "awkward")["things"]["columns"]
    assert kind["values"] == awkward
    assert kind["default"] == awkward[0]


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


@pytest.mark.skipif(not SHARED_CONTRACT.exists(), reason="shared/contracts is not beside this checkout")
def test_type_bounds_are_the_partner_facing_documents() -> None:
    text = " ".join(SHARED_CONTRACT.read_text(encoding="utf-8").split())
    types = load_contract("sms_v1").types
    bits = types.int.highest.bit_length() + 1
    assert (types.int.lowest, types.int.highest) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    for stated in (
        f"`id` = text 1-{types.id.max_length} chars",
        f"`int` (a {bits}-bit integer; outside it is `range`)",
        f"`decimal` (at most {types.decimal.integer_digits} digits before the point, more is `range`;"
        f" more than {types.decimal.scale} after is `format`)",
        f"`money` (fits numeric({types.money.precision},{types.money.scale}): at most"
        f" {types.money.integer_digits} digits before the point, more is `range`;"
        f" more than {types.money.scale} after is `format`)",
    ):
        assert stated in text


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
