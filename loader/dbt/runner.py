"""The dbt call: one in-process `dbt build` per load, against the loader's database.

dbt's start-up costs seconds, so it runs once per load (not per model or
entity), in this process through dbtRunner. The load comes from the
registry's build_context row of the worker slot rather than vars, so that dbt's parse of the
project stays cached from one load to the next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loader.database import Warehouse
from loader.dbt.relations import Relation, record_relations
from loader.intake.load_key import LoadKey
from loader.runs.slots import Slot

REPO = Path(__file__).resolve().parents[2]
DBT_PROJECT = REPO / "dbt_project"
PROFILES_DIR = REPO

# Statuses dbt gives a node that did not do its job.
_FAILED = {"error", "fail", "runtime error"}


@dataclass(frozen=True)
class NodeProblem:
    name: str
    status: str
    message: str

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
    for node_result in getattr(result.result, "results", None) or []:
        status = str(node_result.status)
        node = node_result.node
        name = node.name
        outcome.node_seconds[name] = float(node_result.execution_time or 0.0)
        if node.resource_type == "model":
            relations[name] = Relation(node.schema, node.alias or name)
        if status in _FAILED:
            outcome.failures.append(NodeProblem(name, status, (node_result.message or "").strip()[:500]))
        elif status == "skipped":
            outcome.skipped.append(name)
    try:
        record_relations(slot.target_dir, relations)
    except OSError as exc:
        return DbtOutcome(False, error=f"could not record where dbt built its models in {slot.target_dir}: {exc}")
    if not outcome.success and not outcome.failures:
        outcome.error = "dbt reported a failure without a failing node"
    return outcome
