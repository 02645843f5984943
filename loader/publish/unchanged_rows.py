"""Rows a reload need not check again, so that a weekly re-export costs what changed in it.

A partner's next export of a shop is mostly the previous one again. A row of
the new file whose every value is byte-for-byte that of a row the shop's
previous completed run accepted without any exception row would get the same
verdict, be valid and change nothing, provided nothing around it changed
either. So, per entity, dbt checks only the other rows (run_files.checked_rows)
and the ledger counts the carried ones valid and unchanged.

What "nothing around it" means, so that every cross-row rule stays exact:

- its key (trimmed, as staging trims) appears on no other row of the new
  file, so it cannot be a duplicate, nor can a checked row be its duplicate;
- each of its references either names no row of the referenced entity's new
  file, or names a carried one; a referenced row that is checked again (and
  so might be rejected now) takes its children with it, down every level of
  a self-reference (a line's parent lines), so a checked row's cross-row
  context is complete: a carried parent is in production, as it was accepted
  and published by the previous run, with the values it has now;
- the previous run is the shop's latest completed one, so production holds
  what it published, and it was checked under the same contract, parse
  settings and dbt SQL (runs.rules_fingerprint); its file's raw rows are
  still there (not purged).

A run without such a previous run, or an entity without a previous file,
checks every row, as the first load does. `LOADER_RECHECK_UNCHANGED=true`
checks every row of every load.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions
from psycopg2 import sql

from loader.contracts import Contract, Entity
from loader.contracts.model import WHITE_SPACE
from loader.database import hash_joins
from loader.intake.load_key import LoadKey
from loader.publish.identical_rerun import latest_completed_run


@dataclass(frozen=True)
class Carried:
    entity: str
    from_run: int
    rows: int


def previous_verdicts(cur: psycopg2.extensions.cursor, key: LoadKey, run_id: int, rules: str) -> int | None:
    """The shop's latest completed run, if its rows were checked under the same rules."""
    latest = latest_completed_run(cur, key, run_id)
    return latest.run_id if latest is not None and latest.rules_fingerprint == rules else None


def record_rules(cur: psycopg2.extensions.cursor, run_id: int, rules: str) -> None:
    """Note the rules a run's verdicts were reached under, so that a later run may carry them."""
    cur.execute("update loader_registry.runs set rules_fingerprint = %s where run_id = %s", (rules, run_id))


def carry_unchanged(
    conn: psycopg2.extensions.connection, contract: Contract, key: LoadKey, run_id: int, rules: str, *,
    recheck: bool = False,
) -> list[Carried]:
    """Decide, per entity, which rows of this run dbt checks; record it in run_files and return what was carried.

    With `recheck`, dbt checks every row (the run's verdicts can still be carried by the next run).
    """
    with conn, conn.cursor() as cur:
        record_rules(cur, run_id, rules)
        previous = None if recheck else previous_verdicts(cur, key, run_id, rules)
        if previous is None:
            return []
        files = _files(cur, run_id, previous)
        # Each comparison hashes the previous file's rows, all their columns: with less memory the
        # hash spills to disk in batches (as the dbt checks would; see dbt_project.yml). This transaction only.
        cur.execute("set local work_mem = '256MB'")
        carried: list[Carried] = []
        # The new file's raw rows were copied a moment ago: the planner has no statistics for them yet.
        with hash_joins(cur):
            for entity in contract.entities:
                if entity.name not in files:
                    continue
                new_file, old_file = files[entity.name]
                _stage_rows(cur, contract, entity, new_file, old_file, previous)
                _block(cur, contract, entity)
                rows = _record(cur, entity, run_id, previous)
                if rows:
                    carried.append(Carried(entity.name, previous, rows))
        return carried


def _files(cur: psycopg2.extensions.cursor, run_id: int, previous: int) -> dict[str, tuple[int, int | None]]:
    """Per entity of this run: its file and the previous run's file of the entity, if its raw rows are kept."""
    cur.execute(
        "select rf.entity, rf.file_id, old.file_id from loader_registry.run_files as rf"
        " left join (select p.entity, p.file_id from loader_registry.run_files as p"
        "   join loader_registry.landed_files as f on f.file_id = p.file_id"
        "   where p.run_id = %s and f.state = 'landed') as old on old.entity = rf.entity"
        " where rf.run_id = %s",
        (previous, run_id),
    )
    return {entity: (new, old) for entity, new, old in cur.fetchall()}


def _trimmed(column: str, alias: str) -> sql.Composable:
    """A value as staging cleans it (sms_clean): trimmed of WHITE_SPACE, NULL when empty."""
    return sql.SQL("nullif(btrim({}, {}), '')").format(sql.Identifier(alias, column), sql.Literal(WHITE_SPACE))


def _references(entity: Entity) -> list[tuple[str, str]]:
    return [(c.name, c.references) for c in entity.columns if c.references is not None]


def _rows_table(entity: Entity) -> sql.Identifier:
    return sql.Identifier(f"unchanged_rows__{entity.name}")


def _blocked_table(entity: Entity) -> sql.Identifier:
    return sql.Identifier(f"checked_keys__{entity.name}")


def _stage_rows(cur: psycopg2.extensions.cursor, contract: Contract, entity: Entity, new_file: int,
                old_file: int | None, previous: int) -> None:
    """A temporary table of the new file's rows: row number, trimmed key and references, and whether the
    row is identical to a row the previous run accepted without remark (`same`)."""
    raw = sql.Identifier(contract.raw_dataset, entity.name)
    columns = [sql.Identifier("new", c) for c in entity.column_names]
    refs = [sql.SQL("{} as {}").format(_trimmed(c, "new"), sql.Identifier(f"ref__{c}")) for c, _ in
            _references(entity)]
    # The previous run's rows with an exception row, as a set PostgreSQL hashes once.
    remarked = sql.SQL(
        "{row} in (select e.row_number from loader_registry.run_exceptions as e where e.run_id = {previous}"
        " and e.entity = {entity} and e.row_number is not null)"
    )
    if old_file is None:
        same: sql.Composable = sql.SQL("false")
        source: sql.Composable = sql.SQL("")
    elif old_file == new_file:
        same = sql.SQL("new._problem is null and not ") + remarked.format(
            previous=sql.Literal(previous), entity=sql.Literal(entity.name), row=sql.SQL("new._row_number"))
        source = sql.SQL("")
    else:
        # The key matches as written; every other value must be identical too.
        same = sql.SQL("new._problem is null and old._row_number is not null")
        old_columns = [sql.Identifier("old", c) for c in entity.column_names]
        source = sql.SQL(
            " left join (select * from {raw} as old where old._file_id = {old_file} and old._problem is null"
            " and not {remarked}) as old"
            " on old.{key} = new.{key} and ({old_columns}) is not distinct from ({new_columns})"
        ).format(raw=raw, old_file=sql.Literal(old_file), key=sql.Identifier(entity.key),
                 old_columns=sql.SQL(", ").join(old_columns), new_columns=sql.SQL(", ").join(columns),
                 remarked=remarked.format(previous=sql.Literal(previous), entity=sql.Literal(entity.name),
                                          row=sql.SQL("old._row_number")))
    cur.execute(sql.SQL("drop table if exists {}").format(_rows_table(entity)))
    cur.execute(sql.SQL(
        "create temporary table {table} on commit drop as"
        " select new._row_number as row_number, {key} as key, {same} as same{refs}"
        " from {raw} as new{source} where new._file_id = {new_file}"
    ).format(table=_rows_table(entity), key=_trimmed(entity.key, "new"), same=same,
             refs=sql.SQL("").join(sql.SQL(", ") + r for r in refs), raw=raw, source=source,
             new_file=sql.Literal(new_file)))
    cur.execute(sql.SQL("analyze {}").format(_rows_table(entity)))


def _block(cur: psycopg2.extensions.cursor, contract: Contract, entity: Entity) -> None:
    """A temporary table of the keys whose rows are checked again: rows not identical to an accepted one,
    keys on more than one row, rows naming a checked row of another entity, and, down a self-reference,
    every row below a checked one."""
    rows = _rows_table(entity)
    others = [(c, target) for c, target in _references(entity) if target != entity.name]
    selves = [c for c, target in _references(entity) if target == entity.name]
    conditions = [sql.SQL("not r.same"),
                  sql.SQL("r.key in (select key from {} group by key having count(*) > 1)").format(rows)]
    for column, target in others:
        conditions.append(sql.SQL("r.{} in (select key from {})").format(
            sql.Identifier(f"ref__{column}"), _blocked_table(contract.entity(target))))
    seeds = sql.SQL("select r.key from {} as r where {}").format(rows, sql.SQL(" or ").join(conditions))
    if selves:
        # `union`, not `union all`: a cycle of references ends the walk instead of looping.
        below = sql.SQL("select r.key from {} as r join blocked on {}").format(rows, sql.SQL(" or ").join(
            sql.SQL("r.{} = blocked.key").format(sql.Identifier(f"ref__{column}")) for column in selves))
        seeds = sql.SQL("with recursive blocked (key) as ({} union {}) select key from blocked").format(seeds, below)
    cur.execute(sql.SQL("drop table if exists {}").format(_blocked_table(entity)))
    cur.execute(sql.SQL("create temporary table {} on commit drop as {}").format(_blocked_table(entity), seeds))
    cur.execute(sql.SQL("analyze {}").format(_blocked_table(entity)))


def _record(cur: psycopg2.extensions.cursor, entity: Entity, run_id: int, previous: int) -> int:
    """Write the rows dbt checks (a row without a key, or whose key is checked) and return how many are carried."""
    cur.execute(sql.SQL(
        "with checked as (select row_number from {rows} where key is null or key in (select key from {blocked}))"
        " update loader_registry.run_files set carried_from_run = %s,"
        " carried_rows = (select count(*) from {rows}) - (select count(*) from checked),"
        " checked_rows = coalesce((select range_agg(int8range(row_number, row_number, '[]')) from checked),"
        " '{{}}'::int8multirange)"
        " where run_id = %s and entity = %s returning carried_rows"
    ).format(rows=_rows_table(entity), blocked=_blocked_table(entity)), (previous, run_id, entity.name))
    row = cur.fetchone()
    return int(row[0]) if row is not None else 0
