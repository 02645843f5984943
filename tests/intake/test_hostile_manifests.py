"""Hostile and lax manifests: each is refused with a message, in bounded time and output, never a traceback."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.intake.manifest import MAX_PROBLEMS_SHOWN, verify_folder
from loader.intake.partners import PartnerSettings


def refusals(folder: Path) -> list[str]:
    result = verify_folder(folder, lambda _partner: PartnerSettings())
    assert not result.ok
    return [f"{p.rule}: {p}" for p in result.refusals]


def manifest_with_rows(folder: Path, rows_json: str) -> None:
    """Rewrite the manifest with customers.csv's `rows` given as raw JSON text."""
    body = json.loads((folder / "manifest.json").read_text())
    entries = []
    for entry in body["files"]:
        rows = rows_json if entry["name"] == "customers.csv" else str(entry["rows"])
        entries.append(f'{{"name": "{entry["name"]}", "rows": {rows}, "sha256": "{entry["sha256"]}"}}')
    (folder / "manifest.json").write_text(f'{{"load_id": "load-1", "files": [{", ".join(entries)}]}}')


@pytest.mark.parametrize("rows", ['"2"', '" 2 "', "2.0", "true"])
def test_rows_must_be_a_json_integer(tmp_path: Path, rows: str) -> None:
    folder = make_load(tmp_path)
    manifest_with_rows(folder, rows)
    messages = refusals(folder)
    assert any("files.0.rows" in m for m in messages), messages


def test_the_same_folder_with_integer_rows_passes(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest_with_rows(folder, "2")
    assert verify_folder(folder, lambda _partner: PartnerSettings()).ok


def test_a_duplicated_key_is_refused_not_last_one_wins(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('"rows": 2,', '"rows": 999, "rows": 2,', 1))
    assert refusals(folder) == ["manifest: manifest.json: key 'rows' appears more than once in one object"]


def test_a_duplicated_top_level_key_is_refused(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('{"load_id": "load-1"', '{"load_id": "x", "load_id": "load-1"'))
    assert "appears more than once" in refusals(folder)[0]


def test_a_huge_number_is_refused(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest_with_rows(folder, "9" * 5000)
    assert refusals(folder) == ["manifest: manifest.json: a number of 5,000 digits is too large (at most 19)"]


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    (folder / "manifest.json").write_text('{"load_id": "load-1", "files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert refusals(folder) == ["manifest: manifest.json: not a manifest: its JSON is nested too deeply"]


def test_nan_is_not_json(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    manifest_with_rows(folder, "NaN")
    assert refusals(folder) == ["manifest: manifest.json: NaN is not a JSON value"]


def test_a_manifest_of_a_million_files_is_refused_at_once(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    digest = hashlib.sha256(b"").hexdigest()
    entries = ",".join(f'{{"name": "f{i}.csv", "rows": 0, "sha256": "{digest}"}}' for i in range(1_300_000))
    (folder / "manifest.json").write_text(f'{{"load_id": "load-1", "files": [{entries}]}}')
    started = time.monotonic()
    messages = refusals(folder)
    assert time.monotonic() - started < 2
    assert len(messages) == 1 and "a manifest may be at most 1,048,576 bytes" in messages[0]


def test_many_missing_files_are_counted_not_listed(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    body = json.loads((folder / "manifest.json").read_text())
    digest = hashlib.sha256(b"").hexdigest()
    body["files"] += [{"name": f"f{i}.csv", "rows": 0, "sha256": digest} for i in range(900)]
    (folder / "manifest.json").write_text(json.dumps(body))
    messages = refusals(folder)
    assert len(messages) == MAX_PROBLEMS_SHOWN + 1
    assert messages[-1] == "extra_file: ... and 880 more extra_file problem(s) like the ones above"


def test_too_many_entries_are_refused_before_they_are_checked(tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    body = json.loads((folder / "manifest.json").read_text())
    body["files"] += [{"name": f"f{i}.csv", "rows": "x", "sha256": 1} for i in range(5000)]
    (folder / "manifest.json").write_text(json.dumps(body, separators=(",", ":")))
    assert refusals(folder) == ["manifest: manifest.json: files lists 5,007 entries; a manifest may list at most 1,000"]


def test_a_hostile_manifest_is_a_recorded_refusal_through_the_command(db: Warehouse, tmp_path: Path,
                                                                     capsys) -> None:
    folder = make_load(tmp_path)
    (folder / "manifest.json").write_text('{"load_id": "load-1", "files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["run", str(folder)]) == 2
    captured = capsys.readouterr()
    assert "nested too deeply" in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert query(db, "select status from loader_registry.runs") == [("rejected",)]
