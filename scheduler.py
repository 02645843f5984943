"""APScheduler entry point (stub): will poll connectors, run queued loads, retry and purge.

Scheduling arrives with the SFTP connector issue; today loads are started with `loader run`.
"""

from __future__ import annotations

import sys


def main() -> int:
    print("scheduler: not available yet; start loads with `loader run PATH`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
