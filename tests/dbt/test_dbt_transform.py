"""dbt intermediate, publish plan and audit: cross-row rules, the plan's actions, the ledger, on a real PostgreSQL.

Loads are landed by the loader without its transform step, then `dbt build` runs in-process, as the loader
would run it; publishing is simulated with plain SQL (the loader's publish step is tested on its own).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import uuid
from datetime import date
from pathlib import Path

import pytest
from helpers import header_only, make_load, query

from loader.contracts import load_contract
from loader.database import Warehouse
from loader.intake.partners import PartnersFile
from loader.publish.transaction import ensure_production
from loader.runs.progress import make_progress
from loader.runs.registry import ensure_registry
from loader.runs.worker import run_load
from loader.samples.sms_v1 import ExportResult, ExportSpec, write_export

REPO = Path(__file__).resolve().parents[2]
# Dependency order: parents are published before their children.
ENTITIES = ("customers", "vehicles", "invoices", "line_items", "payments", "inventory_parts", "suppliers")
WARNING_RULES = {"total_mismatch", "vin_check_digit", "short_phone", "vehicle_owner_mismatch", "unknown_column"}
PARTNER, SHOP = "demo-partner", "shop-001"
# A file-level finding is row 0, on the header line.
UNKNOWN_COLUMN = ("customers", 0, 1, "loyalty_tier", "unknown_column")


def internal_id(entity: str, external_id: str, partner: str = PARTNER, shop: str = SHOP) -> str:
    """sms_internal_id(), recomputed independently: md5 of the length-prefixed key, as a UUID."""
    key = "".join(f"{len(part)}:{part}" for part in (partner, shop, entity, external_id))
    return str(uuid.UUID(hashlib.md5(key.encode("utf-8")).hexdigest()))


def execute(db: Warehouse, sql: str) -> None:
    with contextlib.closing(db.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute(sql)


@pytest.fixture
def shop_db(db: Warehouse) -> Warehouse:
    """The warehouse with empty production tables and no audit history from earlier tests."""
    ensure_registry(db)
    with contextlib.closing(db.connect()) as conn:
        ensure_production(conn, load_contract("sms_v1"))
    return db


def land(db: Warehouse, folder: Path, home: Path) -> int:
    """Verify and land a folder with the loader, without its transform step; return the run id."""
    progress = make_progress()
    try:
        outcome = run_load(db, PartnersFile(), folder, triggered_by="test", progress=progress, home=home,
                           transform=False)
    finally:
        progress.close()
    assert outcome.status == "completed", outcome.message
    return outcome.run_id


def dbt_build(db: Warehouse, monkeypatch: pytest.MonkeyPatch, run_id: int, load_id: str) -> None:
    from dbt.cli.main import dbtRunner

    for name, value in db.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO / "dbt_project")
    dbt_vars = f"{{run_id: {run_id}, partner_id: {PARTNER}, shop_id: {SHOP}, load_id: {load_id}}}"
    result = dbtRunner().invoke(["build", "--vars", dbt_vars, "--profiles-dir", str(REPO), "--quiet"])
    assert result.success, result.exception or [
        (r.node.name, r.status, r.message) for r in result.result if r.status not in ("pass", "success")
    ]


def reported(db: Warehouse, run_id: int) -> set[tuple[object, ...]]:
    rows = query(db, "select entity, row_number, line_number, field, rule from analytics_audit.exceptions"
                     " where run_id = %s", (run_id,))
    assert len(rows) == len(set(rows)), "one exception per (row, field, rule)"
    return set(rows)


def ledger(db: Warehouse, run_id: int) -> dict[str, dict[str, int]]:
    columns = ("manifest_rows", "landed_rows", "valid_rows", "rejected_rows", "warning_rows",
               "inserted", "updated", "unchanged")
    rows = query(db, f"select entity, {', '.join(columns)} from analytics_audit.ledger where run_id = %s",
                 (run_id,))
    return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in rows}


def actions(db: Warehouse, entity: str) -> dict[str, str]:
    return dict(query(db, f"select external_id, _action from analytics_publish.publish_{entity}"))


def publish(db: Warehouse) -> None:
    """What the publish step does, in plain SQL: merge every plan, parents first, in one transaction."""
    with contextlib.closing(db.connect()) as conn, conn, conn.cursor() as cur:
        for entity in ENTITIES:
            cur.execute("select column_name from information_schema.columns where table_schema = 'analytics_publish'"
                        " and table_name = %s order by ordinal_position", (f"publish_{entity}",))
            columns = [c for (c,) in cur.fetchall() if not c.startswith("_")]
            business = [c for c in columns
                        if c not in ("id", "partner_id", "shop_id", "shop_key", "external_id", "load_id")]
            cur.execute(
                f"insert into prod_sms.{entity} ({', '.join(columns)}, first_load_id, created_at, updated_at)"
                f" select {', '.join(columns)}, load_id, now(), now() from analytics_publish.publish_{entity}"
                f" where _action <> 'unchanged'"
                f" on conflict (shop_key, id) do update set load_id = excluded.load_id,"
                f" updated_at = excluded.updated_at, "
                + ", ".join(f"{c} = excluded.{c}" for c in business)
                + f" where ({', '.join(f'prod_sms.{entity}.{c}' for c in business)})"
                f" is distinct from ({', '.join(f'excluded.{c}' for c in business)})"
            )


def assert_ledger_reconciles(book: dict[str, dict[str, int]]) -> None:
    assert set(book) == set(ENTITIES)
    for entity, row in book.items():
        assert row["manifest_rows"] == row["landed_rows"] == row["valid_rows"] + row["rejected_rows"], entity
        assert row["valid_rows"] == row["inserted"] + row["updated"] + row["unchanged"], entity


def sample_export(root: Path, suffix: str) -> tuple[ExportResult, str]:
    # Dates hang from the load id's date: today's keeps vehicle years inside the range rule.
    load_id = f"{date.today().isoformat()}_{suffix}"
    spec = ExportSpec(partner_id=PARTNER, shop_id=SHOP, customers=12, load_id=load_id, seed=7)
    return write_export(root / "imports", spec), load_id


def test_sample_export_reports_every_planted_error_and_plans_inserts(
    shop_db: Warehouse, tmp_path: Path, monkeypatch, capsys
) -> None:
    export, load_id = sample_export(tmp_path, "first")
    run_id = land(shop_db, export.folder, tmp_path / "home")
    dbt_build(shop_db, monkeypatch, run_id, load_id)
    capsys.readouterr()

    planted = {(p.entity, p.row_number, p.line_number, p.field, p.rule) for p in export.planted}
    assert {p[4] for p in planted} >= {"duplicate", "orphan", "parent_rejected", "parent_mismatch", "cycle",
                                       "vehicle_owner_mismatch"}
    assert UNKNOWN_COLUMN in planted
    # Clean rows must stay clean: the report is exactly the planted problems, the file-level finding included.
    assert reported(shop_db, run_id) == planted

    book = ledger(shop_db, run_id)
    assert_ledger_reconciles(book)
    for entity in ENTITIES:
        rejected = {p[1] for p in planted if p[0] == entity and p[4] not in WARNING_RULES}
        warned = {p[1] for p in planted if p[0] == entity and p[4] in WARNING_RULES and p[1] > 0} - rejected
        [(plan_rows, inserts)] = query(shop_db, "select count(*), count(*) filter (where _action = 'insert')"
                                                f" from analytics_publish.publish_{entity}")
        assert book[entity]["manifest_rows"] == export.rows[entity], entity
        assert book[entity]["rejected_rows"] == len(rejected), entity
        assert book[entity]["warning_rows"] == len(warned), entity
        assert book[entity]["valid_rows"] == book[entity]["inserted"] == plan_rows == inserts, entity
        # Production is empty: everything valid is new. Ids are the documented hash of the key.
        ids = query(shop_db, f"select external_id, id::text from analytics_publish.publish_{entity}")
        assert ids and all(id_ == internal_id(entity, ext) for ext, id_ in ids), entity
        # The plan rows are exactly the rows that were not rejected.
        planned = {r for (r,) in query(shop_db, f"select _row_number from analytics_publish.publish_{entity}")}
        assert planned == set(range(1, export.rows[entity] + 1)) - rejected, entity

    # References point into the plans by internal id.
    [(owner,)] = query(shop_db, "select customer_id::text from analytics_publish.publish_vehicles"
                                " where external_id = 'VEH-P01'")
    assert owner == internal_id("customers", "CUS-P01")


def test_rerun_is_unchanged_and_a_later_load_updates_and_resolves_against_production(
    shop_db: Warehouse, tmp_path: Path, monkeypatch, capsys
) -> None:
    export, load_id = sample_export(tmp_path, "first")
    home = tmp_path / "home"
    first = land(shop_db, export.folder, home)
    dbt_build(shop_db, monkeypatch, first, load_id)
    publish(shop_db)
    first_report = reported(shop_db, first)

    # The same folder again: nothing to write, and the same report.
    rerun = land(shop_db, export.folder, home)
    dbt_build(shop_db, monkeypatch, rerun, load_id)
    book = ledger(shop_db, rerun)
    assert_ledger_reconciles(book)
    assert all(row["inserted"] == row["updated"] == 0 for row in book.values()), book
    assert reported(shop_db, rerun) == first_report

    # A later, hand-made load of the same shop.
    with (export.folder / "customers.csv").open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = {row["external_customer_id"]: row for row in csv.DictReader(f)}
    columns = [c for c in rows["CUS-000001"] if c != "loyalty_tier"]

    def line(row: dict[str, str], **changes: str) -> str:
        values = {**row, **changes}
        return ",".join(f'"{values[c]}"' for c in columns) + "\r\n"

    customers = ",".join(columns) + "\r\n" + "".join([
        line(rows["CUS-000001"]),  # as published
        line(rows["CUS-000002"], email=rows["CUS-000002"]["email"].upper()),  # only the letter case: unchanged
        line(rows["CUS-000004"], last_name="Changed-Name"),  # update
        line(rows["CUS-000001"], external_customer_id="CUS-NEW"),  # insert
    ])
    vehicles = (
        "external_vehicle_id,external_customer_id,make\r\n"
        "VEH-NEW1,CUS-000003,Tesla\r\n"  # owner only in production: accepted
        "VEH-NEW2,CUS-P03,Tesla\r\n"  # owner rejected in the first load, so never published: orphan
    )
    second_load = "load-2"
    folder = make_load(tmp_path / "later", {"customers.csv": customers.encode(), "vehicles.csv": vehicles.encode(),
                                            "invoices.csv": header_only("invoices")},
                       partner=PARTNER, shop=SHOP, load_id=second_load)
    later = land(shop_db, folder, home)
    dbt_build(shop_db, monkeypatch, later, second_load)
    capsys.readouterr()

    assert actions(shop_db, "customers") == {
        "CUS-000001": "unchanged", "CUS-000002": "unchanged", "CUS-000004": "update", "CUS-NEW": "insert"}
    assert actions(shop_db, "vehicles") == {"VEH-NEW1": "insert"}
    assert reported(shop_db, later) == {("vehicles", 2, 3, "external_customer_id", "orphan")}
    [(owner,)] = query(shop_db, "select customer_id::text from analytics_publish.publish_vehicles")
    assert owner == internal_id("customers", "CUS-000003")
    book = ledger(shop_db, later)
    assert_ledger_reconciles(book)
    assert book["customers"] == {"manifest_rows": 4, "landed_rows": 4, "valid_rows": 4, "rejected_rows": 0,
                                      "warning_rows": 0, "inserted": 1, "updated": 1, "unchanged": 2}
    assert (book["vehicles"]["inserted"], book["vehicles"]["rejected_rows"]) == (1, 1)
    assert book["invoices"]["manifest_rows"] == 0

    # Published, the later load updates one row and leaves the others alone.
    before = dict(query(shop_db, "select external_id, updated_at from prod_sms.customers"))
    publish(shop_db)
    after = dict(query(shop_db, "select external_id, updated_at from prod_sms.customers"))
    changed = {ext for ext in after if before.get(ext) != after[ext]}
    assert changed == {"CUS-000004", "CUS-NEW"}
    assert query(shop_db, "select last_name, load_id from prod_sms.customers where external_id = 'CUS-000004'") == [
        ("Changed-Name", second_load)]


def test_without_vars_dbt_validates_the_load_the_loader_named(shop_db: Warehouse, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader passes no vars (so dbt's parse stays cached): the load comes from its slot's build_context row."""
    from loader.dbt.runner import dbt_build as loader_dbt_build
    from loader.intake.load_key import LoadKey
    from loader.runs.registry import ensure_registry, set_build_context
    from loader.runs.slots import Slot

    ensure_registry(shop_db)
    execute(shop_db, "delete from loader_registry.build_context")
    slot = Slot(3, tmp_path / "home")
    missing = loader_dbt_build(shop_db, slot, select="stg_sms__customers_exceptions")
    assert not missing.success and "no load to validate" in missing.summary()

    bad = make_load(tmp_path, {"customers.csv": b"external_customer_id,last_name,email\r\nC1,Ng,not-an-email\r\n"},
                    shop=SHOP, partner=PARTNER, load_id="by-context")
    run_id = land(shop_db, bad, tmp_path / "home")
    with contextlib.closing(shop_db.connect()) as conn:
        # Another slot's load must not be the one this slot validates.
        set_build_context(conn, 1, run_id, LoadKey.of(PARTNER, "another-shop", "other"), None)
        set_build_context(conn, 3, run_id, LoadKey.of(PARTNER, SHOP, "by-context"), None)
    built = loader_dbt_build(shop_db, slot)
    assert built.success, built.summary()
    rows = query(shop_db, "select entity, row_number, line_number, field, rule from analytics_slot3_audit.exceptions"
                          " where run_id = %s", (run_id,))
    assert set(rows) == {("customers", 1, 2, "email", "format")}


def test_not_null_columns_fails_on_each_null_and_names_its_columns(shop_db: Warehouse, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate that replaced a not_null test per column: one scan, every null found, each named."""
    from dbt.cli.main import dbtRunner

    # The loader's own build sets the slot's schema in the environment; this test builds in the default one.
    monkeypatch.setenv("LOADER_DBT_SCHEMA", "analytics")
    load = make_load(tmp_path, shop=SHOP, partner=PARTNER, load_id="nulls")
    run_id = land(shop_db, load, tmp_path / "home")
    dbt_build(shop_db, monkeypatch, run_id, "nulls")
    execute(shop_db, "update analytics_publish.publish_customers set load_id = null, external_id = null"
                     " where _row_number = 1")
    execute(shop_db, "update analytics_publish.publish_customers set partner_id = null where _row_number = 2")
    dbt_vars = f"{{run_id: {run_id}, partner_id: {PARTNER}, shop_id: {SHOP}, load_id: nulls}}"
    result = dbtRunner().invoke(["test", "--vars", dbt_vars, "--profiles-dir", str(REPO), "--quiet",
                                 "--select", "publish_customers,test_name:not_null_columns", "--store-failures"])
    assert not result.success
    # dbt shortens a long test name with a hash of it.
    [(table,)] = query(shop_db, "select table_name from information_schema.tables where table_schema ="
                                " 'analytics_dbt_test__audit' and table_name like 'not_null_columns_publish_custo%%'")
    failures = query(shop_db, f'select null_columns from analytics_dbt_test__audit."{table}"')
    assert sorted(failures) == [(["external_id", "load_id"],), (["partner_id"],)]
