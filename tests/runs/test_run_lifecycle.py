"""A run always ends in a final state, and whatever text a problem quotes is stored."""

from __future__ import annotations

import contextlib
from pathlib import Path

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
        set_status(conn, run_id, "rejected", text)
    [(message, file_name, detail)] = query(
        db, "select p.message, p.file_name, r.message from loader_registry.run_problems p"
            " join loader_registry.runs r using (run_id)")
    assert message == file_name == detail
    assert "\x00" not in message and text.split(" ")[-1] in message
