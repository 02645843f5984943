"""Hostile and malformed CSV files, each a clean load with one file changed, run through the `loader` command.

A file's problem is that row's exception, or the file's clear refusal (exit 2,
naming the file and what it looks like): never a traceback, a stuck run, a
half-landed file, or a raw table another partner can no longer load into.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from helpers import CUSTOMERS, header_only, make_load, query

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse

CUSTOMER_COLUMNS = load_contract("sms_v1").entity("customers").column_names


def run(folder: Path, capsys: pytest.CaptureFixture[str], *, land_only: bool = True) -> tuple[int, str]:
    code = main(["run", str(folder), *(["--land-only"] if land_only else [])])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def raw(db: Warehouse, entity: str, columns: str) -> list[tuple[object, ...]]:
    return query(db, f"select {columns} from raw_sms_v1.{entity} order by _file_id, _row_number")


def run_status(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select status from loader_registry.runs order by run_id")


def test_short_record_with_a_non_utf8_byte_is_a_ragged_row(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = CUSTOMERS + b"CX-1,Ren\xe9e\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0, out
    assert raw(db, "customers", "external_customer_id, _row_number, _line_number, _problem, _raw_record") == [
        ("C1", 1, 2, None, None), ("C2", 2, 3, None, None), (None, 3, 4, "ragged", "CX-1,Ren\\xe9e")]


def test_short_record_in_a_declared_cp1252_file_is_a_ragged_row_decoded(db: Warehouse, tmp_path: Path, capsys) -> None:
    (tmp_path / "partners.yml").write_text("partners:\n  legacy:\n    encoding: cp1252\n")
    customers = CUSTOMERS + b"CX-1,Ren\xe9e\r\nCX-2,Bad\x81,x\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers}, partner="legacy"), capsys)
    assert code == 0, out
    assert raw(db, "customers", "_row_number, _problem, _raw_record") == [
        (1, None, None), (2, None, None), (3, "ragged", "CX-1,Renée"), (4, "ragged", "CX-2,Bad\\x81,x")]


def test_nul_is_stored_escaped_wherever_it_is(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = CUSTOMERS + b"C3,Nu\x00ll,Doe,n@example.com\r\nCX-1,Re\x00e\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0, out
    assert raw(db, "customers", "first_name, _row_number, _problem, _problem_detail, _raw_record")[2:] == [
        ("Nu\\x00ll", 3, "encoding", "first_name", None),
        (None, 4, "ragged", "2 fields where the header has 4", "CX-1,Re\\x00e"),
    ]
    assert query(db, "select state, rows, problem_rows from loader_registry.landed_files"
                     " where entity = 'customers'") == [("landed", 4, 2)]


def test_a_failed_landing_leaves_no_raw_row_of_any_file_behind(db: Warehouse, tmp_path: Path, capsys) -> None:
    warmup = make_load(tmp_path / "warmup", shop="other")
    assert run(warmup, capsys)[0] == 0
    before = query(db, "select count(*) from raw_sms_v1.customers")
    # customers.csv lands; vehicles.csv, COPY'd beside it, fails.
    query(db, "alter table raw_sms_v1.vehicles add constraint refuse_v1 check (external_vehicle_id <> 'V1')")
    vehicles = b"external_vehicle_id,external_customer_id\r\nV1,C1\r\n"
    customers = CUSTOMERS + b"C3,Ann,Lee,x\r\n" + b"".join(b"D%d,Ann,Lee,x\r\n" % i for i in range(20_000))
    folder = make_load(tmp_path, {"customers.csv": customers, "vehicles.csv": vehicles})
    code, out = run(folder, capsys)
    assert code == 1
    assert "refuse_v1" in out
    assert query(db, "select count(*) from raw_sms_v1.customers") == before
    assert query(db, "select count(*) from raw_sms_v1.vehicles") == [(0,)]
    assert query(db, "select count(*) from loader_registry.landed_files where shop_id = 'shop-1'") == [(0,)]
    query(db, "alter table raw_sms_v1.vehicles drop constraint refuse_v1")
    assert run(folder, capsys)[0] == 0
    assert query(db, "select count(*) from raw_sms_v1.customers") == [(before[0][0] + 20_003,)]


def test_header_only_file_without_a_final_newline(db: Warehouse, tmp_path: Path, capsys) -> None:
    code, out = run(make_load(tmp_path, {"vehicles.csv": header_only("vehicles").rstrip(b"\r\n")}), capsys)
    assert code == 0, out
    assert query(db, "select rows from loader_registry.landed_files where entity = 'vehicles'") == [(0,)]


def test_quoted_newline_in_a_header_name_keeps_counts_and_lines(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = (b'external_customer_id,"first\r\nname",last_name\r\n'
                 b'C1,Ann,Smith\r\nC2,"Bob\nby",Jones\r\nC3,Cy,Doe\r\n')
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0, out
    assert raw(db, "customers", "external_customer_id, last_name, _row_number, _line_number") == [
        ("C1", "Smith", 1, 3), ("C2", "Jones", 2, 4), ("C3", "Doe", 3, 6)]
    assert "'first\\r\\nname'" in out


def _zip(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, "external_customer_id,last_name\r\nC1,Smith\r\n")
    return buffer.getvalue()


BINARY_FILES = {
    "zip": (_zip("customers.csv"), "looks like a zip archive (an .xlsx workbook is one), not CSV text"),
    "xlsx": (_zip("xl/workbook.xml"), "looks like a zip archive (an .xlsx workbook is one), not CSV text"),
    "gzip": (gzip.compress(CUSTOMERS), "looks like a gzip-compressed file, not CSV text"),
    "xls": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "looks like an old Excel workbook (.xls)"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(20), "looks like a PNG image, not CSV text"),
    "utf-16 with BOM": (CUSTOMERS.decode().encode("utf-16"), "is UTF-16 text"),
    "utf-16-be without BOM": (CUSTOMERS.decode().encode("utf-16-be"), "is UTF-16 text (big-endian"),
    "utf-16-le without BOM": (CUSTOMERS.decode().encode("utf-16-le"), "is UTF-16 text (little-endian"),
    "NUL in a header name": (b"external_customer_id,last\x00name\r\nC1,Smith\r\n", "NUL byte (in column 2)"),
}


@pytest.mark.parametrize("kind", BINARY_FILES)
def test_a_file_that_is_not_csv_text_is_refused_saying_what_it_looks_like(
    db: Warehouse, tmp_path: Path, capsys, kind: str
) -> None:
    data, expected = BINARY_FILES[kind]
    code, out = run(make_load(tmp_path, {"customers.csv": data}), capsys)
    assert code == 2, out
    assert f"customers.csv: cannot be read as CSV: it {expected}" in out or (
        kind.startswith("NUL") and f"customers.csv: cannot be read as CSV: the header holds a {expected}" in out)
    assert "Traceback" not in out
    assert run_status(db) == [("rejected",)]
    [(message,)] = query(db, "select message from loader_registry.run_problems where rule = 'csv'")
    assert "\x00" not in message
    if kind.startswith("utf-16"):
        assert "convert it to UTF-8" in message


@pytest.mark.parametrize("data", [b"\r\n" + CUSTOMERS, b"\n\n\n", b"  \r\n" + CUSTOMERS],
                         ids=["blank", "newlines", "spaces"])
def test_a_blank_line_before_the_header_is_refused_naming_the_line(
    db: Warehouse, tmp_path: Path, capsys, data: bytes
) -> None:
    code, out = run(make_load(tmp_path, {"customers.csv": data}), capsys)
    assert code == 2, out
    assert "customers.csv: cannot be read as CSV: line 1 is blank: the header must be the first line" in out
    assert run_status(db) == [("rejected",)]


def test_unknown_and_empty_header_columns_are_reported_once_each_and_the_load_completes(
    db: Warehouse, tmp_path: Path, capsys
) -> None:
    # Trailing empty columns and a repeated unknown name (spreadsheet exports), and a title line above a header.
    header = ",".join(CUSTOMER_COLUMNS)
    customers = (f"{header},notes,notes,,\r\n".encode()
                 + b"".join(b"C%d,Ann,Smith,,,,,,,,,,a,b,,\r\n" % i for i in (1, 2)))
    vehicles = b"Vehicle list,,,\r\nexternal_vehicle_id,external_customer_id,vin,year\r\nV1,C1,,2001\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers, "vehicles.csv": vehicles}), capsys,
                    land_only=False)
    assert code == 0, out
    assert run_status(db) == [("completed",)]
    rows = query(db, "select file_name, field, message from loader_registry.run_problems where rule = 'unknown_column'"
                     " order by problem_id")
    kept = "is not in the contract; its values are kept in the raw layer"
    assert rows == [
        ("customers.csv", "notes (column 13)", f"column 'notes' (column 13) {kept}"),
        ("customers.csv", "notes (column 14)", f"column 'notes' (column 14) {kept}"),
        ("customers.csv", "column 15", f"column 15 has no name and {kept}"),
        ("customers.csv", "column 16", f"column 16 has no name and {kept}"),
        ("vehicles.csv", "Vehicle list", f"column 'Vehicle list' {kept}"),
        ("vehicles.csv", "column 2", f"column 2 has no name and {kept}"),
        ("vehicles.csv", "column 3", f"column 3 has no name and {kept}"),
        ("vehicles.csv", "column 4", f"column 4 has no name and {kept}"),
    ]
    assert query(db, "select _file_id is not null, _row_number, _column_index, value from raw_sms_v1._extra_values"
                     " order by _file_id, _row_number, _column_index") == [
        (True, 1, 13, "a"), (True, 1, 14, "b"), (True, 2, 13, "a"), (True, 2, 14, "b"),
        (True, 1, 1, "external_vehicle_id"), (True, 1, 2, "external_customer_id"), (True, 1, 3, "vin"),
        (True, 1, 4, "year"), (True, 2, 1, "V1"), (True, 2, 2, "C1"), (True, 2, 4, "2001")]


def _wide_customers(unknown: int, prefix: str) -> bytes:
    names = [*CUSTOMER_COLUMNS, *(f"{prefix} {i}" for i in range(unknown))]
    rows = [",".join(["C1", "Ann", "Smith"] + [""] * (len(CUSTOMER_COLUMNS) - 3) + [str(i) for i in range(unknown)]),
            ",".join(["C2", "Bob", "Jones"] + [""] * (len(names) - 3))]
    return ("\r\n".join([",".join(names), *rows]) + "\r\n").encode()


def raw_columns(db: Warehouse) -> int:
    [(count,)] = query(db, "select count(*) from information_schema.columns"
                           " where table_schema = 'raw_sms_v1' and table_name = 'customers'")
    return int(count)


def test_unknown_columns_do_not_change_the_shared_raw_tables(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert run(make_load(tmp_path / "first", partner="first"), capsys)[0] == 0
    width = raw_columns(db)
    # Before, the first file widened raw_sms_v1.customers to 1,588 columns for good, and the second then
    # failed: "tables can have at most 1600 columns".
    code, out = run(make_load(tmp_path, {"customers.csv": _wide_customers(1570, "a")}, partner="wide"), capsys)
    assert code == 0, out
    code, out = run(make_load(tmp_path, {"customers.csv": _wide_customers(20, "b")}, partner="other"), capsys)
    assert code == 0, out
    assert raw_columns(db) == width
    assert run_status(db) == [("completed",)] * 3
    assert query(db, "select f.partner_id, count(*), min(x._column_index), max(x._column_index), max(x.value)"
                     " from raw_sms_v1._extra_values x join loader_registry.landed_files f on f.file_id = x._file_id"
                     " group by 1 order by 1") == [("other", 20, 13, 32, "9"), ("wide", 1570, 13, 1582, "999")]
    assert raw(db, "customers", "external_customer_id, _row_number")[-2:] == [("C1", 1), ("C2", 2)]


def test_more_columns_than_the_limit_are_refused_naming_it(db: Warehouse, tmp_path: Path, capsys) -> None:
    code, out = run(make_load(tmp_path, {"customers.csv": _wide_customers(10_000, "x")}), capsys)
    assert code == 2, out
    assert "customers.csv: cannot be read as CSV: the header has 10,012 columns; at most 4,096 are accepted" in out
    assert run_status(db) == [("rejected",)]


def test_a_field_larger_than_the_record_limit_is_refused_saying_where(db: Warehouse, tmp_path: Path, capsys) -> None:
    lines = [b"external_customer_id,last_name,address_line1"]
    lines += [b"C%d,Smith,Main St" % i for i in range(1000)]
    lines.append(b'C1000,Smith,"' + b"x" * (50 << 20) + b'"')
    data = b"\r\n".join(lines) + b"\r\n"
    # Python's csv module refuses such a field too, so the manifest is written here.
    folder = make_load(tmp_path)
    (folder / "customers.csv").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0] = {"name": "customers.csv", "rows": 1001, "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, out = run(folder, capsys)
    assert code == 2, out
    assert ("customers.csv: cannot be read as CSV: a record longer than 4 MiB, the limit for one record, "
            "starts after data record 1,000") in out
    assert run_status(db) == [("rejected",)]
