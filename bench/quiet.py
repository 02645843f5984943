"""A quiet server before each timed step, so that a step does not pay for the one before it."""

from __future__ import annotations

import contextlib
import time

from loader.database import Warehouse, one_row


def settle(warehouse: Warehouse, *, vacuum: bool = False, limit_s: float = 120.0) -> None:
    """Start a timed step from the same state: dirty pages written, no autovacuum running.

    Without this, the step after a 2M-row load shares two cores with the
    checkpoint and the autovacuum that load set off. Autovacuum starts up to a
    minute after the rows were written, so waiting for it to be idle is not
    enough when the next step starts at once: `vacuum` does its work first.
    """
    deadline = time.monotonic() + limit_s
    with contextlib.closing(warehouse.connect()) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            if vacuum:
                cur.execute("vacuum analyze")
            cur.execute("checkpoint")
            while time.monotonic() < deadline:
                cur.execute("select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'")
                if one_row(cur)[0] == 0:
                    return
                time.sleep(0.5)
