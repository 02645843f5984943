"""Webhooks against a real HTTP server on 127.0.0.1: signed, retried from the delivery table, never delaying a load."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import LOADER, make_load, query

from loader.cli import main
from loader.contracts import load_contract
from loader.database import Warehouse
from loader.intake.partners import load_partners
from loader.runs.notify import Event, Sender, WebhookPolicy, body_of, send_now, sign
from loader.runs.registry import ensure_registry, set_status, start_run

SECRET = "test-secret-0123456789"
DASHBOARD = "https://dashboard.example/loader/"


def verified(body: bytes, signature: str, secret: str) -> bool:
    """What a receiver does (as the README shows it)."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: dt.datetime
    monotonic: float

    @property
    def json(self) -> dict[str, object]:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver in a thread: answers each POST as `script` says (a status, or "hang"), then 200."""

    def __init__(self, script: list[int | str], *, port: int = 0, hang_seconds: float = 5.0,
                 delay_seconds: float = 0.0) -> None:
        self.received: list[Received] = []
        self._script = list(script)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body, dt.datetime.now(dt.UTC),
                                                      time.monotonic()))
                    action = receiver._script.pop(0) if receiver._script else 200
                time.sleep(hang_seconds if action == "hang" else delay_seconds)
                with contextlib.suppress(OSError):
                    self.send_response(200 if action == "hang" else int(action))
                    self.end_headers()
                    self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(script: list[int | str] | None = None, **kwargs: float) -> Receiver:
        started.append(Receiver(script or [], **kwargs))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for one in started:
        one.close()


@pytest.fixture(autouse=True)
def fast_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_WEBHOOK_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("LOADER_WEBHOOK_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("LOADER_WEBHOOK_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("LOADER_DASHBOARD_URL", DASHBOARD)
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def subscribe(*hooks: dict[str, object]) -> None:
    Path(os.environ["LOADER_PARTNERS_FILE"]).write_text(yaml.safe_dump({"partners": {"acme": {"notify": list(hooks)}}}))


def hook(url: str, *events: str, secret_env: str = "TEST_HOOK_SECRET") -> dict[str, object]:
    return {"url": url, "events": list(events), "secret_env": secret_env}


def attempts(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select delivery_id, attempt, http_status, error from loader_registry.webhook_attempts"
                     " order by delivery_id, attempt")


def deliveries(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select delivery_id, event, attempts, delivered_at is not null, gave_up_at is not null"
                     " from loader_registry.webhook_deliveries order by delivery_id")


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finished_runs(db: Warehouse, count: int, status: str = "completed") -> list[int]:
    """Runs moved to `status` through the state machine, without a load: for what needs no dbt build."""
    ensure_registry(db)
    with contextlib.closing(db.connect()) as conn:
        ids = []
        for n in range(count):
            run_id = start_run(conn, ("acme", "shop-1", f"load-{n}"), "sms_v1", "test", None)
            set_status(conn, run_id, "running")
            set_status(conn, run_id, status, f"done {n}", error_count=n, warning_count=1)  # type: ignore[arg-type]
            ids.append(run_id)
    return ids


def test_the_body_names_the_run_and_links_the_dashboard() -> None:
    at = dt.datetime(2026, 11, 21, 11, 0, 42, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    ledger = {"customers": {"manifest_rows": 2, "landed_rows": 2, "valid_rows": 2, "rejected_rows": 0,
                            "warning_rows": 0, "inserted": 2, "updated": 0, "unchanged": 0}}
    event = Event(7, 42, "needs_review", at, {"error_count": 4, "warning_count": 7, "message": "held",
                                               "held_because": [{"threshold": "max_reject_pct"}], "ledger": ledger},
                  "acme", "shop-17", "2025-08-22_partnerA", "sms_v1")
    body = json.loads(body_of(event, DASHBOARD))
    assert body == {
        "event": "needs_review", "run_id": 42, "load": "acme/shop-17/2025-08-22_partnerA", "partner_id": "acme",
        "shop_id": "shop-17", "load_id": "2025-08-22_partnerA", "contract": "sms_v1", "status": "needs_review",
        "at": "2026-11-21T10:00:42Z", "error_count": 4, "warning_count": 7, "message": "held", "ledger": ledger,
        "held_because": [{"threshold": "max_reject_pct"}], "url": "https://dashboard.example/loader/?run=42",
    }
    data = body_of(event, DASHBOARD).encode()
    assert verified(data, sign(data, SECRET), SECRET)
    assert not verified(data + b" ", sign(data, SECRET), SECRET)
    assert sign(data, SECRET) == hmac.new(SECRET.encode(), data, "sha256").hexdigest()


def test_an_outcome_is_an_event_only_once_committed(db: Warehouse) -> None:
    [run_id] = finished_runs(db, 1, "failed")
    with contextlib.closing(db.connect()) as conn:
        set_status(conn, run_id, "queued", "rerun")
        set_status(conn, run_id, "running")
        with conn, conn.cursor() as cur:
            cur.execute("update loader_registry.runs set status = 'completed' where run_id = %s", (run_id,))
            conn.rollback()
        set_status(conn, run_id, "completed", "published", error_count=0, warning_count=3)
    events = query(db, "select status, summary from loader_registry.run_events order by event_id")
    assert [(s, m["message"], m["error_count"], m["warning_count"], m["ledger"]) for s, m in events] == [
        ("failed", "done 0", 0, 1, None), ("completed", "published", 0, 3, None)]
    # Nobody subscribed: the events are expanded into nothing.
    send_now(db, load_partners(Path(os.environ["LOADER_PARTNERS_FILE"])))
    assert query(db, "select count(*) from loader_registry.run_events where expanded_at is null") == [(0,)]
    assert deliveries(db) == []


def test_a_hook_that_fails_first_is_retried_and_delivered_once(db: Warehouse, tmp_path: Path, receiver) -> None:
    hooks = receiver([500])
    subscribe(hook(hooks.url("/completed"), "completed"), hook(hooks.url("/failed"), "failed", "rejected"))
    assert main(["run", str(make_load(tmp_path / "drop"))]) == 0
    # `loader run` made the first attempt after recording the run; the receiver refused it.
    assert attempts(db) == [(1, 1, 500, "HTTP 500 Internal Server Error")]
    assert deliveries(db) == [(1, "completed", 1, False, False)]

    # A sender (as `loader worker` runs one) makes the next attempt.
    sender = Sender(db, load_partners(Path(os.environ["LOADER_PARTNERS_FILE"])), WebhookPolicy.from_environment())
    sender.start()
    try:
        wait_until(lambda: deliveries(db) == [(1, "completed", 2, True, False)])
    finally:
        sender.stop()
    assert attempts(db) == [(1, 1, 500, "HTTP 500 Internal Server Error"), (1, 2, 200, None)]
    # Only the hook subscribed to `completed` was called, twice with the same signed body.
    assert [r.path for r in hooks.received] == ["/completed", "/completed"]
    first, second = hooks.received
    assert first.body == second.body
    for request in hooks.received:
        assert verified(request.body, request.headers["X-Loader-Signature"], SECRET)
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Loader-Event"] == "completed"
        assert request.headers["X-Loader-Delivery"] == "1"
    body = first.json
    assert body["run_id"] == 1 and body["load"] == "acme/shop-1/load-1" and body["status"] == "completed"
    assert body["event"] == "completed" and body["contract"] == "sms_v1" and body["held_because"] is None
    assert body["url"] == "https://dashboard.example/loader/?run=1"
    [(errors, warnings, message, completed_at)] = query(
        db, "select error_count, warning_count, message, completed_at from loader_registry.runs")
    assert (body["error_count"], body["warning_count"], body["message"]) == (errors, warnings, message)
    assert body["at"] == completed_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    ledger = body["ledger"]
    # Every entity, in the contract's dependency order, as `loader report` has it.
    assert isinstance(ledger, dict) and list(ledger) == [e.name for e in load_contract("sms_v1").entities]
    assert ledger["customers"]["inserted"] == 2 and ledger["customers"]["manifest_rows"] == 2
    # The secret itself is nowhere in the database.
    assert query(db, "select count(*) from loader_registry.webhook_deliveries d, loader_registry.webhook_attempts a"
                     " where d::text like %s or a::text like %s", (f"%{SECRET}%", f"%{SECRET}%")) == [(0,)]


def test_a_pending_delivery_is_sent_by_the_next_process(db: Warehouse, tmp_path: Path, receiver) -> None:
    port = free_port()
    subscribe(hook(f"http://127.0.0.1:{port}/hook", "completed"))
    # Nothing listens on the port yet: the attempt after the run is refused, and the delivery stays pending.
    assert main(["run", str(make_load(tmp_path / "drop"))]) == 0
    [(_, _, status, error)] = attempts(db)
    assert status is None and "Connection refused" in str(error), error
    hooks = receiver(port=port)
    worker = subprocess.run([str(LOADER), "worker", "--once", "--concurrency", "1"], env={**os.environ},
                            capture_output=True, text=True, timeout=300, check=False)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert deliveries(db) == [(1, "completed", 2, True, False)]
    [request] = hooks.received
    assert verified(request.body, request.headers["X-Loader-Signature"], SECRET)
    assert request.json["run_id"] == 1


def test_a_hook_that_hangs_neither_delays_nor_fails_the_run(db: Warehouse, tmp_path: Path, receiver,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_WEBHOOK_TIMEOUT_SECONDS", "0.5")
    hooks = receiver(["hang"], hang_seconds=30.0)
    subscribe(hook(hooks.url(), "completed"))
    assert main(["run", str(make_load(tmp_path / "drop"))]) == 0
    returned = time.monotonic()
    [request] = hooks.received
    [(status, completed_at)] = query(db, "select status, completed_at from loader_registry.runs")
    # The run was recorded completed before its hook was called, and the command waited for the hook at
    # most the timeout (and the database's time to record the attempt).
    assert status == "completed" and completed_at <= request.at
    # Its 0.5 s, not the 30 s the hook hangs; the rest is slack for a slow machine.
    assert returned - request.monotonic < 0.5 + 10.0
    assert attempts(db) == [(1, 1, None, "no answer within 0.5 s")]
    assert deliveries(db) == [(1, "completed", 1, False, False)]


def test_a_hook_that_hangs_does_not_hold_up_the_workers_next_run(db: Warehouse, tmp_path: Path, receiver,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_WEBHOOK_TIMEOUT_SECONDS", "20")
    hooks = receiver(["hang"], hang_seconds=30.0)
    subscribe(hook(hooks.url(), "completed"))
    for n in (1, 2):
        submitted = subprocess.run([str(LOADER), "submit", str(make_load(tmp_path / "drop", load_id=f"load-{n}"))],
                                   env={**os.environ}, capture_output=True, text=True, check=False)
        assert submitted.returncode == 0, submitted.stderr
    worker = subprocess.run([str(LOADER), "worker", "--once", "--concurrency", "1"], env={**os.environ},
                            capture_output=True, text=True, timeout=600, check=False)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    [(first_done, second_started, second_done)] = query(
        db, "select max(completed_at) filter (where run_id = 1), max(started_at) filter (where run_id = 2),"
            " max(completed_at) filter (where run_id = 2) from loader_registry.runs where status = 'completed'")
    first_hook = hooks.received[0]
    assert first_hook.json["run_id"] == 1 and first_done <= first_hook.at
    [(gave_up_waiting,)] = query(db, "select attempted_at from loader_registry.webhook_attempts"
                                     " where delivery_id = 1 and attempt = 1")
    # The second run started, and ended, while the first run's hook hung (until its 20 s timeout was recorded).
    assert first_done < second_started < second_done < gave_up_waiting
    # Before it returned, the worker recorded the timed-out attempt and delivered both (retry base 0 s).
    assert deliveries(db) == [(1, "completed", 2, True, False), (2, "completed", 1, True, False)]
    assert attempts(db) == [(1, 1, None, "no answer within 20 s"), (1, 2, 200, None), (2, 1, 200, None)]


def test_a_missing_secret_is_an_attempt_that_names_the_variable(db: Warehouse, receiver,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACME_UNSET_SECRET", raising=False)
    hooks = receiver()
    subscribe(hook(hooks.url(), "completed", secret_env="ACME_UNSET_SECRET"))
    finished_runs(db, 1)
    send_now(db, load_partners(Path(os.environ["LOADER_PARTNERS_FILE"])))
    [(_, _, status, error)] = attempts(db)
    assert status is None and "ACME_UNSET_SECRET" in str(error) and "never sent unsigned" in str(error)
    assert hooks.received == []
    assert deliveries(db) == [(1, "completed", 1, False, False)]


def test_a_delivery_is_given_up_after_the_last_attempt(db: Warehouse, receiver,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_WEBHOOK_MAX_ATTEMPTS", "2")
    hooks = receiver([500, 503, 500])
    subscribe(hook(hooks.url(), "failed"))
    finished_runs(db, 1, "failed")
    partners = load_partners(Path(os.environ["LOADER_PARTNERS_FILE"]))
    for _ in range(3):
        send_now(db, partners)
    assert deliveries(db) == [(1, "failed", 2, False, True)]
    assert [(n, s) for _, n, s, _ in attempts(db)] == [(1, 500), (2, 503)]
    assert len(hooks.received) == 2


def test_two_senders_make_each_attempt_once(db: Warehouse, receiver) -> None:
    hooks = receiver(delay_seconds=0.1)
    subscribe(hook(hooks.url(), "completed"))
    finished_runs(db, 12)
    partners = load_partners(Path(os.environ["LOADER_PARTNERS_FILE"]))
    senders = [Sender(db, partners, WebhookPolicy.from_environment()) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        wait_until(lambda: query(db, "select count(*) from loader_registry.webhook_deliveries"
                                     " where delivered_at is not null") == [(12,)])
    finally:
        for sender in senders:
            sender.stop()
    assert sorted(int(r.headers["X-Loader-Delivery"]) for r in hooks.received) == list(range(1, 13))
    assert [(n, s) for _, n, s, _ in attempts(db)] == [(1, 200)] * 12
    assert sorted(r.json["run_id"] for r in hooks.received) == list(range(1, 13))


def test_a_sender_waits_out_a_database_that_is_away(db: Warehouse) -> None:
    away = Warehouse("127.0.0.1", free_port(), "nobody", "", "nothing", embedded=False)
    sender = Sender(away, load_partners(Path(os.environ["LOADER_PARTNERS_FILE"])), WebhookPolicy.from_environment())
    sender.start()
    time.sleep(0.5)
    assert any(t.name == "loader-webhooks" and t.is_alive() for t in threading.enumerate())
    started = time.monotonic()
    sender.stop()
    assert time.monotonic() - started < 2
    assert not any(t.name == "loader-webhooks" and t.is_alive() for t in threading.enumerate())
    # Nothing it could not send is lost: `loader run`'s own round does not fail because the database is away.
    send_now(away, load_partners(Path(os.environ["LOADER_PARTNERS_FILE"])))
