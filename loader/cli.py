"""The `loader` command (see shared/contracts/cli.md)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import psycopg2.extensions
from pydantic import ValidationError

from loader.access.actions import record_action
from loader.access.users import ROLES, AccessError, add_user, check_name, check_password, list_users, remove_user
from loader.connectors.config import ConnectorSettingsError, load_connectors
from loader.connectors.poll import ConnectorStatus, connector_status, describe_poll, poll_all, reset_checkpoints
from loader.contracts import load_contract
from loader.contracts.model import available_contracts
from loader.database import (
    SchemaVersionError,
    Warehouse,
    WarehouseUnavailable,
    WarehouseUrlError,
    embedded_running,
    psql_binary,
    resolve_warehouse,
    stop_embedded,
)
from loader.dbt.runner import build_vars
from loader.intake.load_key import LoadKey, LoadKeyError, check_part
from loader.intake.manifest import capped
from loader.intake.partners import PartnerSettingsError, load_partners
from loader.runs import reports, retention, review
from loader.runs.inbox import InboxError, NotALoadFolder, check_submittable
from loader.runs.logs import configure as configure_logging
from loader.runs.logs import format_from_environment
from loader.runs.notify import send_now
from loader.runs.pipeline import Runner, RunOutcome, describe_problems
from loader.runs.progress import Progress, make_progress
from loader.runs.queue import take_back_expired
from loader.runs.registry import (
    RunStatus,
    ensure_registry,
    latest_run,
    recent_runs,
    run_history,
    run_record,
    run_steps,
)
from loader.runs.submit import submit_folder
from loader.runs.worker import (
    QueuePolicy,
    RerunRefused,
    make_runner_for,
    queue_rerun,
    run_in_foreground,
    run_workers,
    serve_until_done,
    worker_name,
)
from loader.settings import LoaderSettings, settings_error

EXIT_USAGE = 2
DASHBOARD_APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
RUN_STATUSES: tuple[RunStatus, ...] = ("queued", "running", "completed", "failed", "needs_review", "rejected")


class UsageError(Exception):
    """Bad usage or refused input: exit code 2 with the message."""


def _settings() -> LoaderSettings:
    try:
        return LoaderSettings()
    except ValidationError as exc:
        raise UsageError(settings_error(exc)) from exc


def _warehouse(settings: LoaderSettings) -> Warehouse:
    warehouse = resolve_warehouse(settings)
    ensure_registry(warehouse)
    return warehouse


def _print_outcome(outcome: RunOutcome, warehouse: Warehouse, load: str) -> None:
    v = outcome.verification
    print(f"load {load} (run {outcome.run_id}): {outcome.status}")
    if outcome.status == "rejected" and v is not None:
        print("the folder was refused; nothing was landed:")
        print("\n".join(describe_problems(v.refusals)))
        return
    if outcome.message:
        print(outcome.message)
    if outcome.status == "needs_review":
        me, quoted = _invoked_as(), shlex.quote(load)
        print("nothing was published; review the plan, then decide:")
        print(f"  {me} diff {quoted}       what it would change")
        print(f"  {me} approve {quoted}    publish it as reviewed")
        print(f"  {me} reject {quoted} --reason '...'")
    if v is None:
        return
    if v.findings:
        print("file findings:")
        print("\n".join(describe_problems(capped(v.findings))))
    if not outcome.landed or v.contract is None or v.key is None:
        return
    width = max(len(lf.file_name) for lf in outcome.landed)
    print(f"  {'file':<{width}}  {'rows':>10}  {'sha256':<16}  landed")
    for lf in outcome.landed:
        state = f"new, file_id {lf.file_id}" if lf.newly_landed else f"already landed as file_id {lf.file_id}"
        print(f"  {lf.file_name:<{width}}  {lf.rows:>10,}  {lf.sha256[:16]}  {state}")
    raw = v.contract.raw_dataset
    print(f"raw data: schema {raw} in {warehouse.display}")
    me = _invoked_as()
    print("query it:")
    print(f"  {me} psql -c \"select f.file_name, r.* from {raw}.customers r join loader_registry.landed_files f"
          f" on f.file_id = r._file_id where f.partner_id = '{v.key.partner_id}' limit 5\"")
    print(f'  or, for psql and dbt in your shell: eval "$({me} env)"')


def _foreground_runner(settings: LoaderSettings, warehouse: Warehouse, args: argparse.Namespace,
                       progress: Progress) -> Runner:
    return Runner(warehouse, load_partners(settings.partners_file), settings.home_dir, worker_name("cli"), progress,
                  lease_seconds=settings.lease_seconds, land_workers=settings.land_workers,
                  transform=not getattr(args, "land_only", False), recheck_unchanged=settings.recheck_unchanged,
                  production_partitions=settings.production_partitions)


def _finish_foreground(outcome: RunOutcome, warehouse: Warehouse, args: argparse.Namespace) -> int:
    with contextlib.closing(warehouse.connect()) as conn:
        record = run_record(conn, outcome.run_id)
    load = record.load if record else "?"
    _print_outcome(outcome, warehouse, load)
    if record is not None and outcome.status != "rejected" and not getattr(args, "land_only", False):
        with contextlib.closing(warehouse.connect()) as conn:
            body = reports.report(conn, LoadKey.parse(record.load))
        if body is not None:
            _print_ledger(body)
    return outcome.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings()
    warehouse = _warehouse(settings)
    progress = make_progress()
    try:
        runner = _foreground_runner(settings, warehouse, args, progress)
        outcome = run_in_foreground(runner, QueuePolicy.of(settings), Path(args.path),
                                    triggered_by=args.triggered_by, inbox=settings.inbox_dir)
    finally:
        progress.close()
    return _finish_foreground(outcome, warehouse, args)


def _print_ledger(body: dict[str, Any]) -> None:
    if "no_ledger" in body:
        print(f"no ledger: {body['no_ledger']}")
        return
    print("ledger:")
    print(reports.ledger_table(body["entities"]))


def cmd_rerun(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    with contextlib.closing(warehouse.connect()) as conn:
        try:
            run_id = queue_rerun(conn, key, args.triggered_by)
        except RerunRefused as exc:
            print(exc, file=sys.stderr)
            return 1
    progress = make_progress()
    try:
        runner = _foreground_runner(settings, warehouse, args, progress)
        outcome = serve_until_done(runner, QueuePolicy.of(settings), run_id)
    finally:
        progress.close()
    send_now(warehouse, runner.partners, run_id=outcome.run_id)
    return _finish_foreground(outcome, warehouse, args)


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _reviewer(args: argparse.Namespace) -> str:
    return str(args.by) if args.by else _os_user() or "cli"


def cmd_approve(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    by = _reviewer(args)
    approved = review.approve(warehouse, key, by)
    send_now(warehouse, load_partners(settings.partners_file), run_id=approved.run_id)
    print(f"load {approved.load} (run {approved.run_id}): completed, approved by {by}")
    print(f"published the reviewed plan: {approved.inserted:,} inserted, {approved.updated:,} updated")
    for entity, checksum in approved.checksums.items():
        print(f"  {entity}: plan checksum {checksum}")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    by = _reviewer(args)
    run_id = review.reject(warehouse, key, by, args.reason)
    send_now(warehouse, load_partners(settings.partners_file), run_id=run_id)
    print(f"load {key} (run {run_id}): rejected by {by}; production untouched")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    warehouse = _warehouse(_settings())
    if args.entity is not None:
        with contextlib.closing(warehouse.connect()) as conn:
            run = latest_run(conn, key)
        entities = [e.name for e in load_contract(run.contract).entities] if run is not None else []
        if run is not None and args.entity not in entities:
            raise UsageError(f"unknown entity {args.entity!r} of {run.contract}; entities: {', '.join(entities)}")
    preview = review.diff(warehouse, key, args.entity, args.limit)
    print(json.dumps(preview.as_json(), indent=2, ensure_ascii=False) if args.json
          else review.describe(preview, args.limit))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    settings = _settings()
    days = args.older_than_days if args.older_than_days is not None else settings.retention_days
    warehouse = _warehouse(settings)
    plan = retention.purge(warehouse, days, settings.home_dir, dry_run=args.dry_run)
    verb = "would purge" if args.dry_run else "purged"
    cutoff = plan.cutoff.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
    if not plan.runs:
        print(f"nothing to purge: no run ended before {cutoff} UTC ({days} days ago) is left unpurged")
        return 0
    print(f"{verb} {len(plan.runs)} run(s) that ended before {cutoff} UTC ({days} days ago):")
    for r in plan.runs:
        print(f"  run {r.run_id:>6}  {r.status:<10}  {r.ended_at.astimezone(dt.UTC):%Y-%m-%d}  {r.load}")
    print(f"  raw rows: {plan.raw_rows:,} in {len(plan.raw_files)} file(s)")
    print(f"  kept folders: {len(plan.kept_folders)}")
    print(f"  worker slot relations: {len(plan.slots)} slot(s)")
    print(f"  about {_size(plan.bytes)} in all; ledgers, exceptions and history stay")
    return 0


def _size(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{size:,.0f} bytes" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"


def cmd_submit(args: argparse.Namespace) -> int:
    settings = _settings()
    folder = Path(args.path)
    # Refused before the database is started or reached, as the contract's exit code 2 says.
    try:
        check_submittable(folder)
    except NotALoadFolder as exc:
        raise UsageError(str(exc)) from None
    warehouse = _warehouse(settings)
    run_id = submit_folder(warehouse, folder, args.triggered_by, settings.inbox_dir)
    print(f"queued run {run_id}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    warehouse = _warehouse(settings)
    return run_workers(make_runner_for(settings, warehouse), QueuePolicy.of(settings), concurrency=args.concurrency,
                       once=args.once)


def cmd_report(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    with contextlib.closing(warehouse.connect()) as conn:
        body = reports.report(conn, key)
    if body is None:
        print(f"unknown load {key}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"load {body['load']} ({body['contract']}): {body['status']}")
    print(f"started {body['started_at'] or '-'}, completed {body['completed_at'] or '-'}")
    for held in body.get("held_because", []):
        print(f"held because {held['entity']} {held['threshold']}: {held['value']}% > {held['limit']}%")
    if body["status"] in ("needs_review", "rejected") and "held_because" in body:
        print("nothing was published: the ledger says what publishing would do")
    _print_ledger(body)
    return 0


def cmd_exceptions(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    entities = sorted({e.name for name in available_contracts() for e in load_contract(name).entities})
    if args.entity is not None and args.entity not in entities:
        raise UsageError(f"unknown entity {args.entity!r}; entities: {', '.join(entities)}")
    with contextlib.closing(warehouse.connect()) as conn:
        if args.format == "csv":
            # Streamed: a million exception rows are never held at once.
            try:
                chunks = reports.exceptions_csv_chunks(conn, key, args.entity)
            except LookupError:
                print(f"unknown load {key}", file=sys.stderr)
                return 1
            for chunk in chunks:
                sys.stdout.write(chunk)
            return 0
        rows = reports.exceptions(conn, key, args.entity)
    if rows is None:
        print(f"unknown load {key}", file=sys.stderr)
        return 1
    sys.stdout.write(reports.exceptions_json(rows) + "\n")
    return 0


def _take_back_dead_runs(conn: psycopg2.extensions.connection, settings: LoaderSettings) -> None:
    """A run whose worker is gone is shown as what it is (queued again, or failed), not as `running`."""
    take_back_expired(conn, settings.lease_seconds, settings.max_attempts)


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings()
    warehouse = _warehouse(settings)
    with contextlib.closing(warehouse.connect()) as conn:
        _take_back_dead_runs(conn, settings)
        runs = recent_runs(conn, args.limit, args.status)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        return 0
    if not runs:
        print("no runs yet" if args.status is None else f"no {args.status} runs")
        return 0
    print(f"{'run':>5}  {'status':<12}  {'started (UTC)':<19}  {'errors':>6}  {'warnings':>8}  load")
    for r in runs:
        started = (r.started_at or r.queued_at).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r.run_id:>5}  {r.status:<12}  {started:<19}  {r.error_count:>6}  {r.warning_count:>8}  {r.load}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    warehouse = _warehouse(_settings())
    for name, value in warehouse.env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_psql(args: argparse.Namespace) -> int:
    warehouse = _warehouse(_settings())
    env = {**os.environ, **warehouse.env(), "PGPASSWORD": warehouse.password}
    binary = psql_binary()
    os.execvpe(binary, [binary, *args.psql_args], env)


def cmd_demo(args: argparse.Namespace) -> int:
    from loader.samples.sms_v1 import ExportSpec, write_export

    settings = _settings()
    root = settings.home_dir / "demo" / "imports"
    spec = ExportSpec(customers=args.customers, seed=args.seed)
    result = write_export(root, spec)
    print(f"wrote a sample shop export to {result.folder}")
    args.path = str(result.folder)
    code = cmd_run(args)
    me = _invoked_as()
    load = shlex.quote(str(LoadKey.from_folder(result.folder)))
    print("next:")
    print(f"  {me} status                     recent runs")
    print(f"  {me} report {load}    this load's ledger")
    print(f"  {me} exceptions {load}    its exception rows, as CSV for the partner")
    print(f"  {me} users add admin --role admin    a dashboard login (the password is read from stdin)")
    print(f"  {me} dashboard                  the dashboard, on http://127.0.0.1:8501")
    if embedded_running(settings.home_dir):
        print(f"the embedded PostgreSQL keeps running in {settings.home_dir / 'pg'} for the next command;"
              f" stop it with `{me} server stop`")
    return 0 if code in (0, 3) else code


def _invoked_as() -> str:
    """How the person typed this command, so that hints can be pasted as they are."""
    if os.environ.get("LOADER_INVOKED_AS"):
        return os.environ["LOADER_INVOKED_AS"]
    argv0 = sys.argv[0]
    if Path(argv0).name == "loader" and shutil.which("loader") != str(Path(argv0).resolve()):
        return shlex.quote(argv0)
    return "loader"


def cmd_dbt_vars(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    with contextlib.closing(warehouse.connect()) as conn:
        run = latest_run(conn, key)
    if run is None:
        print(f"unknown load {key}", file=sys.stderr)
        return 1
    date_format = load_partners(settings.partners_file).for_partner(key.partner_id).date_format
    print(json.dumps(build_vars(run.run_id, key, date_format)))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    key = LoadKey.parse(args.load)
    settings = _settings()
    warehouse = _warehouse(settings)
    with contextlib.closing(warehouse.connect()) as conn:
        _take_back_dead_runs(conn, settings)
        run = latest_run(conn, key)
        history = run_history(conn, run.run_id) if run is not None else []
        steps = run_steps(conn, run.run_id) if run is not None else []
    if run is None:
        print(f"unknown load {key}", file=sys.stderr)
        return 1
    lag = (run.started_at - run.queued_at).total_seconds() if run.started_at else None
    if args.json:
        body = {**run.model_dump(mode="json"), "queue_lag_seconds": None if lag is None else round(lag, 3),
                "steps": [s.model_dump(mode="json") for s in steps],
                "history": [h.model_dump(mode="json") for h in history]}
        print(json.dumps(body, indent=2))
        return 0
    print(f"load {run.load} (run {run.run_id}, {run.contract}): {run.status}")
    if run.message:
        print(run.message)
    print(f"started by {run.triggered_by}; {run.error_count} error(s), {run.warning_count} warning(s)")
    if lag is not None:
        print(f"waited {lag:.1f} s in the queue")
    if steps:
        print("steps:")
        for s in steps:
            rate = f"  {s.rows:,} rows, {s.rows_per_second:,.0f} rows/s" if s.rows and s.rows_per_second else ""
            print(f"  {s.step:<10} {s.seconds:>9.2f} s{rate}")
    print("history:")
    for h in history:
        by = f" (by {h.by})" if h.by else ""
        print(f"  {h.at.strftime('%Y-%m-%d %H:%M:%S')}  {h.status:<12}  {h.message or ''}{by}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    settings = _settings()
    warehouse = _warehouse(settings)
    with socket.socket() as probe:
        try:
            probe.bind((args.address, args.port))
        except OSError as exc:
            raise UsageError(f"--address {args.address} --port {args.port}: cannot listen there ({exc.strerror});"
                             " choose another port with --port") from None
    with contextlib.closing(warehouse.connect()) as conn:
        nobody = not list_users(conn)
    print(f"dashboard: http://{args.address}:{args.port}  (database {warehouse.display})", flush=True)
    if nobody:
        print(f"no dashboard user yet: create one with `{_invoked_as()} users add NAME --role admin`", flush=True)
    if args.address not in ("127.0.0.1", "localhost", "::1"):
        print(f"listening on {args.address}: anyone who can reach it sees the login page; put TLS in front",
              flush=True)
    # Streamlit serves the app with this process's settings: its environment, with every path made absolute
    # here, so that the dashboard finds the same database, home and settings files as this command.
    env = {**os.environ, "LOADER_HOME": str(settings.home_dir),
           "LOADER_PARTNERS_FILE": str(settings.partners_file.expanduser().resolve()),
           "LOADER_CONNECTORS_FILE": str(settings.connectors_file.expanduser().resolve()),
           "LOADER_INBOX": str(settings.inbox_dir)}
    command = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD_APP),
               "--server.address", args.address, "--server.port", str(args.port), "--server.headless", "true",
               "--server.fileWatcherType", "none", "--server.maxUploadSize", str(settings.upload_limit_mb),
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
               "--client.showErrorDetails", "none"]
    child = subprocess.Popen(command, env=env)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = child.wait()
    # Streamlit ends with -SIGTERM or 0 when told to stop: that is the dashboard's normal end.
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else 1


def cmd_server(args: argparse.Namespace) -> int:
    settings = _settings()
    home = settings.home_dir
    if settings.database_url:
        print(f"LOADER_DATABASE_URL is set: the loader uses that server, not an embedded one in {home / 'pg'}")
        return 0
    if args.action == "status":
        state = "running" if embedded_running(home) else "not running"
        print(f"embedded PostgreSQL in {home / 'pg'}: {state}")
        return 0
    if args.action == "start":
        print(f"{_warehouse(settings).display} is running")
        return 0
    print(f"stopped the embedded PostgreSQL in {home / 'pg'}" if stop_embedded(home)
          else f"no embedded PostgreSQL is running in {home / 'pg'}")
    return 0


def _password_from_stdin(name: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {name}: ")
    line = sys.stdin.buffer.readline()
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the password on standard input is not UTF-8") from None
    # Only the line's end goes: spaces in a password are part of it.
    return text.removesuffix("\n").removesuffix("\r")


def _cli_user() -> str:
    user = _os_user()
    return f"cli:{user}" if user else "cli"


def cmd_users_add(args: argparse.Namespace) -> int:
    try:
        # Before the password is asked for: nobody should type one only to learn the name was refused.
        check_name(args.name)
        password = check_password(_password_from_stdin(args.name))
    except AccessError as exc:
        raise UsageError(str(exc)) from None
    warehouse = _warehouse(_settings())
    with contextlib.closing(warehouse.connect()) as conn:
        try:
            created = add_user(conn, args.name, args.role, password)
        except AccessError as exc:
            raise UsageError(str(exc)) from None
        detail = f"created with role {args.role}" if created else f"role set to {args.role}, password set"
        record_action(conn, _cli_user(), "users add", args.name, detail)
    print(f"{'added' if created else 'updated'} dashboard user {args.name} ({args.role})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    warehouse = _warehouse(_settings())
    with contextlib.closing(warehouse.connect()) as conn:
        users = list_users(conn)
    if args.json:
        print(json.dumps([u.model_dump(mode="json") for u in users], indent=2))
        return 0
    if not users:
        print(f"no dashboard users yet; add one with `{_invoked_as()} users add NAME --role admin`")
        return 0
    width = max(4, *(len(u.name) for u in users))
    print(f"{'name':<{width}}  {'role':<8}  {'created (UTC)':<19}  updated (UTC)")
    for u in users:
        created, updated = (at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") for at in (u.created_at, u.updated_at))
        print(f"{u.name:<{width}}  {u.role:<8}  {created:<19}  {updated}")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    warehouse = _warehouse(_settings())
    with contextlib.closing(warehouse.connect()) as conn:
        removed = remove_user(conn, args.name)
        if removed:
            record_action(conn, _cli_user(), "users remove", args.name, "removed; its sessions ended")
    print(f"removed dashboard user {args.name}; its sessions ended" if removed
          else f"there was no dashboard user {args.name}")
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    settings = _settings()
    # A bad connectors.yml is refused before the database is started or reached. Only the file's shape is
    # checked: a connector whose folder, key or secret is missing fails its own poll with that reason, and the
    # others are polled all the same.
    load_connectors(settings.connectors_file, check_environment=False)
    results = poll_all(_warehouse(settings), settings, only=args.system_code)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
    elif not results:
        print(f"no active connector in {settings.connectors_file}")
    else:
        print("\n".join(line for result in results for line in describe_poll(result)))
    return 1 if any(r.failed for r in results) else 0


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe_connector(status: ConnectorStatus) -> list[str]:
    lines = [f"{status.system_code} ({status.type}, {'active' if status.active else 'inactive'}): {status.name}",
             f"  {status.location}; {status.schedule}; after success: {status.after_success}"]
    last = status.last_poll
    if last is None:
        lines.append("  not polled yet")
    else:
        outcome = f"failed: {last.error_reason}" if last.error_reason else \
            f"found {last.found}, took {last.taken}, {len(last.waiting)} waiting, {len(last.skipped)} skipped"
        lines.append(f"  last poll {_utc(last.finished_at)}: {outcome}")
        lines += [f"    waiting  {n.where}: {n.reason}" for n in last.waiting]
        lines += [f"    skipped  {n.where}: {n.reason}" for n in last.skipped]
    if status.last_error is not None:
        lines.append(f"  last error {_utc(status.last_error.at)}: {status.last_error.reason}:"
                     f" {status.last_error.message}")
    if status.checkpoints:
        lines.append("  checkpoints (the latest load taken per shop):")
        lines += [f"    {c.partner_id}/{c.shop_id}  {c.load_id}  (run {c.run_id or '-'}, {_utc(c.updated_at)})"
                  for c in status.checkpoints]
    return lines


def cmd_connectors(args: argparse.Namespace) -> int:
    settings = _settings()
    configured = load_connectors(settings.connectors_file, check_environment=False)
    warehouse = _warehouse(settings)
    with contextlib.closing(warehouse.connect()) as conn:
        statuses = connector_status(conn, configured.connectors)
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
        return 0
    if not statuses:
        print(f"no connectors configured ({settings.connectors_file} has none)")
    print("\n\n".join("\n".join(_describe_connector(s)) for s in statuses))
    return 0


def cmd_checkpoint_reset(args: argparse.Namespace) -> int:
    settings = _settings()
    configured = load_connectors(settings.connectors_file, check_environment=False)
    if configured.named(args.system_code) is None:
        known = ", ".join(c.system_code for c in configured.connectors) or "none"
        raise UsageError(f"{settings.connectors_file}: no connector {args.system_code!r} (configured: {known})")
    partner = check_part("partner_id", args.partner) if args.partner is not None else None
    shop = check_part("shop_id", args.shop) if args.shop is not None else None
    by = _cli_user()
    count = reset_checkpoints(_warehouse(settings), args.system_code, partner, shop, by=by)
    scope = "".join(f" {what} {value}" for what, value in (("partner", partner), ("shop", shop)) if value)
    print(f"reset {count} checkpoint(s) of connector {args.system_code}{scope or ' (every shop)'} as {by}:"
          " its next poll takes those loads again")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loader", description="Partner data onboarding into PostgreSQL.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="verify, land and load one load folder")
    run.add_argument("path", help="load folder .../partner_id/shop_id/load_id/")
    run.add_argument("--triggered-by", default="cli", help="who or what started the run (default: cli)")
    run.add_argument("--land-only", action="store_true", help="verify and land into the raw layer; no dbt, no publish")
    run.set_defaults(func=cmd_run)

    rerun = sub.add_parser("rerun", help="run a load again from its kept files")
    rerun.add_argument("load", help="partner_id/shop_id/load_id")
    rerun.add_argument("--triggered-by", default="cli:rerun")
    rerun.add_argument("--land-only", action="store_true", help="verify and land into the raw layer only")
    rerun.set_defaults(func=cmd_rerun)

    submit = sub.add_parser("submit", help="keep a load folder's files in the inbox and queue a run for the workers")
    submit.add_argument("path", help="load folder .../partner_id/shop_id/load_id/")
    submit.add_argument("--triggered-by", default="cli:submit", help="who or what queued the run")
    submit.set_defaults(func=cmd_submit)

    approve = sub.add_parser("approve", help="publish a held (needs_review) load exactly as it was reviewed")
    approve.add_argument("load", help="partner_id/shop_id/load_id")
    approve.add_argument("--by", help="who approves (default: your user name)")
    approve.set_defaults(func=cmd_approve)

    reject = sub.add_parser("reject", help="discard a held load: status rejected, production untouched")
    reject.add_argument("load", help="partner_id/shop_id/load_id")
    reject.add_argument("--by", help="who rejects (default: your user name)")
    reject.add_argument("--reason", help="why, for the run's history")
    reject.set_defaults(func=cmd_reject)

    diff = sub.add_parser("diff", help="what a held load would change: rows to insert, and each changed column")
    diff.add_argument("load", help="partner_id/shop_id/load_id")
    diff.add_argument("--entity", help="only this entity (customers, vehicles, ...)")
    diff.add_argument("--limit", type=_positive_int, default=20, help="example rows of each kind per entity")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_diff)

    worker = sub.add_parser("worker", help="run queued loads (FIFO per shop, shops side by side)")
    worker.add_argument("--once", action="store_true", help="return when nothing is queued or running")
    worker.add_argument("--concurrency", type=_positive_int, default=2,
                        help="loads of different shops run at once (default 2)")
    worker.set_defaults(func=cmd_worker)

    poll = sub.add_parser("poll", help="poll the connectors now (or one): queue every complete new load")
    poll.add_argument("system_code", nargs="?", help="only this connector of connectors.yml")
    poll.add_argument("--json", action="store_true")
    poll.set_defaults(func=cmd_poll)

    connectors = sub.add_parser("connectors", help="the configured connectors: schedule, last poll, last error,"
                                                   " checkpoints")
    connectors.add_argument("--json", action="store_true")
    connectors.set_defaults(func=cmd_connectors)

    checkpoint = sub.add_parser("checkpoint", help="connector checkpoints")
    checkpoint_sub = checkpoint.add_subparsers(dest="checkpoint_command", required=True, metavar="ACTION")
    checkpoint_reset = checkpoint_sub.add_parser("reset", help="forget what a connector took, so that its next poll"
                                                               " takes those loads again")
    checkpoint_reset.add_argument("system_code", help="the connector of connectors.yml")
    checkpoint_reset.add_argument("--partner", help="only this partner's shops")
    checkpoint_reset.add_argument("--shop", help="only this shop (or district)")
    checkpoint_reset.set_defaults(func=cmd_checkpoint_reset)

    demo = sub.add_parser("demo", help="generate a sample shop export and run it end to end")
    demo.add_argument("--customers", type=int, default=200, help="size of the sample shop (default 200)")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--triggered-by", default="cli:demo")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="recent runs with their status")
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=_positive_int, default=20)
    status.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="the load's ledger")
    report.add_argument("load", help="partner_id/shop_id/load_id")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_report)

    exc = sub.add_parser("exceptions", help="the load's exception rows (CSV to send back to the partner)")
    exc.add_argument("load", help="partner_id/shop_id/load_id")
    exc.add_argument("--entity", help="only this entity (customers, vehicles, ...)")
    exc.add_argument("--format", choices=("csv", "json"), default="csv")
    exc.set_defaults(func=cmd_exceptions)

    purge = sub.add_parser("purge", help="drop raw data, dbt relations and kept files of runs past retention")
    purge.add_argument("--older-than-days", type=_positive_int,
                       help="runs that ended more than this many days ago (default LOADER_RETENTION_DAYS, 90)")
    purge.add_argument("--dry-run", action="store_true", help="only list what would go, with rows and bytes")
    purge.set_defaults(func=cmd_purge)

    dbt_vars = sub.add_parser("dbt-vars", help="the --vars for building a load's latest run with dbt by hand")
    dbt_vars.add_argument("load", help="partner_id/shop_id/load_id")
    dbt_vars.set_defaults(func=cmd_dbt_vars)

    show = sub.add_parser("show", help="the latest run of one load with its status history")
    show.add_argument("load", help="partner_id/shop_id/load_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    server = sub.add_parser("server", help="the embedded PostgreSQL: status, start or stop")
    server.add_argument("action", choices=("status", "start", "stop"))
    server.set_defaults(func=cmd_server)

    psql = sub.add_parser("psql", help="open psql on the warehouse (arguments go to psql)")
    psql.set_defaults(func=cmd_psql)

    env = sub.add_parser("env", help='print the database environment: eval "$(loader env)"')
    env.set_defaults(func=cmd_env)

    dashboard = sub.add_parser("dashboard", help="serve the Streamlit dashboard (stops on SIGTERM)")
    dashboard.add_argument("--port", type=_positive_int, default=8501)
    dashboard.add_argument("--address", default="127.0.0.1", help="the address to listen on (default: loopback only)")
    dashboard.set_defaults(func=cmd_dashboard)

    users = sub.add_parser("users", help="dashboard users: add (or change the role of), list, remove")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    users_add = users_sub.add_parser("add", help="create a dashboard user or change its role; the password is read"
                                                 " from standard input (one line), or asked for on a terminal")
    users_add.add_argument("name", help="1-64 letters, digits and . _ @ -, starting with a letter or a digit")
    users_add.add_argument("--role", required=True, choices=ROLES,
                           help="viewer: read; operator: also upload, rerun, approve, reject; admin: also users")
    users_add.set_defaults(func=cmd_users_add)
    users_list = users_sub.add_parser("list", help="the dashboard users and their roles")
    users_list.add_argument("--json", action="store_true")
    users_list.set_defaults(func=cmd_users_list)
    users_remove = users_sub.add_parser("remove", help="remove a dashboard user and end its sessions")
    users_remove.add_argument("name")
    users_remove.set_defaults(func=cmd_users_remove)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


class _PipeSafeStdout(io.TextIOBase):
    """stdout that stops writing, quietly, once its reader has gone (`loader rerun LOAD | head -1`).

    The run itself has finished by then; its exit code is what matters, not
    a BrokenPipeError traceback for lines nobody reads.
    """

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._inner.write(text)
            except BrokenPipeError:
                self._gone_now()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._inner.flush()
            except BrokenPipeError:
                self._gone_now()

    def _gone_now(self) -> None:
        self._gone = True
        # Python flushes stdout once more at exit: point the descriptor at nothing so that flush succeeds.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._inner.fileno())
        os.close(devnull)

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()


def _stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so that a run being stopped is recorded as such rather than left `running`.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "psql":
        args.psql_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(format_from_environment(), verbose=args.verbose)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper):
        sys.stdout = _PipeSafeStdout(stdout)
    try:
        return int(args.func(args))
    except (UsageError, LoadKeyError, PartnerSettingsError, WarehouseUrlError, ConnectorSettingsError) as exc:
        print(f"loader: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (WarehouseUnavailable, SchemaVersionError, InboxError, review.ReviewError) as exc:
        print(f"loader: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.verbose:
            raise
        print(f"loader: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
