"""The product's inbox: every load's files, copied in once and kept for its runs.

A run reads its kept files, never the partner's folder, so that a rerun or a
run taken over after its worker died sees exactly the bytes that were
submitted, whatever the partner did to their folder since. A folder is copied
under `.incoming/` and appears in the inbox with one rename, so nothing ever
sees a half-copied load.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from pathlib import Path

from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest import DEFAULT_CONTRACT
from loader.intake.manifest_json import ManifestJsonError, parse_manifest_json

INCOMING = ".incoming"
# A copy interrupted by a crash is left under .incoming; older than this, it is nobody's.
_STALE_INCOMING_S = 24 * 3600


class InboxError(RuntimeError):
    """The folder could not be kept (unreadable, disk full); nothing was queued. The message names the file."""


class NotALoadFolder(ValueError):
    """The path is not a load folder that can be queued; the message says why."""


def check_submittable(folder: Path) -> LoadKey:
    """The folder's load key, if its path parts are valid and it has a manifest.json; else NotALoadFolder."""
    try:
        key = LoadKey.from_folder(folder)
    except LoadKeyError as exc:
        raise NotALoadFolder(str(exc)) from None
    if not folder.is_dir():
        raise NotALoadFolder(f"{folder}: not a folder")
    if not (folder / "manifest.json").is_file():
        raise NotALoadFolder(f"{folder}: there is no manifest.json; a load folder holds its manifest and CSV files")
    return key


def manifest_contract(folder: Path) -> str:
    """The contract the manifest names, for the queue's listing; the worker verifies the manifest for real."""
    try:
        body = parse_manifest_json((folder / "manifest.json").read_bytes())
    except (OSError, ManifestJsonError):
        return DEFAULT_CONTRACT
    contract = body.get("contract") if isinstance(body, dict) else None
    return contract[:64] if isinstance(contract, str) and contract else DEFAULT_CONTRACT


def keep(folder: Path, inbox: Path) -> Path:
    """Copy a load folder's files into the inbox; returns the kept folder (.../partner/shop/load)."""
    key = check_submittable(folder)
    ticket = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    incoming = inbox / INCOMING / ticket
    copy_to = incoming / key.partner_id / key.shop_id / key.load_id
    entry = folder
    try:
        _forget_stale_copies(inbox / INCOMING)
        copy_to.mkdir(parents=True)
        for entry in sorted(folder.iterdir()):
            if entry.is_file():
                shutil.copyfile(entry, copy_to / entry.name)
        entry = inbox / ticket
        os.rename(incoming, inbox / ticket)
    except OSError as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        raise InboxError(f"could not keep {folder} in the inbox {inbox}: {entry}: {exc.strerror or exc};"
                         " nothing was queued") from exc
    return inbox / ticket / key.partner_id / key.shop_id / key.load_id


def _forget_stale_copies(incoming: Path) -> None:
    if not incoming.is_dir():
        return
    now = time.time()
    for entry in incoming.iterdir():
        with_age = entry.stat().st_mtime
        if now - with_age > _STALE_INCOMING_S:
            shutil.rmtree(entry, ignore_errors=True)
