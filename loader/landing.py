"""Landing: verified files into the contract's raw dataset with dlt, verbatim.

Files are parsed into all-text Arrow batches (see csv_scan), spooled as plain
CSV chunks with lineage columns, and imported by dlt, whose PostgreSQL loader
COPYs several chunks in parallel (measured faster than parquet through ADBC). A file
whose digest was already landed for the same shop and entity is not stored
again; its earlier rows are reused.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql
from psycopg2.extras import Json

from loader.contracts import Contract
from loader.csv_scan import LINEAGE_COLUMNS, RawTableLayout, iter_raw_batches
from loader.database import Warehouse
from loader.load_key import LoadKey
from loader.manifest import VerifiedFile
from loader.progress import Progress

# Spooled CSV chunks hold at most this many rows, and a file is cut into a
# multiple of the worker count so every parallel COPY stream stays busy.
CHUNK_MAX_ROWS = 1_000_000
_PG_TYPES = {pa.string(): "text", pa.int64(): "bigint"}


class LandingError(RuntimeError):
    """dlt could not land the files; nothing of this attempt is kept."""


@dataclass(frozen=True)
class LandedFile:
    entity: str
    file_id: int
    file_name: str
    sha256: str
    rows: int
    newly_landed: bool


def _dlt_environment() -> None:
    # dlt reads its settings from the environment; these are the loader's fixed choices.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RESTORE_FROM_DESTINATION", "false")


def ensure_raw_tables(conn: psycopg2.extensions.connection, contract: Contract) -> None:
    """Create the raw dataset's tables with every contract column, so dbt sources
    exist even before a file with rows arrives. dlt adds extra columns later."""
    with conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('loader raw ddl'))")
        cur.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(contract.raw_dataset)))
        for entity in contract.entities:
            columns = [sql.SQL("{} text").format(sql.Identifier(c)) for c in entity.column_names]
            columns += [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_PG_TYPES[t]))
                        for name, t in LINEAGE_COLUMNS]
            table = sql.Identifier(contract.raw_dataset, entity.name)
            cur.execute(sql.SQL("create table if not exists {} ({})").format(table, sql.SQL(", ").join(columns)))
            # Rows of one file are appended together, so a BRIN index finds them
            # at almost no cost to the COPY.
            cur.execute(sql.SQL("create index if not exists {} on {} using brin (_file_id)").format(
                sql.Identifier(f"{entity.name}__file_id"), table))


def _claim_file(
    cur: psycopg2.extensions.cursor, contract: Contract, key: LoadKey, vf: VerifiedFile
) -> tuple[int, bool]:
    """Return (file_id, must_land). A file left half-landed by a crash is cleared and landed again."""
    header = {"names": list(vf.header.names), "columns": list(vf.header.columns)} if vf.header else {}
    cur.execute(
        """
        insert into loader_registry.landed_files
            (partner_id, shop_id, entity, sha256, contract, raw_table, file_name, first_load_id, header)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        on conflict (partner_id, shop_id, entity, sha256) do nothing
        returning file_id
        """,
        (key.partner_id, key.shop_id, vf.entity.name, vf.digest.sha256, contract.name,
         f"{contract.raw_dataset}.{vf.entity.name}", vf.path.name, key.load_id, Json(header)),
    )
    row = cur.fetchone()
    if row is not None:
        return row[0], True
    cur.execute(
        """
        select file_id, state from loader_registry.landed_files
        where partner_id = %s and shop_id = %s and entity = %s and sha256 = %s
        for update
        """,
        (key.partner_id, key.shop_id, vf.entity.name, vf.digest.sha256),
    )
    file_id, state = cur.fetchone()
    if state == "landed":
        return file_id, False
    cur.execute(sql.SQL("delete from {} where _file_id = %s").format(
        sql.Identifier(contract.raw_dataset, vf.entity.name)), (file_id,))
    return file_id, True


def land_files(
    warehouse: Warehouse,
    conn: psycopg2.extensions.connection,
    contract: Contract,
    key: LoadKey,
    files: list[VerifiedFile],
    encoding: str,
    workers: int,
    progress: Progress,
) -> list[LandedFile]:
    """Land every verified file not already landed; return what each entity now points at."""
    ensure_raw_tables(conn, contract)
    claims: list[tuple[VerifiedFile, int, bool]] = []
    with conn, conn.cursor() as cur:
        for vf in files:
            file_id, must_land = _claim_file(cur, contract, key, vf)
            claims.append((vf, file_id, must_land))

    to_land = [(vf, file_id) for vf, file_id, must in claims if must and vf.digest.records > 0]
    landed_rows = _run_dlt(warehouse, contract, to_land, encoding, workers, progress) if to_land else {}

    result: list[LandedFile] = []
    with conn, conn.cursor() as cur:
        for vf, file_id, must_land in claims:
            rows = landed_rows.get(file_id, 0) if must_land else vf.digest.records
            if must_land:
                cur.execute(
                    "update loader_registry.landed_files set state = 'landed', rows = %s, landed_at = now() "
                    "where file_id = %s",
                    (rows, file_id),
                )
            result.append(LandedFile(vf.entity.name, file_id, vf.path.name, vf.digest.sha256, rows, must_land))
    return result


def chunk_rows(records: int, workers: int) -> int:
    rounds = max(1, math.ceil(records / (workers * CHUNK_MAX_ROWS)))
    return max(1, math.ceil(records / (workers * rounds)))


def _spool(
    vf: VerifiedFile, file_id: int, encoding: str, spool_dir: Path, progress: Progress, max_rows: int
) -> list[tuple[Path, int]]:
    """Write the file's records, with lineage, as plain CSV chunks that PostgreSQL's COPY reads fastest."""
    chunks: list[tuple[Path, int]] = []
    writer: pacsv.CSVWriter | None = None
    progress.file_started(vf.path.name, vf.digest.records)
    try:
        for table in iter_raw_batches(vf.path, encoding, vf.entity, vf.header, file_id):
            if writer is None or chunks[-1][1] >= max_rows:
                if writer is not None:
                    writer.close()
                path = spool_dir / f"{vf.entity.name}__{file_id}__{len(chunks)}.csv"
                writer = pacsv.CSVWriter(path, table.schema)
                chunks.append((path, 0))
            writer.write_table(table)
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + table.num_rows)
            progress.advance(table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    progress.file_done(vf.path.name)
    return chunks


def _run_dlt(
    warehouse: Warehouse,
    contract: Contract,
    to_land: list[tuple[VerifiedFile, int]],
    encoding: str,
    workers: int,
    progress: Progress,
) -> dict[int, int]:
    _dlt_environment()
    import dlt

    work_dir = Path(tempfile.mkdtemp(prefix="loader-dlt-"))
    try:
        spool_dir = work_dir / "spool"
        spool_dir.mkdir()
        spooled = [(vf, file_id, _spool(vf, file_id, encoding, spool_dir, progress,
                                              chunk_rows(vf.digest.records, workers))) for vf, file_id in to_land]
        counts = {file_id: sum(rows for _, rows in chunks) for _, file_id, chunks in spooled}

        def imports(vf: VerifiedFile, chunks: list[tuple[Path, int]]) -> Iterator[object]:
            layout = RawTableLayout.for_file(vf.entity, vf.header)
            hints = dlt.mark.make_hints(
                table_name=vf.entity.name,
                columns=[{"name": c, "data_type": "text"} for c in layout.data_columns]
                + [{"name": n, "data_type": "bigint" if t == pa.int64() else "text"} for n, t in LINEAGE_COLUMNS],
            )
            for path, rows in chunks:
                yield dlt.mark.with_file_import(str(path), "csv", rows, hints=hints)

        resources = [
            dlt.resource(imports(vf, chunks), name=f"{vf.entity.name}__{file_id}", write_disposition="append")
            for vf, file_id, chunks in spooled
        ]
        pipeline = dlt.pipeline(
            pipeline_name=f"loader_{contract.name}",
            pipelines_dir=str(work_dir / "pipelines"),
            destination=dlt.destinations.postgres(credentials=warehouse.url),
            dataset_name=contract.raw_dataset,
        )
        pipeline.extract(resources, schema=dlt.Schema(contract.raw_dataset))
        pipeline.normalize()
        progress.status(f"copying {sum(counts.values()):,} rows into {contract.raw_dataset}")
        pipeline.load(workers=workers)
    except Exception as exc:
        raise LandingError(f"landing into {contract.raw_dataset} failed: {exc}") from exc
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return counts
