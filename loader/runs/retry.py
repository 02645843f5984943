"""Which failures are transient (worth another attempt) and how long to wait before it.

Transient: the database restarted, unreachable or a connection dropped, a
full disk while spooling. Not transient: a bad folder, a failing dbt test, a
plan the publish refuses; those fail the run at once, with no retry.
"""

from __future__ import annotations

import errno
import random
import re

import psycopg2

from loader.database import WarehouseUnavailable
from loader.dbt.runner import DbtOutcome


class TransientFailure(RuntimeError):
    """The run failed for a reason that may pass; the message says what happened."""


_TRANSIENT_TYPES = (psycopg2.OperationalError, psycopg2.InterfaceError, WarehouseUnavailable, ConnectionError,
                    TimeoutError)
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
# What libpq and the server say when a connection is lost, wrapped by dlt or dbt in their own errors.
_TRANSIENT_TEXT = re.compile(
    r"server closed the connection|terminating connection|connection already closed|could not connect to server"
    r"|connection refused|connection to server .* failed|the database system is (starting up|shutting down"
    r"|in recovery mode|not yet accepting connections)|could not receive data from server"
    r"|could not send data to server|ssl connection has been closed|no space left on device|connection timed out"
    r"|cannot connect to ",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Whether an error, or any error it was raised from, is one that may pass."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT_TYPES):
            return True
        if isinstance(current, OSError) and current.errno in _FULL_DISK:
            return True
        if _TRANSIENT_TEXT.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def transient_dbt_failure(outcome: DbtOutcome) -> str | None:
    """Why a dbt build failed, when it failed because the database went away (not because a test failed)."""
    if outcome.success:
        return None
    texts = [outcome.error or ""] + [f.message for f in outcome.failures if f.status != "fail"]
    return outcome.summary() if any(_TRANSIENT_TEXT.search(t) for t in texts) else None


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number `attempt` (1, 2, ...): doubling from `base`, at most `cap`, half of it random.

    The jitter keeps workers that failed together (a database restart) from
    all coming back at the same instant.
    """
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
