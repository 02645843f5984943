"""Review before publish: the thresholds that hold a load, its kept plan, the change preview, approve and reject.

A load whose plan crosses a threshold (partners.yml) is not published: its
plan (the dbt marts `publish_<entity>`, built in a worker slot that the next
build overwrites) is copied into schema `loader_review` with, for every row
it would update or leave unchanged, a hash of that row's production values
at the time. Approve publishes exactly that copy, with the same code as any
publish, after checking that production still holds what the plan was made
against and that the copy is the one that was checked (its checksum); else
it refuses and nothing is written. Reject discards the copy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from loader.contracts import Contract, load_contract
from loader.database import Warehouse, one_row
from loader.dbt.relations import Relation
from loader.intake.load_key import LoadKey
from loader.intake.partners import Thresholds
from loader.publish.transaction import Publisher, PublishError, business_columns
from loader.runs.registry import RunFilter, RunRecord, check_page, find_runs, known_shop_key, latest_run, move

REVIEW_SCHEMA = "loader_review"


class ReviewError(RuntimeError):
    """The run is not held for review, or its plan cannot be published as reviewed; nothing was written."""


@dataclass(frozen=True)
class Crossed:
    """One threshold a load crossed: `value` percent of an entity's rows, over `limit` percent."""

    threshold: str
    entity: str
    value: float
    limit: float

    def as_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "entity": self.entity, "value": round(self.value, 2),
                "limit": self.limit}

    def __str__(self) -> str:
        return f"{self.entity} {self.threshold}: {self.value:.2f}% > {self.limit:g}%"


def held_because(run: RunRecord) -> str:
    """Why a held run is held, in the words of its run message ("customers max_update_pct: 30.00% > 20%")."""
    return "; ".join(str(Crossed(h["threshold"], h["entity"], float(h["value"]), float(h["limit"])))
                     for h in run.held_because or [])


def crossed_thresholds(
    cur: psycopg2.extensions.cursor,
    thresholds: Thresholds,
    contract: Contract,
    key: LoadKey,
    ledger: Relation,
    run_id: int,
) -> list[Crossed]:
    """The thresholds the run's planned ledger (as dbt built it) crosses.

    A share crosses its limit when it is greater than it (a limit of 0 holds
    any rejected or updated row). The update share is of the shop's rows in
    production now, before this load: `cur` must not see the load's own
    uncommitted publish.
    """
    shop = known_shop_key(cur, key)
    cur.execute(sql.SQL("select entity, landed_rows, rejected_rows, updated from {} where run_id = %s"
                        " order by entity_order").format(ledger.ident()), (run_id,))
    crossed = []
    for entity, landed, rejected, updated in cur.fetchall():
        limit = thresholds.max_reject_pct
        if limit is not None and landed and 100.0 * rejected / landed > limit:
            crossed.append(Crossed("max_reject_pct", entity, 100.0 * rejected / landed, limit))
        limit = thresholds.max_update_pct
        if limit is not None and updated:
            cur.execute(sql.SQL("select count(*) from {} where shop_key = %s").format(
                sql.Identifier(contract.production_schema, entity)), (shop,))
            existing = int(one_row(cur)[0])
            share = 100.0 * updated / existing if existing else 100.0
            if share > limit:
                crossed.append(Crossed("max_update_pct", entity, share, limit))
    return crossed


def _kept(run_id: int, entity: str, suffix: str = "") -> sql.Identifier:
    return sql.Identifier(REVIEW_SCHEMA, f"run_{run_id}__{entity}{suffix}")


def _row_hash(alias: str, columns: list[str]) -> sql.Composable:
    """md5 of a row's business values, as text (NULLs and types included)."""
    values = sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns)
    return sql.SQL("md5(row({})::text)").format(values)


def _plan_checksum(cur: psycopg2.extensions.cursor, plan: sql.Composable, columns: list[str]) -> str:
    """One md5 over every row of a plan (ids, actions and values), in id order."""
    row = sql.SQL("md5(row(p.id, p.external_id, p._action, {})::text)").format(
        sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in columns))
    cur.execute(sql.SQL("select md5(coalesce(string_agg({row}, ',' order by p.id), '')) from {plan} as p").format(
        row=row, plan=plan))
    return str(one_row(cur)[0])


def keep_plan(cur: psycopg2.extensions.cursor, contract: Contract, key: LoadKey, run_id: int,
              plans: dict[str, Relation]) -> None:
    """Copy a held run's plans into loader_review, with the production rows they were made against (hashed)."""
    cur.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(REVIEW_SCHEMA)))
    discard_plan(cur, run_id)
    shop = (known_shop_key(cur, key),)
    for order, entity in enumerate(e.name for e in contract.entities):
        columns = business_columns(cur, contract.production_schema, entity)
        kept, before = _kept(run_id, entity), _kept(run_id, entity, "__before")
        production = sql.Identifier(contract.production_schema, entity)
        cur.execute(sql.SQL("create table {} as select * from {}").format(kept, plans[f"publish_{entity}"].ident()))
        # Every production row of the shop, not only those the plan writes: the rows a reload carried over
        # unchanged (run_files.carried_rows) are in no plan, and their verdict assumed production as it is now.
        cur.execute(sql.SQL("""
            create table {before} as
            select t.id, t.external_id, {hash} as production_hash
            from {production} as t
            where t.shop_key = %s
            """).format(before=before, hash=_row_hash("t", columns), production=production), shop)
        cur.execute(sql.SQL("select count(*) filter (where _action = 'insert'), count(*) filter (where _action ="
                            " 'update'), count(*) filter (where _action = 'unchanged') + coalesce((select"
                            " carried_rows from loader_registry.run_files where run_id = %s and entity = %s), 0)"
                            " from {}").format(kept), (run_id, entity))
        inserts, updates, unchanged = one_row(cur)
        cur.execute(
            "insert into loader_registry.run_review_plans (run_id, entity, entity_order, checksum, inserts, updates,"
            " unchanged) values (%s, %s, %s, %s, %s, %s, %s)",
            (run_id, entity, order, _plan_checksum(cur, kept, columns), inserts, updates, unchanged),
        )


def discard_plan(cur: psycopg2.extensions.cursor, run_id: int) -> None:
    """Drop the kept plan of a run, if it has one (approved, rejected, run again or purged)."""
    cur.execute("select entity from loader_registry.run_review_plans where run_id = %s and discarded_at is null",
                (run_id,))
    for (entity,) in cur.fetchall():
        for suffix in ("", "__before"):
            cur.execute(sql.SQL("drop table if exists {}").format(_kept(run_id, entity, suffix)))
    cur.execute("delete from loader_registry.run_review_plans where run_id = %s and discarded_at is null", (run_id,))


@dataclass(frozen=True)
class _KeptPlan:
    entity: str
    checksum: str
    inserts: int
    updates: int
    unchanged: int


def _kept_plans(cur: psycopg2.extensions.cursor, run_id: int) -> list[_KeptPlan]:
    cur.execute("select entity, checksum, inserts, updates, unchanged from loader_registry.run_review_plans"
                " where run_id = %s and discarded_at is null order by entity_order", (run_id,))
    return [_KeptPlan(*row) for row in cur.fetchall()]


def _held_run(cur: psycopg2.extensions.cursor, key: LoadKey) -> tuple[int, Contract]:
    """The load's latest run, locked, when it is held for review; else ReviewError."""
    cur.execute(
        "select run_id, status, contract from loader_registry.runs where partner_id = %s and shop_id = %s"
        " and load_id = %s order by run_id desc limit 1 for update",
        (key.partner_id, key.shop_id, key.load_id),
    )
    row = cur.fetchone()
    if row is None:
        raise ReviewError(f"unknown load {key}")
    run_id, status, contract = row
    if status != "needs_review":
        raise ReviewError(f"load {key} (run {run_id}) is {status}, not held for review")
    return run_id, load_contract(contract)


@dataclass
class Outdated:
    """How production moved under a kept plan since it was checked."""

    entity: str
    changed: int = 0
    now_present: int = 0
    example: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.changed:
            parts.append(f"{self.changed} row(s) of the shop were changed or deleted")
        if self.now_present:
            parts.append(f"{self.now_present} row(s) it inserts are in production now")
        return f"{self.entity}: {' and '.join(parts)} (for example {self.example})"


def _outdated(cur: psycopg2.extensions.cursor, contract: Contract, key: LoadKey, run_id: int,
              entity: str, *, lock: bool) -> Outdated:
    """Rows of production that moved since the plan was made; with `lock`, those it relies on are locked."""
    columns = business_columns(cur, contract.production_schema, entity)
    fmt = {"production": sql.Identifier(contract.production_schema, entity), "kept": _kept(run_id, entity),
           "before": _kept(run_id, entity, "__before"), "hash": _row_hash("t", columns)}
    shop = {"shop_key": known_shop_key(cur, key)}
    if lock:
        cur.execute(sql.SQL("""
            select count(*) from (
                select from {production} as t
                where t.shop_key = %(shop_key)s and t.id in (select id from {before})
                for share of t
            ) as held
            """).format(**fmt), shop)
    cur.execute(sql.SQL("""
        select count(*), min(b.external_id)
        from {before} as b
        left join {production} as t on t.shop_key = %(shop_key)s and t.id = b.id
        where t.id is null or {hash} <> b.production_hash
        """).format(**fmt), shop)
    changed, changed_example = one_row(cur)
    cur.execute(sql.SQL("""
        select count(*), min(p.external_id)
        from {kept} as p
        inner join {production} as t on t.shop_key = %(shop_key)s and t.id = p.id
        where p._action = 'insert'
        """).format(**fmt), shop)
    present, present_example = one_row(cur)
    return Outdated(entity, int(changed), int(present), changed_example or present_example)


@dataclass(frozen=True)
class Approved:
    run_id: int
    load: str
    checksums: dict[str, str]
    inserted: int
    updated: int


def approve(warehouse: Warehouse, key: LoadKey, by: str) -> Approved:
    """Publish a held load's kept plan, exactly as reviewed, in one transaction; ReviewError when it cannot be."""
    with contextlib.closing(warehouse.connect()) as conn:
        try:
            return _approve(conn, key, by)
        except BaseException:
            conn.rollback()
            raise


def _approve(conn: psycopg2.extensions.connection, key: LoadKey, by: str) -> Approved:
    with conn.cursor() as cur:
        run_id, contract = _held_run(cur, key)
        kept = _kept_plans(cur, run_id)
        if [k.entity for k in kept] != [e.name for e in contract.entities]:
            raise ReviewError(f"load {key} (run {run_id}) has no kept plan to publish; loader rerun {key}"
                              " plans it again")
        checksums = {}
        for plan in kept:
            columns = business_columns(cur, contract.production_schema, plan.entity)
            checksums[plan.entity] = _plan_checksum(cur, _kept(run_id, plan.entity), columns)
            if checksums[plan.entity] != plan.checksum:
                raise ReviewError(f"the kept plan of {plan.entity} is not the one that was reviewed (checksum"
                                  f" {checksums[plan.entity]}, reviewed {plan.checksum}); nothing was published")
        outdated = [o for o in (_outdated(cur, contract, key, run_id, p.entity, lock=True) for p in kept)
                    if o.changed or o.now_present]
        if outdated:
            raise ReviewError(
                f"production changed since load {key} (run {run_id}) was planned: "
                + "; ".join(str(o) for o in outdated)
                + f". Nothing was published; loader rerun {key} plans it again against production as it is now")

    def record(cur: psycopg2.extensions.cursor) -> None:
        discard_plan(cur, run_id)
        if not move(cur, run_id, "completed", f"approved by {by}; published into {contract.production_schema}",
                    by=by):
            raise ReviewError(f"run {run_id} could not be moved to completed")

    publisher = Publisher(conn, contract)
    for plan in kept:
        publisher.model_built(f"publish_{plan.entity}", Relation(REVIEW_SCHEMA, f"run_{run_id}__{plan.entity}"))
    publisher.start()
    try:
        done = publisher.finish(commit=True, before_commit=record)
    except PublishError as exc:
        raise ReviewError(f"{exc}; load {key} stays held for review") from exc
    return Approved(run_id, str(key), checksums, sum(d.inserted for d in done), sum(d.updated for d in done))


def reject(warehouse: Warehouse, key: LoadKey, by: str, reason: str | None) -> int:
    """Discard a held load's plan: status rejected, production untouched. Returns the run id."""
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        run_id, _ = _held_run(cur, key)
        discard_plan(cur, run_id)
        detail = f"rejected by {by}" + (f": {reason}" if reason else "")
        if not move(cur, run_id, "rejected", detail, by=by):
            raise ReviewError(f"run {run_id} could not be moved to rejected")
        return int(run_id)


def held_runs(conn: psycopg2.extensions.connection, limit: int, offset: int) -> list[RunRecord]:
    """One page of the runs held for review (needs_review), oldest first, each with the thresholds it crossed
    (`held_because`, parsed). How many there are: `find_runs` of status needs_review."""
    held = RunFilter(statuses=["needs_review"])
    return find_runs(conn, held, limit, offset, oldest_first=True).runs


@dataclass
class EntityDiff:
    """What publishing a held plan would do to one entity, with examples."""

    insert: int
    update: int
    unchanged: int
    checksum: str
    changed_since_plan: int
    columns: dict[str, int] = field(default_factory=dict)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Diff:
    run: RunRecord
    entities: dict[str, EntityDiff]

    def as_json(self) -> dict[str, Any]:
        return {
            "load": self.run.load,
            "run_id": self.run.run_id,
            "status": self.run.status,
            "held_because": self.run.held_because or [],
            "entities": {name: vars(e) for name, e in self.entities.items()},
        }


def diff(warehouse: Warehouse, key: LoadKey, entity: str | None = None, limit: int = 20, *,
         offset: int = 0) -> Diff:
    """The change preview of a held load: per entity, rows to insert and, for rows to update, each changed column
    with production's value now beside the plan's. At most `limit` example rows of each kind per entity, from
    the `offset`-th on in row order (`insert` and `update` count them all: pages of both cover every one)."""
    check_page(limit, offset)
    with contextlib.closing(warehouse.connect()) as conn:
        run = latest_run(conn, key)
        if run is None:
            raise ReviewError(f"unknown load {key}")
        if run.status != "needs_review":
            raise ReviewError(f"load {key} (run {run.run_id}) is {run.status}, not held for review: only a held"
                              " load has a plan to preview")
        return _diff_in(conn, run, key, entity, limit, offset)


def _diff_in(conn: psycopg2.extensions.connection, run: RunRecord, key: LoadKey, entity: str | None,
             limit: int, offset: int) -> Diff:
    contract = load_contract(run.contract)
    with conn, conn.cursor() as cur:
        # One snapshot for every count and example, read only.
        cur.execute("set transaction isolation level repeatable read, read only")
        kept = [p for p in _kept_plans(cur, run.run_id) if entity is None or p.entity == entity]
        return Diff(run, {p.entity: _entity_diff(cur, contract, key, run.run_id, p, limit, offset) for p in kept})


def _entity_diff(cur: psycopg2.extensions.cursor, contract: Contract, key: LoadKey, run_id: int, plan: _KeptPlan,
                 limit: int, offset: int) -> EntityDiff:
    columns = business_columns(cur, contract.production_schema, plan.entity)
    kept = _kept(run_id, plan.entity)
    production = sql.Identifier(contract.production_schema, plan.entity)
    outdated = _outdated(cur, contract, key, run_id, plan.entity, lock=False)
    result = EntityDiff(plan.inserts, plan.updates, plan.unchanged, plan.checksum,
                        outdated.changed + outdated.now_present)
    ident = {c: sql.Identifier(c) for c in columns}
    shop = {"shop_key": known_shop_key(cur, key), "limit": limit, "offset": offset}
    joined = sql.SQL("from {kept} as p left join {production} as t on t.shop_key = %(shop_key)s and t.id = p.id"
                     " where p._action = 'update'").format(kept=kept, production=production)
    counts = sql.SQL(", ").join(
        sql.SQL("count(*) filter (where t.{c} is distinct from p.{c})").format(c=ident[c]) for c in columns)
    cur.execute(sql.SQL("select {counts} {joined}").format(counts=counts, joined=joined), shop)
    result.columns = {c: int(n) for c, n in zip(columns, one_row(cur), strict=True) if n}
    pairs = sql.SQL(", ").join(sql.SQL("t.{c}::text, p.{c}::text").format(c=ident[c]) for c in columns)
    cur.execute(sql.SQL("select p.external_id, p._row_number, {pairs} {joined} order by p._row_number"
                        " limit %(limit)s offset %(offset)s").format(pairs=pairs, joined=joined), shop)
    for external_id, row_number, *values in cur.fetchall():
        changes = {c: {"now": values[2 * i], "after": values[2 * i + 1]} for i, c in enumerate(columns)
                   if values[2 * i] != values[2 * i + 1]}
        result.updates.append({"external_id": external_id, "row_number": row_number, "changes": changes})
    plain = sql.SQL(", ").join(sql.SQL("p.{c}::text").format(c=ident[c]) for c in columns)
    cur.execute(sql.SQL("select p.external_id, p._row_number, {plain} from {kept} as p where p._action = 'insert'"
                        " order by p._row_number limit %(limit)s offset %(offset)s").format(plain=plain, kept=kept),
                shop)
    for external_id, row_number, *values in cur.fetchall():
        result.inserts.append({"external_id": external_id, "row_number": row_number,
                               "values": dict(zip(columns, values, strict=True))})
    return result


def describe(d: Diff, limit: int) -> str:
    """The change preview for a terminal: counts, then which columns change, then examples."""
    lines = [f"load {d.run.load} (run {d.run.run_id}): held for review"]
    for held in d.run.held_because or []:
        lines.append(f"  held because {held['entity']} {held['threshold']}: {held['value']}% > {held['limit']}%")
    for name, e in d.entities.items():
        lines.append(f"{name}: {e.insert:,} to insert, {e.update:,} to update, {e.unchanged:,} unchanged"
                     f" (plan checksum {e.checksum})")
        if e.changed_since_plan:
            lines.append(f"  ! {e.changed_since_plan:,} of its rows changed in production since the plan was made:"
                         " approve will refuse it")
        for column, count in e.columns.items():
            examples = [u["changes"][column] for u in e.updates if column in u["changes"]][:1]
            example = f", e.g. {_shown(examples[0]['now'])} -> {_shown(examples[0]['after'])}" if examples else ""
            lines.append(f"  {count:,} {name} change {column}{example}")
        for row in e.inserts:
            values = ", ".join(f"{c}={_shown(v)}" for c, v in row["values"].items() if v is not None)
            lines.append(f"  + {row['external_id']} (row {row['row_number']}): {values}")
        if e.insert > len(e.inserts):
            lines.append(f"    ... and {e.insert - len(e.inserts):,} more to insert (--limit {limit})")
        for row in e.updates:
            changes = "; ".join(f"{c}: {_shown(v['now'])} -> {_shown(v['after'])}" for c, v in row["changes"].items())
            lines.append(f"  ~ {row['external_id']} (row {row['row_number']}): {changes}")
        if e.update > len(e.updates):
            lines.append(f"    ... and {e.update - len(e.updates):,} more to update (--limit {limit})")
    return "\n".join(lines)


def _shown(value: str | None) -> str:
    return "(empty)" if value is None else value
