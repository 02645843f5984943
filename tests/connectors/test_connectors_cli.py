"""`loader poll`, `loader connectors` and `loader checkpoint reset`, as an operator (and the scheduler) runs them."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import LOADER, make_load, query

from loader.cli import main
from loader.database import Warehouse


def write_connectors(path: Path, *entries: tuple[str, Path]) -> Path:
    lines = ["connectors:"]
    for code, folder in entries:
        lines += [f"  - system_code: {code}", f"    name: {code} drop folder", "    type: local", f"    path: {folder}",
                  "    schedule: {every_minutes: 15}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def drop(db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(write_connectors(tmp_path / "connectors.yml", ("drop", folder))))
    return folder


def loader(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOADER), *args], env=dict(os.environ), capture_output=True, text=True, timeout=300,
                          check=False)


def run_ids(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select run_id, load_id, triggered_by from loader_registry.runs order by run_id")


def test_a_load_is_never_taken_twice_across_restarts(db: Warehouse, drop: Path) -> None:
    make_load(drop)
    first = loader("poll")
    assert first.returncode == 0, first.stdout + first.stderr
    [(run_id, load_id, triggered_by)] = run_ids(db)
    assert (load_id, triggered_by) == ("load-1", "connector:drop")
    assert first.stdout.strip() == f"drop: found 1, took acme/shop-1/load-1 (run {run_id})"
    second = loader("poll", "drop")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.strip() == "drop: found 0, took nothing new"
    assert run_ids(db) == [(run_id, "load-1", "connector:drop")]


def test_poll_json_says_what_was_found_taken_waiting_and_skipped(db: Warehouse, drop: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make_load(drop, load_id="load-1")
    waiting = make_load(drop, shop="shop-2")
    (waiting / "manifest.json").unlink()
    make_load(drop, partner="bad partner")
    assert main(["poll", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    [(run_id, _, _)] = run_ids(db)
    assert result == {
        "system_code": "drop", "found": 1, "taken": [{"load": "acme/shop-1/load-1", "run_id": run_id}],
        "waiting": [{"where": str(waiting), "reason": "no manifest.json yet"}],
        "skipped": [{"where": str(drop / "bad partner"), "reason": result["skipped"][0]["reason"]}],
        "error_reason": None, "error": None,
    }
    assert result["skipped"][0]["reason"].startswith("the name is not allowed")


def test_poll_exits_1_when_a_connector_failed_and_still_polls_the_others(
        db: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    gone, fine = tmp_path / "gone", tmp_path / "fine"
    make_load(gone)
    make_load(fine)
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(write_connectors(tmp_path / "c.yml", ("a", gone), ("b", fine))))
    shutil.rmtree(gone)
    assert main(["poll"]) == 1
    out = capsys.readouterr().out.splitlines()
    [(run_id, _, _)] = run_ids(db)
    assert out[0].startswith(f"a: poll failed: not found: folder {gone} (setting path) cannot be opened")
    assert out[1] == f"b: found 1, took acme/shop-1/load-1 (run {run_id})"


def test_connectors_shows_schedule_last_poll_last_error_and_checkpoints(
        db: Warehouse, drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_load(drop)
    assert main(["connectors", "--json"]) == 0
    [before] = json.loads(capsys.readouterr().out)
    assert (before["last_poll"], before["last_error"], before["checkpoints"]) == (None, None, [])
    assert main(["poll"]) == 0
    drop.rename(tmp_path / "elsewhere")
    assert main(["poll"]) == 1
    capsys.readouterr()
    assert main(["connectors", "--json"]) == 0
    [status] = json.loads(capsys.readouterr().out)
    [(run_id, _, _)] = run_ids(db)
    assert {k: status[k] for k in ("system_code", "name", "type", "active", "schedule", "location", "after_success")} \
        == {"system_code": "drop", "name": "drop drop folder", "type": "local", "active": True,
            "schedule": "every 15 minutes", "location": str(drop), "after_success": "keep"}
    assert status["last_poll"]["error_reason"] == "not found"
    assert (status["last_error"]["reason"], status["last_error"]["at"].endswith("Z")) == ("not found", True)
    assert [(c["partner_id"], c["shop_id"], c["load_id"], c["run_id"]) for c in status["checkpoints"]] == [
        ("acme", "shop-1", "load-1", run_id)]
    assert main(["connectors"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("drop (local, active): drop drop folder\n")
    assert "last error " in text and ": not found: folder" in text
    assert f"    acme/shop-1  load-1  (run {run_id}, " in text


def test_checkpoint_reset_replays_and_records_the_os_user(db: Warehouse, drop: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    make_load(drop, shop="shop-1")
    make_load(drop, shop="shop-2")
    assert main(["poll"]) == 0
    capsys.readouterr()
    assert main(["checkpoint", "reset", "drop", "--partner", "acme", "--shop", "shop-1"]) == 0
    who = f"cli:{getpass.getuser()}"
    assert capsys.readouterr().out.strip() == (f"reset 1 checkpoint(s) of connector drop partner acme shop shop-1"
                                               f" as {who}: its next poll takes those loads again")
    assert query(db, "select shop_id, load_id, reset_by from loader_registry.connector_checkpoint_resets") == [
        ("shop-1", "load-1", who)]
    assert main(["poll"]) == 0
    assert [r[1] for r in run_ids(db)] == ["load-1", "load-1", "load-1"]
    assert query(db, "select shop_id from loader_registry.runs order by run_id") == [("shop-1",), ("shop-2",),
                                                                                     ("shop-1",)]


@pytest.mark.parametrize("args", [["poll"], ["connectors"], ["checkpoint", "reset", "drop"]])
def test_a_bad_connectors_file_is_exit_2_with_the_message(db: Warehouse, tmp_path: Path, args: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "connectors.yml"
    bad.write_text("connectors:\n  - system_code: drop\n    type: local\n    path: /srv\n"
                   "    schedule: {every_minutes: 5, cron: '* * * * *'}\n", encoding="utf-8")
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(bad))
    done = loader(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (f"loader: {bad}: connector drop: schedule: give exactly one of every_minutes or"
                                   " cron")


@pytest.mark.parametrize(("args", "says"), [
    (["poll", "nope"], "no connector 'nope' (configured: drop)"),
    (["checkpoint", "reset", "nope"], "no connector 'nope' (configured: drop)"),
    (["checkpoint", "reset", "drop", "--shop", "../x"], "shop_id '../x' is not allowed"),
])
def test_unknown_names_are_exit_2(db: Warehouse, drop: Path, args: list[str], says: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert says in capsys.readouterr().err
