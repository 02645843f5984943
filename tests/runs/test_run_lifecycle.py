"""A run always ends in a final state, and whatever text a problem quotes is stored."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2.errors
import pytest
from helpers import make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.intake.manifest import Problem
from loader.runs import pipeline
from loader.runs.registry import ensure_registry, record_problems, set_status, start_run


def test_an_unforeseen_error_fails_the_run_instead_of_leaving_it_running(
        db: Warehouse, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    # A fault injected where the run is well under way (after it was registered, before landing).
    monkeypatch.setattr(pipeline, "prepare", broken)
    assert main(["run", str(make_load(tmp_path))]) == 1
    captured = capsys.readouterr()
    assert "internal error: RuntimeError: disk on fire" in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert query(db, "select status, message, completed_at is not null from loader_registry.runs") == [
        ("failed", "internal error: RuntimeError: disk on fire", True)]


def test_an_interrupted_run_is_recorded_failed_and_the_interrupt_goes_on(
        db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["run", str(make_load(tmp_path))])
    assert query(db, "select status, message from loader_registry.runs") == [
        ("failed", "interrupted: the loader was stopped during the run")]


@pytest.mark.parametrize("text", ["nul \x00 inside", "a surrogate \udce9 from a path", "\ud800 lone"])
def test_problem_text_is_stored_whatever_it_quotes(db: Warehouse, text: str) -> None:
    ensure_registry(db)
    with contextlib.closing(db.connect()) as conn:
        run_id = start_run(conn, (text, "shop", "load"), "sms_v1", text, text)
        record_problems(conn, run_id, [Problem("csv", text, file=text, field=text)])
        set_status(conn, run_id, "running")
        set_status(conn, run_id, "rejected", text)
    [(message, file_name, detail)] = query(
        db, "select p.message, p.file_name, r.message from loader_registry.run_problems p"
            " join loader_registry.runs r using (run_id)")
    assert message == file_name == detail
    assert "\x00" not in message and text.split(" ")[-1] in message


def test_a_run_stopped_with_sigterm_is_recorded_failed(db: Warehouse, tmp_path: Path) -> None:
    from loader.samples.sms_v1 import ExportSpec, write_export

    export = write_export(tmp_path / "imports", ExportSpec(customers=3000, seed=5))
    loader = Path(sys.executable).parent / "loader"
    proc = subprocess.Popen([str(loader), "run", str(export.folder)], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _running(db):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
    finally:
        proc.kill()
    [(status, finished)] = query(db, "select status, completed_at is not null from loader_registry.runs")
    assert (status, finished) == ("failed", True)


def _running(db: Warehouse) -> bool:
    try:
        return query(db, "select count(*) from loader_registry.runs where status = 'running'") == [(1,)]
    except psycopg2.errors.UndefinedTable:
        return False
