"""The publish step: a load's plan into the production tables, all or nothing.

dbt writes the plan (marts `publish_<entity>`: the valid rows in production
shape, each marked insert, update or unchanged) and audits it with tests;
this step applies every entity's plan in dependency order inside ONE
transaction, so a failure anywhere leaves production exactly as it was.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from loader.contracts import Contract
from loader.database import VersionedDdl, apply_versioned, hash_joins, one_row
from loader.dbt.relations import MissingRelation, Relation, dbt_relation

# Production columns that are bookkeeping, not the entity's values: a row whose
# values are all equal is "unchanged" even when these differ.
BOOKKEEPING = ("shop_key", "id", "partner_id", "shop_id", "external_id", "source", "load_id", "first_load_id",
               "created_at", "updated_at", "is_imported")


class PublishError(RuntimeError):
    """Publishing failed; the transaction was rolled back and production is unchanged."""


@dataclass(frozen=True)
class EntityPublished:
    entity: str
    inserted: int
    updated: int


def business_columns(cur: psycopg2.extensions.cursor, schema: str, table: str) -> list[str]:
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
    columns = business_columns(cur, contract.production_schema, entity)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    fmt = {"target": target, "plan": plan.ident(), "cols": cols}
    # The plan says which rows are new: those go in with a plain INSERT, which
    # is much cheaper than INSERT ... ON CONFLICT's speculative insertion. A
    # row that exists after all (a stale plan) violates the primary key and
    # fails the whole publish, which is what a stale plan should do.
    cur.execute(sql.SQL("""
        insert into {target} (shop_key, id, partner_id, shop_id, external_id, load_id, first_load_id, {cols},
                              created_at, updated_at)
        select shop_key, id, partner_id, shop_id, external_id, load_id, load_id, {cols}, now(), now()
        from {plan}
        where _action = 'insert'
        """).format(**fmt))
    inserted = cur.rowcount
    cur.execute(sql.SQL("""
        update {target} as t
        set load_id = p.load_id, {updates}, updated_at = now()
        from {plan} as p
        where p._action = 'update' and t.shop_key = p.shop_key and t.id = p.id
            and ({current}) is distinct from ({incoming})
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
    planned = one_row(cur)
    if (inserted, updated) != tuple(planned):
        raise PublishError(
            f"{entity}: the plan said {planned[0]} inserts and {planned[1]} updates, publishing did "
            f"{inserted} and {updated}; nothing was published"
        )
    return EntityPublished(entity, inserted, updated)


def publish(conn: psycopg2.extensions.connection, contract: Contract, target_dir: Path) -> list[EntityPublished]:
    """Apply every entity's plan (as dbt last built it in `target_dir`), in one transaction."""
    publisher = Publisher(conn, contract)
    for entity in contract.entities:
        model = f"publish_{entity.name}"
        try:
            publisher.model_built(model, dbt_relation(target_dir, model))
        except MissingRelation as exc:
            raise PublishError(str(exc)) from exc
    publisher.start()
    return publisher.finish(commit=True)


class Publisher:
    """Publishes each plan while dbt builds the rest, in one transaction that commits at the end or not at all.

    The loader's dbt build calls `model_built` as each plan is ready; a thread
    of this class's own applies the plans in dependency order meanwhile, on a
    connection of its own, so the publishing of parents overlaps the checks
    of the line items (the longest part of a build). `finish` then commits
    only if the whole build passed and every plan applied, and rolls back
    otherwise: production sees all of a load or none of it, as before.
    Nothing it writes is visible to dbt's own reads of production until then.
    """

    def __init__(self, conn: psycopg2.extensions.connection, contract: Contract) -> None:
        self._conn = conn
        self._contract = contract
        self._plans: dict[str, Relation] = {}
        self._build_ended = False
        self._ready = threading.Condition()
        self._done: list[EntityPublished] = []
        self._failure: PublishError | None = None
        self._triggers_skipped = False
        # (what, seconds, whether dbt's build had ended when it started): the run's log says where a publish went.
        self._timings: list[tuple[str, float, bool]] = []
        self._thread = threading.Thread(target=self._apply_plans, name="loader-publish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def timing(self) -> str:
        """Each part of the publish and its seconds (those begun after dbt's build had ended marked `*`); "" if none."""
        if not self._timings:
            return ""
        parts = ", ".join(f"{what}{'*' if after_build else ''} {seconds:.1f} s"
                          for what, seconds, after_build in self._timings)
        return f"publish: {parts} (* after dbt's build had ended)"

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        after_build = self._build_ended
        started = time.perf_counter()
        try:
            yield
        finally:
            self._timings.append((what, time.perf_counter() - started, after_build))

    @property
    def done(self) -> list[EntityPublished]:
        """The plans applied so far (all of them, once `finish` has waited for the publishing thread)."""
        return list(self._done)

    def model_built(self, model: str, relation: Relation) -> None:
        """dbt built `model` (any model; plans are picked out by name). Called from dbt's threads."""
        with self._ready:
            self._plans[model] = relation
            self._ready.notify_all()

    def _next_plan(self, remaining: list[str], *, in_order: bool) -> tuple[str, Relation] | None:
        """The next plan to apply once dbt has built it; None when the build ended without it.

        `in_order`: the first remaining entity's, else whichever remaining plan
        is built first (the earliest in dependency order among those ready).
        """
        candidates = remaining[:1] if in_order else remaining
        with self._ready:
            while True:
                for entity in candidates:
                    plan = self._plans.get(f"publish_{entity}")
                    if plan is not None:
                        return entity, plan
                if self._build_ended:
                    return None
                self._ready.wait()

    def _apply_plans(self) -> None:
        remaining = [e.name for e in self._contract.entities]
        entity = remaining[0]
        try:
            with self._conn.cursor() as cur:
                self._triggers_skipped = _skip_row_triggers(cur)
                while remaining:
                    # With the row triggers on, a child's rows need their parents in
                    # first; with them off, references are checked at the end, so a
                    # plan goes in as soon as it is built (payments need not wait
                    # for the line items).
                    found = self._next_plan(remaining, in_order=not self._triggers_skipped)
                    if found is None:
                        return
                    entity, plan = found
                    remaining.remove(entity)
                    with self._timed(entity):
                        self._done.append(_publish_entity(cur, self._contract, entity, plan))
        except psycopg2.Error as exc:
            self._failure = PublishError(
                f"publishing {entity} failed, nothing was published: {exc.pgerror or exc}".strip())
            # Kept as the cause, so that a dropped connection is seen to be one (and retried).
            self._failure.__cause__ = exc
        except PublishError as exc:
            self._failure = exc

    def finish(
        self, *, commit: bool, before_commit: Callable[[psycopg2.extensions.cursor], None] | None = None
    ) -> list[EntityPublished]:
        """Wait for the plans to be applied, then commit them all (when `commit`) or roll every one back.

        `before_commit(cursor)` writes, in the same transaction, what must be
        true exactly when production is (the run's status and ledger); if it
        raises, nothing is published. Raises PublishError when committing was
        asked for and could not be done.
        """
        with self._ready:
            self._build_ended = True
            self._ready.notify_all()
        self._thread.join()
        try:
            if not commit:
                self._conn.rollback()
                return []
            if self._failure is not None:
                raise self._failure
            published = {d.entity for d in self._done}
            missing = [e.name for e in self._contract.entities if e.name not in published]
            if missing:
                raise PublishError(f"dbt did not build the plan of {', '.join(missing)}; nothing was published")
            with self._conn.cursor() as cur:
                plans = {e.name: self._plans[f"publish_{e.name}"] for e in self._contract.entities}
                with self._timed("references"):
                    _check_references(cur, self._contract, plans, lock_parents=self._triggers_skipped)
                if before_commit is not None:
                    with self._timed("outcome"):
                        before_commit(cur)
            with self._timed("commit"):
                self._conn.commit()
            return self._done
        except psycopg2.Error as exc:
            self._conn.rollback()
            raise PublishError(f"publishing failed, nothing was published: {exc.pgerror or exc}".strip()) from exc
        except BaseException:
            self._conn.rollback()
            raise


def _skip_row_triggers(cur: psycopg2.extensions.cursor) -> bool:
    """Turn off PostgreSQL's per-row foreign-key triggers for this transaction, where allowed.

    They check each of a million inserted rows on its own (a third of a big
    publish); `_check_references` checks the same, set-based, before commit.
    The foreign keys stay declared, so every other writer is still checked.
    Only a superuser (or a role granted SET on the parameter) may do this;
    for anyone else the triggers run as usual.
    """
    cur.execute("savepoint row_triggers")
    try:
        cur.execute("set local session_replication_role = replica")
    except psycopg2.errors.InsufficientPrivilege:
        cur.execute("rollback to savepoint row_triggers")
        return False
    cur.execute("release savepoint row_triggers")
    return True


@dataclass(frozen=True)
class ForeignKey:
    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]

    @property
    def reference(self) -> str:
        """The column that names the parent row (the one that is not the shop's key)."""
        return self.columns[-1]


def _foreign_keys(cur: psycopg2.extensions.cursor, schema: str) -> list[ForeignKey]:
    """The production schema's foreign keys, from the catalog (the DDL file is the one place they are written).

    As declared: on partitioned tables (LOADER_PRODUCTION_PARTITIONS) PostgreSQL clones each one per
    partition (conparentid names the declared one), which would name partitions instead of tables.
    """
    cur.execute("""
        select child.relname, parent.relname,
            array(select a.attname from unnest(c.conkey) with ordinality as k (attnum, n)
                  inner join pg_attribute as a on a.attrelid = c.conrelid and a.attnum = k.attnum order by k.n),
            array(select a.attname from unnest(c.confkey) with ordinality as k (attnum, n)
                  inner join pg_attribute as a on a.attrelid = c.confrelid and a.attnum = k.attnum order by k.n)
        from pg_constraint as c
        inner join pg_class as child on c.conrelid = child.oid
        inner join pg_namespace as ns on child.relnamespace = ns.oid
        inner join pg_class as parent on c.confrelid = parent.oid
        where c.contype = 'f' and ns.nspname = %s and c.conparentid = 0
        order by 1, 3
        """, (schema,))
    return [ForeignKey(table, tuple(columns), parent, tuple(parent_columns))
            for table, parent, columns, parent_columns in cur.fetchall()]


def _check_references(
    cur: psycopg2.extensions.cursor,
    contract: Contract,
    plans: dict[str, Relation],
    *,
    lock_parents: bool,
) -> None:
    """Every reference this publish wrote points at a production row, or nothing is published.

    With the row triggers off, the parents that existed before this load are
    locked as the triggers would have locked them (FOR KEY SHARE), so that
    no one can delete them before this transaction commits; they are locked
    before they are looked for, so a delete that got in first is seen.
    Every key leads with the shop's, so a parent is looked for in the
    child's own shop, by its index.
    """
    schema = contract.production_schema
    for fk in _foreign_keys(cur, schema):
        if fk.table not in plans:
            continue

        def pairs(child: str, parent: str, fk: ForeignKey = fk) -> sql.Composable:
            return sql.SQL(" and ").join(
                sql.SQL("{}.{} = {}.{}").format(sql.Identifier(parent), sql.Identifier(pc), sql.Identifier(child),
                                                sql.Identifier(c))
                for c, pc in zip(fk.columns, fk.parent_columns, strict=True))

        fmt = {
            "plan": plans[fk.table].ident(),
            "parent": sql.Identifier(schema, fk.parent),
            "columns": sql.SQL(", ").join(sql.SQL("p.{}").format(sql.Identifier(c)) for c in fk.columns),
            "parent_columns": sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c))
                                                 for c in fk.parent_columns),
            "present": sql.SQL(" and ").join(sql.SQL("p.{} is not null").format(sql.Identifier(c))
                                             for c in fk.columns),
            "found": pairs("p", "t"),
        }
        if lock_parents:
            # Parents this publish inserts are invisible to everyone else until it commits.
            new_parents: sql.Composable = sql.SQL("")
            if fk.parent in plans:
                new_parents = sql.SQL(
                    "and not exists (select from {parent_plan} as pp where {pairs} and pp._action = 'insert')"
                ).format(parent_plan=plans[fk.parent].ident(), pairs=pairs("p", "pp"))
            with hash_joins(cur):
                cur.execute(sql.SQL("""
                    select count(*) from (
                        select from {parent} as t
                        where ({parent_columns}) in (
                            select {columns} from {plan} as p
                            where p._action <> 'unchanged' and {present} {new_parents}
                        )
                        for key share of t
                    ) as held
                    """).format(new_parents=new_parents, **fmt))
        cur.execute(sql.SQL("""
            select count(*), min(p._row_number)
            from {plan} as p
            where p._action <> 'unchanged' and {present}
                and not exists (select from {parent} as t where {found})
            """).format(**fmt))
        missing, first_row = one_row(cur)
        if missing:
            raise PublishError(
                f"{fk.table}.{fk.reference}: {missing} published rows (the first at row {first_row} of the file)"
                f" reference a {fk.parent} row that is not in production; nothing was published"
            )


def ensure_production(conn: psycopg2.extensions.connection, contract: Contract, partitions: int = 0) -> None:
    """Create the contract's production tables, or upgrade them in place (see database.apply_versioned).

    With `partitions`, tables created now are hash-partitioned by shop_key (LOADER_PRODUCTION_PARTITIONS);
    tables that exist stay as they are.
    """
    ddl = VersionedDdl.read(f"production {contract.name}", contract.production_schema, contract.production_ddl)
    apply_versioned(conn, ddl, create=partitioned_by_shop(ddl.ddl, partitions) if partitions else None)


_CREATE_TABLE = re.compile(r"^create table if not exists (?P<table>[a-z_]+\.[a-z_]+) \(\n.*?^\);$",
                           re.MULTILINE | re.DOTALL)


def partitioned_by_shop(ddl: str, partitions: int) -> str:
    """`ddl` with every table hash-partitioned by shop_key into `partitions` partitions.

    PostgreSQL accepts that only if every primary and unique key holds shop_key, the very rule Citus's
    distribution by shop needs, so creating the tables so proves the rule.
    """
    def partition(match: re.Match[str]) -> str:
        table = match["table"]
        parts = "".join(
            f"\ncreate table if not exists {table}_p{i} partition of {table}"
            f" for values with (modulus {partitions}, remainder {i});"
            for i in range(partitions)
        )
        return match[0][:-1] + " partition by hash (shop_key);" + parts

    rewritten, tables = _CREATE_TABLE.subn(partition, ddl)
    if tables == 0:
        raise ValueError("the production DDL has no `create table if not exists schema.table (` statement")
    return rewritten
