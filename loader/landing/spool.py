"""Landing: verified files into the contract's raw dataset with dlt, verbatim.

Two steps, so that nothing is written before a folder is fully checked:
`prepare` parses each new file once into all-text Arrow batches (see
formats.csv_reader), counting its records for the manifest check and spooling
them as plain CSV chunks with lineage; `load` then has dlt COPY the chunks,
several in parallel (CSV COPY measured faster than parquet through ADBC). A
file whose digest was already landed for the same shop and entity is not
parsed or stored again; its earlier rows are reused.

Values of columns the contract does not know go to one side table per raw
dataset (`_extra_values`), never to new columns: the entity tables are shared
by every partner, and one partner's wide file must not change what another
can load (PostgreSQL allows 1,600 columns per table, dropped ones included).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql
from psycopg2.extras import Json

from loader.contracts import Contract
from loader.database import Warehouse, apply_once
from loader.formats.csv_reader import (
    EXTRA_VALUES_TABLE,
    LINEAGE_COLUMNS,
    PROBLEM_COLUMNS,
    RawTableLayout,
    iter_raw_batches,
)
from loader.formats.header import CsvFileError
from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest import VerifiedFile, read_manifest
from loader.landing.raw_copy import CopyJob, copy_chunks, preload
from loader.runs import faults
from loader.runs.progress import Progress

# Spooled CSV chunks hold at most this many rows, and a file is cut into a
# multiple of the worker count so that every parallel COPY stream stays busy.
CHUNK_MAX_ROWS = 1_000_000
SPOOL_IN_FLIGHT = 4
# The raw tables' column types; PostgreSQL and dlt call these two by the same names.
_RAW_TYPES = {pa.string(): "text", pa.int64(): "bigint"}
# dlt only appends to the side table ensure_raw_tables made (`_column_index` is an integer there).
_EXTRA_VALUES_HINTS = (("_file_id", "bigint"), ("_row_number", "bigint"), ("_column_index", "bigint"),
                       ("value", "text"))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LandedFile:
    entity: str
    file_id: int
    file_name: str
    sha256: str
    rows: int
    problem_rows: int
    newly_landed: bool


@dataclass
class PreparedFile:
    """One verified file: either already landed (reused) or parsed and spooled, waiting for COPY."""

    file: VerifiedFile
    file_id: int
    records: int
    problem_rows: int
    already_landed: bool
    retry: bool = False
    chunks: list[tuple[Path, int, str]] = field(default_factory=list)


@dataclass
class Prepared:
    files: list[PreparedFile]
    work_dir: Path

    def discard(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def preload_unless_landed(conn: psycopg2.extensions.connection, folder: Path) -> None:
    """Start importing dlt now, while the files are hashed, unless every file the
    manifest lists was landed for this shop before (an identical rerun needs no dlt).

    Only a head start: bad paths and manifests are left to verification, and
    whatever this guesses, landing imports dlt when it needs it.
    """
    try:
        key = LoadKey.from_folder(folder)
    except LoadKeyError:
        return
    manifest, _ = read_manifest(folder)
    if manifest is None:
        return
    digests = sorted({entry.sha256 for entry in manifest.files})
    with conn, conn.cursor() as cur:
        cur.execute(
            "select count(distinct sha256) from loader_registry.landed_files"
            " where partner_id = %s and shop_id = %s and state = 'landed' and sha256 = any(%s)",
            (key.partner_id, key.shop_id, digests),
        )
        row = cur.fetchone()
        if row is None or row[0] < len(digests):
            preload()


def ensure_raw_tables(conn: psycopg2.extensions.connection, contract: Contract) -> None:
    """Create the raw dataset's tables with every contract column, so dbt sources
    exist even before a file with rows arrives, and the side table of unknown columns' values.

    Applied once per version (database.apply_once): landings of other shops may be writing to these tables.
    """
    statements = [sql.SQL("create schema if not exists {}").format(sql.Identifier(contract.raw_dataset))]
    for entity in contract.entities:
        columns = [sql.SQL("{} text").format(sql.Identifier(c)) for c in entity.column_names]
        columns += [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_RAW_TYPES[t]))
                    for name, t in LINEAGE_COLUMNS]
        table = sql.Identifier(contract.raw_dataset, entity.name)
        statements.append(sql.SQL("create table if not exists {} ({})").format(table, sql.SQL(", ").join(columns)))
        # Rows of one file are appended together, so a BRIN index finds them
        # at almost no cost to the COPY.
        statements.append(sql.SQL("create index if not exists {} on {} using brin (_file_id)").format(
            sql.Identifier(f"{entity.name}__file_id"), table))
    extras = sql.Identifier(contract.raw_dataset, EXTRA_VALUES_TABLE)
    statements.append(sql.SQL("create table if not exists {} (_file_id bigint, _row_number bigint,"
                              " _column_index integer, value text)").format(extras))
    statements.append(sql.SQL("create index if not exists {} on {} using brin (_file_id)").format(
        sql.Identifier(f"{EXTRA_VALUES_TABLE}__file_id"), extras))
    ddl = ";\n".join(statement.as_string(conn) for statement in statements)
    apply_once(conn, f"raw {contract.name}", contract.raw_dataset, ddl)


def _find_landed(
    cur: psycopg2.extensions.cursor, key: LoadKey, vf: VerifiedFile
) -> tuple[int, str, int | None, int | None] | None:
    cur.execute(
        "select file_id, state, rows, problem_rows from loader_registry.landed_files"
        " where partner_id = %s and shop_id = %s and entity = %s and sha256 = %s",
        (key.partner_id, key.shop_id, vf.entity.name, vf.sha256),
    )
    return cur.fetchone()


def chunk_rows(records: int, workers: int) -> int:
    rounds = max(1, math.ceil(records / (workers * CHUNK_MAX_ROWS)))
    return max(1, math.ceil(records / (workers * rounds)))


@dataclass
class _Chunk:
    path: Path
    table: str
    writer: pacsv.CSVWriter
    rows: int = 0


def _spool(pf: PreparedFile, encoding: str, spool_dir: Path, workers: int, progress: Progress) -> None:
    """Parse the file once: count records and flagged rows, and write CSV chunks with lineage.

    Batches without a flagged row go to chunks that leave out the problem
    columns (they land as NULL): COPY then parses 12 columns instead of 15,
    about a tenth faster. Unknown columns' values go to chunks of their own,
    for the side table. Writing happens on a second thread (pyarrow releases
    the GIL), so the CSV writer works on one batch while the parser reads the next.
    """
    vf = pf.file
    max_rows = chunk_rows(vf.manifest_rows, workers)
    progress.file_started(vf.path.name, vf.manifest_rows)
    chunks: list[_Chunk] = []
    # The chunk being written for clean batches, for flagged ones, and for unknown columns' values.
    open_chunks: dict[str, _Chunk] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader-spool") as pool:
        pending: deque[Future[None]] = deque()

        def write(kind: str, table_name: str, table: pa.Table) -> None:
            chunk = open_chunks.get(kind)
            # The side table's rows are values, not records: as many as a wide file has cells.
            limit = CHUNK_MAX_ROWS if kind == "extras" else max_rows
            if chunk is None or chunk.rows >= limit:
                if chunk is not None:
                    pending.append(pool.submit(chunk.writer.close))
                path = spool_dir / f"{vf.entity.name}__{pf.file_id}__{len(chunks)}.csv"
                chunk = open_chunks[kind] = _Chunk(path, table_name, pacsv.CSVWriter(path, table.schema))
                chunks.append(chunk)
            pending.append(pool.submit(chunk.writer.write_table, table))
            # A few batches in flight at most, so memory stays flat.
            while len(pending) > SPOOL_IN_FLIGHT:
                pending.popleft().result()
            chunk.rows += table.num_rows

        try:
            for batch in iter_raw_batches(vf.path, encoding, vf.entity, vf.header, pf.file_id):
                table = batch.rows
                flagged = table.num_rows - table.column("_problem").null_count
                if flagged:
                    write("flagged", vf.entity.name, table)
                else:
                    write("clean", vf.entity.name, table.drop_columns(list(PROBLEM_COLUMNS)))
                if batch.extra_values is not None:
                    write("extras", EXTRA_VALUES_TABLE, batch.extra_values)
                pf.records += table.num_rows
                pf.problem_rows += flagged
                progress.advance(table.num_rows)
        except CsvFileError as exc:
            raise CsvFileError(str(exc), vf.path.name) from exc
        finally:
            pending.extend(pool.submit(chunk.writer.close) for chunk in open_chunks.values())
            for future in pending:
                future.result()
    pf.chunks = [(chunk.path, chunk.rows, chunk.table) for chunk in chunks]
    progress.file_done(vf.path.name)


def prepare(
    conn: psycopg2.extensions.connection,
    key: LoadKey,
    files: list[VerifiedFile],
    encoding: str,
    workers: int,
    progress: Progress,
    scratch: Path | None = None,
) -> Prepared:
    """Parse and spool every file not landed before, under `scratch`; writes nothing to the database.

    Raises CsvFileError for a file the parser cannot read.
    """
    prepared = Prepared([], Path(tempfile.mkdtemp(prefix="loader-spool-", dir=scratch)))
    try:
        with conn, conn.cursor() as cur:
            for vf in files:
                found = _find_landed(cur, key, vf)
                if found is not None and found[1] == "landed":
                    prepared.files.append(PreparedFile(vf, found[0], found[2] or 0, found[3] or 0, True))
                    continue
                if found is not None:
                    file_id = found[0]
                else:
                    cur.execute("select nextval(pg_get_serial_sequence('loader_registry.landed_files', 'file_id'))")
                    row = cur.fetchone()
                    assert row is not None  # nextval returns a row
                    file_id = row[0]
                prepared.files.append(PreparedFile(vf, file_id, 0, 0, False, retry=found is not None))
        for pf in prepared.files:
            if not pf.already_landed:
                _spool(pf, encoding, prepared.work_dir, workers, progress)
    except BaseException:
        prepared.discard()
        raise
    return prepared


def _delete_rows(cur: psycopg2.extensions.cursor, contract: Contract, pfs: list[PreparedFile]) -> None:
    """Delete every raw row (and unknown columns' value) of these files."""
    for entity in {pf.file.entity.name for pf in pfs}:
        ids = [pf.file_id for pf in pfs if pf.file.entity.name == entity]
        cur.execute(sql.SQL("delete from {} where _file_id = any(%s)").format(
            sql.Identifier(contract.raw_dataset, entity)), (ids,))
    cur.execute(sql.SQL("delete from {} where _file_id = any(%s)").format(
        sql.Identifier(contract.raw_dataset, EXTRA_VALUES_TABLE)), ([pf.file_id for pf in pfs],))


def _claim(cur: psycopg2.extensions.cursor, contract: Contract, key: LoadKey, pf: PreparedFile) -> None:
    """Register the file as landing; a file left half-landed by a crash has its rows cleared first."""
    vf = pf.file
    if pf.retry:
        _delete_rows(cur, contract, [pf])
        return
    header = {"names": list(vf.header.names), "columns": list(vf.header.columns)} if vf.header else {}
    cur.execute(
        """
        insert into loader_registry.landed_files
            (file_id, partner_id, shop_id, entity, sha256, contract, raw_table, file_name, first_load_id, header)
        overriding system value
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (pf.file_id, key.partner_id, key.shop_id, vf.entity.name, vf.sha256, contract.name,
         f"{contract.raw_dataset}.{vf.entity.name}", vf.path.name, key.load_id, Json(header)),
    )


def _forget_attempt(conn: psycopg2.extensions.connection, contract: Contract, new: list[PreparedFile]) -> None:
    """After a failed landing: delete what this attempt wrote (dlt commits each chunk on its own, so
    some may be in) and the files it registered, so nothing of it is left half-landed."""
    try:
        conn.rollback()
        with conn, conn.cursor() as cur:
            _delete_rows(cur, contract, new)
            cur.execute("delete from loader_registry.landed_files where file_id = any(%s) and state = 'landing'",
                        ([pf.file_id for pf in new if not pf.retry],))
    except Exception:
        # The landing's own error is the one to report; a file left 'landing' is cleared on the next attempt.
        log.exception("could not clear the raw rows of a failed landing")


def load(
    warehouse: Warehouse,
    conn: psycopg2.extensions.connection,
    contract: Contract,
    key: LoadKey,
    prepared: Prepared,
    workers: int,
    progress: Progress,
    scratch: Path | None = None,
) -> list[LandedFile]:
    """COPY the spooled chunks into the raw dataset with dlt, then mark the files landed.

    If anything fails, no raw row of this attempt is left behind.
    """
    try:
        ensure_raw_tables(conn, contract)
        new = [pf for pf in prepared.files if not pf.already_landed]
        try:
            with conn, conn.cursor() as cur:
                for pf in new:
                    _claim(cur, contract, key, pf)
            chunks = [(pf, path, rows, table) for pf in new for path, rows, table in pf.chunks]
            if chunks:
                _run_dlt(warehouse, contract, chunks, workers, progress, scratch)
            faults.reach("landing")
            with conn, conn.cursor() as cur:
                for pf in new:
                    cur.execute(
                        "update loader_registry.landed_files set state = 'landed', rows = %s, problem_rows = %s,"
                        " landed_at = now() where file_id = %s",
                        (pf.records, pf.problem_rows, pf.file_id),
                    )
        except BaseException:
            _forget_attempt(conn, contract, new)
            raise
    finally:
        prepared.discard()
    return [
        LandedFile(pf.file.entity.name, pf.file_id, pf.file.path.name, pf.file.sha256, pf.records, pf.problem_rows,
                   not pf.already_landed)
        for pf in prepared.files
    ]


def _run_dlt(
    warehouse: Warehouse,
    contract: Contract,
    chunks: list[tuple[PreparedFile, Path, int, str]],
    workers: int,
    progress: Progress,
    scratch: Path | None,
) -> None:
    def columns_of(vf: VerifiedFile, table: str) -> tuple[tuple[str, str], ...]:
        if table == EXTRA_VALUES_TABLE:
            return _EXTRA_VALUES_HINTS
        return tuple((f.name, _RAW_TYPES[f.type]) for f in RawTableLayout.for_entity(vf.entity).schema)

    jobs = [CopyJob(path, rows, table, columns_of(pf.file, table)) for pf, path, rows, table in chunks]
    rows = sum(job.rows for job in jobs if job.table != EXTRA_VALUES_TABLE)
    progress.status(f"copying {rows:,} rows into {contract.raw_dataset}")
    copy_chunks(warehouse.url, contract.raw_dataset, jobs, workers, scratch)
