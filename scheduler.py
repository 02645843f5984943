"""`python scheduler.py`: the long-running intake service (see loader/runs/service.py).

Polls each active connector of connectors.yml on its schedule (watched folders also on detection), submits
every complete new load, runs the queue's workers, purges daily and retries webhooks; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from pydantic import ValidationError

from loader.connectors.config import ConnectorSettingsError
from loader.database import SchemaVersionError, WarehouseUnavailable, WarehouseUrlError
from loader.runs.logs import configure, format_from_environment
from loader.runs.service import serve
from loader.settings import LoaderSettings, settings_error


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scheduler.py", description=__doc__)
    parser.add_argument("--concurrency", type=_count, default=2, help="worker processes (default 2)")
    parser.add_argument("--grace-seconds", type=float, default=60.0,
                        help="on SIGTERM, how long the runs in progress may take to finish (default 60)")
    args = parser.parse_args(argv)
    configure(format_from_environment())
    # Until the workers take SIGTERM over (a drain), it ends the start-up cleanly: exit 0, schedules kept.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        settings = LoaderSettings()
        return serve(settings, concurrency=args.concurrency, grace_seconds=args.grace_seconds)
    except ValidationError as exc:
        print(f"scheduler: {settings_error(exc)}", file=sys.stderr)
        return 2
    except (ConnectorSettingsError, WarehouseUrlError) as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    except (WarehouseUnavailable, SchemaVersionError) as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
