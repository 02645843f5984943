"""dbt staging: the row-level rules of sms_v1, checked by dbt on a real PostgreSQL, row by row."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.samples.sms_v1 import ExportSpec, write_export

REPO = Path(__file__).resolve().parents[2]
# Rules that need other rows (or the header); intermediate models report them, not staging.
NOT_ROW_LEVEL = {"duplicate", "orphan", "parent_rejected", "parent_mismatch", "cycle", "vehicle_owner_mismatch",
                 "unknown_column"}

CUSTOMERS = (
    b"external_customer_id,first_name,last_name,company_name,email,phone,created_at\r\n"
    b"C1,Ann,Smith,,ANN@Example.com,+1 555 201 0000,2024-01-01T10:00:00+02:00\r\n"
    b"C2,Bob,  ,,bob@@example.com,555-12,yesterday\r\n"
    b" ,Cy,Doe,,,,\r\n"
    b'C4,"Two\r\nlines",Roe,,,,\r\n'
    b"C5,Ed,,Poe Ltd,,,2024-02-30\r\n"
)
VEHICLES = (
    b"external_vehicle_id,external_customer_id,vin,year,odometer\r\n"
    b"V1,C1,jh4ka7561pc008269,2020,1000\r\n"
    b"V2,C1,JH4KA7562PC008269,1885,-5\r\n"
    b"V3,C1,JH4KA7561PC008269,2020,1,000\r\n"
)
PAYMENTS = (
    b"external_payment_id,external_invoice_id,payment_date,amount,method\r\n"
    b"P1,I1,2024-03-15,0.00,Card\r\n"
    b"P2,I1,03/15/2024,$45.00,bitcoin\r\n"
    b"P3,I1,2024-03-15,12.345,\r\n"
)


def run_staging(db: Warehouse, monkeypatch: pytest.MonkeyPatch, folder: Path) -> int:
    """Land the folder with the loader, then `dbt build` staging for that run in-process; return the run id."""
    from dbt.cli.main import dbtRunner

    assert main(["run", str(folder)]) == 0
    [(run_id,)] = query(db, "select max(run_id) from loader_registry.runs")
    for name, value in db.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO / "dbt_project")
    args = ["build", "--select", "staging", "--vars", f"{{run_id: {run_id}}}", "--profiles-dir", str(REPO)]
    result = dbtRunner().invoke(args)
    assert result.success, result.exception
    return int(run_id)


def exceptions(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select entity, row_number, line_number, field, rule, severity"
                     " from analytics_staging.stg_sms__row_exceptions order by 1, 2, 4, 5")


def test_planted_problems_become_exact_exception_rows(db: Warehouse, tmp_path: Path, monkeypatch, capsys) -> None:
    files = {"customers.csv": CUSTOMERS, "vehicles.csv": VEHICLES, "payments.csv": PAYMENTS}
    run_staging(db, monkeypatch, make_load(tmp_path, files))
    capsys.readouterr()
    assert exceptions(db) == [
        ("customers", 2, 3, "created_at", "type", "error"),
        ("customers", 2, 3, "email", "format", "error"),
        ("customers", 2, 3, "last_name", "required", "error"),
        ("customers", 2, 3, "phone", "short_phone", "warning"),
        ("customers", 3, 4, "external_customer_id", "required", "error"),
        # A quoted field spanning two lines: the next record starts two lines further down.
        ("customers", 5, 7, "created_at", "type", "error"),
        ("payments", 1, 2, "amount", "range", "error"),
        ("payments", 2, 3, "amount", "type", "error"),
        ("payments", 2, 3, "method", "enum", "error"),
        ("payments", 2, 3, "payment_date", "type", "error"),
        ("payments", 3, 4, "amount", "format", "error"),
        ("payments", 3, 4, "method", "required", "error"),
        ("vehicles", 2, 3, "odometer", "range", "error"),
        ("vehicles", 2, 3, "vin", "vin_check_digit", "warning"),
        ("vehicles", 2, 3, "year", "range", "error"),
        # An unquoted thousands separator makes one field too many: that rule only.
        ("vehicles", 3, 4, "", "ragged", "error"),
    ]


def test_staged_values_are_normalised_and_typed(db: Warehouse, tmp_path: Path, monkeypatch, capsys) -> None:
    files = {"customers.csv": CUSTOMERS, "vehicles.csv": VEHICLES, "payments.csv": PAYMENTS}
    run_staging(db, monkeypatch, make_load(tmp_path, files))
    capsys.readouterr()
    customers = query(db, "select row_number, external_customer_id, email, phone, created_at::text"
                          " from analytics_staging.stg_sms__customers order by row_number")
    assert customers[0] == (1, "C1", "ann@example.com", "+15552010000", "2024-01-01 08:00:00+00")
    assert customers[1] == (2, "C2", "bob@@example.com", "55512", None)
    assert customers[2][1] is None
    assert query(db, "select vin, year, odometer from analytics_staging.stg_sms__vehicles where row_number = 1") == [
        ("JH4KA7561PC008269", 2020, 1000)]
    payments = query(db, "select payment_date::text, amount::text, method from analytics_staging.stg_sms__payments"
                         " order by row_number")
    assert payments == [("2024-03-15", "0.00", "card"), (None, None, None), ("2024-03-15", None, None)]


def test_every_planted_row_level_error_of_a_sample_export_is_reported(
    db: Warehouse, tmp_path: Path, monkeypatch, capsys
) -> None:
    # The export's dates hang from its load id's date: today's keeps vehicle years inside the range rule.
    spec = ExportSpec(customers=12, load_id=f"{date.today().isoformat()}_staging", seed=7)
    export = write_export(tmp_path / "imports", spec)
    run_staging(db, monkeypatch, export.folder)
    capsys.readouterr()
    planted = {(p.entity, p.row_number, p.line_number, p.field, p.rule)
               for p in export.planted if p.rule not in NOT_ROW_LEVEL}
    assert {p[4] for p in planted} >= {"required", "type", "format", "range", "enum", "encoding", "ragged",
                                       "total_mismatch", "vin_check_digit", "short_phone"}
    reported = {row[:5] for row in exceptions(db)}
    # Clean sample rows must stay clean, so the match is exact, not just a subset.
    assert reported == planted
