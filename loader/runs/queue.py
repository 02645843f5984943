"""The run queue in PostgreSQL: claiming runs, leases that prove a worker lives, and taking back dead workers' runs.

How a run is given to exactly one worker: a worker takes the first queued
run of a shop with a row lock, `FOR UPDATE SKIP LOCKED`, and moves it to
`running` with its lease in the same transaction. SKIP LOCKED lets many
workers poll at once without waiting on each other, and a run's row lock
plus its state check means that of two workers reaching for one run, the
second finds it taken. Advisory locks alone would need a lock per run held
for the whole run, and would say nothing once the holder's connection is
gone; a lease row says who holds the run and since when, which the status
history and `loader status` can show.

FIFO per shop: only the earliest queued run of a shop (by submission) can be
taken, and only while no run of that shop is running or held for review.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from dataclasses import dataclass
from types import TracebackType

import psycopg2
import psycopg2.extensions

from loader.database import Warehouse, WarehouseUnavailable
from loader.runs.registry import move

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedRun:
    run_id: int
    partner_id: str
    shop_id: str
    load_id: str
    contract: str
    triggered_by: str
    source_path: str | None
    attempts: int

    @property
    def load(self) -> str:
        return f"{self.partner_id}/{self.shop_id}/{self.load_id}"


_CLAIMABLE = """
    select r.run_id from loader_registry.runs as r
    where r.status = 'queued'
        and coalesce(r.not_before, '-infinity') <= clock_timestamp()
        and (%(partner)s::text is null or (r.partner_id = %(partner)s and r.shop_id = %(shop)s))
        and not exists (
            select from loader_registry.runs as o
            where o.partner_id = r.partner_id and o.shop_id = r.shop_id and o.run_id <> r.run_id
                and (o.status in ('running', 'needs_review')
                     or (o.status = 'queued' and (o.queued_at, o.run_id) < (r.queued_at, r.run_id)))
        )
    order by r.queued_at, r.run_id
    limit 1
"""


def claim(
    conn: psycopg2.extensions.connection,
    worker: str,
    *,
    shop: tuple[str, str] | None = None,
) -> ClaimedRun | None:
    """Take the next run that may start (of one shop, if given), leased to `worker`; None if there is none."""
    partner, shop_id = shop if shop else (None, None)
    with conn, conn.cursor() as cur:
        cur.execute(_CLAIMABLE + " for update of r skip locked", {"partner": partner, "shop": shop_id})
        row = cur.fetchone()
        if row is None:
            return None
        run_id = int(row[0])
        cur.execute(
            "insert into loader_registry.run_leases (run_id, worker, backend_pid) values (%s, %s, pg_backend_pid())"
            " on conflict (run_id) do update set worker = excluded.worker, backend_pid = excluded.backend_pid,"
            " taken_at = clock_timestamp(), heartbeat_at = clock_timestamp()",
            (run_id, worker),
        )
        moved = move(cur, run_id, "running", f"taken by worker {worker}")
        assert moved, "a locked queued run moves"
        cur.execute(
            "select run_id, partner_id, shop_id, load_id, contract, triggered_by, source_path, attempts"
            " from loader_registry.runs where run_id = %s",
            (run_id,),
        )
        found = cur.fetchone()
    assert found is not None
    return ClaimedRun(*found)


def renew(conn: psycopg2.extensions.connection, run_id: int, worker: str) -> bool:
    """Renew the run's lease; False when the worker no longer holds it (given up for dead, run taken back)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "update loader_registry.run_leases set heartbeat_at = clock_timestamp() where run_id = %s and worker = %s",
            (run_id, worker),
        )
        return cur.rowcount == 1


class Heartbeat:
    """Renews a run's lease from a thread of its own while the run executes.

    A few renewals fit in one lease time, so a slow query or a short network
    blip does not lose the run; a lost connection is made again.
    """

    def __init__(self, warehouse: Warehouse, run_id: int, worker: str, lease_seconds: float) -> None:
        self._warehouse = warehouse
        self._run_id = run_id
        self._worker = worker
        self._interval = min(max(lease_seconds / 5, 0.2), 10.0)
        self._stop = threading.Event()
        self._ending = False
        self._thread = threading.Thread(target=self._beat, name=f"loader-lease-{run_id}", daemon=True)

    def ending(self) -> None:
        """The run's outcome is being committed, which ends the lease: a renewal that finds none is no news."""
        self._ending = True

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        conn: psycopg2.extensions.connection | None = None
        try:
            while not self._stop.wait(self._interval):
                try:
                    if conn is None or conn.closed:
                        conn = self._warehouse.connect()
                    if not renew(conn, self._run_id, self._worker):
                        # Taken back (or ended): this worker's writes are fenced by the lease from now on.
                        if not self._ending:
                            log.warning("run %s was taken back from worker %s", self._run_id, self._worker)
                        return
                except (psycopg2.Error, WarehouseUnavailable) as exc:
                    log.warning("could not renew the lease of run %s: %s", self._run_id, exc)
                    if conn is not None:
                        with contextlib.suppress(psycopg2.Error):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()


def hold_lease(cur: psycopg2.extensions.cursor, run_id: int, worker: str) -> bool:
    """Lock the run and check its lease inside a transaction that is about to commit the run's outcome.

    A publish commits only while its worker still holds the run: a worker
    given up for dead cannot publish a run another worker has taken.
    """
    cur.execute("select status from loader_registry.runs where run_id = %s for update", (run_id,))
    row = cur.fetchone()
    if row is None or row[0] != "running":
        return False
    cur.execute("select from loader_registry.run_leases where run_id = %s and worker = %s for update",
                (run_id, worker))
    return cur.fetchone() is not None


@dataclass(frozen=True)
class TakenBack:
    run_id: int
    requeued: bool
    reason: str


def take_back_expired(
    conn: psycopg2.extensions.connection, lease_seconds: float, max_attempts: int
) -> list[TakenBack]:
    """Runs whose worker has not renewed its lease in `lease_seconds`: queued again, or failed after the last attempt.

    The dead worker's connections are ended first (where the database lets
    this role do so), so that nothing it still had in flight can commit.
    """
    taken: list[TakenBack] = []
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select r.run_id, r.attempts, l.worker, coalesce(l.heartbeat_at, r.started_at, r.queued_at)
            from loader_registry.runs as r
            left join loader_registry.run_leases as l on l.run_id = r.run_id
            where r.status = 'running'
                and coalesce(l.heartbeat_at, r.started_at, r.queued_at)
                    < clock_timestamp() - make_interval(secs => %s)
            order by r.run_id
            for update of r skip locked
            """,
            (lease_seconds,),
        )
        for run_id, attempts, worker, last_seen in cur.fetchall():
            cur.execute("savepoint end_backends")
            try:
                cur.execute(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity"
                    " where application_name = %s and pid <> pg_backend_pid()",
                    (run_connection_name(run_id),),
                )
                cur.execute("release savepoint end_backends")
            except psycopg2.Error as exc:
                cur.execute("rollback to savepoint end_backends")
                log.warning("could not end the connections of run %s's dead worker: %s", run_id, exc)
            who = f"worker {worker}" if worker else "its worker"
            at = last_seen.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
            reason = f"{who} stopped answering (last heard from at {at}, lease {lease_seconds:g} s)"
            if attempts >= max_attempts:
                reason += f"; gave up after {attempts} attempt(s)"
                move(cur, run_id, "failed", reason)
                taken.append(TakenBack(run_id, False, reason))
            else:
                move(cur, run_id, "queued", reason + "; taken back to run again")
                taken.append(TakenBack(run_id, True, reason))
    return taken


def run_connection_name(run_id: int) -> str:
    """The application_name of every connection that works on a run, so that a dead worker's can be found."""
    return f"loader run {run_id}"


def work_left(conn: psycopg2.extensions.connection) -> bool:
    """Whether any run is running, or queued and able to start some time (not stuck behind a held load)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select exists (
                select from loader_registry.runs as r
                where r.status = 'running' or (r.status = 'queued' and not exists (
                    select from loader_registry.runs as o
                    where o.partner_id = r.partner_id and o.shop_id = r.shop_id and o.status = 'needs_review'
                ))
            )
            """
        )
        row = cur.fetchone()
    return bool(row and row[0])


def held_ahead(conn: psycopg2.extensions.connection, run_id: int) -> tuple[int, str] | None:
    """The held (needs_review) run of a queued run's shop, which the queued run waits behind: (run id, load)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select o.run_id, o.partner_id || '/' || o.shop_id || '/' || o.load_id
            from loader_registry.runs as r
            inner join loader_registry.runs as o
                on o.partner_id = r.partner_id and o.shop_id = r.shop_id and o.status = 'needs_review'
            where r.run_id = %s and r.status = 'queued'
            order by o.run_id
            limit 1
            """,
            (run_id,),
        )
        row = cur.fetchone()
    return (int(row[0]), str(row[1])) if row else None


def listen(conn: psycopg2.extensions.connection) -> None:
    """Have `wait` wake as soon as a run is queued (NOTIFY loader_queue)."""
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("listen loader_queue")
    conn.autocommit = False


def wait(conn: psycopg2.extensions.connection, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when a run is queued."""
    if conn.notifies:
        conn.notifies.clear()
        return
    ready, _, _ = select.select([conn], [], [], seconds)
    if ready:
        conn.poll()
        conn.notifies.clear()
