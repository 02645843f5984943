"""The whole job through `loader`: dbt build, publish all-or-nothing, ledger, reports, rerun semantics."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import uuid
from pathlib import Path

import pytest
from helpers import exceptions_json, make_load, query, shop_values

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse
from loader.publish.transaction import PublishError, dbt_relation, publish
from loader.runs.slots import Slot
from loader.samples.sms_v1 import ExportSpec, write_export

ENTITIES = [e.name for e in load_contract("sms_v1").entities]
TODAY = dt.date.today().isoformat()


def snapshot(db: Warehouse) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of every production table, byte for byte."""
    out = {}
    for entity in [*ENTITIES, "id_crosswalk"]:
        key = "(entity_type, external_id)" if entity == "id_crosswalk" else "id"
        [(count, digest)] = query(db, f"select count(*), coalesce(md5(string_agg(t::text, '|' order by {key})), '')"
                                      f" from prod_sms.{entity} t")
        out[entity] = (count, digest)
    return out


def report_json(load: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["report", load, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_invariants(body: dict) -> None:
    assert set(body["entities"]) == set(ENTITIES)
    for entity, row in body["entities"].items():
        assert row["manifest_rows"] == row["landed_rows"] == row["valid_rows"] + row["rejected_rows"], entity
        assert row["valid_rows"] == row["inserted"] + row["updated"] + row["unchanged"], entity


@pytest.fixture
def sample(tmp_path: Path):
    return write_export(tmp_path / "imports", ExportSpec(customers=25, load_id=f"{TODAY}_first", seed=3))


def load_of(result) -> str:
    return "/".join(result.folder.parts[-3:])


def test_a_load_publishes_and_the_ledger_reconciles(db: Warehouse, sample, capsys) -> None:
    assert main(["run", str(sample.folder)]) == 0
    out = capsys.readouterr().out
    assert "ledger:" in out and "customers" in out
    body = report_json(load_of(sample), capsys)
    assert body["status"] == "completed" and body["contract"] == "sms_v1"
    assert body["completed_at"] >= body["started_at"]
    assert_invariants(body)
    for entity in ENTITIES:
        row = body["entities"][entity]
        assert row["manifest_rows"] == sample.rows[entity]
        assert row["inserted"] == row["valid_rows"]
        assert query(db, f"select count(*) from prod_sms.{entity}") == [(row["valid_rows"],)]
    rejected = {(p.entity, p.row_number) for p in sample.planted if p.rule != "unknown_column"
                and p.rule not in ("total_mismatch", "vin_check_digit", "short_phone", "vehicle_owner_mismatch")}
    assert sum(body["entities"][e]["rejected_rows"] for e in ENTITIES) == len(rejected)


def test_production_rows_are_marked_and_keyed_by_the_crosswalk(db: Warehouse, sample, capsys) -> None:
    assert main(["run", str(sample.folder)]) == 0
    partner, shop, load = load_of(sample).split("/")
    rows = query(db, "select id, external_id, source, shop_id, load_id from prod_sms.customers")
    assert rows
    for internal_id, external_id, source, shop_id, load_id in rows:
        key = "".join(f"{len(p)}:{p}" for p in (partner, shop, "customers", external_id))
        assert internal_id == str(uuid.UUID(hashlib.md5(key.encode()).hexdigest()))
        assert (source, shop_id, load_id) == ("import", shop, load)
    assert query(db, "select bool_and(is_imported), bool_and(source = 'import') from prod_sms.invoices") == [
        (True, True)]
    # Relationships are internal ids, and they resolve.
    assert query(db, "select count(*) from prod_sms.vehicles v left join prod_sms.customers c"
                     " on c.id = v.customer_id where c.id is null") == [(0,)]
    assert query(db, "select count(*), count(distinct internal_id), min(first_load_id), max(last_load_id)"
                     " from prod_sms.id_crosswalk where entity_type = 'customers'") == [
        (len(rows), len(rows), load, load)]


def test_identical_rerun_changes_nothing(db: Warehouse, sample, capsys) -> None:
    assert main(["run", str(sample.folder)]) == 0
    before = snapshot(db)
    raw_before = query(db, "select count(*) from raw_sms_v1.line_items")
    assert main(["run", str(sample.folder)]) == 0
    assert snapshot(db) == before
    assert query(db, "select count(*) from raw_sms_v1.line_items") == raw_before
    body = report_json(load_of(sample), capsys)
    assert_invariants(body)
    for entity, row in body["entities"].items():
        assert (row["inserted"], row["updated"]) == (0, 0), entity
        assert row["unchanged"] == row["valid_rows"], entity
    # Recognised by its inputs, not recomputed; the exception report is the same.
    [(message,)] = query(db, "select message from loader_registry.runs order by run_id desc limit 1")
    assert message.startswith("identical to run 1")
    assert query(db, "select count(*) from loader_registry.runs where error_count = (select error_count"
                     " from loader_registry.runs where run_id = 1)") == [(2,)]


def test_a_rerun_with_other_partner_settings_is_recomputed(db: Warehouse, tmp_path: Path, capsys) -> None:
    folder = make_load(tmp_path, {"customers.csv": CUSTOMERS_A})
    assert main(["run", str(folder)]) == 0
    (tmp_path / "partners.yml").write_text("partners:\n  acme:\n    date_format: '%m/%d/%Y'\n")
    assert main(["run", str(folder)]) == 0
    [(message,)] = query(db, "select message from loader_registry.runs order by run_id desc limit 1")
    assert message == "published into prod_sms"
    row = report_json("acme/shop-1/load-1", capsys)["entities"]["customers"]
    assert (row["inserted"], row["updated"], row["unchanged"]) == (0, 0, 3)


CUSTOMERS_A = (
    b"external_customer_id,first_name,last_name,email\r\n"
    b"C1,Ann,Smith,ann@example.com\r\nC2,Bob,Jones,bob@example.com\r\nC3,Cy,Doe,cy@example.com\r\n"
)


def test_later_load_updates_exactly_the_changed_rows(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert main(["run", str(make_load(tmp_path, {"customers.csv": CUSTOMERS_A}, load_id="a"))]) == 0
    stamps = dict(query(db, "select external_id, updated_at from prod_sms.customers"))
    changed = (
        b"external_customer_id,first_name,last_name,email\r\n"
        b"C1,Ann,Smith,ANN@Example.com\r\nC2,Bob,Jones,robert@example.com\r\nC3,Cy,Doe,cy@example.com\r\n"
        b"C4,Di,New,di@example.com\r\n"
    )
    assert main(["run", str(make_load(tmp_path, {"customers.csv": changed}, load_id="b"))]) == 0
    row = report_json("acme/shop-1/b", capsys)["entities"]["customers"]
    assert (row["inserted"], row["updated"], row["unchanged"]) == (1, 1, 2)
    after = dict(query(db, "select external_id, updated_at from prod_sms.customers"))
    assert after["C1"] == stamps["C1"] and after["C3"] == stamps["C3"]
    assert after["C2"] > stamps["C2"]
    assert query(db, "select email, load_id from prod_sms.customers where external_id in ('C1', 'C2')"
                     " order by external_id") == [("ann@example.com", "a"), ("robert@example.com", "b")]


def test_later_load_may_reference_customers_of_an_earlier_load(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert main(["run", str(make_load(tmp_path, {"customers.csv": CUSTOMERS_A}, load_id="a"))]) == 0
    vehicles = (
        b"external_vehicle_id,external_customer_id,vin\r\n"
        b"V1,C1,1HGCM82633A004352\r\nV2,C9,JH4KA7561PC008269\r\n"
    )
    customers = b"external_customer_id,last_name\r\nC5,Later\r\n"
    assert main(["run", str(make_load(tmp_path, {"customers.csv": customers, "vehicles.csv": vehicles},
                                      load_id="b"))]) == 0
    rows = exceptions_json("acme/shop-1/b", capsys, "--entity", "vehicles")
    assert [(r["row_number"], r["line_number"], r["field"], r["rule"]) for r in rows] == [
        (2, 3, "external_customer_id", "orphan")]
    assert query(db, "select v.external_id, c.external_id from prod_sms.vehicles v"
                     " join prod_sms.customers c on c.id = v.customer_id") == [("V1", "C1")]


def test_publish_is_all_or_nothing_and_rerun_completes_it(db: Warehouse, tmp_path: Path, sample, capsys) -> None:
    assert main(["run", str(make_load(tmp_path, {"customers.csv": CUSTOMERS_A}, shop=sample.folder.parts[-2],
                                      partner=sample.folder.parts[-3], load_id="earlier"))]) == 0
    before = snapshot(db)
    # The last entity in dependency order refuses every new row: its publish fails after six others ran.
    query(db, "alter table prod_sms.suppliers add constraint refuse_new check (load_id = 'earlier') not valid")
    capsys.readouterr()
    assert main(["run", str(sample.folder)]) == 1
    out = capsys.readouterr().out
    assert "publishing suppliers failed" in out and "refuse_new" in out
    assert snapshot(db) == before
    [(status, message)] = query(db, "select status, message from loader_registry.runs order by run_id desc limit 1")
    assert status == "failed" and "refuse_new" in message

    query(db, "alter table prod_sms.suppliers drop constraint refuse_new")
    assert main(["rerun", load_of(sample)]) == 0
    body = report_json(load_of(sample), capsys)
    assert body["status"] == "completed"
    assert_invariants(body)

    # The same end state as one clean run of the same files in a fresh shop.
    clean = write_export(tmp_path / "clean", ExportSpec(customers=25, load_id=f"{TODAY}_first", seed=3,
                                                        shop_id="shop-clean"))
    assert main(["run", str(make_load(tmp_path / "c2", {"customers.csv": CUSTOMERS_A}, shop="shop-clean",
                                      partner=clean.folder.parts[-3], load_id="earlier"))]) == 0
    assert main(["run", str(clean.folder)]) == 0
    for entity in ENTITIES:
        assert shop_values(db, entity, sample.folder.parts[-2]) == shop_values(db, entity, "shop-clean"), entity


def test_publish_refuses_a_reference_that_production_does_not_have(db: Warehouse, sample, tmp_path: Path,
                                                                     capsys) -> None:
    """With the per-row foreign-key triggers off, the set-based check still stops a dangling reference."""
    assert main(["run", str(sample.folder)]) == 0
    before = snapshot(db)
    target = Slot(1, tmp_path / "loader-home").target_dir
    plans = {e: dbt_relation(target, f"publish_{e}") for e in ENTITIES}
    for plan in plans.values():
        query(db, f"update {plan.schema}.{plan.name} set _action = 'unchanged'")
    vehicles = plans["vehicles"]
    query(db, f"update {vehicles.schema}.{vehicles.name} set _action = 'update', customer_id = gen_random_uuid()"
              f" where _row_number = (select min(_row_number) from {vehicles.schema}.{vehicles.name})")
    refused = r"vehicles\.customer_id: 1 published rows .* reference a customers"
    with contextlib.closing(db.connect()) as conn, pytest.raises(PublishError, match=refused):
        publish(conn, load_contract("sms_v1"), target)
    assert snapshot(db) == before


def test_a_build_that_fails_after_the_plans_were_applied_leaves_production_unchanged(
        db: Warehouse, tmp_path: Path, sample, capsys) -> None:
    """Plans are applied while dbt builds the rest; a failure at the very end (the ledger) still rolls them back."""
    assert main(["run", str(make_load(tmp_path, {"customers.csv": CUSTOMERS_A}, shop=sample.folder.parts[-2],
                                      partner=sample.folder.parts[-3], load_id="earlier"))]) == 0
    before = snapshot(db)
    # The run's ledger is saved in the publish transaction, after every plan, just before it commits.
    query(db, "alter table loader_registry.run_ledger add constraint refuse_all check (false) not valid")
    capsys.readouterr()
    assert main(["run", str(sample.folder)]) == 1
    assert "refuse_all" in capsys.readouterr().out
    assert snapshot(db) == before
    [(status, message)] = query(db, "select status, message from loader_registry.runs order by run_id desc limit 1")
    assert status == "failed" and "ledger" in message


def test_exception_report_csv_names_row_line_field_rule_value(db: Warehouse, sample, capsys) -> None:
    assert main(["run", str(sample.folder)]) == 0
    capsys.readouterr()
    assert main(["exceptions", load_of(sample)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and list(rows[0]) == ["entity", "row_number", "line_number", "field", "rule", "severity", "value",
                                      "message"]
    got = {(r["entity"], int(r["row_number"]), int(r["line_number"] or 0), r["field"], r["rule"]) for r in rows}
    planted = {(p.entity, p.row_number, p.line_number, p.field, p.rule) for p in sample.planted}
    assert got == planted
    assert all(r["message"] for r in rows)


def test_unknown_load_exits_1(db: Warehouse, capsys) -> None:
    assert main(["report", "acme/shop-1/nothing"]) == 1
    assert main(["exceptions", "acme/shop-1/nothing"]) == 1
    assert main(["exceptions", "acme/shop-1/nothing", "--entity", "employees"]) == 2
    assert "unknown entity 'employees'" in capsys.readouterr().err


def test_a_role_that_may_not_skip_row_triggers_keeps_them_and_its_transaction(db: Warehouse) -> None:
    """On a server where the loader is not a superuser, publishing falls back to PostgreSQL's own checks."""
    from loader.publish.transaction import _skip_row_triggers

    role = f"no_super_{uuid.uuid4().hex[:8]}"
    query(db, f"create role {role} login")
    try:
        with contextlib.closing(dataclasses.replace(db, user=role).connect()) as conn, conn.cursor() as cur:
            assert _skip_row_triggers(cur) is False
            cur.execute("select current_setting('session_replication_role'), 1")
            assert cur.fetchone() == ("origin", 1)
        with contextlib.closing(db.connect()) as conn, conn.cursor() as cur:
            cur.execute("select rolsuper from pg_roles where rolname = current_user")
            superuser = cur.fetchone()[0]
            assert _skip_row_triggers(cur) is superuser
            cur.execute("select current_setting('session_replication_role')")
            assert cur.fetchone() == ("replica" if superuser else "origin",)
    finally:
        query(db, f"drop role {role}")


def test_a_new_shop_publishes_in_linear_time_whatever_the_statistics_say(
    db: Warehouse, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before production is analysed, and once it has been analysed with another
    # shop's rows only, PostgreSQL takes a new shop's rows, which the publish
    # itself has just written, for one row. A nested loop over them reads the other side once per row: minutes
    # for these 20,000 customers and vehicles, where a hash join takes well under a second.
    rows = 20_000
    files = {
        "customers.csv": b"external_customer_id,last_name\r\n" + b"".join(b"C%d,Name\r\n" % i for i in range(rows)),
        "vehicles.csv": b"external_vehicle_id,external_customer_id\r\n"
        + b"".join(b"V%d,C%d\r\n" % (i, i) for i in range(rows)),
    }
    # Every statement of both loads, the loader's and dbt's, is cut off after 20 s.
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=20s")
    assert main(["run", str(make_load(tmp_path, files, shop="shop-a"))]) == 0, capsys.readouterr().out
    query(db, "analyze prod_sms.customers, prod_sms.vehicles")
    code = main(["run", str(make_load(tmp_path, files, shop="shop-b"))])
    assert code == 0, capsys.readouterr().out
    crosswalk = query(db, "select shop_id, entity_type, count(*) from prod_sms.id_crosswalk"
                          " group by 1, 2 order by 1, 2")
    assert crosswalk == [("shop-a", "customers", rows), ("shop-a", "vehicles", rows),
                         ("shop-b", "customers", rows), ("shop-b", "vehicles", rows)]
