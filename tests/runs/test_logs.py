"""Structured logs: passwords masked everywhere, JSON lines that name the run, a real worker in JSON mode."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from helpers import LOADER, make_load, new_id, query

from loader.database import Warehouse
from loader.runs import logs
from loader.runs.worker import say


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process logging JSON for one test, then text again (as every other test expects)."""
    monkeypatch.setenv("_LOADER_LOG_VERBOSE", "")
    logs.configure("json")
    yield
    logs.configure("text")


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://loader:s3cret@db.example.com:5432/warehouse",
     "postgresql://loader:***@db.example.com:5432/warehouse"),
    ("cannot reach postgres://u:p%40ss:w0rd@10.0.0.1/db?sslmode=require, giving up",
     "cannot reach postgres://u:***@10.0.0.1/db?sslmode=require, giving up"),
    ("url='postgresql://u:a@b@localhost:5432/db?host=/run/pg'", "url='postgresql://u:***@localhost:5432/db?host=/run/pg'"),
    ("https://:token@hooks.example.com/x", "https://:***@hooks.example.com/x"),
    ("host=db port=5432 password=s3cret dbname=warehouse", "host=db port=5432 password=*** dbname=warehouse"),
    ("host=db password = 'se cr\\'et' user=me", "host=db password = *** user=me"),
    ("PGPASSWORD=s3cret psql -h db", "PGPASSWORD=*** psql -h db"),
    ("export LOADER_PGPASSWORD=s3cret", "export LOADER_PGPASSWORD=***"),
    ("Warehouse(host='db', password='s3cret', dbname='w')", "Warehouse(host='db', password=***, dbname='w')"),
    ("credentials {'username': 'u', 'password': 's3cret'}", "credentials {'username': 'u', 'password': '***'}"),
    ('{"password": "s3cret", "host": "db"}', '{"password": "***", "host": "db"}'),
])
def test_redact_masks_passwords(text: str, expected: str) -> None:
    assert logs.redact(text) == expected


@pytest.mark.parametrize("text", [
    'password authentication failed for user "loader"',
    "postgresql://loader@db.example.com/warehouse",
    "postgresql://db.example.com:5432/warehouse",
    "landing customers.csv: 1,200 rows",
])
def test_redact_leaves_the_rest_alone(text: str) -> None:
    assert logs.redact(text) == text


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("loader.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_a_record_is_masked_in_its_arguments_and_its_traceback() -> None:
    try:
        raise ConnectionError("cannot connect: host=db password=s3cret-dsn dbname=w")
    except ConnectionError as exc:
        record = _record("retrying %s after %s", "postgresql://u:s3cret-url@db/w", "PGPASSWORD=s3cret-env", exc=exc)
    assert logs.Redact().filter(record)
    line = logs.JsonFormatter().format(record)
    assert "s3cret" not in line
    assert "\n" not in line
    body = json.loads(line)
    assert body["message"] == "retrying postgresql://u:***@db/w after PGPASSWORD=***"
    assert body["exception"].startswith("Traceback (most recent call last):")
    assert body["exception"].endswith("ConnectionError: cannot connect: host=db password=*** dbname=w")
    assert "s3cret" not in logging.Formatter().format(record)


def test_a_json_line_has_time_level_logger_message_and_the_run() -> None:
    record = _record("landing %s: %d rows", "customers.csv", 2)
    logs.RunFields().filter(record)
    outside = json.loads(logs.JsonFormatter().format(record))
    assert set(outside) == {"time", "level", "logger", "message"}
    assert (outside["level"], outside["logger"], outside["message"]) == ("warning", "loader.test",
                                                                         "landing customers.csv: 2 rows")
    at = dt.datetime.fromisoformat(outside["time"])
    assert outside["time"].endswith("Z") and at.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - at).total_seconds()) < 60
    with logs.run_context(7, "acme/shop-1/load-1", "host:1:worker"):
        record = _record("inside")
        logs.RunFields().filter(record)
    inside = json.loads(logs.JsonFormatter().format(record))
    assert (inside["run_id"], inside["load"], inside["worker"]) == (7, "acme/shop-1/load-1", "host:1:worker")


def test_a_configured_process_writes_every_line_as_json(json_logs: None, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # dlt and dbt (its console) keep handlers of their own and stop their loggers propagating; their lines must
    # come through ours all the same. Only this test's handler: dbt run by an earlier test left one on a stream
    # pytest has closed since.
    own = io.StringIO()
    dlt, dbt = logging.getLogger("dlt"), logging.getLogger("stdout_log")
    theirs = logging.StreamHandler(own)
    for library in (dlt, dbt):
        monkeypatch.setattr(library, "handlers", [theirs])
        monkeypatch.setattr(library, "propagate", False)
    with logs.run_context(3, "acme/shop-1/load-1", "host:9:worker"):
        # A thread started during the run (the lease heartbeat, the publish) names the run too.
        beat = threading.Thread(target=lambda: logging.getLogger("loader.runs.queue").warning(
            "lease of run 3: cannot reach %s", "postgresql://u:s3cret@db/w"))
        beat.start()
        beat.join()
        dlt.warning("load package with PGPASSWORD=s3cret")
        dbt.error("10:00:00  Database Error in model publish_customers")
        try:
            raise RuntimeError("dsn host=db password=s3cret")
        except RuntimeError:
            logging.getLogger("loader.test").exception("failed")
        say("run 3 acme/shop-1/load-1: landing")
    logging.getLogger("paramiko.transport").error("outside any run")
    # Outside a run dbt prints as it would (dbt by hand in the same process: `dbt show` on stdout).
    dbt.error('{"show": []}')
    out, err = capsys.readouterr()
    assert own.getvalue() == '{"show": []}\n'
    assert "s3cret" not in out + err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [(b["logger"], b.get("run_id")) for b in lines] == [
        ("loader.runs.queue", 3), ("dlt", 3), ("dbt", 3), ("loader.test", 3), ("paramiko.transport", None)]
    assert lines[0]["message"] == "lease of run 3: cannot reach postgresql://u:***@db/w"
    assert "RuntimeError: dsn host=db password=***" in lines[3]["exception"]
    [said] = [json.loads(line) for line in out.splitlines()]
    assert (said["logger"], said["level"], said["message"], said["load"], said["worker"]) == (
        "loader.worker", "info", "run 3 acme/shop-1/load-1: landing", "acme/shop-1/load-1", "host:9:worker")


def test_text_keeps_the_workers_look(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("_LOADER_LOG_VERBOSE", "")
    logs.configure("text")
    say("run 1 acme/shop-1/load-1: started (attempt 1) postgresql://u:s3cret@db/w")
    out = capsys.readouterr().out
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] run 1 acme/shop-1/load-1: started \(attempt 1\)"
                        r" postgresql://u:\*\*\*@db/w\n", out), out


def _loader(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOADER), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=900, check=False)


def _json_lines(output: str) -> list[dict[str, object]]:
    bodies = []
    for line in output.splitlines():
        try:
            bodies.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{output}")
    return bodies


def test_a_worker_in_json_mode_names_the_run_on_every_line_and_never_a_password(db: Warehouse,
                                                                                  tmp_path: Path) -> None:
    secret = f"s3cret-{new_id()}"
    url = dataclasses.replace(db, password=secret).url
    try:
        psycopg2.connect(url).close()
    except psycopg2.OperationalError:
        pytest.skip("the test server checks passwords: it cannot be given one it ignores")
    submitted = _loader(["submit", str(make_load(tmp_path))])
    assert submitted.returncode == 0, submitted.stderr
    run_id = int(submitted.stdout.split()[-1])
    # Two worker processes: spawned, each configures itself from the environment.
    worker = _loader(["-v", "worker", "--once", "--concurrency", "2"], LOADER_LOG_FORMAT="json",
                     LOADER_DATABASE_URL=url)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert query(db, "select status from loader_registry.runs where run_id = %s", (run_id,)) == [("completed",)]
    assert secret not in worker.stdout + worker.stderr
    said = _json_lines(worker.stdout)
    logged = _json_lines(worker.stderr)
    assert f"run {run_id} acme/shop-1/load-1: completed" in [b["message"] for b in said], worker.stdout
    assert all({"time", "level", "logger", "message"} <= set(b) for b in said + logged)
    progress = [b for b in logged if b["logger"] == "loader.progress"]
    assert any("customers.csv" in str(b["message"]) for b in progress), worker.stderr
    for body in progress:
        assert (body["run_id"], body["load"]) == (run_id, "acme/shop-1/load-1"), body
        assert str(body["worker"]).endswith(":worker"), body


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    proc = _loader(["worker", "--once"], LOADER_LOG_FORMAT="json", LOADER_HOME=str(tmp_path),
                   LOADER_DATABASE_URL="postgresql://u:s3cret@127.0.0.1:1/db")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "127.0.0.1" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
