"""Imported data: a shop's production rows paged, and each row's lineage back to the files of real loads."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse
from loader.publish.lineage import Lineage, production_rows, row_lineage
from loader.runs.retention import purge

CONTRACT = load_contract("sms_v1")
HEADER = "external_customer_id,first_name,last_name,email,address_line1\r\n"
LOADS = {
    # C3's e-mail is rejected.
    "load-1": "C1,Ann,Lee,ann@example.com,\r\nC2,Bob,Ray,bob@example.com,\r\nC3,Cy,Fox,not-an-email,\r\n",
    # C2 moves (a quoted line break: its record spans lines 2-3), C1 only gains spaces staging trims away,
    # C3 is fixed, C4 is new.
    "load-2": ('C2,Bob,Ray,bob@example.com,"1 Main St\nApt 2"\r\nC1, Ann ,Lee,ann@example.com,\r\n'
               "C3,Cy,Fox,cy@example.com,\r\nC4,Di,Orr,di@example.com,\r\n"),
    # C1 and C3 are not sent; C4 changes; C5 comes twice, so both of its rows are rejected.
    "load-3": ('C4,Di,Orr,di@new.example,\r\nC5,Ed,Kay,ed@example.com,\r\nC2,Bob,Ray,bob@example.com,"1 Main St\nApt 2"'
               "\r\nC5,Ed,Kay,ed@example.com,\r\n"),
}


def lineage(db: Warehouse, external_id: str) -> Lineage:
    with contextlib.closing(db.connect()) as conn:
        return row_lineage(conn, CONTRACT, "acme", "shop-1", "customers", external_id)


def steps(found: Lineage) -> list[tuple[str, int, int, str]]:
    return [(a.load_id, a.row_number, a.line_number, a.action) for a in found.appearances]


def test_rows_page_by_external_id_and_each_row_says_which_loads_wrote_it(db: Warehouse, tmp_path: Path) -> None:
    for load_id, body in LOADS.items():
        assert main(["run", str(make_load(tmp_path, {"customers.csv": (HEADER + body).encode()},
                                          load_id=load_id))]) == 0
    run_ids = dict(query(db, "select load_id, run_id from loader_registry.runs"))

    in_production = query(db, "select external_id, load_id, first_load_id from prod_sms.customers"
                              " where shop_id = 'shop-1' order by external_id")
    assert in_production == [("C1", "load-1", "load-1"), ("C2", "load-2", "load-1"), ("C3", "load-2", "load-2"),
                             ("C4", "load-3", "load-2")]
    with contextlib.closing(db.connect()) as conn:
        pages = [production_rows(conn, CONTRACT, "acme", "shop-1", "customers", 3, offset) for offset in (0, 3, 6)]
        assert [total for _, total in pages] == [4, 4, 4]
        rows = [r for page, _ in pages for r in page]
        assert [(r["external_id"], r["load_id"], r["first_load_id"]) for r in rows] == in_production
        assert {r["source"] for r in rows} == {"import"}
        assert rows[1]["address_line1"] == "1 Main St\nApt 2" and rows[3]["email"] == "di@new.example"
        assert list(rows[0])[:4] == ["external_id", "source", "load_id", "first_load_id"]
        assert "shop_key" not in rows[0]
        assert production_rows(conn, CONTRACT, "acme", "shop-9", "customers", 10, 0) == ([], 0)
        assert production_rows(conn, CONTRACT, "acme", "shop-1", "vehicles", 10, 0) == ([], 0)
        with pytest.raises(ValueError, match="entity 'clients' is not one of contract sms_v1's: customers, "):
            production_rows(conn, CONTRACT, "acme", "shop-1", "clients", 10, 0)
        with pytest.raises(ValueError, match="limit must be 0 or more"):
            production_rows(conn, CONTRACT, "acme", "shop-1", "customers", -1, 0)

    c1 = lineage(db, "C1")
    assert (c1.in_production, c1.load_id, c1.first_load_id, c1.source) == (True, "load-1", "load-1", "import")
    assert steps(c1) == [("load-1", 1, 2, "inserted"), ("load-2", 2, 4, "unchanged")]
    assert [a.run_id for a in c1.appearances] == [run_ids["load-1"], run_ids["load-2"]]
    assert {a.file_name for a in c1.appearances} == {"customers.csv"}
    assert steps(lineage(db, "C2")) == [("load-1", 2, 3, "inserted"), ("load-2", 1, 2, "changed"),
                                        ("load-3", 3, 4, "unchanged")]
    assert steps(lineage(db, "C3")) == [("load-1", 3, 4, "rejected"), ("load-2", 3, 5, "inserted")]
    assert steps(lineage(db, "C4")) == [("load-2", 4, 6, "inserted"), ("load-3", 1, 2, "changed")]
    c5 = lineage(db, "C5")
    assert not c5.in_production and c5.load_id is None
    assert steps(c5) == [("load-3", 2, 3, "rejected"), ("load-3", 4, 6, "rejected")]
    nobody = lineage(db, "C9")
    assert (nobody.in_production, nobody.appearances, nobody.purged_loads) == (False, [], [])

    # load-1 ends 100 days ago and retention purges its raw rows: what it did to C2 can no longer be read, and
    # what load-2 did to it cannot be told either (there is nothing to compare with); C3 was inserted by load-2,
    # which its first_load_id says.
    query(db, "update loader_registry.runs set queued_at = queued_at - interval '100 days', started_at ="
              " started_at - interval '100 days', completed_at = completed_at - interval '100 days'"
              " where load_id = 'load-1'")
    assert [r.load for r in purge(db, 90, Path(os.environ["LOADER_HOME"]), dry_run=False).runs] == [
        "acme/shop-1/load-1"]
    c2 = lineage(db, "C2")
    assert c2.purged_loads == ["load-1"]
    assert steps(c2) == [("load-2", 1, 2, "unknown"), ("load-3", 3, 4, "unchanged")]
    assert steps(lineage(db, "C3")) == [("load-2", 3, 5, "inserted")]
    assert lineage(db, "C1").load_id == "load-1" and steps(lineage(db, "C1")) == [("load-2", 2, 4, "unknown")]
