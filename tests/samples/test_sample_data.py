"""Unit tests for loader.samples.sms_v1: small exports in temporary folders, no database.

The central check is an independent, deliberately naive reading of the contract's rules
(`reference_exceptions`): run over a generated export it must find exactly the planted errors, and nothing
in an export generated without them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import astuple, dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from loader.contracts import Column, Entity, load_contract
from loader.samples.sms_v1 import ExportSpec, main, rows_for_total, write_export, write_line_items_file

CONTRACT = load_contract("sms_v1")
# Every rule code of shared/contracts/sms_v1.md with its severity.
SEVERITY = {
    "required": "error",
    "type": "error",
    "format": "error",
    "range": "error",
    "enum": "error",
    "duplicate": "error",
    "orphan": "error",
    "parent_rejected": "error",
    "parent_mismatch": "error",
    "cycle": "error",
    "encoding": "error",
    "ragged": "error",
    "total_mismatch": "warning",
    "vin_check_digit": "warning",
    "short_phone": "warning",
    "vehicle_owner_mismatch": "warning",
    "unknown_column": "warning",
}
VIN_VALUES = dict(
    zip("0123456789ABCDEFGHJKLMNPRSTUVWXYZ", [*range(10), *range(1, 9), *range(1, 6), 7, 9, *range(2, 10)], strict=True)
)
VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\(\d{3}\) \d{3}-\d{4}$")


@dataclass
class Record:
    row_number: int
    line_number: int
    fields: list[str]


@dataclass
class Row:
    entity: str
    row_number: int
    line_number: int
    values: dict[str, str]


def read_csv(path: Path) -> tuple[list[str], list[Record]]:
    """Header and records, each record with its row number and the physical line it starts on."""
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        records = []
        last_line = reader.line_num
        for row_number, fields in enumerate(reader, start=1):
            records.append(Record(row_number, last_line + 1, fields))
            last_line = reader.line_num
    return header, records


def read_rows(folder: Path, entity: Entity) -> list[Row]:
    header, records = read_csv(folder / entity.file)
    return [
        Row(entity.name, r.row_number, r.line_number, dict(zip(header, r.fields, strict=True)))
        for r in records
        if len(r.fields) == len(header)
    ]


def vin_check_digit(vin: str) -> str:
    remainder = sum(VIN_VALUES[c] * w for c, w in zip(vin, VIN_WEIGHTS, strict=True)) % 11
    return "X" if remainder == 10 else str(remainder)


def value_rules(column: Column, value: str) -> list[str]:
    """Rules a single (trimmed) value breaks."""
    if not value:
        return ["required"] if column.required else []
    if column.type in ("int", "decimal", "money") and not NUMBER.match(value):
        return ["type"]
    if column.type == "int" and "." in value:
        return ["type"]
    if column.type == "money" and len(value.partition(".")[2]) > 2:
        return ["format"]
    if column.type == "int" and column.min is not None:
        top = date.today().year + column.max_years_ahead if column.max_years_ahead else None
        if int(value) < column.min or (top is not None and int(value) > top):
            return ["range"]
    if column.nonzero and Decimal(value) == 0:
        return ["range"]
    if column.type == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            return ["type"]
        return [] if re.match(r"^\d{4}-\d{2}-\d{2}$", value) else ["type"]
    if column.type == "datetime":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return ["type"]
    if column.type == "email" and not EMAIL.match(value):
        return ["format"]
    if column.type == "vin":
        vin = value.upper()
        if not re.match(r"^[A-HJ-NPR-Z0-9]{17}$", vin):
            return ["format"]
        if vin[8] != vin_check_digit(vin):
            return ["vin_check_digit"]
    if column.type == "enum" and value.lower() not in column.values:
        return ["enum"]
    return []


def reference_exceptions(folder: Path) -> set[tuple[str, int, int, str, str]]:
    """The exceptions the contract's rules give for a load folder, found the slow and obvious way."""
    found: set[tuple[str, int, int, str, str]] = set()
    rejected: set[tuple[str, int]] = set()
    accepted_keys: dict[str, set[str]] = {}
    all_keys: dict[str, set[str]] = {}
    owners: dict[str, str] = {}

    def report(row: Row, field: str, rule: str) -> None:
        found.add((row.entity, row.row_number, row.line_number, field, rule))
        if SEVERITY[rule] == "error":
            rejected.add((row.entity, row.row_number))

    for entity in CONTRACT.entities:
        header, records = read_csv(folder / entity.file)
        for name in header:
            if name not in entity.column_names:
                found.add((entity.name, 0, 1, name, "unknown_column"))
        for record in records:
            if len(record.fields) != len(header):
                report(Row(entity.name, record.row_number, record.line_number, {}), "", "ragged")
        rows = read_rows(folder, entity)
        for row in rows:
            row.values = {name: value.strip() for name, value in row.values.items()}
            for name, value in row.values.items():
                if re.search(r"[\udc80-\udcff]", value):
                    report(row, name, "encoding")
            for column in entity.columns:
                for rule in value_rules(column, row.values[column.name]):
                    report(row, column.name, rule)
            for one_of in entity.required_one_of:
                if not any(row.values[name] for name in one_of.columns):
                    report(row, one_of.report_field, "required")
        check_entity(entity, rows, report, accepted_keys, all_keys, owners, rejected)
        all_keys[entity.name] = {row.values[entity.key] for row in rows}
        accepted_keys[entity.name] = {
            row.values[entity.key] for row in rows if (entity.name, row.row_number) not in rejected
        }
    return found


def check_entity(entity, rows, report, accepted_keys, all_keys, owners, rejected) -> None:
    """Rules that need more than one row: duplicates, references, line parents, and the entity's warnings."""
    key_counts = Counter(row.values[entity.key] for row in rows if row.values[entity.key])
    for row in rows:
        values = row.values
        if key_counts[values[entity.key]] > 1:
            report(row, entity.key, "duplicate")
        for column in entity.columns:
            parent = column.references
            if parent is None or parent == entity.name or not values[column.name]:
                continue
            if values[column.name] not in all_keys[parent]:
                report(row, column.name, "orphan")
            elif values[column.name] not in accepted_keys[parent]:
                report(row, column.name, "parent_rejected")
        if entity.name == "customers" and values["phone"] and len(re.sub(r"\D", "", values["phone"])) < 7:
            report(row, "phone", "short_phone")
        if entity.name == "vehicles":
            owners[values["external_vehicle_id"]] = values["external_customer_id"]
        if entity.name == "invoices":
            vehicle = values["external_vehicle_id"]
            if vehicle in owners and owners[vehicle] != values["external_customer_id"]:
                report(row, "external_vehicle_id", "vehicle_owner_mismatch")
            if values["subtotal"] and values["total"]:
                tax = Decimal(values["tax_total"] or "0")
                if abs(Decimal(values["total"]) - Decimal(values["subtotal"]) - tax) > Decimal("0.01"):
                    report(row, "total", "total_mismatch")
    if entity.name == "line_items":
        check_line_parents(rows, report, rejected)


def check_line_parents(rows, report, rejected) -> None:
    by_id = {row.values["external_dataline_id"]: row for row in rows}
    parent_of = {line_id: row.values["external_parent_dataline_id"] for line_id, row in by_id.items()}

    def on_cycle(line_id: str) -> bool:
        node = parent_of[line_id]
        for _ in range(len(parent_of)):
            if node == line_id:
                return True
            if node not in parent_of:
                return False
            node = parent_of[node]
        return False

    for row in rows:
        line_id, parent = row.values["external_dataline_id"], row.values["external_parent_dataline_id"]
        if not parent:
            continue
        if on_cycle(line_id):
            report(row, "external_parent_dataline_id", "cycle")
        elif parent not in by_id:
            report(row, "external_parent_dataline_id", "orphan")
        elif by_id[parent].values["external_invoice_id"] != row.values["external_invoice_id"]:
            report(row, "external_parent_dataline_id", "parent_mismatch")

    def is_rejected(line_id: str) -> bool:
        row = by_id[line_id]
        if ("line_items", row.row_number) in rejected:
            return True
        parent = parent_of[line_id]
        return bool(parent) and parent in by_id and is_rejected(parent)

    for row in rows:
        parent = row.values["external_parent_dataline_id"]
        if parent in by_id and ("line_items", row.row_number) not in rejected and is_rejected(parent):
            report(row, "external_parent_dataline_id", "parent_rejected")


def planted_set(result) -> set[tuple[str, int, int, str, str]]:
    return {astuple(p) for p in result.planted}


def clean_rows(folder: Path, result) -> dict[str, list[Row]]:
    """Rows of each entity that no planted error names."""
    planted = {(p.entity, p.row_number) for p in result.planted}
    return {
        e.name: [row for row in read_rows(folder, e) if (e.name, row.row_number) not in planted]
        for e in CONTRACT.entities
    }


@pytest.fixture(scope="module")
def planted_export(tmp_path_factory):
    return write_export(tmp_path_factory.mktemp("planted"), ExportSpec(customers=60))


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory):
    return write_export(tmp_path_factory.mktemp("clean"), ExportSpec(customers=60, seed=7, plant_errors=False))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_same_spec_gives_byte_identical_files(tmp_path):
    spec = ExportSpec(customers=25, seed=3)
    first = write_export(tmp_path / "a", spec)
    second = write_export(tmp_path / "b", spec)
    assert folder_bytes(first.folder) == folder_bytes(second.folder)
    assert first.planted == second.planted
    other = write_export(tmp_path / "c", ExportSpec(customers=25, seed=4))
    assert folder_bytes(other.folder)["line_items.csv"] != folder_bytes(first.folder)["line_items.csv"]


def test_folder_layout_and_manifest_match_the_files(planted_export):
    folder = planted_export.folder
    assert folder.relative_to(folder.parents[2]) == Path("demo-partner/shop-001/2026-11-22_demo")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["load_id"] == folder.name
    assert manifest["contract"] == "sms_v1"
    assert [f["name"] for f in manifest["files"]] == [e.file for e in CONTRACT.entities]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(e.file for e in CONTRACT.entities), "manifest.json"])
    for entry in manifest["files"]:
        data = (folder / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == len(read_csv(folder / entry["name"])[1])
    assert planted_export.rows == {e.name: f["rows"] for e, f in zip(CONTRACT.entities, manifest["files"], strict=True)}
    manifest_time = (folder / "manifest.json").stat().st_mtime_ns
    assert all(manifest_time >= (folder / e.file).stat().st_mtime_ns for e in CONTRACT.entities)


def test_headers_are_the_contract_columns_in_order(planted_export, clean_export):
    for entity in CONTRACT.entities:
        assert read_csv(clean_export.folder / entity.file)[0] == list(entity.column_names)
        extra = ["loyalty_tier"] if entity.name == "customers" else []
        assert read_csv(planted_export.folder / entity.file)[0] == [*entity.column_names, *extra]


def test_every_rule_code_is_planted_one_to_three_times(planted_export):
    counts = Counter(p.rule for p in planted_export.planted)
    assert set(counts) == set(SEVERITY)
    assert all(1 <= n <= 3 for n in counts.values()), counts


@pytest.mark.parametrize("spec", [ExportSpec(customers=60), ExportSpec(customers=1, seed=1)], ids=["60", "1"])
def test_reference_rules_find_exactly_the_planted_errors(tmp_path, spec):
    result = write_export(tmp_path, spec)
    assert len(set(result.planted)) == len(result.planted)
    assert reference_exceptions(result.folder) == planted_set(result)


def test_export_without_planted_errors_breaks_no_rule(clean_export):
    assert clean_export.planted == []
    assert reference_exceptions(clean_export.folder) == set()


def test_planted_positions_are_physical_lines(planted_export):
    folder = planted_export.folder
    multi_line_before_plant = False
    for error in planted_export.planted:
        header, records = read_csv(folder / f"{error.entity}.csv")
        if error.row_number == 0:
            assert (error.line_number, error.field) == (1, header[-1])
            continue
        record = records[error.row_number - 1]
        assert record.row_number == error.row_number
        assert record.line_number == error.line_number
        # The row is written as the plant recorded it: its field holds something, or it is the ragged one.
        assert error.rule == "ragged" or error.field in dict(zip(header, record.fields, strict=True))
        multi_line_before_plant |= error.line_number > error.row_number + 1
    # Only meaningful if some quoted newline comes before a planted row.
    assert multi_line_before_plant


def test_line_number_of_every_record_counts_embedded_newlines(planted_export):
    data = (planted_export.folder / "line_items.csv").read_bytes()
    _, records = read_csv(planted_export.folder / "line_items.csv")
    starts = [0, *(i + 1 for i, byte in enumerate(data) if byte == ord("\n"))]
    newlines_inside = 0
    for record in records:
        raw_line = data[starts[record.line_number - 1] :].split(b"\r\n", 1)[0]
        assert raw_line.startswith(record.fields[0].encode() + b",")
        newlines_inside += sum(field.count("\n") for field in record.fields)
    assert newlines_inside > 0
    assert data.count(b"\n") == 1 + len(records) + newlines_inside


def test_clean_rows_reference_existing_accepted_parents(planted_export):
    rows = clean_rows(planted_export.folder, planted_export)
    customers = {r.values["external_customer_id"] for r in rows["customers"]}
    owner = {r.values["external_vehicle_id"]: r.values["external_customer_id"] for r in rows["vehicles"]}
    invoices = {r.values["external_invoice_id"] for r in rows["invoices"]}
    assert all(r.values["external_customer_id"] in customers for r in rows["vehicles"])
    for invoice in rows["invoices"]:
        assert invoice.values["external_customer_id"] in customers
        vehicle = invoice.values["external_vehicle_id"]
        assert vehicle == "" or owner[vehicle] == invoice.values["external_customer_id"]
    assert all(r.values["external_invoice_id"] in invoices for r in rows["payments"])
    seen: dict[str, str] = {}
    parents = 0
    for line in rows["line_items"]:
        assert line.values["external_invoice_id"] in invoices
        parent = line.values["external_parent_dataline_id"]
        if parent:
            parents += 1
            assert seen[parent] == line.values["external_invoice_id"], "parent must be earlier, same invoice"
        seen[line.values["external_dataline_id"]] = line.values["external_invoice_id"]
    assert parents > 0


def test_vins_of_unplanted_vehicles_have_correct_check_digits(planted_export):
    vehicles = clean_rows(planted_export.folder, planted_export)["vehicles"]
    assert len(vehicles) > 20
    for vehicle in vehicles:
        vin = vehicle.values["vin"]
        assert re.match(r"^[A-HJ-NPR-Z0-9]{17}$", vin)
        assert vin[8] == vin_check_digit(vin), vin


def test_values_look_like_a_real_shop(clean_export):
    folder = clean_export.folder
    as_of = date(2026, 11, 22)
    rows = {e.name: read_rows(folder, e) for e in CONTRACT.entities}
    assert all(PHONE.match(r.values["phone"]) for r in rows["customers"] if r.values["phone"])
    assert all(EMAIL.match(r.values["email"]) for r in rows["customers"] if r.values["email"])
    for customer in rows["customers"]:
        assert as_of - timedelta(days=5 * 366) <= datetime.fromisoformat(customer.values["created_at"]).date() <= as_of
    for name, column in (("invoices", "invoice_date"), ("payments", "payment_date")):
        assert all(as_of - timedelta(days=5 * 366) <= date.fromisoformat(r.values[column]) <= as_of for r in rows[name])
    for invoice in rows["invoices"]:
        subtotal, tax, total = (Decimal(invoice.values[c]) for c in ("subtotal", "tax_total", "total"))
        assert total == subtotal + tax
    money = [r.values[c] for r in rows["line_items"] for c in ("unit_price", "line_total") if r.values[c]]
    assert money and all(re.match(r"^-?\d+\.\d\d$", m) for m in money)
    assert all(Decimal(r.values["amount"]) != 0 for r in rows["payments"])
    assert {r.values["document_type"] for r in rows["invoices"]} == {"estimate", "repair_order", "invoice"}
    assert {r.values["line_type"] for r in rows["line_items"]} == {"labor", "part", "fee", "sublet", "comment"}
    descriptions = [r.values["description"] for r in rows["line_items"]]
    assert any("," in d for d in descriptions)
    assert any('"' in d for d in descriptions)
    assert any("\n" in d for d in descriptions)


def test_row_counts_follow_the_scale_knob(tmp_path):
    result = write_export(tmp_path, ExportSpec(customers=400, plant_errors=False))
    rows = result.rows
    assert rows["customers"] == 400
    assert 1.2 < rows["vehicles"] / 400 < 1.8
    assert 3.4 < rows["invoices"] / 400 < 4.6
    assert 4.5 < rows["line_items"] / rows["invoices"] < 5.5
    assert 0.8 < rows["payments"] / rows["invoices"] < 1.2
    assert (rows["inventory_parts"], rows["suppliers"]) == (200, 8)


def test_rows_for_total_sizes_a_whole_export(tmp_path):
    customers = rows_for_total(30_000)
    result = write_export(tmp_path, ExportSpec(customers=customers, plant_errors=False))
    assert 0.95 * 30_000 < sum(result.rows.values()) < 1.05 * 30_000
    assert rows_for_total(0) == 1


def test_line_items_file_alone(tmp_path):
    path = tmp_path / "line_items.csv"
    assert write_line_items_file(path, 5_000, seed=9) == 5_000
    header, records = read_csv(path)
    assert header == list(CONTRACT.entity("line_items").column_names)
    assert len(records) == 5_000
    assert all(len(r.fields) == len(header) for r in records)
    assert len({r.fields[0] for r in records}) == 5_000
    invoice_of = {}
    for record in records:
        line_id, invoice, parent = record.fields[:3]
        assert parent == "" or invoice_of[parent] == invoice
        invoice_of[line_id] = invoice
    again = tmp_path / "again.csv"
    write_line_items_file(again, 5_000, seed=9)
    assert again.read_bytes() == path.read_bytes()
    assert write_line_items_file(tmp_path / "empty.csv", 0, seed=9) == 0
    assert (tmp_path / "empty.csv").read_bytes() == (",".join(header) + "\r\n").encode()


def test_spec_refuses_unsafe_names_and_empty_exports():
    with pytest.raises(ValueError, match="partner_id"):
        ExportSpec(partner_id="../etc")
    with pytest.raises(ValueError, match="load_id"):
        ExportSpec(load_id=".hidden")
    with pytest.raises(ValueError, match="customers"):
        ExportSpec(customers=0)
    with pytest.raises(ValueError, match="contract"):
        ExportSpec(contract="k12_roster_v1")


def test_command_line_writes_an_export_and_prints_its_folder(tmp_path, capsys):
    assert main([str(tmp_path), "--customers", "5", "--seed", "3", "--no-errors", "--load-id", "L1"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == tmp_path / "demo-partner" / "shop-001" / "L1"
    assert json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["load_id"] == "L1"
    assert read_csv(folder / "customers.csv")[0] == list(CONTRACT.entity("customers").column_names)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--shop-id", "a/b"])
