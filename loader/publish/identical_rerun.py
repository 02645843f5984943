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
from dataclasses import dataclass

import psycopg2.extensions

from loader.dbt.runner import DBT_PROJECT
from loader.intake.load_key import LoadKey
from loader.runs.registry import EXCEPTION_COLUMNS, LEDGER_COLUMNS

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


def fingerprint(contract: str, file_ids: dict[str, int], encoding: str, date_format: str | None,
                dbt_digest: str) -> str:
    """What decides a run's outcome; with no files, what decides a row's verdict (runs.rules_fingerprint)."""
    body = {"contract": contract, "files": file_ids, "encoding": encoding, "date_format": date_format,
            "dbt": dbt_digest}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CompletedRun:
    run_id: int
    fingerprint: str
    rules_fingerprint: str | None


def latest_completed_run(cur: psycopg2.extensions.cursor, key: LoadKey, run_id: int) -> CompletedRun | None:
    """The shop's completed run other than `run_id` that published last (so production holds what it wrote).

    By completion, not by run id: a failed run taken back with `loader rerun` keeps its id and may complete
    after a newer one.
    """
    cur.execute(
        "select run_id, fingerprint, rules_fingerprint from loader_registry.runs where partner_id = %s"
        " and shop_id = %s and status = 'completed' and run_id <> %s and fingerprint is not null"
        " order by completed_at desc, run_id desc limit 1",
        (key.partner_id, key.shop_id, run_id),
    )
    row = cur.fetchone()
    return None if row is None else CompletedRun(row[0], row[1], row[2])


def previous_identical_run(
    conn: psycopg2.extensions.connection, key: LoadKey, run_id: int, digest: str
) -> int | None:
    """The shop's latest completed run, if it had the same inputs."""
    with conn, conn.cursor() as cur:
        latest = latest_completed_run(cur, key, run_id)
    return latest.run_id if latest is not None and latest.fingerprint == digest else None


def carry_over(cur: psycopg2.extensions.cursor, previous: int, run_id: int) -> None:
    """Copy the previous run's ledger and exceptions to this run (in the caller's transaction).

    Every row valid then is unchanged now: nothing was published for the shop since.
    """
    columns = ", ".join(("entity", "entity_order", *LEDGER_COLUMNS))
    carried = ", ".join(("entity", "entity_order", *LEDGER_COLUMNS[:5], "0", "0", "valid_rows"))
    cur.execute("delete from loader_registry.run_ledger where run_id = %s", (run_id,))
    cur.execute(f"insert into loader_registry.run_ledger (run_id, {columns})"
                f" select %s, {carried} from loader_registry.run_ledger where run_id = %s", (run_id, previous))
    exception_columns = ", ".join(EXCEPTION_COLUMNS)
    cur.execute("delete from loader_registry.run_exceptions where run_id = %s", (run_id,))
    cur.execute(f"insert into loader_registry.run_exceptions (run_id, {exception_columns})"
                f" select %s, {exception_columns} from loader_registry.run_exceptions where run_id = %s",
                (run_id, previous))
