"""Partner settings, the console script end to end, progress output and reruns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.intake.partners import PartnerSettingsError, load_partners

LOADER = Path(sys.executable).parent / "loader"


def test_missing_partner_file_means_defaults(tmp_path: Path) -> None:
    settings = load_partners(tmp_path / "none.yml").for_partner("anyone")
    assert (settings.encoding, settings.date_format) == ("utf-8", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("partners:\n  acme:\n    encoding: klingon\n", "partners.acme.encoding"),
        ("partners:\n  acme:\n    encoding: utf-16\n", "not ASCII-compatible"),
        ("partners:\n  acme:\n    date_format: '%H:%M'\n", "partners.acme.date_format"),
        ("partners:\n  acme:\n    colour: blue\n", "partners.acme.colour"),
        ("partners:\n  '../x':\n    encoding: utf-8\n", "not a valid load key part"),
        ("partners: [1, 2\n", "cannot read partner settings"),
    ],
)
def test_bad_partner_settings_name_the_file_and_setting(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "partners.yml"
    path.write_text(text)
    with pytest.raises(PartnerSettingsError) as err:
        load_partners(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_bad_partner_settings_exit_2(db: Warehouse, tmp_path: Path, capsys) -> None:
    (tmp_path / "partners.yml").write_text("partners:\n  acme:\n    encoding: nope\n")
    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 2
    assert "partners.acme.encoding" in capsys.readouterr().err


def test_bad_database_url_setting_exits_2(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LOADER_DATABASE_URL", "mysql://nope")
    assert main(["status"]) == 2
    assert "LOADER_DATABASE_URL" in capsys.readouterr().err


def test_demo_runs_end_to_end_through_the_console_script(db: Warehouse, tmp_path: Path) -> None:
    env = {**os.environ}
    proc = subprocess.run([str(LOADER), "demo", "--customers", "20"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "completed" in proc.stdout
    # Not a terminal: progress comes as plain log lines on stderr.
    assert "landing line_items.csv" in proc.stderr
    folder = Path(env["LOADER_HOME"]) / "demo" / "imports" / "demo-partner" / "shop-001"
    [load] = list(folder.iterdir())
    manifest = {f["name"]: f["rows"] for f in json.loads((load / "manifest.json").read_text())["files"]}
    for name, rows in manifest.items():
        entity = name.removesuffix(".csv")
        assert query(db, f"select count(*) from raw_sms_v1.{entity}") == [(rows,)], name
    assert query(db, "select status, triggered_by from loader_registry.runs") == [("completed", "cli:demo")]


def test_rerun_uses_the_kept_folder(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 0
    assert main(["rerun", "acme/shop-1/load-1", "--land-only"]) == 0
    assert "already landed" in capsys.readouterr().out
    assert query(db, "select run_id, triggered_by from loader_registry.runs order by run_id") == [
        (1, "cli"), (2, "cli:rerun")]
    assert main(["rerun", "acme/shop-1/unknown"]) == 1
    assert main(["rerun", "acme/shop 1/x"]) == 2


def test_show_and_status_text(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert main(["status"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    assert "acme/shop-1/load-1" in capsys.readouterr().out
    assert main(["show", "acme/shop-1/load-1"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert main(["show", "acme/shop-1/nope"]) == 1


def test_env_prints_what_psql_and_dbt_need(db: Warehouse, capsys) -> None:
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("LOADER_PGHOST", "LOADER_PGPORT", "LOADER_PGUSER", "LOADER_PGDATABASE", "PGHOST"):
        assert f"export {name}=" in out
    script = out + "\npsql -tAc 'select 42'\n"
    psql_dir = os.path.dirname(__import__("loader.database", fromlist=["psql_binary"]).psql_binary())
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": psql_dir + os.pathsep + os.environ["PATH"]})
    assert proc.stdout.strip() == "42", proc.stderr
