"""A database of a bench run's own on the server it measures, created and dropped by the run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from loader.database import Warehouse


@contextlib.contextmanager
def fresh_database(server: Warehouse, bench: str, *, keep: bool) -> Iterator[Warehouse]:
    """A database of this run's own on the server, dropped afterwards unless `keep`."""
    name = f"bench_{bench}_{os.getpid()}"
    admin = server.connect()
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute(f"drop database if exists {name}")
        cur.execute(f"create database {name}")
    try:
        yield Warehouse(server.host, server.port, server.user, server.password, name, embedded=server.embedded,
                        options=server.options)
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            admin = server.connect()
            admin.autocommit = True
            with contextlib.closing(admin), admin.cursor() as cur:
                cur.execute(f"drop database {name} with (force)")
