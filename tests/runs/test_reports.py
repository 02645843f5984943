"""Reports for people: the exception CSV a partner opens in a spreadsheet."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from helpers import make_load

from loader.cli import main
from loader.database import Warehouse
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
