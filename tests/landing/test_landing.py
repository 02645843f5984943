"""Landing into raw_sms_v1 against a real PostgreSQL, driven through the `loader` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from helpers import CUSTOMERS, header_only, make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.formats import csv_reader


def run(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(folder), "--land-only"])
    return code, capsys.readouterr().out


def raw(db: Warehouse, entity: str, columns: str) -> list[tuple[object, ...]]:
    return query(db, f"select {columns} from raw_sms_v1.{entity} order by _file_id, _row_number")


def extra_values(db: Warehouse) -> list[tuple[object, ...]]:
    """Unknown columns' values: (file, header name, row number, value), by the header the file was landed with."""
    return query(db, "select f.file_name, f.header->'names'->>(x._column_index - 1), x._row_number, x.value"
                     " from raw_sms_v1._extra_values x join loader_registry.landed_files f on f.file_id = x._file_id"
                     " order by x._file_id, x._row_number, x._column_index")


def test_landing_keeps_values_verbatim_with_row_and_line_numbers(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = (
        b"external_customer_id,first_name,last_name,company_name,address_line1\r\n"
        b'C1,Ann,"Smith, Jr.",,"12 Main St"\r\n'
        b'C2,Bob,"O""Brien",,"Line one\r\nLine two\nLine three"\r\n'
        b"C3,  Cy  ,Doe,,\r\n"
    )
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0, out
    rows = raw(db, "customers", "external_customer_id, first_name, last_name, address_line1, _row_number, _line_number")
    assert rows == [
        ("C1", "Ann", "Smith, Jr.", "12 Main St", 1, 2),
        ("C2", "Bob", 'O"Brien', "Line one\r\nLine two\nLine three", 2, 3),
        ("C3", "  Cy  ", "Doe", None, 3, 6),
    ]


def test_lineage_reaches_load_file_and_digest(db: Warehouse, tmp_path: Path, capsys) -> None:
    folder = make_load(tmp_path, partner="p1", shop="s1", load_id="l1")
    assert run(folder, capsys)[0] == 0
    manifest = {f["name"]: f["sha256"] for f in json.loads((folder / "manifest.json").read_text())["files"]}
    rows = query(db, "select f.partner_id, f.shop_id, f.first_load_id, f.file_name, f.sha256, count(*)"
                     " from raw_sms_v1.customers r join loader_registry.landed_files f on f.file_id = r._file_id"
                     " group by 1, 2, 3, 4, 5")
    assert rows == [("p1", "s1", "l1", "customers.csv", manifest["customers.csv"], 2)]


def test_bom_crlf_header_case_spacing_and_shuffled_columns(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = b"\xef\xbb\xbf  EMAIL ,Last_Name,  External_Customer_ID\r\nann@example.com,Smith,C1\r\n"
    vehicles = b"VIN,external_customer_id,External_Vehicle_Id\nJH4KA7561PC008269,C1,V1\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers, "vehicles.csv": vehicles}), capsys)
    assert code == 0, out
    assert raw(db, "customers", "external_customer_id, last_name, email") == [("C1", "Smith", "ann@example.com")]
    assert raw(db, "vehicles", "external_vehicle_id, external_customer_id, vin, _line_number") == [
        ("V1", "C1", "JH4KA7561PC008269", 2)]


def test_unknown_column_is_kept_and_reported(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = b"external_customer_id,last_name,Loyalty Tier\r\nC1,Smith,gold\r\nC2,Jones,\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0
    assert "Loyalty Tier" in out and "unknown_column" in out
    assert raw(db, "customers", "external_customer_id") == [("C1",), ("C2",)]
    # The empty value of C2 is no value: only C1's is kept.
    assert extra_values(db) == [("customers.csv", "Loyalty Tier", 1, "gold")]
    assert query(db, "select file_name, field, rule, severity from loader_registry.run_problems") == [
        ("customers.csv", "Loyalty Tier", "unknown_column", "warning")]


def test_sql_looking_header_is_kept_as_data(db: Warehouse, tmp_path: Path, capsys) -> None:
    query(db, "create table public.x (id int)")
    try:
        customers = b'external_customer_id,last_name,"""; drop table x; --"\r\nC1,Smith,boom\r\n'
        code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
        assert code == 0, out
        assert query(db, "select to_regclass('public.x') is not null") == [(True,)]
        assert extra_values(db) == [("customers.csv", '"; drop table x; --', 1, "boom")]
        header = query(db, "select header->'names' from loader_registry.landed_files where entity = 'customers'")
        assert header == [(["external_customer_id", "last_name", '"; drop table x; --'],)]
    finally:
        query(db, "drop table if exists public.x")


def test_missing_required_column_rejects_the_file_with_a_clear_message(db: Warehouse, tmp_path: Path, capsys) -> None:
    vehicles = b"external_vehicle_id,vin\r\nV1,JH4KA7561PC008269\r\n"
    code, out = run(make_load(tmp_path, {"vehicles.csv": vehicles}), capsys)
    assert "vehicles.csv: required column 'external_customer_id' is missing" in out
    assert query(db, "select file_name, field, rule, severity from loader_registry.run_problems") == [
        ("vehicles.csv", "external_customer_id", "required", "error")]
    # The rows stay in raw, verbatim, with the missing column empty, for the validation layer to reject.
    assert raw(db, "vehicles", "external_vehicle_id, external_customer_id") == [("V1", None)]
    assert query(db, "select error_count from loader_registry.runs") == [(1,)]
    assert code == 0


def test_ragged_records_are_kept_and_flagged(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = (
        b"external_customer_id,last_name,email\r\n"
        b"C1,Smith,a@example.com\r\n"
        b"C2,Jones\r\n"
        b'C3,"multi\r\nline",c@example.com,extra\r\n'
        b"C4,Doe,d@example.com\r\n"
        b'C5,"never closed,x\r\n'
    )
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0, out
    assert raw(db, "customers", "external_customer_id, _row_number, _line_number, _problem, _raw_record") == [
        ("C1", 1, 2, None, None),
        (None, 2, 3, "ragged", "C2,Jones"),
        (None, 3, 4, "ragged", 'C3,"multi\r\nline",c@example.com,extra'),
        ("C4", 4, 6, None, None),
        (None, 5, 7, "ragged", 'C5,"never closed,x'),
    ]
    assert query(db, "select error_count from loader_registry.runs") == [(3,)]


def test_invalid_utf8_is_flagged_not_replaced_silently(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = b"external_customer_id,last_name,city\r\nC1,Smith,Z\xfcrich\r\nC2,Jones,Bern\r\nC3,Nul\x00l,Basel\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers}), capsys)
    assert code == 0, out
    assert raw(db, "customers", "external_customer_id, last_name, city, _problem, _problem_detail") == [
        ("C1", "Smith", "Z\\xfcrich", "encoding", "city"),
        ("C2", "Jones", "Bern", None, None),
        ("C3", "Nul\\x00l", "Basel", "encoding", "last_name"),
    ]


def test_declared_cp1252_encoding(db: Warehouse, tmp_path: Path, capsys) -> None:
    (tmp_path / "partners.yml").write_text("partners:\n  legacy:\n    encoding: cp1252\n")
    customers = "external_customer_id,last_name,city\r\nC1,Müller,Zürich\r\nC2,Côté,Montréal\r\n".encode("cp1252")
    customers += b"C3,Bad\x81Byte,X\r\n"
    code, out = run(make_load(tmp_path, {"customers.csv": customers}, partner="legacy"), capsys)
    assert code == 0, out
    assert raw(db, "customers", "last_name, city, _problem") == [
        ("Müller", "Zürich", None), ("Côté", "Montréal", None), ("Bad\\x81Byte", "X", "encoding")]


def test_empty_and_header_only_files_land_as_zero_rows(db: Warehouse, tmp_path: Path, capsys) -> None:
    code, out = run(make_load(tmp_path, {"vehicles.csv": b"", "payments.csv": header_only("payments")}), capsys)
    assert code == 0, out
    for entity in ("vehicles", "payments", "suppliers"):
        assert query(db, f"select count(*) from raw_sms_v1.{entity}") == [(0,)]
    assert query(db, "select entity, rows from loader_registry.landed_files where entity in ('vehicles','payments')"
                     " order by entity") == [("payments", 0), ("vehicles", 0)]


def test_identical_rerun_lands_nothing_new(db: Warehouse, tmp_path: Path, capsys) -> None:
    folder = make_load(tmp_path)
    assert run(folder, capsys)[0] == 0
    before = query(db, "select count(*), max(_file_id) from raw_sms_v1.customers")
    code, out = run(folder, capsys)
    assert code == 0
    assert "already landed" in out
    assert query(db, "select count(*), max(_file_id) from raw_sms_v1.customers") == before
    assert query(db, "select count(*) from loader_registry.landed_files") == [(7,)]
    assert query(db, "select newly_landed, count(*) from loader_registry.run_files group by 1 order by 1") == [
        (False, 7), (True, 7)]


def test_identical_rerun_in_a_new_process_does_not_import_dlt(db: Warehouse, tmp_path: Path) -> None:
    # Importing dlt costs about half a second; a rerun that lands nothing should not pay it.
    script = (
        "import sys, threading\n"
        "from loader.cli import main\n"
        "code = main(['run', sys.argv[1], '--land-only'])\n"
        "dlt = any(m.split('.')[0] in ('dlt', 'adbc_driver_postgresql') for m in sys.modules)\n"
        "dlt = dlt or any(t.name == 'loader-import-dlt' for t in threading.enumerate())\n"
        "print('dlt imported:', dlt)\n"
        "sys.exit(code)\n"
    )
    folder = make_load(tmp_path)
    outputs = [subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
               for _ in range(2)]
    assert "dlt imported: True" in outputs[0].stdout
    assert "already landed" in outputs[1].stdout
    assert "dlt imported: False" in outputs[1].stdout


def test_same_file_in_a_later_load_is_stored_once(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert run(make_load(tmp_path, load_id="first"), capsys)[0] == 0
    assert run(make_load(tmp_path, load_id="second"), capsys)[0] == 0
    assert query(db, "select count(*) from raw_sms_v1.customers") == [(2,)]
    other_shop = make_load(tmp_path, shop="shop-2", load_id="first")
    assert run(other_shop, capsys)[0] == 0
    assert query(db, "select count(*) from raw_sms_v1.customers") == [(4,)]


def test_half_landed_file_is_cleared_before_landing_again(db: Warehouse, tmp_path: Path, capsys) -> None:
    folder = make_load(tmp_path)
    assert run(folder, capsys)[0] == 0
    # Simulate a crash after the COPY of one chunk: the file is still 'landing' and some rows are there.
    query(db, "update loader_registry.landed_files set state = 'landing' where entity = 'customers'")
    query(db, "insert into raw_sms_v1.customers (external_customer_id, _file_id, _row_number)"
              " select 'junk', file_id, 99 from loader_registry.landed_files where entity = 'customers'")
    assert run(folder, capsys)[0] == 0
    assert raw(db, "customers", "external_customer_id") == [("C1",), ("C2",)]
    assert query(db, "select state from loader_registry.landed_files where entity = 'customers'") == [("landed",)]


def test_refused_folder_writes_no_raw_row_and_records_reasons(db: Warehouse, tmp_path: Path, capsys) -> None:
    folder = make_load(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["rows"] = 5
    (folder / "payments.csv").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, out = run(folder, capsys)
    assert code == 2
    assert "customers.csv: has 2 data records, manifest.json says 5" in out
    assert "payments.csv" in out
    assert query(db, "select to_regclass('raw_sms_v1.customers')") == [(None,)]
    assert query(db, "select status, completed_at >= started_at from loader_registry.runs") == [("rejected", True)]
    assert sorted(query(db, "select rule, file_name from loader_registry.run_problems")) == [
        ("missing_file", "payments.csv"), ("row_count", "customers.csv")]
    assert query(db, "select status from loader_registry.run_status_history order by history_id") == [
        ("queued",), ("running",), ("rejected",)]


def test_bad_path_is_refused_and_recorded(db: Warehouse, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "acme" / "shop 1" / "load-1"
    folder.mkdir(parents=True)
    code, out = run(folder, capsys)
    assert code == 2
    assert "shop_id 'shop 1' is not allowed" in out
    assert query(db, "select shop_id, status from loader_registry.runs") == [("shop 1", "rejected")]


def test_customers_larger_than_one_batch(
    db: Warehouse, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # About ten parser batches: clean batches and the one with the ragged record are spooled to different chunks.
    monkeypatch.setattr(csv_reader, "BLOCK_SIZE", 256 << 10)
    lines = [b"external_customer_id,last_name,address_line1"]
    for i in range(120_000):
        lines.append(b'C%d,Name %d,"%d Long\nStreet"' % (i, i, i) if i % 1000 == 0 else b"C%d,Name %d,Street" % (i, i))
        if i == 70_000:
            lines.append(b"ragged,row")
    folder = make_load(tmp_path, {"customers.csv": b"\r\n".join(lines) + b"\r\n"})
    code, out = run(folder, capsys)
    assert code == 0, out
    # Every record starts one line after the previous one, plus the newlines inside its quoted field.
    rows = query(db, "select _row_number, _line_number, external_customer_id, _problem from raw_sms_v1.customers"
                     " order by _row_number")
    assert [row[0] for row in rows] == list(range(1, 120_002))
    expected_line = 2
    for row_number, line_number, ext_id, _problem in rows:
        assert line_number == expected_line, (row_number, ext_id)
        expected_line += 2 if ext_id is not None and int(ext_id[1:]) % 1000 == 0 else 1
    assert rows[70_001][2:] == (None, "ragged")
    assert [row for row in rows if row[3] is not None] == [rows[70_001]]
    assert query(db, "select count(*), count(distinct external_customer_id) from raw_sms_v1.customers"
                     " where _problem is null and _problem_detail is null and _raw_record is null") == [
        (120_000, 120_000)]


def test_history_is_append_only(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert run(make_load(tmp_path), capsys)[0] == 0
    for statement in ("update loader_registry.run_status_history set status = 'failed'",
                      "delete from loader_registry.run_status_history",
                      "truncate loader_registry.run_status_history"):
        # Also where ordinary triggers are off (session_replication_role = replica).
        for role in ("origin", "replica"):
            with pytest.raises(psycopg2.Error, match="append-only"):
                query(db, f"set session_replication_role = {role}; {statement}")
    assert query(db, "select status from loader_registry.run_status_history order by history_id") == [
        ("queued",), ("running",), ("completed",)]


def test_completed_at_cannot_precede_started_at(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert run(make_load(tmp_path), capsys)[0] == 0
    with pytest.raises(psycopg2.errors.CheckViolation):
        query(db, "update loader_registry.runs set completed_at = started_at - interval '1 second'")
    with pytest.raises(psycopg2.errors.CheckViolation):
        query(db, "update loader_registry.runs set status = 'done'")


def test_status_json_lists_runs(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert run(make_load(tmp_path), capsys)[0] == 0
    assert main(["status", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["load"] == "acme/shop-1/load-1"
    assert entry["status"] == "completed"
    assert entry["contract"] == "sms_v1"
    assert entry["completed_at"] >= entry["started_at"]


def test_header_only_customers_is_refused(db: Warehouse, tmp_path: Path, capsys) -> None:
    code, out = run(make_load(tmp_path, {"customers.csv": CUSTOMERS.split(b"\r\n")[0] + b"\r\n"}), capsys)
    assert code == 2
    assert "customers.csv: must hold at least 1 data record(s)" in out


def test_failed_landing_is_recorded_and_a_rerun_completes_without_duplicates(
    db: Warehouse, tmp_path: Path, capsys
) -> None:
    folder = make_load(tmp_path)
    warmup = {"customers.csv": b"external_customer_id,last_name\r\nW1,Warm\r\n"}
    assert run(make_load(tmp_path / "warmup", warmup, shop="other"), capsys)[0] == 0
    query(db, "alter table raw_sms_v1.customers add constraint refuse_c2 check (external_customer_id <> 'C2')")
    code, out = run(folder, capsys)
    assert code == 1
    assert "refuse_c2" in out
    [(status, message)] = query(db, "select status, message from loader_registry.runs where shop_id = 'shop-1'")
    assert status == "failed" and "refuse_c2" in message
    assert query(db, "select count(*) from raw_sms_v1.customers r join loader_registry.landed_files f"
                     " on f.file_id = r._file_id where f.shop_id = 'shop-1'") == [(0,)]
    query(db, "alter table raw_sms_v1.customers drop constraint refuse_c2")
    code, out = run(folder, capsys)
    assert code == 0, out
    assert query(db, "select r.external_customer_id from raw_sms_v1.customers r join loader_registry.landed_files f"
                     " on f.file_id = r._file_id where f.shop_id = 'shop-1' order by 1") == [("C1",), ("C2",)]
