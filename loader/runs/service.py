"""The long-running service behind `python scheduler.py`: schedules, watched folders, workers, purge.

APScheduler keeps its jobs in PostgreSQL (`loader_registry.apscheduler_jobs`), so a restarted service keeps
each connector's next poll. The jobs are plain functions of this module, named by reference: they read their
settings from the environment, as every `loader` command does. Several services on one database may poll the
same connector at the same moment; the poll's checkpoint decides what is taken, so a load is queued once, and
the queue gives each run to one worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from loader.connectors.config import ConnectorSettingsError, ConnectorsFile, LocalConnectorSettings, load_connectors
from loader.connectors.poll import describe_poll, poll_all
from loader.database import Warehouse, WarehouseUnavailable, resolve_warehouse
from loader.runs import retention
from loader.runs.registry import ensure_registry
from loader.runs.worker import QueuePolicy, make_runner_for, run_workers, say
from loader.settings import LoaderSettings

log = logging.getLogger("loader.scheduler")

POLL_PREFIX = "poll:"
PURGE_JOB = "purge"


def poll_job(system_code: str) -> None:
    """One scheduled poll of one connector (a job of the job store: it takes its settings from the environment)."""
    settings = LoaderSettings()
    try:
        results = poll_all(resolve_warehouse(settings), settings, only=system_code)
    except (ConnectorSettingsError, WarehouseUnavailable) as exc:
        # connectors.yml edited since start-up, or the database away: said, and tried at the next tick.
        say(f"poll {system_code}: not polled: {exc}")
        return
    for result in results:
        first, *rest = describe_poll(result)
        say(f"poll {first}")
        for line in rest:
            say(line)


def purge_job() -> None:
    """The daily retention purge (`loader purge` with LOADER_RETENTION_DAYS)."""
    settings = LoaderSettings()
    plan = retention.purge(resolve_warehouse(settings), settings.retention_days, settings.home_dir, dry_run=False)
    say(f"purge: {len(plan.runs)} run(s) past {settings.retention_days} days, {plan.raw_rows:,} raw rows dropped")


def _trigger(schedule: dict[str, object]) -> IntervalTrigger | CronTrigger:
    if "cron" in schedule:
        return CronTrigger.from_crontab(str(schedule["cron"]), timezone=dt.UTC)
    return IntervalTrigger(minutes=int(str(schedule["every_minutes"])), timezone=dt.UTC)


def build_scheduler(warehouse: Warehouse, connectors: ConnectorsFile) -> BackgroundScheduler:
    """The scheduler with a job per active connector and the daily purge, its jobs kept in the warehouse.

    Jobs of connectors no longer configured (or no longer active) are removed; a connector whose schedule
    is unchanged keeps its next run time across restarts.
    """
    engine = create_engine("postgresql+psycopg2://", creator=warehouse.connect, poolclass=NullPool)
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename="apscheduler_jobs",
                                                 tableschema="loader_registry")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone=dt.UTC,
    )
    scheduler.start(paused=True)
    wanted = {f"{POLL_PREFIX}{c.system_code}": c for c in connectors.connectors if c.active}
    for job in scheduler.get_jobs():
        if job.id.startswith(POLL_PREFIX) and job.id not in wanted:
            job.remove()
    for job_id, cfg in wanted.items():
        trigger = _trigger(cfg.schedule.model_dump(exclude_none=True))
        existing = scheduler.get_job(job_id)
        if existing is not None and str(existing.trigger) == str(trigger):
            continue
        scheduler.add_job(f"{__name__}:poll_job", trigger=trigger, id=job_id, kwargs={"system_code": cfg.system_code},
                          replace_existing=True, next_run_time=dt.datetime.now(dt.UTC))
    if scheduler.get_job(PURGE_JOB) is None:
        scheduler.add_job(f"{__name__}:purge_job", trigger=CronTrigger(hour=3, minute=17, timezone=dt.UTC),
                          id=PURGE_JOB)
    return scheduler


class _ManifestArrived(FileSystemEventHandler):
    """A manifest.json written or moved into a watched folder: poll that connector now, not at its next tick."""

    def __init__(self, scheduler: BackgroundScheduler, system_code: str) -> None:
        self.scheduler = scheduler
        self.job_id = f"{POLL_PREFIX}{system_code}"

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = str(event.dest_path or event.src_path) if event.event_type == "moved" else str(event.src_path)
        if event.event_type in ("created", "modified", "moved", "closed") and Path(path).name == "manifest.json":
            job = self.scheduler.get_job(self.job_id)
            if job is not None:
                job.modify(next_run_time=dt.datetime.now(dt.UTC))


@contextmanager
def watching(scheduler: BackgroundScheduler, connectors: ConnectorsFile) -> Iterator[list[BaseObserver]]:
    """Watch each active local connector with `on_detection`; polling when the OS offers no notification."""
    observers: list[BaseObserver] = []
    for cfg in connectors.connectors:
        if not isinstance(cfg, LocalConnectorSettings) or not (cfg.active and cfg.on_detection):
            continue
        handler = _ManifestArrived(scheduler, cfg.system_code)
        try:
            observer: BaseObserver = Observer()
            observer.schedule(handler, str(cfg.path), recursive=True)
            observer.start()
        except OSError as exc:
            log.warning("connector %s: no file notifications on %s (%s); watching by polling every second",
                        cfg.system_code, cfg.path, exc)
            observer = PollingObserver(timeout=1)
            observer.schedule(handler, str(cfg.path), recursive=True)
            observer.start()
        observers.append(observer)
    try:
        yield observers
    finally:
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join(timeout=5)


def serve(settings: LoaderSettings, *, concurrency: int, grace_seconds: float) -> int:
    """Run the service until SIGTERM: polls on schedule and on detection, `concurrency` workers, the daily purge.

    SIGTERM pauses the schedules at once (no new poll starts), lets the runs in progress finish for up to
    `grace_seconds`, then stops what is still running: those runs are taken again by another worker.
    """
    connectors = load_connectors(settings.connectors_file)
    warehouse = resolve_warehouse(settings)
    ensure_registry(warehouse)
    scheduler = build_scheduler(warehouse, connectors)
    stopping = threading.Event()

    def stop_polling() -> None:
        stopping.set()
        scheduler.pause()
        say("scheduler: stopping: no new polls or runs; waiting for the runs in progress")

    active = [c.system_code for c in connectors.connectors if c.active]

    def ready() -> None:
        say(f"scheduler: {len(active)} connector(s) ({', '.join(active) or 'none'}), {concurrency} worker(s)")

    try:
        with watching(scheduler, connectors):
            scheduler.resume()
            return run_workers(make_runner_for(settings, warehouse), QueuePolicy.of(settings),
                               concurrency=concurrency, once=False, grace_seconds=grace_seconds,
                               on_stop=stop_polling, on_ready=ready)
    finally:
        # Not waiting for a poll in progress: a poll is safe to cut short at any point (poll.py), and a
        # hung server must not hold up the stop.
        scheduler.shutdown(wait=False)
        say("scheduler: stopped")
