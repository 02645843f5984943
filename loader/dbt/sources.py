"""dbt files rendered from a contract (source definitions, the contract macro), so columns are defined in one place."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from loader.contracts import Contract, load_contract
from loader.dbt.contract_macro import render_contract_macro
from loader.formats.csv_reader import LINEAGE_COLUMNS

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"
LINEAGE_DESCRIPTIONS = {
    "_file_id": "The landed file this row came from (loader_registry.landed_files: load key, file name, sha256).",
    "_row_number": "1 = first data record after the header.",
    "_line_number": "Physical line where the record starts; the header is line 1.",
    "_problem": "Set by the parser: 'ragged' (field count differs from the header) or 'encoding'.",
    "_problem_detail": "For 'ragged' the field counts; for 'encoding' the columns with undecodable bytes.",
    "_raw_record": "The record's raw text, kept for ragged records whose fields cannot be trusted.",
}


def sources_path(contract: Contract) -> Path:
    return DBT_PROJECT / "models" / "staging" / contract.name / f"_{contract.name}__sources.yml"


def contract_macro_path(contract: Contract) -> Path:
    return DBT_PROJECT / "macros" / contract.name / f"{contract.name}_contract.sql"


def generated_files(contract: Contract) -> dict[Path, str]:
    """Every dbt file rendered from the contract, by path."""
    return {
        sources_path(contract): render_sources(contract),
        contract_macro_path(contract): render_contract_macro(contract),
    }


def render_sources(contract: Contract) -> str:
    tables = []
    for entity in contract.entities:
        columns = [{"name": c.name, "description": c.description} for c in entity.columns]
        columns += [{"name": name, "description": LINEAGE_DESCRIPTIONS[name]} for name, _ in LINEAGE_COLUMNS]
        tables.append({
            "name": entity.name,
            "description": f"{entity.description} Raw text of {' / '.join(entity.file_names)}, verbatim.",
            "columns": columns,
        })
    doc = {
        "version": 2,
        "sources": [{
            "name": contract.raw_dataset,
            "schema": contract.raw_dataset,
            "description": f"{contract.title} ({contract.name}), landed by dlt: every column as text plus lineage.",
            "tables": tables,
        }],
    }
    header = (f"# Generated from loader/contracts/{contract.name}.yaml by `python -m loader.dbt.sources`;"
              " do not edit by hand.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the dbt sources and contract macro of every contract")
    parser.add_argument("--check", action="store_true", help="fail if a written file is out of date")
    args = parser.parse_args(argv)
    from loader.contracts.model import available_contracts

    stale = []
    for name in available_contracts():
        for path, text in generated_files(load_contract(name)).items():
            if args.check:
                if not path.exists() or path.read_text(encoding="utf-8") != text:
                    stale.append(path)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"out of date: {path} (run python -m loader.dbt.sources)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
