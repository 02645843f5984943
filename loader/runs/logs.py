"""Log lines of the `loader` command and its worker processes: text for people, or one JSON object a line.

`LOADER_LOG_FORMAT=json` makes every line a JSON object with `time` (ISO
8601, UTC), `level`, `logger` and `message`, plus `run_id`, `load` and
`worker` on every line written while a run executes, and `exception` (the
traceback as one field) where there is one. Text, the default, looks as it
always has. In both formats every handler masks passwords (in URLs, libpq
`password=` strings, `PGPASSWORD=`) in messages, their arguments and
tracebacks, and dlt's and dbt's log lines go through the same handlers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Literal, TextIO

from pydantic import ValidationError

from loader.settings import LoaderSettings

LogFormat = Literal["text", "json"]

RUN_FIELDS = ("run_id", "load", "worker")

_SECRETS = (
    # scheme://user:secret@host: up to the last @ before the path, as a password may hold an unescaped @.
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*:)[^\s/]*(?=@)"), r"\1***"),
    # password=secret, password='se cret' (libpq key-value strings), PGPASSWORD=secret, LOADER_PGPASSWORD=...
    (re.compile(r"""(?i)(\b\w*password\s*=\s*)(?:(['"])(?:\\.|(?!\2).)*\2|[^\s'"&]+)"""), r"\1***"),
    # 'password': 'secret', "password": "secret": a dict's repr or JSON, as libraries print their settings.
    (re.compile(r"""(?i)(['"]\w*password['"]\s*:\s*(['"]))(?:\\.|(?!\2).)*"""), r"\1***"),
)

# dlt and dbt (its console logger, made anew at every invocation) give these loggers handlers of their own and
# stop them propagating; a logger's filters outlive that, so a filter hands their records to the root handler.
_OWN_HANDLERS = {"dlt": "dlt", "stdout_log": "dbt"}

# `configure` leaves its verbosity here for the worker processes it spawns, which run no main() of their own.
_VERBOSE_ENV = "_LOADER_LOG_VERBOSE"

_format: LogFormat = "text"
_configured = False
_run: dict[str, object] | None = None


def redact(text: str) -> str:
    """`text` with every password it shows replaced by `***`."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class Redact(logging.Filter):
    """Masks passwords in a record's message, its arguments, its traceback and its stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # Arguments that do not fit the message: the handler reports that when it formats the record.
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RunFields(logging.Filter):
    """Adds the run being executed (see `run_context`) to a record that does not name one itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_run or {}).items():
            record.__dict__.setdefault(key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the run's fields, exception and stack."""

    def format(self, record: logging.LogRecord) -> str:
        at = dt.datetime.fromtimestamp(record.created, dt.UTC)
        body: dict[str, object] = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update((key, record.__dict__[key]) for key in RUN_FIELDS if key in record.__dict__)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exception"] = record.exc_text
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, default=str)


_JSON = JsonFormatter()


class _Formatter(logging.Formatter):
    # Chosen line by line: a spawned worker's handlers exist before it has read its settings.
    def format(self, record: logging.LogRecord) -> str:
        return _JSON.format(record) if _format == "json" else super().format(record)


class _StreamHandler(logging.Handler):
    """Writes records as lines to the stream `stream()` returns at each write.

    Looked up each time, so that a sys.stdout swapped after set-up (the
    command's pipe-safe one, a test's capture) is the one written to.
    """

    def __init__(self, stream: Callable[[], TextIO], text_format: str, datefmt: str | None = None) -> None:
        super().__init__()
        self._stream = stream
        self.setFormatter(_Formatter(text_format, datefmt))
        self.addFilter(Redact())
        self.addFilter(RunFields())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = self._stream()
            out.write(self.format(record) + "\n")
            out.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


_ROOT = _StreamHandler(lambda: sys.stderr, "%(levelname)s %(name)s: %(message)s")


class _ToRoot(logging.Filter):
    """On a library's logger with handlers of its own: gives each record of a run to the root handlers instead.

    Outside a run the library prints as it would (dbt invoked by hand in a
    process that ran the loader before still writes `dbt show` to stdout).
    """

    def __init__(self, shown_as: str) -> None:
        super().__init__()
        self._shown_as = shown_as

    def filter(self, record: logging.LogRecord) -> bool:
        if _run is None:
            return True
        record.name = self._shown_as
        logging.getLogger().handle(record)
        return False


def lines(name: str, out: Callable[[], TextIO], stamp: str) -> logging.Logger:
    """A logger of lines for people on `out()`: `[time] text`, time as `stamp` (strftime), or JSON objects.

    Outside the logging hierarchy, as each such logger writes to a stream of
    its own and its lines are not for the root handler to print again.
    """
    logger = logging.Logger(name, logging.INFO)
    logger.addHandler(_StreamHandler(out, "[%(asctime)s] %(message)s", stamp))
    return logger


def configure(log_format: LogFormat, *, verbose: bool = False) -> None:
    """Send this process's log records, and dlt's and dbt's, through the loader's handler on stderr.

    Called again, it changes format and level in place (tests call main() many times in one process).
    """
    global _format, _configured
    _format, _configured = log_format, True
    root = logging.getLogger()
    if _ROOT not in root.handlers:
        root.addHandler(_ROOT)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name, shown_as in _OWN_HANDLERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ToRoot) for f in logger.filters):
            logger.addFilter(_ToRoot(shown_as))
    os.environ[_VERBOSE_ENV] = "1" if verbose else ""


def ensure_configured() -> None:
    """Configure this process as its parent was configured, unless it has been already.

    A worker process started with "spawn" runs no main(): the worker calls
    this before its first line and its first run, and the process reads the
    same settings from the environment it inherited.
    """
    if not _configured:
        configure(format_from_environment(), verbose=bool(os.environ.get(_VERBOSE_ENV)))


def format_from_environment() -> LogFormat:
    """LOADER_LOG_FORMAT as the settings read it; text while the settings are invalid (the command says why)."""
    try:
        return LoaderSettings().log_format
    except ValidationError:
        return "text"


def current_format() -> LogFormat:
    """The format this process writes its lines in."""
    return _format


@contextlib.contextmanager
def run_context(run_id: int, load: str, worker: str) -> Iterator[None]:
    """While the block runs, every line of this process names the run, its load key and its worker.

    A process-wide value rather than a context variable: a process executes
    one run at a time (dbt builds in-process), and the threads a run starts
    (the lease heartbeat, the publish, dbt's and dlt's pools) would not
    inherit a context variable.
    """
    global _run
    previous, _run = _run, {"run_id": run_id, "load": load, "worker": worker}
    try:
        yield
    finally:
        _run = previous
