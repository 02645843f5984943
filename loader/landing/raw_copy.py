"""The dlt half of landing: COPY spooled CSV chunks into the raw dataset.

Importing dlt and reading its configuration takes about half a second, so
`preload` starts it on a thread as soon as a run sees it has files to land
(landing.preload_unless_landed), while they are hashed and parsed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from dlt.common.schema.typing import TColumnSchema

# dlt's project directory, for its (empty) secrets.toml: see there.
DLT_PROJECT_DIR = Path(__file__).parent / "dlt_project"


class LandingError(RuntimeError):
    """dlt could not land the files; nothing of this attempt is kept."""


@dataclass(frozen=True)
class CopyJob:
    """One spooled chunk and the raw table it goes to, with every column's dlt type."""

    path: Path
    rows: int
    table: str
    columns: tuple[tuple[str, str], ...]


def _dlt_environment() -> None:
    # dlt reads its settings from the environment; these are the loader's fixed choices.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RESTORE_FROM_DESTINATION", "false")
    os.environ.setdefault("DLT_PROJECT_DIR", str(DLT_PROJECT_DIR))


def _warm_up() -> None:
    _dlt_environment()
    import adbc_driver_postgresql  # noqa: F401  (dlt's postgres destination probes for it)
    import dlt.destinations
    import dlt.destinations.impl.postgres.postgres  # noqa: F401  (imported by the load step)
    from dlt.common.configuration.container import Container
    from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext

    # dlt reads its config files on first use: done here too.
    _ = Container()[PluggableRunContext].providers


def preload() -> None:
    """Import what copy_chunks needs, in the background."""
    threading.Thread(target=_warm_up, name="loader-import-dlt", daemon=True).start()


@contextlib.contextmanager
def _schema_lock(url: str, dataset: str) -> Iterator[None]:
    """Hold the dataset's lock for dlt's schema sync, on a connection of its own.

    dlt checks which of its tables (its own _dlt_* ones included) exist, then
    creates the missing ones: two landings doing that at once (two shops'
    first loads into a new database) both create, and one fails with
    "relation already exists". Under this lock the second finds the first's
    schema stored and does nothing; the COPYs themselves are not serialised.
    """
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_lock(hashtext('loader dlt schema'), hashtext(%s))", (dataset,))
        conn.commit()
        yield
    finally:
        conn.close()


def copy_chunks(url: str, dataset: str, jobs: list[CopyJob], workers: int, scratch: Path | None = None) -> None:
    """Have dlt COPY the chunks into `dataset`, `workers` streams at a time; raises LandingError.

    dlt's working folder goes under `scratch` (the worker slot's), where a
    killed run's leftovers are found and removed.
    """
    _dlt_environment()
    import dlt

    work_dir = Path(tempfile.mkdtemp(prefix="loader-dlt-", dir=scratch))
    try:
        def hints(job: CopyJob) -> list[TColumnSchema]:
            return cast("list[TColumnSchema]", [{"name": n, "data_type": t} for n, t in job.columns])

        resources = [
            dlt.resource(
                [dlt.mark.with_file_import(str(job.path), "csv", job.rows, hints=dlt.mark.make_hints(
                    table_name=job.table, columns=hints(job)))],
                name=job.path.stem,
                write_disposition="append",
            )
            for job in jobs
        ]
        pipeline = dlt.pipeline(
            pipeline_name=f"loader_{dataset}",
            pipelines_dir=str(work_dir),
            destination=dlt.destinations.postgres(credentials=url),
            dataset_name=dataset,
        )
        pipeline.extract(resources, schema=dlt.Schema(dataset))
        pipeline.normalize()
        with _schema_lock(url, dataset):
            pipeline.sync_schema()
        pipeline.load(workers=workers)
    except Exception as exc:
        raise LandingError(f"landing into {dataset} failed: {exc}") from exc
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
