"""Per run, how long each step took and how many rows it handled, and how long the run waited in the queue."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import make_load, query

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse


def test_show_gives_step_durations_rows_per_second_and_queue_lag(db: Warehouse, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = "".join(f"C{i},Ann,Lee,c{i}@example.com\r\n" for i in range(1, 51))
    folder = make_load(tmp_path, {"customers.csv": ("external_customer_id,first_name,last_name,email\r\n"
                                                    + rows).encode()})
    assert main(["run", str(folder)]) == 0
    said = capsys.readouterr().err
    # The run's log says where dbt's and the publish's time went.
    assert re.search(r"\] dbt: \d+ nodes, [\d.]+ s of node time; slowest \w+ [\d.]+ s", said), said
    [publish] = [line.split("] publish: ", 1)[1] for line in said.splitlines() if "] publish: " in line]
    parts = re.findall(r"(\w+)\*? [\d.]+ s", publish)
    entities = [e.name for e in load_contract("sms_v1").entities]
    assert sorted(parts[:-3]) == sorted(entities) and parts[-3:] == ["references", "outcome", "commit"], publish
    # The plans of this small load were all applied before the build ended; what follows waits for it.
    assert publish.split(" (")[0].count("*") == 3 and "commit* " in publish, publish
    assert main(["show", "acme/shop-1/load-1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    steps = {s["step"]: s for s in body["steps"]}
    assert list(steps) == ["verify", "land", "compare", "dbt build", "publish"]
    [(queued, started, completed)] = query(db, "select queued_at, started_at, completed_at from loader_registry.runs")
    assert 0 <= body["queue_lag_seconds"] == pytest.approx((started - queued).total_seconds(), abs=0.002)
    assert sum(s["seconds"] for s in steps.values()) <= (completed - started).total_seconds() + 0.01
    assert steps["dbt build"]["seconds"] > 0
    assert steps["land"]["rows"] == steps["dbt build"]["rows"] == 50
    assert steps["publish"]["rows"] == 50
    assert steps["land"]["rows_per_second"] == pytest.approx(50 / steps["land"]["seconds"], rel=0.01)
    assert steps["verify"]["rows"] is None
    # A first load has no earlier rows to carry over: it checks all of them.
    assert steps["compare"]["rows"] == 0
    assert main(["show", "acme/shop-1/load-1"]) == 0
    out = capsys.readouterr().out
    assert "waited " in out and "s in the queue" in out
    assert "dbt build" in out and "50 rows" in out
