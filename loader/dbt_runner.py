"""The dbt call: one in-process `dbt build` per load, against the loader's database.

dbt's start-up costs seconds, so it runs once per load (not per model or
entity), in this process through dbtRunner, with the load passed as vars.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loader.database import Warehouse
from loader.load_key import LoadKey

REPO = Path(__file__).resolve().parent.parent
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

    def summary(self) -> str:
        if self.error:
            return f"dbt could not run: {self.error}"
        parts = [str(f) for f in self.failures[:10]]
        if len(self.failures) > 10:
            parts.append(f"... and {len(self.failures) - 10} more")
        if self.skipped:
            parts.append(f"{len(self.skipped)} dependent node(s) skipped")
        return "dbt build failed: " + "; ".join(parts)


def build_vars(run_id: int, key: LoadKey, date_format: str | None) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "partner_id": key.partner_id,
        "shop_id": key.shop_id,
        "load_id": key.load_id,
        "date_format": date_format,
    }


def dbt_build(
    warehouse: Warehouse,
    home: Path,
    dbt_vars: dict[str, Any] | None = None,
    *,
    select: str | None = None,
    gates_only: bool = True,
) -> DbtOutcome:
    """Run `dbt build` for one load; never raises for a failed model or test.

    Without vars, dbt validates the load named in loader_registry.dbt_context
    (registry.set_dbt_context), and its parse of the project stays cached.
    """
    from dbt.cli.main import dbtRunner

    # profiles.yml reads the connection from these variables (env_var()), exactly as by hand.
    os.environ.update({k: v for k, v in warehouse.env().items() if k.startswith("LOADER_PG")})
    args = [
        "build",
        "--project-dir", str(DBT_PROJECT),
        "--profiles-dir", str(PROFILES_DIR),
        "--target-path", str(home / "dbt" / "target"),
        "--log-path", str(home / "dbt" / "logs"),
        "--quiet",
    ]
    if dbt_vars is not None:
        args += ["--vars", json.dumps(dbt_vars)]
    if gates_only:
        # Unit tests and the inner layers' invariant tests check the SQL itself, not the
        # load: CI runs them on every change; a load runs the gates on its plan and audit.
        args += ["--exclude-resource-type", "unit_test", "--exclude", "test_type:data,tag:inner"]
    if select:
        args += ["--select", select]
    result = dbtRunner().invoke(args)
    if result.exception is not None:
        return DbtOutcome(False, error=str(result.exception))
    outcome = DbtOutcome(bool(result.success))
    for node_result in getattr(result.result, "results", None) or []:
        status = str(node_result.status)
        name = node_result.node.name
        if status in _FAILED:
            outcome.failures.append(NodeProblem(name, status, (node_result.message or "").strip()[:500]))
        elif status == "skipped":
            outcome.skipped.append(name)
    if not outcome.success and not outcome.failures:
        outcome.error = "dbt reported a failure without a failing node"
    return outcome
