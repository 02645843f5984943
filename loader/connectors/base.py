"""What every intake kind implements: list the complete loads it holds, fetch one, tidy up after a success.

A kind (local folder, SFTP, later an object store or a partner API) is one module with one class that
satisfies `Connector`; polling, checkpoints, digests, the inbox and the queue are shared (`poll.py`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from loader.intake.load_key import LoadKey
from loader.intake.manifest import MANIFEST, Manifest
from loader.intake.manifest_json import ManifestJsonError, parse_manifest_json

# The folder a connector may move a load to after its run completed: never a partner's name.
PROCESSED = "processed"


def shown(name: str) -> str:
    """A partner-controlled name as it can be printed in one line (it may hold anything)."""
    return name if name.isprintable() else repr(name)


def incomplete(manifest_bytes: bytes, present: Collection[str]) -> str | None:
    """Why a load folder is not complete yet, given its manifest.json's bytes and the regular files present;
    None when the manifest parses and every file it lists is there (the manifest is written last)."""
    try:
        manifest = Manifest.model_validate(parse_manifest_json(manifest_bytes))
    except ManifestJsonError as exc:
        return f"{MANIFEST}: {exc}"
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        return f"{MANIFEST} is not a manifest yet ({where}: {first['msg']})"
    missing = sorted({f.name for f in manifest.files} - set(present))
    if missing:
        listed = ", ".join(shown(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return f"{MANIFEST} lists {listed}{more}, not there yet as a regular file"
    return None


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

    def new_folder_under(self, into: Path) -> Path:
        """The new, empty folder `into/{partner}/{shop}/{load}/` a fetch copies into (its parts checked again)."""
        target = LoadKey.of(self.partner_id, self.shop_id, self.load_id).folder_under(into)
        try:
            target.mkdir(parents=True)
        except OSError as exc:
            raise ConnectorError("local write failed", f"{target}: {exc.strerror or exc}") from None
        return target


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
