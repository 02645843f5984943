"""Where dbt built a model: as dbt reported it, so profiles.yml decides schemas, not this code.

dbt's manifest.json would say so too, but writing it costs most of a second
per build (runner.py turns it off); each build records its models' relations
in the target folder's relations.json instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
from psycopg2 import sql

from loader.database import one_row


class MissingRelation(LookupError):
    """dbt has not built the model here (no build yet, or none with that model)."""


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


RELATIONS_FILE = "relations.json"


def record_relations(target_dir: Path, relations: dict[str, Relation]) -> None:
    """Add a build's models to the target folder's record (a partial build keeps the others' entries)."""
    path = target_dir / RELATIONS_FILE
    known = _read(path)
    known.update({name: [r.schema, r.name] for name, r in relations.items()})
    target_dir.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(known, sort_keys=True), encoding="utf-8")
    scratch.replace(path)


def _read(path: Path) -> dict[str, list[str]]:
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return {str(k): [str(v[0]), str(v[1])] for k, v in known.items()}


def dbt_relation(target_dir: Path, model: str) -> Relation:
    """Where dbt built a model in this target folder (so profiles.yml decides schemas, not this code)."""
    path = target_dir / RELATIONS_FILE
    entry = _read(path).get(model)
    if entry is None:
        raise MissingRelation(f"dbt model {model!r} has not been built with target folder {target_dir}")
    return Relation(entry[0], entry[1])


def built_relation(cur: psycopg2.extensions.cursor, target_dir: Path, model: str) -> Relation | None:
    """Where dbt built a model, or None before dbt has built it here (no build, no such model or table)."""
    try:
        relation = dbt_relation(target_dir, model)
    except (OSError, MissingRelation):
        return None
    cur.execute("select to_regclass(%s) is not null", (f'"{relation.schema}"."{relation.name}"',))
    return relation if one_row(cur)[0] else None
