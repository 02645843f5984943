"""loader purge: raw rows, slot relations and kept files of old runs go; ledgers, exceptions and history stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.database import Warehouse


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def customers(*ids: str) -> bytes:
    return ("external_customer_id,first_name,last_name,email\r\n"
            + "".join(f"{c},Ann,Lee,{c.lower()}@example.com\r\n" for c in ids)).encode()


def age(db: Warehouse, load_id: str, days: int) -> None:
    """Make a load's runs look as if they ended `days` ago."""
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("update loader_registry.runs set queued_at = queued_at - make_interval(days => %s),"
                    " started_at = started_at - make_interval(days => %s),"
                    " completed_at = completed_at - make_interval(days => %s) where load_id = %s",
                    (days, days, days, load_id))


def raw_customers(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select external_customer_id from raw_sms_v1.customers order by 1")


def kept_folder(db: Warehouse, load_id: str) -> Path:
    [(path,)] = query(db, "select source_path from loader_registry.runs where load_id = %s", (load_id,))
    return Path(str(path))


def test_purge_removes_old_runs_data_and_keeps_their_reports(db: Warehouse, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    old = make_load(tmp_path, {"customers.csv": customers("C1", "C2", "C3"),
                               "vehicles.csv": b"external_vehicle_id,external_customer_id,vin\r\nV1,C9,BAD\r\n"})
    assert cli(["run", str(old)], capsys)[0] == 0
    new = make_load(tmp_path, {"customers.csv": customers("C4")}, load_id="load-2")
    assert cli(["run", str(new)], capsys)[0] == 0
    age(db, "load-1", 100)
    report_before = cli(["report", "acme/shop-1/load-1", "--json"], capsys)[1]
    exceptions_before = cli(["exceptions", "acme/shop-1/load-1", "--format", "json"], capsys)[1]
    assert json.loads(exceptions_before), "the vehicle row is rejected"

    code, out = cli(["purge", "--dry-run"], capsys)
    assert code == 0, out
    assert "would purge 1 run(s)" in out and "acme/shop-1/load-1" in out and "load-2" not in out
    # load-1's customers and vehicles files; the empty files both loads share stay.
    assert "raw rows: 4 in 2 file(s)" in out and "kept folders: 1" in out
    assert raw_customers(db) == [("C1",), ("C2",), ("C3",), ("C4",)]
    assert kept_folder(db, "load-1").is_dir()

    code, out = cli(["purge"], capsys)
    assert code == 0 and "purged 1 run(s)" in out, out
    assert raw_customers(db) == [("C4",)]
    assert query(db, "select count(*) from raw_sms_v1.vehicles") == [(0,)]
    assert not kept_folder(db, "load-1").exists() and kept_folder(db, "load-2").is_dir()
    assert query(db, "select state, count(*) from loader_registry.landed_files group by state order by 1") == [
        ("landed", 7), ("purged", 2)]
    assert cli(["report", "acme/shop-1/load-1", "--json"], capsys)[1] == report_before
    assert cli(["exceptions", "acme/shop-1/load-1", "--format", "json"], capsys)[1] == exceptions_before
    code, out = cli(["rerun", "acme/shop-1/load-1"], capsys)
    assert code == 1 and "was purged on" in out and "Traceback" not in out, out
    assert json.loads(cli(["show", "acme/shop-1/load-1", "--json"], capsys)[1])["purged_at"] is not None
    assert "nothing to purge" in cli(["purge"], capsys)[1]
    # Events of purged runs that need no delivery are gone; the newer run's stay.
    assert query(db, "select r.load_id, count(*) from loader_registry.run_events e join loader_registry.runs r"
                     " using (run_id) group by 1") == [("load-2", 1)]
    # Production is not retention's business.
    assert query(db, "select count(*) from prod_sms.customers") == [(4,)]


def test_purge_drops_slot_relations_of_an_old_last_build_and_files_land_again(
        db: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_load(tmp_path, {"customers.csv": customers("C1", "C2")})
    assert cli(["run", str(folder)], capsys)[0] == 0
    assert query(db, "select count(*) from pg_namespace where nspname like %s", ("analytics\\_%",))[0][0] > 0
    age(db, "load-1", 10)
    assert "would purge 1 run(s)" in cli(["purge", "--older-than-days", "5", "--dry-run"], capsys)[1]
    assert "nothing to purge" in cli(["purge", "--older-than-days", "30"], capsys)[1]
    code, out = cli(["purge", "--older-than-days", "5"], capsys)
    assert code == 0 and "worker slot relations: 1 slot(s)" in out, out
    assert query(db, "select count(*) from pg_namespace where nspname like %s", ("analytics\\_%",)) == [(0,)]
    assert query(db, "select count(*) from raw_sms_v1.customers") == [(0,)]
    # The partner sends the same folder again: its files are landed anew and the load runs as usual.
    code, out = cli(["run", str(folder)], capsys)
    assert code == 0, out
    assert query(db, "select count(*) from raw_sms_v1.customers") == [(2,)]
    assert query(db, "select count(*) from loader_registry.landed_files where state <> 'landed'") == [(0,)]
    [(inserted, unchanged)] = query(db, "select inserted, unchanged from loader_registry.run_ledger l"
                                        " join loader_registry.runs r using (run_id) where entity = 'customers'"
                                        " and r.purged_at is null")
    assert (inserted, unchanged) == (0, 2)
