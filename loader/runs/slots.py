"""Worker slots: each build that may run beside others gets dbt relations, a target folder and scratch space of its own.

dbt's staging, intermediate, plan and audit relations are per build, so
two loads built at once must not share them. A slot is a number, held for a
run with an advisory lock (database-wide, so two machines never build in
the same schemas) and a file lock (machine-wide, so two loaders sharing one
home but not one database never share a target folder). Slot 1 builds in
the schemas a build by hand uses (analytics_*); slot N > 1 in
analytics_slotN_*. Each slot keeps its own target folder, so dbt's partial
parse stays cached from one of its builds to the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions

from loader.database import one_row

# More slots than any machine has cores; a worker finding none free waits for one.
MAX_SLOTS = 256
_LOCK_CLASS = "loader build slot"


class NoFreeSlot(RuntimeError):
    """Every build slot is taken."""


@dataclass(frozen=True)
class Slot:
    number: int
    home: Path

    @property
    def root(self) -> Path:
        return self.home / "dbt" / f"slot-{self.number}"

    @property
    def target_dir(self) -> Path:
        return self.root / "target"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def scratch(self) -> Path:
        """Spool and dlt folders of the slot's run; emptied whenever the slot is taken."""
        return self.home / "work" / f"slot-{self.number}"

    @property
    def schema(self) -> str:
        """profiles.yml's schema: dbt's layers are <schema>_staging, <schema>_intermediate, ..."""
        return "analytics" if self.number == 1 else f"analytics_slot{self.number}"

    def dbt_env(self) -> dict[str, str]:
        """What profiles.yml and the load-context macro read to build in this slot."""
        return {"LOADER_DBT_SLOT": str(self.number), "LOADER_DBT_SCHEMA": self.schema}


@contextlib.contextmanager
def build_slot(conn: psycopg2.extensions.connection, home: Path) -> Iterator[Slot]:
    """Hold the lowest free slot (locks on `conn`'s session and a lock file) for the duration."""
    locks = home / "dbt" / "slots"
    locks.mkdir(parents=True, exist_ok=True)
    for number in range(1, MAX_SLOTS + 1):
        if not _try_lock(conn, number):
            continue
        fd = os.open(locks / f"slot-{number}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            _unlock(conn, number)
            continue
        try:
            slot = Slot(number, home)
            # Whatever is here was left by a run that was killed in this slot.
            shutil.rmtree(slot.scratch, ignore_errors=True)
            slot.scratch.mkdir(parents=True, exist_ok=True)
            yield slot
            shutil.rmtree(slot.scratch, ignore_errors=True)
        finally:
            os.close(fd)
            _unlock(conn, number)
        return
    raise NoFreeSlot(f"all {MAX_SLOTS} build slots are taken")


@contextlib.contextmanager
def slot_lock(conn: psycopg2.extensions.connection, number: int) -> Iterator[bool]:
    """Hold slot `number` in the database, if no one does (yields whether it is held), for work on its relations."""
    got = _try_lock(conn, number)
    try:
        yield got
    finally:
        if got:
            _unlock(conn, number)


def _try_lock(conn: psycopg2.extensions.connection, number: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("select pg_try_advisory_lock(hashtext(%s), %s)", (_LOCK_CLASS, number))
        got = bool(one_row(cur)[0])
    conn.commit()
    return got


def _unlock(conn: psycopg2.extensions.connection, number: int) -> None:
    with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
        cur.execute("select pg_advisory_unlock(hashtext(%s), %s)", (_LOCK_CLASS, number))
        conn.commit()
