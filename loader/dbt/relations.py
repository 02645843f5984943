"""Where dbt built a model: read from dbt's manifest, so profiles.yml decides schemas, not this code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
from psycopg2 import sql

from loader.database import one_row


class MissingRelation(LookupError):
    """dbt has not built the model here (no manifest, or no such model in it)."""


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


def dbt_relation(target_dir: Path, model: str) -> Relation:
    """Where dbt built a model, from its manifest (so profiles.yml decides schemas, not this code)."""
    manifest = json.loads((target_dir / "manifest.json").read_text(encoding="utf-8"))
    for node in manifest["nodes"].values():
        if node.get("resource_type") == "model" and node.get("name") == model:
            return Relation(node["schema"], node.get("alias") or node["name"])
    raise MissingRelation(f"dbt model {model!r} is not in {target_dir / 'manifest.json'}")


def built_relation(cur: psycopg2.extensions.cursor, target_dir: Path, model: str) -> Relation | None:
    """Where dbt built a model, or None before dbt has built it here (no manifest, no such model or table)."""
    try:
        relation = dbt_relation(target_dir, model)
    except (OSError, MissingRelation):
        return None
    cur.execute("select to_regclass(%s) is not null", (f'"{relation.schema}"."{relation.name}"',))
    return relation if one_row(cur)[0] else None
