"""What every intake kind implements: list the complete loads it holds, fetch one, tidy up after a success.

A kind (local folder, SFTP, later an object store or a partner API) is one module with one class that
satisfies `Connector`; polling, checkpoints, digests, the inbox and the queue are shared (`poll.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class ConnectorError(Exception):
    """A poll or a fetch failed; `reason` is the short cause people see in `loader connectors` and the dashboard.

    Reasons in use: "host key refused", "authentication failed", "unreachable", "timed out",
    "connection lost", "permission denied", "not found".
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RemoteLoad:
    """A load folder `{partner_id}/{shop_id}/{load_id}/` whose manifest.json names files all present."""

    partner_id: str
    shop_id: str
    load_id: str
    # Where the connector finds the folder (a path on the server or on disk), for fetch and messages.
    location: str
    # The file names the folder holds (manifest.json included), each with its size when listed.
    files: dict[str, int]

    @property
    def key(self) -> str:
        return f"{self.partner_id}/{self.shop_id}/{self.load_id}"


@dataclass(frozen=True)
class Skipped:
    """Something under the connector's root that is not taken, and why (a bad name, a symlink, ...)."""

    where: str
    reason: str


@dataclass
class Listing:
    """What one look at the connector found. `waiting`: load folders not complete yet (looked at next time).

    A waiting entry's `where` is the load folder's path, ending in `{partner_id}/{shop_id}/{load_id}`: the poll
    reads the load key from it, so that the shop's later loads wait behind it.
    """

    complete: list[RemoteLoad] = field(default_factory=list)
    waiting: list[Skipped] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class Connector(Protocol):
    system_code: str

    def list_loads(self) -> Listing:
        """Every load folder under the root; raises ConnectorError when the root cannot be read at all."""
        ...

    def fetch(self, load: RemoteLoad, into: Path) -> Path:
        """Copy every file of `load` into the new folder `into/{partner}/{shop}/{load}/` and return it.

        Raises ConnectorError when the copy fails (the caller removes `into`).
        """
        ...

    def after_success(self, load: RemoteLoad) -> None:
        """What the connector's settings say to do once the load's run completed (keep, or move it aside)."""
        ...

    def close(self) -> None:
        ...
