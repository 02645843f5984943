"""Recognising a load whose outcome is already known, so a rerun costs a fraction of the first run.

A run's outcome depends only on its inputs: the landed files (by id, i.e. by
digest), the partner's parse settings, and the dbt project's SQL. When those
match the shop's latest completed run, and nothing was published for the shop
since, validating again would find the same exceptions and every valid row
unchanged, so the ledger and exceptions are carried over instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psycopg2.extensions
from psycopg2 import sql

from loader.dbt.relations import built_relation
from loader.dbt.runner import DBT_PROJECT
from loader.intake.load_key import LoadKey
from loader.publish.transaction import PublishError

_SQL_DIRS = ("models", "macros", "tests")


def dbt_project_digest() -> str:
    """A digest of every file that decides what a run computes."""
    sha = hashlib.sha256()
    files = [DBT_PROJECT / "dbt_project.yml"]
    for folder in _SQL_DIRS:
        files += sorted(p for p in (DBT_PROJECT / folder).rglob("*") if p.is_file())
    for path in files:
        sha.update(str(path.relative_to(DBT_PROJECT)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def fingerprint(contract: str, file_ids: dict[str, int], encoding: str, date_format: str | None) -> str:
    body = {"contract": contract, "files": file_ids, "encoding": encoding, "date_format": date_format,
            "dbt": dbt_project_digest()}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def previous_identical_run(
    conn: psycopg2.extensions.connection, key: LoadKey, run_id: int, digest: str
) -> int | None:
    """The shop's latest completed run, if it had the same inputs."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "select run_id, fingerprint from loader_registry.runs where partner_id = %s and shop_id = %s"
            " and status = 'completed' and run_id <> %s and fingerprint is not null order by run_id desc limit 1",
            (key.partner_id, key.shop_id, run_id),
        )
        row = cur.fetchone()
    return row[0] if row is not None and row[1] == digest else None


def _columns(cur: psycopg2.extensions.cursor, schema: str, table: str) -> list[str]:
    cur.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
        " order by ordinal_position",
        (schema, table),
    )
    return [name for (name,) in cur.fetchall()]


def carry_over(
    conn: psycopg2.extensions.connection, target_dir: Path, previous: int, run_id: int, key: LoadKey
) -> None:
    """Copy the previous run's ledger and exceptions to this run; every valid row is unchanged now."""
    replacements: dict[str, sql.Composable] = {
        "run_id": sql.Literal(run_id),
        "load_id": sql.Literal(key.load_id),
        "inserted": sql.Literal(0),
        "updated": sql.Literal(0),
        "unchanged": sql.Identifier("valid_rows"),
    }
    with conn, conn.cursor() as cur:
        ledger = built_relation(cur, target_dir, "ledger")
        exceptions = built_relation(cur, target_dir, "exceptions")
        if ledger is None or exceptions is None:
            raise PublishError(f"cannot carry the previous run over: dbt's audit tables are not in {target_dir}")
        for relation in (ledger, exceptions):
            columns = _columns(cur, relation.schema, relation.name)
            values: list[sql.Composable] = [replacements.get(c, sql.Identifier(c)) for c in columns]
            cur.execute(
                sql.SQL("insert into {rel} ({cols}) select {values} from {rel} where run_id = %s").format(
                    rel=relation.ident(),
                    cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                    values=sql.SQL(", ").join(values),
                ),
                (previous,),
            )
