"""Crash points for the crash tests: a worker killed with SIGKILL at a named step of a run.

`LOADER_KILL_AT=<point>` in a worker's environment makes it kill itself,
exactly as `kill -9` would, when a run reaches that point; the tests then
check that another worker completes the run exactly once. Unset (always, in
production), `reach` does nothing.
"""

from __future__ import annotations

import os
import signal

POINTS = ("verified", "landing", "dbt", "publish", "committed")


def reach(point: str) -> None:
    if os.environ.get("LOADER_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
