"""One look at a connector: tidy up after completed runs, take every complete new load in order, queue it.

Shared by every kind: a connector only lists and copies (base.py); what is
taken, in what order, how its files are checked and how it is queued is
decided here, the same for all of them.

Exactly once, across crashes. `submit_folder` commits the run in a
transaction of its own, so the take cannot share it. A load is therefore
*claimed* first: one transaction writes its connector_taken row (the primary
key lets a load be claimed once) and moves the shop's checkpoint (the
database refuses a move back). Then it is submitted, then the run's id is
written to the claim. A crash before the claim leaves nothing: the load is
still at the connector, above the checkpoint, and the next poll takes it. A
crash after the claim leaves a claim without a run: the next poll looks for a
run submitted from the claim's folder (each take fetches into a folder of its
own, and the run keeps its path in runs.submitted_from): found, the claim is
completed with it; not found, the load was never queued and is taken again,
first of its shop. That next poll knows no poll is still working on the claim
because every poll of a connector holds a session advisory lock for it, which
PostgreSQL releases when a poller's connection dies. So a load is never queued
twice and never lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import psycopg2.errors
import psycopg2.extensions
from pydantic import BaseModel

from loader.connectors import make_connector
from loader.connectors.base import Connector, ConnectorError, RemoteLoad, Skipped
from loader.connectors.config import (
    ConnectorSettingsError,
    LocalConnectorSettings,
    SftpConnectorSettings,
    load_connectors,
)
from loader.database import Warehouse, one_row
from loader.formats.csv_reader import file_sha256
from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest import read_manifest
from loader.runs import faults
from loader.runs.inbox import InboxError
from loader.runs.registry import UtcTime, storable
from loader.runs.submit import submit_folder
from loader.settings import LoaderSettings

log = logging.getLogger(__name__)

ConnectorConfig = SftpConnectorSettings | LocalConnectorSettings
# A poll's temporary folder left by a killed process is nobody's once this old.
_STALE_FETCH_S = 24 * 3600
# Entries of one kind kept in a poll's row; a folder of thousands of bad names stays readable.
_MAX_RECORDED = 200
_MAX_ERROR_CHARS = 2000
_LOCK_SPACE = "loader connector poll"


class Note(BaseModel):
    """Something looked at and not taken (yet), and why."""

    where: str
    reason: str


class Taken(BaseModel):
    load: str
    run_id: int


class PollResult(BaseModel):
    """What one poll of one connector did. `found`: complete loads not taken before (taken now or waiting)."""

    system_code: str
    found: int = 0
    taken: list[Taken] = []
    waiting: list[Note] = []
    skipped: list[Note] = []
    # Why the poll stopped (a ConnectorError's reason: "host key refused", "unreachable", ...), and the detail.
    error_reason: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error_reason is not None


def trigger_of(system_code: str) -> str:
    """The runs' triggered_by of a connector's loads."""
    return f"connector:{system_code}"


def _notes(items: Sequence[Skipped]) -> list[Note]:
    return [Note(where=s.where, reason=s.reason) for s in items]


def _waiting_key(item: Skipped) -> LoadKey | None:
    """The load a waiting entry is about: its `where` is the load folder's path (local or on the server)."""
    try:
        return LoadKey.from_folder(item.where)
    except LoadKeyError:
        return None


def _lock_for_session(conn: psycopg2.extensions.connection, system_code: str) -> None:
    """One poll of a connector at a time, on every machine: held until the connection closes (or dies)."""
    with conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(hashtext(%s), hashtext(%s))", (_LOCK_SPACE, system_code))


def _forget_stale_fetches(root: Path) -> None:
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in root.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - entry.lstat().st_mtime > _STALE_FETCH_S:
                    shutil.rmtree(entry, ignore_errors=True)


def not_intact(folder: Path) -> str | None:
    """Why a fetched folder is not yet what its manifest says (a file still being written), or None.

    Every listed file must be there with its sha256, and every CSV file listed. Files are looked up by name
    among those fetched, never by joining a name from the manifest onto a path.
    """
    manifest, problems = read_manifest(folder)
    if manifest is None:
        return "; ".join(str(p) for p in problems[:3])
    fetched = {p.name: p for p in folder.iterdir() if p.is_file() and not p.is_symlink()}
    listed = {f.name for f in manifest.files}
    reasons = []
    for entry in manifest.files:
        path = fetched.get(entry.name)
        if path is None:
            reasons.append(f"{entry.name}: listed in manifest.json, not there yet")
        elif file_sha256(path) != entry.sha256:
            reasons.append(f"{entry.name}: sha256 does not match manifest.json yet")
    reasons += [f"{name}: not listed in manifest.json yet" for name in sorted(fetched)
                if name.lower().endswith(".csv") and name not in listed]
    if not reasons:
        return None
    return "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")


class _Claim(BaseModel):
    run_id: int | None
    status: str | None
    moved: bool


class _Poll:
    """The state of one poll of one connector, on the connection that holds its lock."""

    def __init__(self, warehouse: Warehouse, settings: LoaderSettings, cfg: ConnectorConfig, connector: Connector,
                 conn: psycopg2.extensions.connection, result: PollResult) -> None:
        self.warehouse, self.settings, self.cfg, self.connector = warehouse, settings, cfg, connector
        self.conn, self.result = conn, result
        self.code = cfg.system_code
        self.fetch_root = settings.home_dir / "intake"

    def run(self) -> None:
        listing = self.connector.list_loads()
        self.result.skipped += _notes(listing.skipped)
        self.result.waiting += _notes(listing.waiting)
        self._adopt_interrupted_submits()
        claims = self._claims(listing.complete)
        if self.cfg.after_success == "move_to_processed":
            self._after_success(listing.complete, claims)
        checkpoints = self._checkpoints()
        pending = self._pending()
        by_shop: dict[tuple[str, str], dict[str, RemoteLoad | None]] = defaultdict(dict)
        for load in listing.complete:
            by_shop[load.partner_id, load.shop_id][load.load_id] = load
        for item in listing.waiting:
            key = _waiting_key(item)
            if key is not None:
                by_shop[key.partner_id, key.shop_id].setdefault(key.load_id, None)
        for shop, pending_ids in pending.items():
            for load_id in pending_ids:
                by_shop[shop].setdefault(load_id, None)
        self.fetch_root.mkdir(parents=True, exist_ok=True)
        _forget_stale_fetches(self.fetch_root)
        for shop in sorted(by_shop):
            self._shop(shop, by_shop[shop], checkpoints.get(shop), pending.get(shop, set()), claims)

    # -- the registry ----------------------------------------------------------------------------------------

    def _adopt_interrupted_submits(self) -> None:
        """A claim whose run was queued before its poll died: the run is the load's (see the module's docstring)."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                """
                update loader_registry.connector_taken as t set run_id = r.run_id
                from loader_registry.runs as r
                where t.system_code = %(code)s and t.run_id is null
                  and r.submitted_from = t.submitted_from and r.triggered_by = %(trigger)s
                returning t.partner_id, t.shop_id, t.load_id, t.run_id
                """,
                {"code": self.code, "trigger": trigger_of(self.code)},
            )
            adopted = cur.fetchall()
            for partner, shop, load_id, run_id in adopted:
                cur.execute("update loader_registry.connector_checkpoints set run_id = %s where system_code = %s"
                            " and partner_id = %s and shop_id = %s and load_id = %s",
                            (run_id, self.code, partner, shop, load_id))
        for partner, shop, load_id, run_id in adopted:
            log.info("connector %s: load %s/%s/%s was queued as run %s by a poll that was interrupted",
                     self.code, partner, shop, load_id, run_id)
            self.result.taken.append(Taken(load=f"{partner}/{shop}/{load_id}", run_id=int(run_id)))

    def _claims(self, loads: Sequence[RemoteLoad]) -> dict[tuple[str, str, str], _Claim]:
        """What the registry knows of the listed loads this connector took before."""
        if not loads:
            return {}
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                """
                select t.partner_id, t.shop_id, t.load_id, t.run_id, r.status, t.moved_at is not null
                from loader_registry.connector_taken as t
                join unnest(%s::text[], %s::text[], %s::text[]) as l (partner_id, shop_id, load_id)
                  using (partner_id, shop_id, load_id)
                left join loader_registry.runs as r on r.run_id = t.run_id
                where t.system_code = %s
                """,
                ([x.partner_id for x in loads], [x.shop_id for x in loads], [x.load_id for x in loads], self.code),
            )
            return {(p, s, load_id): _Claim(run_id=run_id, status=status, moved=moved)
                    for p, s, load_id, run_id, status, moved in cur.fetchall()}

    def _checkpoints(self) -> dict[tuple[str, str], str]:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("select partner_id, shop_id, load_id from loader_registry.connector_checkpoints"
                        " where system_code = %s", (self.code,))
            return {(p, s): load_id for p, s, load_id in cur.fetchall()}

    def _pending(self) -> dict[tuple[str, str], set[str]]:
        """Loads claimed but never queued (their poll died in between): taken again, first of their shop."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute("select partner_id, shop_id, load_id from loader_registry.connector_taken"
                        " where system_code = %s and run_id is null", (self.code,))
            pending: dict[tuple[str, str], set[str]] = defaultdict(set)
            for p, s, load_id in cur.fetchall():
                pending[p, s].add(load_id)
            return pending

    def _claim(self, key: LoadKey, submitted_from: Path, *, again: bool) -> bool:
        """Claim the load and move its shop's checkpoint to it, in one transaction; False if it is taken already."""
        where = (self.code, key.partner_id, key.shop_id, key.load_id)
        try:
            with self.conn, self.conn.cursor() as cur:
                if again:
                    cur.execute("update loader_registry.connector_taken set submitted_from = %s, taken_at ="
                                " clock_timestamp() where system_code = %s and partner_id = %s and shop_id = %s"
                                " and load_id = %s and run_id is null", (str(submitted_from), *where))
                    return cur.rowcount == 1
                cur.execute("insert into loader_registry.connector_taken (system_code, partner_id, shop_id, load_id,"
                            " submitted_from) values (%s, %s, %s, %s, %s)", (*where, str(submitted_from)))
                # The trigger refuses a checkpoint that does not move forward: then the whole claim is undone.
                cur.execute(
                    "insert into loader_registry.connector_checkpoints (system_code, partner_id, shop_id, load_id)"
                    " values (%s, %s, %s, %s) on conflict (system_code, partner_id, shop_id) do update set"
                    " load_id = excluded.load_id, run_id = null, moved_at = null, updated_at = clock_timestamp()",
                    where,
                )
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.CheckViolation) as exc:
            log.warning("connector %s: load %s is taken already: %s", self.code, key, exc.pgerror)
            return False
        return True

    def _record_run(self, key: LoadKey, run_id: int) -> None:
        where = (self.code, key.partner_id, key.shop_id, key.load_id)
        with self.conn, self.conn.cursor() as cur:
            cur.execute("update loader_registry.connector_taken set run_id = %s where system_code = %s"
                        " and partner_id = %s and shop_id = %s and load_id = %s", (run_id, *where))
            cur.execute("update loader_registry.connector_checkpoints set run_id = %s where system_code = %s"
                        " and partner_id = %s and shop_id = %s and load_id = %s", (run_id, *where))

    # -- after success ---------------------------------------------------------------------------------------

    def _after_success(self, loads: Sequence[RemoteLoad], claims: dict[tuple[str, str, str], _Claim]) -> None:
        for load in loads:
            claim = claims.get((load.partner_id, load.shop_id, load.load_id))
            if claim is None or claim.moved or claim.status != "completed":
                continue
            self.connector.after_success(load)
            where = (self.code, load.partner_id, load.shop_id, load.load_id)
            with self.conn, self.conn.cursor() as cur:
                cur.execute("update loader_registry.connector_taken set moved_at = clock_timestamp()"
                            " where system_code = %s and partner_id = %s and shop_id = %s and load_id = %s", where)
                cur.execute("update loader_registry.connector_checkpoints set moved_at = clock_timestamp()"
                            " where system_code = %s and partner_id = %s and shop_id = %s and load_id = %s", where)
            claims[load.partner_id, load.shop_id, load.load_id] = claim.model_copy(update={"moved": True})

    # -- taking ----------------------------------------------------------------------------------------------

    def _shop(self, shop: tuple[str, str], loads: dict[str, RemoteLoad | None], checkpoint: str | None,
              pending: set[str], claims: dict[tuple[str, str, str], _Claim]) -> None:
        """Take the shop's new complete loads in load_id order, stopping at the first that is not complete."""
        # Code-point order is collate "C" for load ids, which are ASCII.
        new = sorted(i for i in loads if i in pending or checkpoint is None or i > checkpoint)
        for load_id, load in sorted(loads.items()):
            if load is not None and load_id not in new and (*shop, load_id) not in claims:
                self.result.skipped.append(Note(where=load.location, reason=(
                    f"load_id sorts before {checkpoint!r}, the latest load taken of its shop: a load that arrives"
                    " after a later one is not taken (rename it so it sorts last, or `loader checkpoint reset`)")))
        blocked_by: str | None = None
        for load_id in new:
            load = loads[load_id]
            key = LoadKey.of(*shop, load_id)
            if load is not None:
                self.result.found += 1
            if blocked_by is not None:
                if load is not None:
                    self.result.waiting.append(Note(where=load.location, reason=f"waits for {blocked_by}, which"
                                                    " comes first and is not complete yet"))
                continue
            if load is None:
                blocked_by = str(key)
                if load_id in pending:
                    self.result.waiting.append(Note(where=str(key), reason=(
                        "taken by a poll that was interrupted before it was queued, and not complete at the"
                        " connector now; it is taken when it is (or `loader checkpoint reset` forgets it)")))
                continue
            if not self._take(key, load, again=load_id in pending):
                blocked_by = str(key)

    def _take(self, key: LoadKey, load: RemoteLoad, *, again: bool) -> bool:
        """Fetch, check and queue one load; False when it must wait (its shop's later loads wait behind it)."""
        scratch = Path(tempfile.mkdtemp(prefix="poll-", dir=self.fetch_root))
        try:
            folder = self.connector.fetch(load, scratch).absolute()
            why = not_intact(folder)
            if why is not None:
                self.result.waiting.append(Note(where=load.location, reason=why))
                return False
            if not self._claim(key, folder, again=again):
                self.result.skipped.append(Note(where=load.location, reason="taken already by another poll"))
                return True
            faults.reach("poll-claimed")
            run_id = submit_folder(self.warehouse, folder, trigger_of(self.code), self.settings.inbox_dir)
            faults.reach("poll-submitted")
            self._record_run(key, run_id)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("connector %s: took %s as run %s", self.code, key, run_id)
        self.result.taken.append(Taken(load=str(key), run_id=run_id))
        return True


def _capped(notes: list[Note]) -> str:
    kept = [n.model_dump() for n in notes[:_MAX_RECORDED]]
    if len(notes) > _MAX_RECORDED:
        kept.append({"where": "...", "reason": f"and {len(notes) - _MAX_RECORDED:,} more"})
    return json.dumps(kept, ensure_ascii=False)


def _record_poll(conn: psycopg2.extensions.connection, result: PollResult, started: dt.datetime) -> None:
    error = storable(result.error)
    with conn, conn.cursor() as cur:
        cur.execute(
            "insert into loader_registry.connector_polls (system_code, started_at, finished_at, found, taken,"
            " waiting, skipped, error_reason, error) values (%s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s)",
            (result.system_code, started, result.found, len(result.taken),
             storable(_capped(result.waiting)), storable(_capped(result.skipped)), storable(result.error_reason),
             error[:_MAX_ERROR_CHARS] if error else None),
        )


def poll_connector(warehouse: Warehouse, settings: LoaderSettings, cfg: ConnectorConfig, *,
                   connector: Connector | None = None) -> PollResult:
    """Poll one connector now: tidy up after completed runs, take and queue every complete new load.

    A failure of the connector (ConnectorError) or of keeping a load stops this poll and is returned in
    `error_reason`/`error`, never raised; the poll is recorded either way. A `connector` given is the
    caller's to close; without one, the connector of `cfg` is made and closed here.
    """
    result = PollResult(system_code=cfg.system_code)
    started = dt.datetime.now(dt.UTC)
    own = connector is None
    active = connector if connector is not None else make_connector(cfg)
    conn = warehouse.connect()
    with contextlib.closing(conn):
        _lock_for_session(conn, cfg.system_code)
        try:
            _Poll(warehouse, settings, cfg, active, conn, result).run()
        except ConnectorError as exc:
            result.error_reason, result.error = exc.reason, exc.detail
        except InboxError as exc:
            result.error_reason, result.error = "inbox failed", str(exc)
        except OSError as exc:
            result.error_reason, result.error = "local write failed", f"{exc.filename or ''}: {exc.strerror or exc}"
        finally:
            if own:
                active.close()
        _record_poll(conn, result, started)
    if result.failed:
        log.warning("connector %s: poll failed: %s: %s", cfg.system_code, result.error_reason, result.error)
    return result


def describe_poll(result: PollResult) -> list[str]:
    """What one poll found and took, for people: `loader poll` prints these lines, the scheduler logs them."""
    if result.error_reason:
        lines = [f"{result.system_code}: poll failed: {result.error_reason}: {result.error}"]
    else:
        took = ", ".join(f"{t.load} (run {t.run_id})" for t in result.taken) or "nothing new"
        lines = [f"{result.system_code}: found {result.found}, took {took}"]
    lines += [f"  waiting  {n.where}: {n.reason}" for n in result.waiting]
    lines += [f"  skipped  {n.where}: {n.reason}" for n in result.skipped]
    return lines


def poll_all(warehouse: Warehouse, settings: LoaderSettings, only: str | None = None) -> list[PollResult]:
    """Poll every active connector of connectors.yml (or only the one named), each on its own.

    One connector failing never stops the others: its failure is in its result (and its poll's row). An
    unknown or inactive name raises ConnectorSettingsError, as a bad connectors.yml does.
    """
    path = settings.connectors_file
    configured = load_connectors(path, check_environment=False)
    if only is not None:
        cfg = configured.named(only)
        if cfg is None:
            known = ", ".join(c.system_code for c in configured.connectors) or "none"
            raise ConnectorSettingsError(f"{path}: no connector {only!r} (configured: {known})")
        if not cfg.active:
            raise ConnectorSettingsError(f"{path}: connector {only}: active: false, so it is not polled")
        targets = [cfg]
    else:
        targets = [c for c in configured.connectors if c.active]
    results = []
    for cfg in targets:
        try:
            results.append(poll_connector(warehouse, settings, cfg))
        except Exception as exc:
            # A bug or a lost database while polling one connector: logged with its traceback, the others go on.
            log.exception("connector %s: poll failed", cfg.system_code)
            results.append(PollResult(system_code=cfg.system_code, error_reason="internal error",
                                      error=f"{type(exc).__name__}: {exc}"))
    return results


# -- status and resets --------------------------------------------------------------------------------------------


class PollSummary(BaseModel):
    started_at: UtcTime
    finished_at: UtcTime
    found: int
    taken: int
    waiting: list[Note]
    skipped: list[Note]
    error_reason: str | None
    error: str | None


class LastError(BaseModel):
    at: UtcTime
    reason: str
    message: str | None


class Checkpoint(BaseModel):
    partner_id: str
    shop_id: str
    load_id: str
    run_id: int | None
    updated_at: UtcTime
    moved_at: UtcTime | None


class ConnectorStatus(BaseModel):
    system_code: str
    name: str
    type: str
    active: bool
    schedule: str
    location: str
    after_success: str
    last_poll: PollSummary | None
    last_error: LastError | None
    checkpoints: list[Checkpoint]


def connector_status(conn: psycopg2.extensions.connection, cfgs: Sequence[ConnectorConfig]) -> list[ConnectorStatus]:
    """Each configured connector with its last poll, its last failed poll and its checkpoints."""
    codes = [c.system_code for c in cfgs]
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            select c.code, p.started_at, p.finished_at, p.found, p.taken, p.waiting, p.skipped, p.error_reason,
                   p.error
            from unnest(%s::text[]) as c (code)
            cross join lateral (
                select * from loader_registry.connector_polls where system_code = c.code
                order by poll_id desc limit 1
            ) as p
            """,
            (codes,),
        )
        last = {row[0]: PollSummary(started_at=row[1], finished_at=row[2], found=row[3], taken=row[4],
                                    waiting=row[5], skipped=row[6], error_reason=row[7], error=row[8])
                for row in cur.fetchall()}
        cur.execute(
            """
            select c.code, p.finished_at, p.error_reason, p.error
            from unnest(%s::text[]) as c (code)
            cross join lateral (
                select * from loader_registry.connector_polls where system_code = c.code and error_reason is not null
                order by poll_id desc limit 1
            ) as p
            """,
            (codes,),
        )
        errors = {code: LastError(at=at, reason=reason, message=message)
                  for code, at, reason, message in cur.fetchall()}
        cur.execute("select system_code, partner_id, shop_id, load_id, run_id, updated_at, moved_at"
                    " from loader_registry.connector_checkpoints where system_code = any(%s)", (codes,))
        checkpoints: dict[str, list[Checkpoint]] = defaultdict(list)
        for code, partner, shop, load_id, run_id, updated_at, moved_at in cur.fetchall():
            checkpoints[code].append(Checkpoint(partner_id=partner, shop_id=shop, load_id=load_id, run_id=run_id,
                                                updated_at=updated_at, moved_at=moved_at))
    return [
        ConnectorStatus(system_code=c.system_code, name=c.title, type=c.type, active=c.active,
                        schedule=c.schedule.describe(), location=c.location, after_success=c.after_success,
                        last_poll=last.get(c.system_code), last_error=errors.get(c.system_code),
                        checkpoints=sorted(checkpoints[c.system_code], key=lambda k: (k.partner_id, k.shop_id)))
        for c in cfgs
    ]


def reset_checkpoints(warehouse: Warehouse, system_code: str, partner: str | None = None, shop: str | None = None,
                      *, by: str) -> int:
    """Forget what the connector took (of one partner, or one shop): its next poll takes those loads again.

    Returns how many checkpoints were reset; each is recorded with `by` in connector_checkpoint_resets.
    """
    with contextlib.closing(warehouse.connect()) as conn, conn, conn.cursor() as cur:
        # After any poll of the connector in progress: a take half done is then either whole or not begun.
        cur.execute("select pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (_LOCK_SPACE, system_code))
        # The database deletes checkpoints and taken loads only in a transaction that says who resets them.
        cur.execute("select set_config('loader.checkpoint_reset_by', %s, true)", (by,))
        where = ("where system_code = %(code)s and (%(partner)s::text is null or partner_id = %(partner)s)"
                 " and (%(shop)s::text is null or shop_id = %(shop)s)")
        params = {"code": system_code, "partner": partner, "shop": shop}
        cur.execute(f"delete from loader_registry.connector_taken {where}", params)
        cur.execute(f"with gone as (delete from loader_registry.connector_checkpoints {where} returning 1)"
                    " select count(*) from gone", params)
        return int(one_row(cur)[0])

