"""The publish step: a load's plan into the production tables, all or nothing.

dbt writes the plan (marts `publish_<entity>`: the valid rows in production
shape, each marked insert, update or unchanged) and audits it with tests;
this step applies every entity's plan in dependency order inside ONE
transaction, so a failure anywhere leaves production exactly as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
from psycopg2 import sql

from loader.contracts import Contract

# Production columns that are bookkeeping, not the entity's values: a row whose
# values are all equal is "unchanged" even when these differ.
BOOKKEEPING = ("id", "partner_id", "shop_id", "external_id", "source", "load_id", "created_at", "updated_at",
               "is_imported")


class PublishError(RuntimeError):
    """Publishing failed; the transaction was rolled back and production is unchanged."""


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
    raise PublishError(f"dbt model {model!r} is not in {target_dir / 'manifest.json'}")


@dataclass(frozen=True)
class EntityPublished:
    entity: str
    inserted: int
    updated: int


def _business_columns(cur: psycopg2.extensions.cursor, schema: str, table: str) -> list[str]:
    cur.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
        " order by ordinal_position",
        (schema, table),
    )
    return [name for (name,) in cur.fetchall() if name not in BOOKKEEPING]


def _publish_entity(
    cur: psycopg2.extensions.cursor, contract: Contract, entity: str, plan: Relation
) -> EntityPublished:
    target = sql.Identifier(contract.production_schema, entity)
    crosswalk = sql.Identifier(contract.production_schema, "id_crosswalk")
    columns = _business_columns(cur, contract.production_schema, entity)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    fmt = {"target": target, "plan": plan.ident(), "cols": cols, "crosswalk": crosswalk}
    # The plan says which rows are new: those go in with a plain INSERT, which
    # is much cheaper than INSERT ... ON CONFLICT's speculative insertion. A
    # row that exists after all (a stale plan) violates the primary key and
    # fails the whole publish, which is what a stale plan should do.
    cur.execute(sql.SQL("""
        insert into {target} (id, partner_id, shop_id, external_id, load_id, {cols}, created_at, updated_at)
        select id, partner_id, shop_id, external_id, load_id, {cols}, now(), now()
        from {plan}
        where _action = 'insert'
        """).format(**fmt))
    inserted = cur.rowcount
    cur.execute(sql.SQL("""
        update {target} as t
        set load_id = p.load_id, {updates}, updated_at = now()
        from {plan} as p
        where p._action = 'update' and t.id = p.id and ({current}) is distinct from ({incoming})
        """).format(
        updates=sql.SQL(", ").join(sql.SQL("{c} = p.{c}").format(c=sql.Identifier(c)) for c in columns),
        current=sql.SQL(", ").join(sql.SQL("t.{c}").format(c=sql.Identifier(c)) for c in columns),
        incoming=sql.SQL(", ").join(sql.SQL("p.{c}").format(c=sql.Identifier(c)) for c in columns),
        **fmt,
    ))
    updated = cur.rowcount
    cur.execute(
        sql.SQL("select count(*) filter (where _action = 'insert'), count(*) filter (where _action = 'update')"
                " from {plan}").format(**fmt),
    )
    planned = cur.fetchone()
    if (inserted, updated) != tuple(planned):
        raise PublishError(
            f"{entity}: the plan said {planned[0]} inserts and {planned[1]} updates, publishing did "
            f"{inserted} and {updated}; nothing was published"
        )
    cur.execute(
        sql.SQL("""
        insert into {crosswalk} (internal_id, partner_id, shop_id, entity_type, external_id,
                                 first_load_id, last_load_id, first_seen_at, last_seen_at)
        select p.id, p.partner_id, p.shop_id, %s, p.external_id, p.load_id, p.load_id, now(), now()
        from {plan} as p
        where not exists (select from {crosswalk} as c where c.internal_id = p.id)
        """).format(**fmt),
        (entity,),
    )
    cur.execute(
        sql.SQL("""
        update {crosswalk} as c
        set last_load_id = p.load_id, last_seen_at = now()
        from {plan} as p
        where p._action <> 'insert' and c.internal_id = p.id and c.last_load_id is distinct from p.load_id
        """).format(**fmt),
    )
    return EntityPublished(entity, inserted, updated)


def publish(
    conn: psycopg2.extensions.connection, contract: Contract, target_dir: Path
) -> list[EntityPublished]:
    """Apply every entity's plan in dependency order, in one transaction."""
    plans = {e.name: dbt_relation(target_dir, f"publish_{e.name}") for e in contract.entities}
    done: list[EntityPublished] = []
    try:
        with conn, conn.cursor() as cur:
            for entity in contract.entities:
                done.append(_publish_entity(cur, contract, entity.name, plans[entity.name]))
    except psycopg2.Error as exc:
        failed = contract.entities[len(done)].name
        raise PublishError(f"publishing {failed} failed, nothing was published: {exc.pgerror or exc}".strip()) \
            from exc
    return done


def ensure_production(conn: psycopg2.extensions.connection, contract: Contract) -> None:
    """Create the contract's production tables if they are not there (idempotent DDL)."""
    with conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('loader production ddl'))")
        cur.execute(contract.production_ddl.read_text(encoding="utf-8"))
