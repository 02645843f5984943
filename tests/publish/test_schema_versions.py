"""Schema versions: a production schema of version 1 is upgraded in place, a newer one is refused."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.contracts import load_contract
from loader.database import SchemaVersionError, VersionedDdl, Warehouse, declared_version
from loader.publish.transaction import ensure_production
from loader.runs.registry import REGISTRY_SQL, ensure_registry

CONTRACT = load_contract("sms_v1")
VERSION_1 = Path(__file__).with_name("sms_v1_schema_1.sql")
PRODUCTION_VERSION = VersionedDdl.read("production sms_v1", "prod_sms", CONTRACT.production_ddl).version
REGISTRY_VERSION = declared_version(REGISTRY_SQL, REGISTRY_SQL.read_text(encoding="utf-8"))


def internal_id(shop: str, entity: str, external_id: str) -> str:
    key = "".join(f"{len(p)}:{p}" for p in ("acme", shop, entity, external_id))
    return str(uuid.UUID(hashlib.md5(key.encode()).hexdigest()))


def write_version_1(db: Warehouse) -> None:
    """prod_sms as the loader before schema versions wrote it, with rows as its publish step left them."""
    ddl = VERSION_1.read_text(encoding="utf-8")
    rows = {
        # (shop, external id, first load, last load); C3 has no crosswalk row, which publish never left.
        "customers": [("shop-1", "C1", "load-1", "load-3"), ("shop-1", "C2", "load-2", "load-2"),
                      ("shop-2", "C1", "load-7", "load-8"), ("shop-1", "C3", None, "load-4")],
    }
    with contextlib.closing(db.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute(ddl)
        cur.execute("insert into loader_registry.ddl_versions (name, digest) values ('production sms_v1', %s)",
                    (hashlib.sha256(ddl.encode()).hexdigest(),))
        for shop, external_id, first, last in rows["customers"]:
            cid = internal_id(shop, "customers", external_id)
            cur.execute("insert into prod_sms.customers (id, partner_id, shop_id, external_id, load_id, last_name,"
                        " email, created_at, updated_at) values (%s, 'acme', %s, %s, %s, %s, %s, '2026-01-02',"
                        " '2026-03-04')", (cid, shop, external_id, last, f"Name {external_id}",
                                           f"{external_id.lower()}@example.com"))
            if first is not None:
                cur.execute("insert into prod_sms.id_crosswalk values (%s, 'acme', %s, 'customers', %s, %s, %s,"
                            " '2026-01-02', '2026-05-06')", (cid, shop, external_id, first, last))
            vid = internal_id(shop, "vehicles", f"V{external_id}")
            cur.execute("insert into prod_sms.vehicles (id, partner_id, shop_id, external_id, load_id, customer_id,"
                        " make, created_at, updated_at) values (%s, 'acme', %s, %s, %s, %s, 'Honda', '2026-01-02',"
                        " '2026-01-02')", (vid, shop, f"V{external_id}", last, cid))
            cur.execute("insert into prod_sms.id_crosswalk values (%s, 'acme', %s, 'vehicles', %s, %s, %s,"
                        " '2026-01-02', '2026-01-02')", (vid, shop, f"V{external_id}", last, last))


def catalog(db: Warehouse) -> dict[str, list[tuple[object, ...]]]:
    """What prod_sms is made of: columns, constraints, indexes and views, by name."""
    return {
        "columns": query(db, "select table_name, column_name, data_type, is_nullable, column_default,"
                             " numeric_precision, numeric_scale from information_schema.columns"
                             " where table_schema = 'prod_sms' order by 1, 2"),
        "constraints": query(db, "select conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                                 " from pg_constraint where connamespace = 'prod_sms'::regnamespace order by 1, 2"),
        "indexes": query(db, "select indexname, indexdef from pg_indexes where schemaname = 'prod_sms' order by 1"),
        "relations": query(db, "select relname, relkind from pg_class where relnamespace = 'prod_sms'::regnamespace"
                               " and relkind in ('r', 'v', 'p') order by 1"),
        "views": query(db, "select viewname, definition from pg_views where schemaname = 'prod_sms' order by 1"),
    }


V1_COLUMNS = ("id, partner_id, shop_id, external_id, source, load_id, last_name, email, created_at, updated_at")


def test_a_version_1_production_is_upgraded_in_place_keeping_every_row_and_id(db: Warehouse) -> None:
    ensure_registry(db)
    write_version_1(db)
    customers = query(db, f"select {V1_COLUMNS} from prod_sms.customers order by id")
    vehicles = query(db, "select id, customer_id, external_id, load_id from prod_sms.vehicles order by id")
    with contextlib.closing(db.connect()) as conn:
        ensure_production(conn, CONTRACT)
    assert query(db, f"select {V1_COLUMNS} from prod_sms.customers order by id") == customers
    assert query(db, "select id, customer_id, external_id, load_id from prod_sms.vehicles order by id") == vehicles
    assert query(db, "select shop_id, external_id, first_load_id, load_id from prod_sms.customers"
                     " order by shop_id, external_id") == [
        ("shop-1", "C1", "load-1", "load-3"), ("shop-1", "C2", "load-2", "load-2"),
        ("shop-1", "C3", "load-4", "load-4"), ("shop-2", "C1", "load-7", "load-8")]
    # The crosswalk is a view now, and says what the table said.
    assert query(db, "select internal_id::text, shop_id, entity_type, external_id, first_load_id, last_load_id"
                     " from prod_sms.id_crosswalk where external_id = 'C1' order by shop_id") == [
        (internal_id("shop-1", "customers", "C1"), "shop-1", "customers", "C1", "load-1", "load-3"),
        (internal_id("shop-2", "customers", "C1"), "shop-2", "customers", "C1", "load-7", "load-8")]
    # Every shop with rows got a key, in partner and shop order, and every row its shop's.
    assert query(db, "select partner_id, shop_id, shop_key from loader_registry.shops order by shop_key") == [
        ("acme", "shop-1", 1), ("acme", "shop-2", 2)]
    assert query(db, "select distinct c.shop_id, c.shop_key, v.shop_key from prod_sms.customers as c"
                     " inner join prod_sms.vehicles as v on v.customer_id = c.id order by 1") == [
        ("shop-1", 1, 1), ("shop-2", 2, 2)]
    assert query(db, "select version from loader_registry.ddl_versions where name = 'production sms_v1'") == [
        (PRODUCTION_VERSION,)]
    upgraded = catalog(db)
    query(db, "drop schema prod_sms cascade")
    with contextlib.closing(db.connect()) as conn:
        ensure_production(conn, CONTRACT)
    assert catalog(db) == upgraded


def test_an_upgraded_production_takes_the_next_load(db: Warehouse, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ensure_registry(db)
    write_version_1(db)
    files = {"customers.csv": b"external_customer_id,last_name,email\r\nC1,Name C1,c1@example.com\r\n"
                              b"C2,Changed,c2@example.com\r\nC9,New,c9@example.com\r\n"}
    assert main(["run", str(make_load(tmp_path, files, load_id="load-5"))]) == 0, capsys.readouterr().out
    assert query(db, "select external_id, last_name, first_load_id, load_id from prod_sms.customers"
                     " where shop_id = 'shop-1' order by external_id") == [
        ("C1", "Name C1", "load-1", "load-3"), ("C2", "Changed", "load-2", "load-5"),
        ("C3", "Name C3", "load-4", "load-4"), ("C9", "New", "load-5", "load-5")]


def test_a_newer_production_schema_is_refused_and_left_alone(db: Warehouse, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(make_load(tmp_path))]) == 0
    query(db, "update loader_registry.ddl_versions set version = version + 1 where name = 'production sms_v1'")
    before = query(db, "select * from prod_sms.customers order by id")
    with contextlib.closing(db.connect()) as conn, pytest.raises(SchemaVersionError) as refused:
        ensure_production(conn, CONTRACT)
    newer = f"schema version {PRODUCTION_VERSION + 1}, written by a newer loader"
    assert f"production sms_v1 in this database is {newer}" in str(refused.value)
    assert "upgrade the loader" in str(refused.value)
    capsys.readouterr()
    code = main(["run", str(make_load(tmp_path, load_id="load-2"))])
    out = capsys.readouterr()
    assert code == 1
    assert newer in out.out + out.err
    assert "Traceback" not in out.out + out.err and "internal error" not in out.out + out.err
    assert query(db, "select * from prod_sms.customers order by id") == before


def test_a_newer_registry_is_refused_by_every_command(db: Warehouse, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_registry(db)
    query(db, "update loader_registry.schema_version set version = 99, digest = 'newer'")
    code = main(["status"])
    err = capsys.readouterr().err
    assert code == 1
    assert "loader: the run registry (loader_registry) in" in err
    assert ("is schema version 99, written by a newer loader; this loader knows versions up to"
            f" {REGISTRY_VERSION}: upgrade the loader") in err


def test_a_registry_from_before_versions_is_brought_up_to_date(db: Warehouse) -> None:
    ensure_registry(db)
    query(db, "alter table loader_registry.schema_version drop column version;"
              " alter table loader_registry.ddl_versions drop column version;"
              " update loader_registry.schema_version set digest = 'older'")
    ensure_registry(db)
    assert query(db, "select version from loader_registry.schema_version") == [(REGISTRY_VERSION,)]
    assert query(db, "select count(*) from information_schema.columns where table_schema = 'loader_registry'"
                     " and table_name = 'ddl_versions' and column_name = 'version'") == [(1,)]
