"""Helpers for tests: load folders built by hand and an independent record count."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from loader.contracts import load_contract
from loader.database import Warehouse

# The `loader` command of the environment the tests run in.
LOADER = Path(sys.executable).parent / "loader"


def empty_warehouse(warehouse: Warehouse) -> Warehouse:
    """The warehouse without every schema the loader, dlt and dbt made: raw, registry, production, dbt's layers."""
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute("select nspname from pg_namespace where nspname not like 'pg\\_%' and nspname not in"
                    " ('public', 'information_schema')")
        for (schema,) in cur.fetchall():
            cur.execute(f'drop schema "{schema}" cascade')
    return warehouse


def point_loader_at(warehouse: Warehouse, folder: Path, dbt_state: Path, patch: pytest.MonkeyPatch) -> Path:
    """The loader's environment on `warehouse`, with a home (returned) and partners.yml under `folder`.

    The home shares its dbt folder with the session's other tests, as a user's home keeps it from one load to
    the next: dbt's partial parse then stays cached instead of every test parsing the project anew.
    """
    patch.setenv("LOADER_DATABASE_URL", warehouse.url)
    home = folder / "loader-home"
    home.mkdir()
    (home / "dbt").symlink_to(dbt_state, target_is_directory=True)
    patch.setenv("LOADER_HOME", str(home))
    patch.setenv("LOADER_PARTNERS_FILE", str(folder / "partners.yml"))
    return home


def query(warehouse: Warehouse, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def csv_records(data: bytes, encoding: str = "utf-8-sig") -> int:
    """Data records as Python's csv module counts them (an independent count for manifests)."""
    if not data:
        return 0
    rows = list(csv.reader(io.StringIO(data.decode(encoding, errors="replace"), newline="")))
    return len(rows) - 1


def header_only(entity: str) -> bytes:
    return (",".join(load_contract("sms_v1").entity(entity).column_names) + "\r\n").encode()


CUSTOMERS = (
    b"external_customer_id,first_name,last_name,email\r\n"
    b"C1,Ann,Smith,ann@example.com\r\nC2,Bob,Jones,bob@example.com\r\n"
)


def make_load(
    root: Path,
    files: dict[str, bytes] | None = None,
    *,
    partner: str = "acme",
    shop: str = "shop-1",
    load_id: str = "load-1",
    manifest: dict[str, object] | None = None,
) -> Path:
    """Write a load folder: every contract file (header-only unless given) and a correct manifest."""
    folder = root / partner / shop / load_id
    folder.mkdir(parents=True, exist_ok=True)
    contents = {e.file: header_only(e.name) for e in load_contract("sms_v1").entities}
    contents["customers.csv"] = CUSTOMERS
    contents.update(files or {})
    entries = []
    for name, data in contents.items():
        if data is None:
            continue
        (folder / name).write_bytes(data)
        entries.append({"name": name, "rows": csv_records(data), "sha256": hashlib.sha256(data).hexdigest()})
    body: dict[str, object] = {"load_id": load_id, "contract": "sms_v1", "files": entries}
    body.update(manifest or {})
    (folder / "manifest.json").write_text(json.dumps(body))
    return folder


def new_id() -> str:
    return uuid.uuid4().hex[:10]


def shop_values(db: Warehouse, entity: str, shop: str) -> list[tuple[object, ...]]:
    """A shop's rows without the columns that differ between shops (ids, shop, timestamps)."""
    skip = {"id", "shop_id", "shop_key", "created_at", "updated_at", "customer_id", "vehicle_id", "invoice_id",
            "parent_line_item_id"}
    cols = [c for (c,) in query(db, "select column_name from information_schema.columns where table_schema ="
                                    " 'prod_sms' and table_name = %s order by ordinal_position", (entity,))
            if c not in skip]
    return query(db, f"select {', '.join(cols)} from prod_sms.{entity} where shop_id = %s order by external_id",
                 (shop,))


def exceptions_json(load: str, capsys: pytest.CaptureFixture[str], *options: str) -> list[dict[str, Any]]:
    """`loader exceptions LOAD --format json [OPTIONS]`, which must exit 0, parsed."""
    from loader.cli import main

    capsys.readouterr()
    assert main(["exceptions", load, "--format", "json", *options]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows
