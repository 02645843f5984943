"""`loader dashboard` as a command, and the dashboard when its database is out of reach."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from dashboard_site import APP
from helpers import LOADER
from streamlit.testing.v1 import AppTest

from loader.database import Warehouse


def test_a_port_in_use_is_refused_with_exit_2(db: Warehouse) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(LOADER), "dashboard", "--port", str(port)], capture_output=True, text=True,
                              timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--address 127.0.0.1 --port {port}: cannot listen there" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unreachable_database_is_a_message_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("LOADER_DATABASE_URL", f"postgresql://nobody@127.0.0.1:{port}/nothing")
    monkeypatch.setenv("LOADER_HOME", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    [shown] = [e.value for e in at.error]
    assert shown.startswith("The dashboard cannot reach its database:") and f"127.0.0.1:{port}" in shown


def test_an_invalid_setting_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOADER_DASHBOARD_SESSION_MINUTES", "never")
    monkeypatch.setenv("LOADER_HOME", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    [shown] = [e.value for e in at.error]
    assert "LOADER_DASHBOARD_SESSION_MINUTES" in shown
