"""Webhook notifications: a signed JSON POST to a partner's hooks when one of its runs ends.

How nothing is lost and no load waits for a hook: the database records each
outcome (completed, failed, needs_review, rejected) as an event, by a trigger
in the transaction that commits the outcome (registry.sql). A sender expands
events into deliveries, one per webhook of the partner (`notify` in
partners.yml) subscribed to the event, and sends the deliveries that are
due: a 2xx answer delivers one, anything else (another status, a timeout, a
refused connection, a missing secret) is recorded as a failed attempt and
tried again after a backoff, until the last attempt. Senders run beside the
workers (in `loader worker`'s supervising process), and `loader run` makes
one bounded pass for its own run after the run is recorded; either way the
run's outcome is already committed.

Several senders may serve one database. A sender claims due deliveries by
pushing their next attempt past the longest an attempt can take (`FOR
UPDATE SKIP LOCKED`, then commit), so each attempt is made by exactly one
sender and no transaction stays open while a receiver takes its time. A
sender that dies during an attempt leaves its claim to run out, and the
delivery is attempted again: a receiver may see a delivery twice (the same
X-Loader-Delivery), never not at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import select
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPMessage
from typing import IO, Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extensions

from loader.database import Warehouse, WarehouseUnavailable
from loader.intake.partners import PartnersFile
from loader.runs.registry import storable
from loader.runs.retry import backoff_seconds
from loader.settings import LoaderSettings

log = logging.getLogger(__name__)

CHANNEL = "loader_events"
SIGNATURE_HEADER = "X-Loader-Signature"
# Events expanded per transaction, and deliveries attempted side by side in one round.
_BATCH = 100
_ROUND = 16
# Redeliveries double from the base up to this (unless the base itself is longer).
_LONGEST_WAIT_SECONDS = 3600.0
# A claim outlives the attempt it covers by this much: the attempt's database work and a slow machine.
_CLAIM_GRACE_SECONDS = 30.0
_IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class WebhookPolicy:
    """The webhook settings (LOADER_DASHBOARD_URL, LOADER_WEBHOOK_TIMEOUT_SECONDS, ...)."""

    dashboard_url: str = "http://127.0.0.1:8501"
    timeout_seconds: float = 5.0
    max_attempts: int = 8
    retry_base_seconds: float = 10.0

    @classmethod
    def of(cls, settings: LoaderSettings) -> WebhookPolicy:
        return cls(settings.dashboard_url, settings.webhook_timeout_seconds, settings.webhook_max_attempts,
                   settings.webhook_retry_base_seconds)

    @classmethod
    def from_environment(cls) -> WebhookPolicy:
        return cls.of(LoaderSettings())

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the attempt after attempt number `attempt`: doubling, with jitter."""
        cap = max(self.retry_base_seconds, _LONGEST_WAIT_SECONDS)
        return backoff_seconds(attempt, self.retry_base_seconds, cap)


def sign(body: bytes, secret: str) -> str:
    """The X-Loader-Signature of `body`: HMAC-SHA256 keyed with the secret, hex."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def run_link(dashboard_url: str, run_id: int) -> str:
    return f"{dashboard_url.rstrip('/')}/?run={run_id}"


@dataclass(frozen=True)
class Event:
    """A run's outcome as the transaction that recorded it left the run (a row of run_events)."""

    event_id: int
    run_id: int
    status: str
    occurred_at: dt.datetime
    summary: Mapping[str, Any]
    partner_id: str
    shop_id: str
    load_id: str
    contract: str


def body_of(event: Event, dashboard_url: str) -> str:
    """The JSON every webhook subscribed to the event is sent (the same bytes on every attempt)."""
    summary = event.summary
    return json.dumps({
        "event": event.status,
        "run_id": event.run_id,
        "load": f"{event.partner_id}/{event.shop_id}/{event.load_id}",
        "partner_id": event.partner_id,
        "shop_id": event.shop_id,
        "load_id": event.load_id,
        "contract": event.contract,
        "status": event.status,
        "at": event.occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "error_count": summary["error_count"],
        "warning_count": summary["warning_count"],
        "message": summary["message"],
        "ledger": summary["ledger"],
        "held_because": summary["held_because"],
        "url": run_link(dashboard_url, event.run_id),
    })


def expand(conn: psycopg2.extensions.connection, partners: PartnersFile, policy: WebhookPolicy) -> int:
    """Turn events not yet expanded into deliveries, one per webhook subscribed to the event; how many events.

    An event of a partner with no such webhook is only marked expanded. Locked
    rows are skipped, so two senders never expand one event.
    """
    with conn, conn.cursor() as cur:
        cur.execute(
            "select e.event_id, e.run_id, e.status, e.occurred_at, e.summary, r.partner_id, r.shop_id, r.load_id,"
            " r.contract from loader_registry.run_events as e join loader_registry.runs as r on r.run_id = e.run_id"
            " where e.expanded_at is null order by e.event_id limit %s for update of e skip locked",
            (_BATCH,),
        )
        events = [Event(*row) for row in cur.fetchall()]
        deliveries = []
        for event in events:
            hooks = [h for h in partners.for_partner(event.partner_id).notify if event.status in h.events]
            body = body_of(event, policy.dashboard_url) if hooks else ""
            deliveries += [(event.event_id, event.run_id, event.status, h.url, h.secret_env, body) for h in hooks]
        if deliveries:
            # A URL listed twice for one event is told once.
            cur.executemany(
                "insert into loader_registry.webhook_deliveries (event_id, run_id, event, url, secret_env, body)"
                " values (%s, %s, %s, %s, %s, %s) on conflict (event_id, url) do nothing",
                deliveries,
            )
        if events:
            cur.execute("update loader_registry.run_events set expanded_at = clock_timestamp()"
                        " where event_id = any(%s)", ([e.event_id for e in events],))
    return len(events)


@dataclass(frozen=True)
class Delivery:
    delivery_id: int
    run_id: int
    event: str
    url: str
    secret_env: str
    body: str
    attempts: int


def claim(conn: psycopg2.extensions.connection, policy: WebhookPolicy, *, limit: int,
          run_id: int | None = None) -> list[Delivery]:
    """Take up to `limit` due deliveries (of one run, if given) for one attempt each, hidden from other senders."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            update loader_registry.webhook_deliveries as d
            set next_attempt_at = clock_timestamp() + make_interval(secs => %(hold)s)
            where d.delivery_id in (
                select due.delivery_id from loader_registry.webhook_deliveries as due
                where due.delivered_at is null and due.gave_up_at is null
                    and due.next_attempt_at <= clock_timestamp()
                    and (%(run)s::bigint is null or due.run_id = %(run)s)
                order by due.next_attempt_at, due.delivery_id
                limit %(limit)s
                for update skip locked
            )
            returning d.delivery_id, d.run_id, d.event, d.url, d.secret_env, d.body, d.attempts
            """,
            {"hold": policy.timeout_seconds + _CLAIM_GRACE_SECONDS, "run": run_id, "limit": limit},
        )
        return sorted((Delivery(*row) for row in cur.fetchall()), key=lambda d: d.delivery_id)


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the HTTP status (None when there was no answer) and, unless 2xx, why it failed."""

    http_status: int | None
    error: str | None
    milliseconds: int = 0

    @property
    def delivered(self) -> bool:
        return self.error is None and self.http_status is not None and 200 <= self.http_status < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed attempt: following it would POST the signed body elsewhere, or GET it as no POST."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _request(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
    started = time.monotonic()

    def answer(status: int | None, error: str | None) -> Answer:
        return Answer(status, error, round((time.monotonic() - started) * 1000))

    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return answer(response.status, None if 200 <= response.status < 300 else f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        exc.close()
        return answer(exc.code, storable(f"HTTP {exc.code} {exc.reason}"[:500]))
    except TimeoutError:
        return answer(None, f"no answer within {timeout:g} s")
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return answer(None, f"no answer within {timeout:g} s")
        return answer(None, storable(f"cannot reach the receiver: {reason}"[:500]))
    except (OSError, ValueError) as exc:
        # http.client's errors (a garbled answer, a dropped connection) are OSError or ValueError subclasses.
        return answer(None, storable(f"{type(exc).__name__}: {exc}"[:500]))


def _post_all(requests: list[tuple[str, bytes, dict[str, str]]], timeout: float) -> list[Answer]:
    """POST each request side by side; the whole takes at most `timeout` seconds.

    urllib's timeout bounds each socket operation, not the request: a
    receiver that answers a byte at a time could hold it for much longer. A
    request still going at the deadline counts as unanswered; its thread ends
    with its socket's next timeout.
    """
    answers: list[Answer | None] = [None] * len(requests)

    def post(index: int, url: str, body: bytes, headers: dict[str, str]) -> None:
        answers[index] = _request(url, body, headers, timeout)

    threads = [threading.Thread(target=post, args=(i, *r), name="loader-webhook-post", daemon=True)
               for i, r in enumerate(requests)]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = Answer(None, f"no answer within {timeout:g} s", round(timeout * 1000))
    return [a if a is not None else late for a in answers]


def attempt_all(conn: psycopg2.extensions.connection, deliveries: list[Delivery], policy: WebhookPolicy) -> None:
    """Make one attempt of each claimed delivery, side by side, and record every attempt."""
    requests: list[tuple[str, bytes, dict[str, str]]] = []
    posted: list[Delivery] = []
    answers: dict[int, Answer] = {}
    for delivery in deliveries:
        secret = os.environ.get(delivery.secret_env)
        if not secret:
            answers[delivery.delivery_id] = Answer(None, f"environment variable {delivery.secret_env} (the signing"
                                                         " secret) is not set or empty: not sent, a webhook is never"
                                                         " sent unsigned")
            continue
        body = delivery.body.encode("utf-8")
        requests.append((delivery.url, body, {
            "Content-Type": "application/json",
            "User-Agent": "loader-webhooks",
            SIGNATURE_HEADER: sign(body, secret),
            "X-Loader-Event": delivery.event,
            "X-Loader-Delivery": str(delivery.delivery_id),
        }))
        posted.append(delivery)
    for delivery, answer in zip(posted, _post_all(requests, policy.timeout_seconds), strict=True):
        answers[delivery.delivery_id] = answer
    for delivery in deliveries:
        _record(conn, delivery, answers[delivery.delivery_id], policy)


def _where(url: str) -> str:
    """The receiver, for log lines: a hook's path or query may itself be a secret token."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _record(conn: psycopg2.extensions.connection, delivery: Delivery, answer: Answer, policy: WebhookPolicy) -> None:
    delay = policy.retry_delay(delivery.attempts + 1)
    with conn, conn.cursor() as cur:
        # Columns on the right of SET are the row before this update.
        cur.execute(
            """
            update loader_registry.webhook_deliveries set
                attempts = attempts + 1,
                delivered_at = case when %(ok)s then coalesce(delivered_at, clock_timestamp()) else delivered_at end,
                gave_up_at = case when not %(ok)s and delivered_at is null and attempts + 1 >= %(max)s
                             then clock_timestamp() else gave_up_at end,
                next_attempt_at = case when %(ok)s or delivered_at is not null then next_attempt_at
                                  else clock_timestamp() + make_interval(secs => %(delay)s) end,
                last_error = %(error)s
            where delivery_id = %(id)s
            returning attempts, gave_up_at is not null
            """,
            {"ok": answer.delivered, "max": policy.max_attempts, "delay": delay, "error": answer.error,
             "id": delivery.delivery_id},
        )
        row = cur.fetchone()
        if row is None:
            return
        number, gave_up = row
        cur.execute(
            "insert into loader_registry.webhook_attempts (delivery_id, attempt, http_status, error, milliseconds)"
            " values (%s, %s, %s, %s, %s)",
            (delivery.delivery_id, number, answer.http_status, answer.error, answer.milliseconds),
        )
    what = (f"webhook delivery {delivery.delivery_id} ({delivery.event} of run {delivery.run_id})"
            f" to {_where(delivery.url)}")
    if answer.delivered:
        log.info("%s: delivered (HTTP %s, attempt %s)", what, answer.http_status, number)
    elif gave_up:
        log.warning("%s: attempt %s of %s failed: %s; giving up", what, number, policy.max_attempts, answer.error)
    else:
        log.warning("%s: attempt %s of %s failed: %s; trying again in %.1f s", what, number, policy.max_attempts,
                    answer.error, delay)


def deliver_round(conn: psycopg2.extensions.connection, partners: PartnersFile, policy: WebhookPolicy, *,
                  run_id: int | None = None) -> int:
    """Expand every pending event, then attempt once each delivery due (of one run, if given), up to a round's worth.

    Returns how many deliveries were attempted. The attempts take at most the
    timeout in all, as they are made side by side.
    """
    while expand(conn, partners, policy) == _BATCH:
        pass
    deliveries = claim(conn, policy, limit=_ROUND, run_id=run_id)
    if deliveries:
        attempt_all(conn, deliveries, policy)
    return len(deliveries)


def send_now(warehouse: Warehouse, partners: PartnersFile, *, run_id: int | None = None,
             policy: WebhookPolicy | None = None) -> None:
    """One bounded round of sending (`loader run` after its run, `loader worker --once` before it returns).

    Never raises: a hook, or the database, that fails here leaves the
    delivery pending for a sender to try again, and changes nothing else.
    """
    try:
        policy = policy or WebhookPolicy.from_environment()
        with contextlib.closing(warehouse.connect()) as conn:
            deliver_round(conn, partners, policy, run_id=run_id)
    except Exception as exc:
        log.warning("webhooks not sent now (a sender tries again later): %s", exc)


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class Sender:
    """Sends webhooks from a thread of its own, from `start` until `stop`.

    It wakes when a run's outcome is committed (LISTEN loader_events), when
    a retry falls due, and every few seconds. The database being away is
    waited out with a backoff; no error ends the thread.
    """

    def __init__(self, warehouse: Warehouse, partners: PartnersFile, policy: WebhookPolicy, *,
                 idle_seconds: float = _IDLE_SECONDS) -> None:
        self._warehouse = warehouse
        self._partners = partners
        self._policy = policy
        self._idle_seconds = idle_seconds
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="loader-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the attempts in flight are recorded (waiting at most a little longer than one timeout)."""
        self._stop.set()
        os.write(self._wake_write, b"x")
        self._thread.join(self._policy.timeout_seconds + 5.0)
        if not self._thread.is_alive():
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _run(self) -> None:
        conn: psycopg2.extensions.connection | None = None
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = self._warehouse.connect()
                        conn.autocommit = True
                        with conn.cursor() as cur:
                            cur.execute(f"listen {CHANNEL}")
                        conn.autocommit = False
                    attempted = deliver_round(conn, self._partners, self._policy)
                    failures = 0
                    if not attempted:
                        self._wait(conn, self._until_due(conn))
                except (psycopg2.Error, WarehouseUnavailable) as exc:
                    failures += 1
                    delay = backoff_seconds(failures, 1.0, 30.0)
                    log.warning("webhook sender: the database is not answering (%s); trying again in %.1f s",
                                _first_line(exc), delay)
                    if conn is not None:
                        with contextlib.suppress(psycopg2.Error):
                            conn.close()
                    conn = None
                    self._stop.wait(delay)
                except Exception:
                    # A bug must not end the thread: deliveries would wait until the process restarts.
                    log.exception("webhook sender: unexpected error; going on")
                    self._stop.wait(self._idle_seconds)
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()

    def _until_due(self, conn: psycopg2.extensions.connection) -> float:
        """Seconds until the next retry falls due, at most the idle time."""
        with conn, conn.cursor() as cur:
            cur.execute("select extract(epoch from min(next_attempt_at) - clock_timestamp())::float8"
                        " from loader_registry.webhook_deliveries where delivered_at is null and gave_up_at is null")
            row = cur.fetchone()
        due = row[0] if row else None
        return self._idle_seconds if due is None else min(self._idle_seconds, max(0.0, float(due)))

    def _wait(self, conn: psycopg2.extensions.connection, seconds: float) -> None:
        """Sleep up to `seconds`, waking early when an outcome is committed or `stop` is called."""
        if conn.notifies:
            conn.notifies.clear()
            return
        ready, _, _ = select.select([conn, self._wake_read], [], [], seconds)
        if conn in ready:
            conn.poll()
            conn.notifies.clear()


@contextlib.contextmanager
def sending(warehouse: Warehouse, partners: PartnersFile, *, finish: bool) -> Iterator[Sender]:
    """A Sender for the duration; with `finish`, one last bounded round once the body is done (`--once`)."""
    policy = WebhookPolicy.from_environment()
    sender = Sender(warehouse, partners, policy)
    sender.start()
    try:
        yield sender
    finally:
        sender.stop()
    if finish:
        send_now(warehouse, partners, policy=policy)
