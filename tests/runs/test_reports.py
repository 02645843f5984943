"""Reports for people: the exception CSV a partner opens in a spreadsheet."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import LOADER, make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.intake.load_key import LoadKey
from loader.runs import reports
from loader.runs.reports import EXCEPTION_COLUMNS, exceptions_csv


@pytest.mark.parametrize(("value", "shown"), [
    ('=HYPERLINK("http://x.example","click")', '\'=HYPERLINK("http://x.example","click")'),
    ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("+1 23", "'+1 23"),
    ("-2+3", "'-2+3"),
    ("\tindented", "'\tindented"),
    ("\rreturn", "'\rreturn"),
    ("plain", "plain"),
    ("a=b", "a=b"),
])
def test_values_that_start_like_formulas_are_shown_as_text(value: str, shown: str) -> None:
    row = dict.fromkeys(EXCEPTION_COLUMNS, "")
    row.update(value=value, message=value, row_number=3)
    [parsed] = list(csv.DictReader(io.StringIO(exceptions_csv([row]), newline="")))
    assert parsed["value"] == shown and parsed["message"] == shown
    assert parsed["row_number"] == "3"


def test_the_exception_csv_of_a_load_neutralises_formulas(db: Warehouse, tmp_path: Path, capsys) -> None:
    customers = (b"external_customer_id,last_name,email\r\n"
                 b'C1,Smith,"=HYPERLINK(""http://evil.example"",""x"")"\r\nC2,Jones,@SUM(1)\r\n')
    assert main(["run", str(make_load(tmp_path, {"customers.csv": customers}))]) == 0
    capsys.readouterr()
    assert main(["exceptions", "acme/shop-1/load-1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out, newline="")))
    assert sorted((r["row_number"], r["rule"], r["value"]) for r in rows) == [
        ("1", "format", '\'=HYPERLINK("http://evil.example","x")'), ("2", "format", "'@SUM(1)")]
    assert main(["exceptions", "acme/shop-1/load-1", "--format", "json"]) == 0
    assert "=HYPERLINK" in capsys.readouterr().out.replace('\\"', '"')


# Customers with broken e-mails (two like formulas), a duplicated id and a missing last name; vehicles of a
# customer who is not in the load and with bad VINs: exception rows of several entities, rules and severities.
MESSY = {
    "customers.csv": (
        "external_customer_id,first_name,last_name,email,phone\r\n"
        + "".join(f"C{i},Ann,Lee{i},{'bad' + str(i) if i % 3 == 0 else f'c{i}@example.com'},555-01{i:02d}\r\n"
                  for i in range(1, 16))
        + 'C3,Dup,Lee,dup@example.com,\r\nC20,Eve,,"=HYPERLINK(""http://evil.example"",""x"")",\r\n'
        + "C21,Bo,Ray,@SUM(1),+1 555\r\n"
    ).encode(),
    "vehicles.csv": (
        "external_vehicle_id,external_customer_id,vin\r\n"
        + "".join(f"V{i},{'C99' if i % 2 else 'C1'},{'BAD' + str(i) if i % 3 else '1HGCM82633A004352'}\r\n"
                  for i in range(1, 9))
    ).encode(),
}


def cli_csv(*args: str) -> bytes:
    """`loader exceptions ... --format csv` as the partner gets it: the bytes on its standard output."""
    proc = subprocess.run([str(LOADER), "exceptions", *args, "--format", "csv"], env={**os.environ},
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def chunked(db: Warehouse, load: LoadKey | int, entity: str | None = None) -> list[str]:
    with contextlib.closing(db.connect()) as conn:
        return list(reports.exceptions_csv_chunks(conn, load, entity))


def all_pages(db: Warehouse, run_id: int, per_page: int, **filters: Any) -> tuple[list[dict[str, Any]], set[int]]:
    """Every page of the report, page after page until one comes back short, and the totals each page gave."""
    rows: list[dict[str, Any]] = []
    totals = set()
    with contextlib.closing(db.connect()) as conn:
        while True:
            page, total = reports.exceptions_page(conn, run_id, limit=per_page, offset=len(rows), **filters)
            rows += page
            totals.add(total)
            if len(page) < per_page:
                return rows, totals


def test_the_dashboards_reads_of_a_report_are_the_commands(db: Warehouse, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked CSV byte for byte the CLI's; pages and groups cover exactly the rows `loader exceptions` lists."""
    assert main(["run", str(make_load(tmp_path, MESSY))]) == 0
    key = LoadKey.parse("acme/shop-1/load-1")
    [(run_id,)] = query(db, "select run_id from loader_registry.runs")
    with contextlib.closing(db.connect()) as conn:
        listed = reports.exceptions(conn, key)
    assert listed is not None
    stored = query(db, "select count(*), count(distinct entity), count(distinct rule), count(distinct severity)"
                       " from loader_registry.run_exceptions")
    assert stored == [(len(listed), 2, stored[0][2], 2)] and stored[0][2] >= 4, stored

    # A few rows per chunk, so that the rows are written over several chunks.
    monkeypatch.setattr(reports, "_CSV_ROWS_PER_CHUNK", 4)
    chunks = chunked(db, key)
    assert len(chunks) == len(listed) // 4 + 1
    whole = cli_csv("acme/shop-1/load-1")
    assert "".join(chunks).encode() == whole
    assert "".join(chunked(db, int(str(run_id)))).encode() == whole
    assert "".join(chunked(db, key, "vehicles")).encode() == cli_csv("acme/shop-1/load-1", "--entity", "vehicles")
    parsed = list(csv.DictReader(io.StringIO(whole.decode(), newline="")))
    assert len(parsed) == len(listed)
    values = {r["value"] for r in parsed}
    assert {'\'=HYPERLINK("http://evil.example","x")', "'@SUM(1)"} <= values
    assert not any(v.startswith(("=", "@", "+", "-")) for v in values)

    every = [tuple(r.values()) for r in listed]
    assert len(set(every)) == len(every)
    for per_page in (1, 4, 7, 1000):
        rows, totals = all_pages(db, int(str(run_id)), per_page)
        assert rows == listed and totals == {len(listed)}
    for filters in ({"entity": "vehicles"}, {"rule": "format"}, {"severity": "warning"},
                    {"entity": "customers", "rule": "format", "severity": "error"}, {"rule": "no_such_rule"}):
        want = [r for r in listed if all(r[k] == v for k, v in filters.items())]
        rows, totals = all_pages(db, int(str(run_id)), 3, **filters)
        assert rows == want and totals == {len(want)}, filters
    with contextlib.closing(db.connect()) as conn:
        groups = reports.exception_groups(conn, int(str(run_id)))
        with pytest.raises(LookupError, match="unknown run 999999"):
            reports.exceptions_page(conn, 999999)
        with pytest.raises(LookupError, match="unknown load acme/shop-1/nope"):
            reports.exceptions_csv_chunks(conn, LoadKey.parse("acme/shop-1/nope"))
        with pytest.raises(ValueError, match="offset must be 0 or more"):
            reports.exceptions_page(conn, int(str(run_id)), offset=-1)
    assert {(g.entity, g.rule, g.severity): g.rows for g in groups} == Counter(
        (r["entity"], r["rule"], r["severity"]) for r in listed)


def test_a_refused_loads_report_is_its_problems_on_every_read(db: Warehouse, tmp_path: Path) -> None:
    folder = make_load(tmp_path, {"vehicles.csv": b"external_vehicle_id,external_customer_id\r\nV1,C1\r\n"})
    # Changed after the manifest was written: its digest and row count no longer match.
    (folder / "customers.csv").write_bytes(b"external_customer_id,last_name\r\n=C1,Smith\r\n")
    (folder / "vehicles.csv").write_bytes(b"external_vehicle_id,external_customer_id\r\n")
    assert main(["run", str(folder)]) == 2
    [(run_id, status)] = query(db, "select run_id, status from loader_registry.runs")
    assert status == "rejected"
    problems = query(db, "select coalesce(entity, ''), rule, severity, file_name, message"
                         " from loader_registry.run_problems order by problem_id")
    assert len(problems) >= 2
    key = LoadKey.parse("acme/shop-1/load-1")
    with contextlib.closing(db.connect()) as conn:
        listed = reports.exceptions(conn, key)
        groups = reports.exception_groups(conn, int(str(run_id)))
    assert listed is not None
    assert [(r["entity"], r["rule"], r["severity"], r["value"], r["message"]) for r in listed] == problems
    assert all(r["row_number"] == 0 for r in listed)
    rows, totals = all_pages(db, int(str(run_id)), 1)
    assert rows == listed and totals == {len(listed)}
    assert all_pages(db, int(str(run_id)), 2, entity="vehicles")[0] == [r for r in listed if r["entity"] == "vehicles"]
    assert {(g.entity, g.rule, g.severity): g.rows for g in groups} == Counter(
        (e, r, s) for e, r, s, _, _ in problems)
    assert "".join(chunked(db, key)).encode() == cli_csv("acme/shop-1/load-1")
    assert "".join(chunked(db, key, "customers")).encode() == cli_csv("acme/shop-1/load-1", "--entity", "customers")
