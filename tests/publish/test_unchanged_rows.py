"""A reload checks only what changed, and its outcome is exactly that of checking every row.

Each test runs the same loads for two shops: one as the loader runs them,
one with LOADER_RECHECK_UNCHANGED=true, which checks every row of every load.
Ledgers, exception rows and production must come out the same, and the first
shop must have carried most rows over instead of checking them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import exceptions_json, make_load, query, shop_values

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse
from loader.samples.sms_v1 import ExportSpec, write_export

ENTITIES = [e.name for e in load_contract("sms_v1").entities]
FILES = {e.name: e.file for e in load_contract("sms_v1").entities}


@dataclass
class Table:
    """A CSV file as records of text; latin-1 keeps every byte, also the sample's undecodable ones."""

    header: list[str]
    records: list[list[str]]

    @classmethod
    def read(cls, data: bytes) -> Table:
        rows = list(csv.reader(io.StringIO(data.decode("latin-1"), newline="")))
        return cls(rows[0], rows[1:])

    def bytes(self) -> bytes:
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator="\r\n").writerows([self.header, *self.records])
        return out.getvalue().encode("latin-1")

    def col(self, name: str) -> int:
        return self.header.index(name)

    def find(self, **values: str) -> list[str]:
        """The first well-formed record with these values."""
        for record in self.records:
            if len(record) == len(self.header) and all(record[self.col(k)] == v for k, v in values.items()):
                return record
        raise LookupError(values)


def load_both(db: Warehouse, tmp_path: Path, files: dict[str, Table], load_id: str,
              monkeypatch: pytest.MonkeyPatch) -> None:
    data = {FILES[entity]: table.bytes() for entity, table in files.items()}
    for shop, recheck in (("carry", "false"), ("full", "true")):
        monkeypatch.setenv("LOADER_RECHECK_UNCHANGED", recheck)
        folder = make_load(tmp_path / "imports", data, shop=shop, load_id=load_id)
        assert main(["run", str(folder)]) == 0, (shop, load_id)


def outcome(shop: str, load_id: str, capsys) -> tuple[dict, list]:
    capsys.readouterr()
    main(["report", f"acme/{shop}/{load_id}", "--json"])
    report = json.loads(capsys.readouterr().out)
    exceptions = exceptions_json(f"acme/{shop}/{load_id}", capsys)
    return report["entities"], sorted(tuple(sorted(e.items())) for e in exceptions)


def assert_same(db: Warehouse, load_id: str, capsys) -> None:
    carry, full = outcome("carry", load_id, capsys), outcome("full", load_id, capsys)
    assert carry[0] == full[0], load_id
    assert carry[1] == full[1], load_id
    for entity in ENTITIES:
        assert shop_values(db, entity, "carry") == shop_values(db, entity, "full"), (load_id, entity)


def carried(db: Warehouse, shop: str, load_id: str) -> dict[str, int]:
    return dict(query(db, "select rf.entity, rf.carried_rows from loader_registry.run_files rf"
                          " join loader_registry.runs r using (run_id)"
                          " where r.shop_id = %s and r.load_id = %s and r.status = 'completed'", (shop, load_id)))


@pytest.fixture
def first(tmp_path: Path) -> dict[str, Table]:
    export = write_export(tmp_path / "sample", ExportSpec(customers=40, load_id="l1", seed=5))
    return {entity: Table.read((export.folder / FILES[entity]).read_bytes()) for entity in ENTITIES}


def test_a_reload_carries_unchanged_rows_and_every_rule_stays_exact(
    db: Warehouse, tmp_path: Path, first: dict[str, Table], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    load_both(db, tmp_path, first, "l1", monkeypatch)
    assert_same(db, "l1", capsys)
    assert sum(carried(db, "carry", "l1").values()) == 0
    # An identical rerun in between: the next load carries the verdicts it carried over.
    load_both(db, tmp_path, first, "l1", monkeypatch)

    second = {entity: Table(t.header, [list(r) for r in t.records]) for entity, t in first.items()}
    customers, vehicles = second["customers"], second["vehicles"]
    invoices, lines, payments = second["invoices"], second["line_items"], second["payments"]
    owners = {r[vehicles.col("external_customer_id")] for r in vehicles.records[:10]}
    # A customer with vehicles and invoices becomes invalid: its unchanged children must be rejected now.
    broken = customers.find(external_customer_id=sorted(owners)[0])
    broken[customers.col("email")] = "not-an-email"
    # Another one gets a second row, written with spaces around its key: both rows are duplicates.
    twin = customers.find(external_customer_id=sorted(owners)[1])
    customers.records.append([f" {v} " if i == customers.col("external_customer_id") else v
                              for i, v in enumerate(twin)])
    # The customer rejected for its email in the first load is fixed: its unchanged vehicles load now.
    bad_email = customers.records[23]
    bad_email[customers.col("email")] = "fixed@example.com"
    # A line whose parent line has no parent: that parent now points back at it, a cycle of two.
    parent_col, key_col = lines.col("external_parent_dataline_id"), lines.col("external_dataline_id")
    keys = {r[key_col] for r in lines.records[:400] if len(r) == len(lines.header)}
    child = next(r for r in lines.records[:400] if len(r) == len(lines.header) and r[parent_col] in keys
                 and lines.find(external_dataline_id=r[parent_col])[parent_col] == "")
    lines.find(external_dataline_id=child[parent_col])[parent_col] = child[key_col]
    # An invoice changes (an update); its lines do not and must stay valid.
    invoice = invoices.records[5]
    invoice[invoices.col("invoice_number")] = "changed-in-the-second-export"
    # A payment is gone, so every later payment has a new row number.
    del payments.records[2]

    load_both(db, tmp_path, second, "l2", monkeypatch)
    assert_same(db, "l2", capsys)
    moved = carried(db, "carry", "l2")
    total = sum(len(t.records) for t in second.values())
    assert sum(moved.values()) > 0.7 * total, moved
    assert moved["payments"] > 0 and moved["inventory_parts"] == len(second["inventory_parts"].records)
    assert sum(carried(db, "full", "l2").values()) == 0
    # What the changes reached was checked again, exactly: the broken customer's vehicles were rejected.
    rules = {(dict(e)["entity"], dict(e)["rule"]) for e in outcome("carry", "l2", capsys)[1]}
    assert ("vehicles", "parent_rejected") in rules and ("line_items", "cycle") in rules

    # A third export undoes the broken email: verdicts carried from a run that itself carried rows.
    third = {entity: Table(t.header, [list(r) for r in t.records]) for entity, t in second.items()}
    third["customers"].find(external_customer_id=sorted(owners)[0])[customers.col("email")] = "back@example.com"
    load_both(db, tmp_path, third, "l3", monkeypatch)
    assert_same(db, "l3", capsys)
    assert sum(carried(db, "carry", "l3").values()) > 0.7 * total


def test_nothing_is_carried_when_the_rules_changed_or_the_raw_rows_are_gone(
    db: Warehouse, tmp_path: Path, first: dict[str, Table], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    load_both(db, tmp_path, first, "l1", monkeypatch)
    second = {entity: Table(t.header, [list(r) for r in t.records]) for entity, t in first.items()}
    second["customers"].records[0][second["customers"].col("email")] = "changed@example.com"
    # Another date format is another rule set: the first load's verdicts do not apply.
    partners = tmp_path / "partners.yml"
    partners.write_text("partners:\n  acme:\n    date_format: '%d/%m/%Y'\n")
    monkeypatch.setenv("LOADER_PARTNERS_FILE", str(partners))
    load_both(db, tmp_path, second, "l2", monkeypatch)
    assert_same(db, "l2", capsys)
    assert sum(carried(db, "carry", "l2").values()) == 0

    # With the raw rows of the first two loads purged, the third checks every row that depends on them.
    query(db, "update loader_registry.runs set queued_at = queued_at - interval '100 days',"
              " started_at = started_at - interval '100 days', completed_at = completed_at - interval '100 days'")
    capsys.readouterr()
    assert main(["purge"]) == 0
    third = {entity: Table(t.header, [list(r) for r in t.records]) for entity, t in second.items()}
    third["customers"].records[1][third["customers"].col("email")] = "other@example.com"
    load_both(db, tmp_path, third, "l3", monkeypatch)
    assert_same(db, "l3", capsys)
    moved = carried(db, "carry", "l3")
    # Customers changed and their earlier raw rows are gone, so nothing that refers to them is carried.
    assert [moved[e] for e in ("customers", "vehicles", "invoices", "line_items", "payments")] == [0] * 5
