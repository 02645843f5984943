"""LOADER_PRODUCTION_PARTITIONS: production tables hash-partitioned by shop take the same loads, exactly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from helpers import exceptions_json, query, shop_values

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse
from loader.publish.transaction import partitioned_by_shop
from loader.samples.sms_v1 import ExportSpec, write_export

ENTITIES = [e.name for e in load_contract("sms_v1").entities]
TODAY = dt.date.today().isoformat()


def partitions(db: Warehouse) -> dict[str, int]:
    """Per production table, how many partitions it has (absent: a plain table)."""
    return dict(query(db, "select c.relname, count(i.inhrelid) from pg_partitioned_table as p"
                          " join pg_class as c on c.oid = p.partrelid"
                          " join pg_namespace as n on n.oid = c.relnamespace and n.nspname = 'prod_sms'"
                          " left join pg_inherits as i on i.inhparent = p.partrelid group by c.relname"))


def exceptions(load: str, capsys) -> list[dict]:
    return sorted(exceptions_json(load, capsys), key=lambda e: (e["entity"], e["row_number"] or 0, e["rule"]))


def test_partitioned_tables_take_every_load_and_keep_each_shop_in_one_partition(
    db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LOADER_PRODUCTION_PARTITIONS", "4")
    shops = ["shop-a", "shop-b", "shop-c"]
    for shop in shops:
        spec = ExportSpec(partner_id="acme", shop_id=shop, load_id=f"{TODAY}_first", customers=30, seed=5)
        assert main(["run", str(write_export(tmp_path / "imports", spec).folder)]) == 0
    assert partitions(db) == {entity: 4 for entity in ENTITIES}
    for entity in ENTITIES:
        # Hashing by shop_key puts all of a shop's rows in one partition.
        spread = query(db, f"select shop_id, count(distinct tableoid) from prod_sms.{entity} group by shop_id")
        assert sorted(spread) == [(shop, 1) for shop in shops], entity
        # The same export gives every shop the same rows, and the same verdicts.
        assert shop_values(db, entity, "shop-a") and shop_values(db, entity, "shop-a") == shop_values(
            db, entity, "shop-c"), entity
    first = exceptions(f"acme/shop-a/{TODAY}_first", capsys)
    assert first and first == exceptions(f"acme/shop-c/{TODAY}_first", capsys)

    # A reload of a different export updates the partitions in place; references still resolve by shop.
    spec = ExportSpec(partner_id="acme", shop_id="shop-b", load_id=f"{TODAY}_second", customers=30, seed=6)
    assert main(["run", str(write_export(tmp_path / "imports", spec).folder)]) == 0
    [(orphans,)] = query(db, "select count(*) from prod_sms.invoices as i left join prod_sms.customers as c"
                             " on c.shop_key = i.shop_key and c.id = i.customer_id where c.id is null")
    assert orphans == 0
    assert shop_values(db, "customers", "shop-b") != shop_values(db, "customers", "shop-a")


def test_tables_that_exist_are_never_laid_out_again(
    db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADER_PRODUCTION_PARTITIONS", "0")
    spec = ExportSpec(partner_id="acme", shop_id="shop-a", load_id=f"{TODAY}_first", customers=10, seed=5)
    assert main(["run", str(write_export(tmp_path / "imports", spec).folder)]) == 0
    monkeypatch.setenv("LOADER_PRODUCTION_PARTITIONS", "4")
    spec = ExportSpec(partner_id="acme", shop_id="shop-b", load_id=f"{TODAY}_first", customers=10, seed=5)
    assert main(["run", str(write_export(tmp_path / "imports", spec).folder)]) == 0
    assert partitions(db) == {}
    assert shop_values(db, "customers", "shop-b") == shop_values(db, "customers", "shop-a")


def test_every_table_of_the_ddl_is_partitioned_by_shop() -> None:
    ddl = load_contract("sms_v1").production_ddl.read_text(encoding="utf-8")
    rewritten = partitioned_by_shop(ddl, 3)
    for entity in ENTITIES:
        assert f"prod_sms.{entity} (" in rewritten
        for i in range(3):
            assert (f"create table if not exists prod_sms.{entity}_p{i} partition of prod_sms.{entity}"
                    f" for values with (modulus 3, remainder {i});") in rewritten
    assert rewritten.count(" partition by hash (shop_key);") == len(ENTITIES)
    with pytest.raises(ValueError, match="no `create table"):
        partitioned_by_shop("create view v as select 1;", 3)


def test_a_bad_partition_count_is_refused_naming_the_setting(
    db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LOADER_PRODUCTION_PARTITIONS", "-1")
    spec = ExportSpec(partner_id="acme", shop_id="shop-a", load_id=f"{TODAY}_first", customers=10, seed=5)
    assert main(["run", str(write_export(tmp_path / "imports", spec).folder)]) == 2
    assert "LOADER_PRODUCTION_PARTITIONS" in capsys.readouterr().err
