"""Partner settings, the console script end to end, progress output and reruns."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import psycopg2
import pytest
from helpers import LOADER, make_load, query

from loader.cli import main
from loader.database import Warehouse
from loader.intake.partners import PartnerSettingsError, load_partners


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
    out = capsys.readouterr().out
    assert "acme/shop-1/load-1" in out and "history:" in out and "completed" in out
    assert main(["show", "acme/shop-1/load-1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["status"] == "completed"
    assert [h["status"] for h in body["history"]] == ["queued", "running", "completed"]
    assert body["history"][0]["at"] <= body["history"][1]["at"] <= body["history"][2]["at"]
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


def test_status_filters_by_status(db: Warehouse, tmp_path: Path, capsys) -> None:
    assert main(["run", str(make_load(tmp_path)), "--land-only"]) == 0
    bad = make_load(tmp_path, load_id="load-2")
    (bad / "payments.csv").unlink()
    assert main(["run", str(bad)]) == 2
    capsys.readouterr()
    assert main(["status", "--json", "--status", "rejected"]) == 0
    assert [r["load"] for r in json.loads(capsys.readouterr().out)] == ["acme/shop-1/load-2"]
    assert main(["status", "--json", "--status", "completed"]) == 0
    assert [r["load"] for r in json.loads(capsys.readouterr().out)] == ["acme/shop-1/load-1"]
    assert main(["status", "--status", "failed"]) == 0
    assert "no failed runs" in capsys.readouterr().out


def test_a_run_without_a_ledger_says_so_instead_of_printing_zeros(db: Warehouse, tmp_path: Path, capsys) -> None:
    bad = make_load(tmp_path)
    (bad / "payments.csv").unlink()
    assert main(["run", str(bad)]) == 2
    capsys.readouterr()
    assert main(["report", "acme/shop-1/load-1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["status"] == "rejected" and body["entities"] == {}
    assert body["no_ledger"].startswith("the folder was refused before anything was landed")
    assert main(["report", "acme/shop-1/load-1"]) == 0
    out = capsys.readouterr().out
    assert "no ledger: the folder was refused" in out and "manifest_rows" not in out

    assert main(["run", str(make_load(tmp_path, load_id="land-only")), "--land-only"]) == 0
    capsys.readouterr()
    assert main(["report", "acme/shop-1/land-only", "--json"]) == 0
    assert "no_ledger" in json.loads(capsys.readouterr().out)


def loader_command(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOADER), *args], env=env, capture_output=True, text=True, timeout=300, check=False,
                          **kwargs)


@pytest.mark.parametrize(("url", "names"), [
    ("postgresql://bob:s3cret@127.0.0.1:1/warehouse", "127.0.0.1:1"),
    ("postgresql://bob:s3cret@no-such-host.invalid/warehouse", "no-such-host.invalid"),
])
def test_an_unreachable_server_is_one_line_naming_it(url: str, names: str) -> None:
    proc = loader_command(["status"], {**os.environ, "LOADER_DATABASE_URL": url})
    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("loader: cannot connect to PostgreSQL at ") and names in line, line
    assert "s3cret" not in line


def test_a_missing_database_is_one_line_naming_it(db: Warehouse) -> None:
    missing = dataclasses.replace(db, dbname="no_such_database")
    proc = loader_command(["report", "acme/shop-1/load-1"], {**os.environ, "LOADER_DATABASE_URL": missing.url})
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "no_such_database" in line and "Traceback" not in line, line


def test_a_url_without_password_on_a_unix_socket_lands_and_loads(db: Warehouse, tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if not db.host.startswith("/"):
        pytest.skip("the test server is reached over TCP; the unix-socket form is tested on the embedded one")
    monkeypatch.setenv("LOADER_DATABASE_URL", f"postgresql://{db.user}@/{db.dbname}?host={db.host}")
    assert main(["run", str(make_load(tmp_path))]) == 0
    assert "completed" in capsys.readouterr().out
    assert query(db, "select count(*) from prod_sms.customers") == [(2,)]


def test_a_url_without_password_over_tcp_lands_and_loads(db: Warehouse, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if db.host.startswith("/") or db.password:
        pytest.skip("needs a TCP server with trust authentication (LOADER_TEST_DATABASE_URL in CI)")
    monkeypatch.setenv("LOADER_DATABASE_URL", f"postgresql://{db.user}@{db.host}:{db.port}/{db.dbname}")
    assert main(["run", str(make_load(tmp_path))]) == 0
    assert query(db, "select count(*) from prod_sms.customers") == [(2,)]


def test_a_closed_pipe_on_stdout_does_not_fail_the_run(db: Warehouse, tmp_path: Path) -> None:
    folder = make_load(tmp_path)
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", f"{LOADER} run {folder} | head -1"],
                          env={**os.environ}, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    assert query(db, "select status from loader_registry.runs") == [("completed",)]


def test_a_failed_run_counts_its_file_warnings_and_puts_them_on_the_header_line(db: Warehouse, tmp_path: Path,
                                                                                 capsys) -> None:
    assert main(["run", str(make_load(tmp_path, load_id="first"))]) == 0
    # The run's ledger is saved last, in the publish transaction: refusing it fails the run after dbt built
    # the exceptions.
    query(db, "alter table loader_registry.run_ledger add constraint refuse_all check (false) not valid")
    extra = b"external_customer_id,last_name,loyalty_tier\r\nC1,Smith,gold\r\n"
    assert main(["run", str(make_load(tmp_path, {"customers.csv": extra}, load_id="second"))]) == 1
    capsys.readouterr()
    assert main(["status", "--json", "--status", "failed"]) == 0
    [run] = json.loads(capsys.readouterr().out)
    assert run["warning_count"] == 1
    assert main(["exceptions", "acme/shop-1/second", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["rule"], r["row_number"], r["line_number"], r["field"]) for r in rows] == [
        ("unknown_column", 0, 1, "loyalty_tier")]


def test_demo_hints_name_the_command_the_load_and_the_server(db: Warehouse, tmp_path: Path) -> None:
    proc = loader_command(["demo", "--customers", "5"], {**os.environ, "LOADER_INVOKED_AS": "./dev loader"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = Path(os.environ["LOADER_HOME"]) / "demo" / "imports" / "demo-partner" / "shop-001"
    [load] = [p.name for p in folder.iterdir()]
    assert f"./dev loader report demo-partner/shop-001/{load}" in proc.stdout


def test_server_status_start_and_stop_of_the_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOADER_DATABASE_URL"}
    env["LOADER_HOME"] = str(tmp_path / "home")
    assert "not running" in loader_command(["server", "status"], env).stdout
    started = loader_command(["server", "start"], env)
    assert started.returncode == 0, started.stderr
    try:
        assert ": running" in loader_command(["server", "status"], env).stdout
        demo_hint = loader_command(["status"], env)
        assert demo_hint.returncode == 0 and "no runs yet" in demo_hint.stdout
    finally:
        stopped = loader_command(["server", "stop"], env)
    assert stopped.returncode == 0 and "stopped the embedded PostgreSQL" in stopped.stdout, stopped.stderr
    assert "not running" in loader_command(["server", "status"], env).stdout


def test_every_session_of_the_loader_and_of_dbt_runs_without_jit(db: Warehouse, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """JIT off in our sessions, on any server, keeping options the URL gave; dbt's sessions get the same."""
    from loader.dbt.runner import dbt_build
    from loader.runs.slots import Slot

    given = dataclasses.replace(db, options=(*db.options, ("options", "-c statement_timeout=123456")))
    with contextlib.closing(given.connect()) as conn, conn.cursor() as cur:
        cur.execute("select current_setting('jit'), current_setting('statement_timeout')")
        assert cur.fetchone() == ("off", "123456ms")
    # Restored after the test: the build sets it for the process.
    monkeypatch.setenv("PGOPTIONS", "")
    dbt_build(db, Slot(2, tmp_path / "home"), select="stg_sms__customers")
    with contextlib.closing(psycopg2.connect(db.url)) as conn, conn.cursor() as cur:
        # A plain libpq session in the same environment: what dbt's connections got.
        cur.execute("select current_setting('jit')")
        assert cur.fetchone() == ("off",)
