"""The dbt call: one in-process `dbt build` per load, against the loader's database.

dbt's start-up costs seconds, so it runs once per load (not per model or
entity), in this process through dbtRunner. The load comes from the
registry's build_context row of the worker slot rather than vars, so that dbt's parse of the
project stays cached from one load to the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from loader.database import Warehouse, WarehouseUnavailable
from loader.dbt.relations import Relation, record_relations
from loader.intake.load_key import LoadKey
from loader.runs.slots import Slot

REPO = Path(__file__).resolve().parents[2]
DBT_PROJECT = REPO / "dbt_project"
PROFILES_DIR = REPO

# Statuses dbt gives a node that did not do its job.
_FAILED = {"error", "fail", "runtime error"}

# A failed test's sample of failing rows is read for people (support staff) and kept with the run:
# a few rows of a few columns, each value cut short, and only for the first tests that failed,
# so that a build where everything failed costs a handful of bounded queries, not one per test.
SAMPLE_ROWS = 5
SAMPLE_COLUMNS = 40
SAMPLE_VALUE_CHARS = 200
SAMPLE_LIST_ITEMS = 20
SAMPLED_TESTS = 20
# A sample query waits on a lock, and runs, no longer than this: the run's outcome must not wait on it.
SAMPLE_TIMEOUT = "10s"


@dataclass(frozen=True)
class FailingRows:
    """Up to SAMPLE_ROWS rows a failed test found (values shown as text, cut short), or why there are none."""

    columns: tuple[str, ...] = ()
    rows: tuple[dict[str, Any], ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class NodeProblem:
    name: str
    status: str
    message: str
    # A failed test: how many rows dbt found, and a sample of them.
    failing_rows: int | None = None
    sample: FailingRows | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.status}: {self.message}"


@dataclass
class DbtOutcome:
    success: bool
    failures: list[NodeProblem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    # Each node's execution time, by name: where a build spends its time.
    node_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if self.error:
            return f"dbt could not run: {self.error}"
        parts = [str(f) for f in self.failures[:10]]
        if len(self.failures) > 10:
            parts.append(f"... and {len(self.failures) - 10} more")
        if self.skipped:
            parts.append(f"{len(self.skipped)} dependent node(s) skipped")
        return "dbt build failed: " + "; ".join(parts)

    def timing(self, top: int = 6) -> str:
        """The build's node time and its slowest nodes, for the run's log."""
        slowest = sorted(self.node_seconds.items(), key=lambda item: item[1], reverse=True)[:top]
        return (f"dbt: {len(self.node_seconds)} nodes, {sum(self.node_seconds.values()):.1f} s of node time;"
                " slowest " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest))


def build_vars(run_id: int, key: LoadKey, date_format: str | None) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "partner_id": key.partner_id,
        "shop_id": key.shop_id,
        "load_id": key.load_id,
        "date_format": date_format,
    }


def _model_built_callback(on_model_built: Callable[[str, Relation], None]) -> Callable[[Any], None]:
    def callback(event: Any) -> None:
        if event.info.name != "NodeFinished":
            return
        node = event.data.node_info
        if node.unique_id.startswith("model.") and node.node_status == "success":
            on_model_built(node.node_name, Relation(node.node_relation.schema, node.node_relation.alias))

    return callback


def dbt_build(
    warehouse: Warehouse,
    slot: Slot,
    dbt_vars: dict[str, Any] | None = None,
    *,
    select: str | None = None,
    gates_only: bool = True,
    on_model_built: Callable[[str, Relation], None] | None = None,
) -> DbtOutcome:
    """Run `dbt build` for one load in a worker slot's relations; never raises for a failed model or test.

    Without vars, dbt validates the load named in the slot's row of
    loader_registry.build_context (registry.set_build_context), and its
    parse of the project stays cached in the slot's target folder.
    `on_model_built(name, relation)` is called, from dbt's threads, as each model is built.
    """
    from dbt.cli.main import dbtRunner

    # profiles.yml reads the connection and the slot's schema from these variables (env_var()), as by hand.
    # A process builds in one slot at a time, so its environment can say which.
    os.environ.update({k: v for k, v in warehouse.env().items() if k.startswith("LOADER_PG")})
    os.environ.update(slot.dbt_env())
    # profiles.yml has no libpq options; libpq takes them from PGOPTIONS for dbt's sessions.
    os.environ["PGOPTIONS"] = warehouse.session_options
    args = [
        "build",
        "--project-dir", str(DBT_PROJECT),
        "--profiles-dir", str(PROFILES_DIR),
        "--target-path", str(slot.target_dir),
        "--log-path", str(slot.logs_dir),
        "--quiet",
        # manifest.json and run_results.json cost most of a second per build and nothing reads them;
        # the partial parse cache is written regardless.
        "--no-write-json",
    ]
    if dbt_vars is not None:
        args += ["--vars", json.dumps(dbt_vars)]
    if gates_only:
        # Unit tests and the inner layers' invariant tests check the SQL itself, not the
        # load: CI runs them on every change; a load runs the gates on its plan and audit.
        args += ["--exclude-resource-type", "unit_test", "--exclude", "test_type:data,tag:inner"]
    if select:
        args += ["--select", select]
    callbacks = [] if on_model_built is None else [_model_built_callback(on_model_built)]
    result = dbtRunner(callbacks=callbacks).invoke(args)
    if result.exception is not None:
        return DbtOutcome(False, error=str(result.exception))
    outcome = DbtOutcome(bool(result.success))
    relations: dict[str, Relation] = {}
    # (name, compiled SQL) of each failed test that found rows: sampled once the build is over.
    to_sample: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    unsampled: dict[str, FailingRows] = {}
    for node_result in getattr(result.result, "results", None) or []:
        status = str(node_result.status)
        node = node_result.node
        name = node.name
        outcome.node_seconds[name] = float(node_result.execution_time or 0.0)
        if node.resource_type == "model":
            relations[name] = Relation(node.schema, node.alias or name)
        if status in _FAILED:
            outcome.failures.append(NodeProblem(name, status, (node_result.message or "").strip()[:500]))
            failures = getattr(node_result, "failures", None)
            compiled = getattr(node, "compiled_code", None)
            if node.resource_type == "test" and status == "fail" and isinstance(failures, int) and failures > 0:
                counts[name] = failures
                if not compiled:
                    unsampled[name] = FailingRows(note="dbt gave no compiled SQL to read the failing rows with")
                elif len(to_sample) < SAMPLED_TESTS:
                    to_sample.append((name, compiled))
                else:
                    unsampled[name] = FailingRows(note=f"not sampled: only the first {SAMPLED_TESTS} failed tests are")
        elif status == "skipped":
            outcome.skipped.append(name)
    if counts:
        samples = {**unsampled, **sample_failing_rows(warehouse, to_sample)}
        outcome.failures = [NodeProblem(f.name, f.status, f.message, counts.get(f.name), samples.get(f.name))
                            for f in outcome.failures]
    try:
        record_relations(slot.target_dir, relations)
    except OSError as exc:
        return DbtOutcome(False, error=f"could not record where dbt built its models in {slot.target_dir}: {exc}")
    if not outcome.success and not outcome.failures:
        outcome.error = "dbt reported a failure without a failing node"
    return outcome


def sample_failing_rows(warehouse: Warehouse, tests: Sequence[tuple[str, str]]) -> dict[str, FailingRows]:
    """Up to SAMPLE_ROWS rows of each test's compiled SQL (what the test found), by test name; never raises.

    Run right after the build, while the slot's relations (and its build
    context) are still the ones the tests read. A test whose rows cannot be
    read gets the reason as its note: the run's real error is the test's failure.
    """
    if not tests:
        return {}
    try:
        conn = warehouse.connect()
    except WarehouseUnavailable as exc:
        return {name: FailingRows(note=f"the failing rows could not be read: {exc}"[:500]) for name, _ in tests}
    samples: dict[str, FailingRows] = {}
    with contextlib.closing(conn):
        for name, compiled in tests:
            try:
                samples[name] = _sample(conn, compiled)
            except psycopg2.Error as exc:
                reason = (exc.pgerror or str(exc)).strip().splitlines()
                samples[name] = FailingRows(note=("the failing rows could not be read: "
                                                  + (reason[0] if reason else type(exc).__name__))[:500])
    return samples


def _sample(conn: psycopg2.extensions.connection, compiled: str) -> FailingRows:
    # The compiled SQL may end in a comment or a semicolon: the closing parenthesis goes on a line of its own.
    query = sql.SQL("select * from (\n{}\n) as failing limit {}").format(
        sql.SQL(compiled.strip().rstrip(";")), sql.Literal(SAMPLE_ROWS))
    with conn, conn.cursor() as cur:
        # Read only, and bounded: a sample never changes anything, nor waits on the publish's locks.
        cur.execute("set transaction read only")
        cur.execute("select set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                    (SAMPLE_TIMEOUT, SAMPLE_TIMEOUT))
        cur.execute(query)
        names = [str(d.name) for d in cur.description or ()]
        rows = cur.fetchall()
    columns = _unique(names[:SAMPLE_COLUMNS])
    shown = tuple({c: _shown(v) for c, v in zip(columns, row, strict=False)} for row in rows)
    note = f"{len(names) - SAMPLE_COLUMNS} more column(s) not shown" if len(names) > SAMPLE_COLUMNS else None
    return FailingRows(tuple(columns), shown, note)


def _unique(names: list[str]) -> list[str]:
    """Column names as JSON keys: a name the query repeats gets a number, so that no value is lost."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_VALUE_CHARS else text[:SAMPLE_VALUE_CHARS - 1] + "\u2026"


def _shown(value: Any, nested: bool = False) -> Any:
    """A value as JSON for people: numbers and booleans as they are, everything else as text, cut short."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple) and not nested:
        return [_shown(v, nested=True) for v in value[:SAMPLE_LIST_ITEMS]]
    if isinstance(value, bytes | memoryview):
        return _cut("\\x" + bytes(value).hex())
    if isinstance(value, dict):
        return _cut(json.dumps(value, default=str, ensure_ascii=False))
    return _cut(str(value))
