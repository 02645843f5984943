"""Uploads: a load's files (or one zip of its folder) sent through the dashboard, staged as a load folder and queued.

UI-free, so that the dashboard's page only shows what these functions say.
An upload is untrusted input: every name is checked to be a plain file name
before anything is written, a zip is extracted entry by entry with its
uncompressed bytes counted as they come out (its header's sizes are not
trusted), and the folder appears under its final name only once it is whole.
Verification and queueing are the very functions `loader run` and `loader
submit` use, so the page says exactly what the command line would.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from loader.contracts import Contract, load_contract
from loader.database import Warehouse
from loader.formats.csv_reader import count_and_digest
from loader.formats.header import CsvFileError, read_header
from loader.intake.load_key import LoadKey, LoadKeyError
from loader.intake.manifest import DEFAULT_CONTRACT, MANIFEST, Manifest, verify_folder
from loader.intake.partners import PartnerSettingsError, load_partners
from loader.runs.inbox import NotALoadFolder
from loader.runs.pipeline import describe_problems
from loader.runs.submit import submit_folder
from loader.settings import LoaderSettings

# A load folder holds a contract's handful of files and its manifest; more than this is not a load.
MAX_FILES = 100
# What a browser or a zip tool names a file; anything else (a path, a dot file, odd characters) is refused.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_NAME_RULE = "a plain file name: up to 255 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '.'"
_DRIVE = re.compile(r"[A-Za-z]:")
# What macOS's Finder adds to a zip it makes: never part of a load, so left out rather than refused.
_MAC_FOLDER = "__MACOSX"
_MAC_FILE = ".DS_Store"
_CHUNK = 1 << 20
_ENCRYPTED = 0x1


class UploadError(ValueError):
    """The upload is refused, or could not be staged; the message names the file and the problem."""


class UploadedFile(BaseModel):
    """One file as the browser sent it."""

    model_config = ConfigDict(frozen=True)

    name: str
    data: bytes


def upload_limit_bytes(settings: LoaderSettings) -> int:
    """LOADER_UPLOAD_LIMIT_MB in bytes (MB of 2**20 bytes)."""
    return settings.upload_limit_mb << 20


def _megabytes(count: int) -> str:
    if count < 1 << 20:
        return f"{count:,} bytes"
    return f"{count >> 20:,} MB" if count % (1 << 20) == 0 else f"{count / (1 << 20):,.1f} MB"


def _over_limit(what: str, limit_bytes: int) -> UploadError:
    return UploadError(f"{what}; an upload may hold at most {_megabytes(limit_bytes)}"
                       " (setting LOADER_UPLOAD_LIMIT_MB)")


def stage_upload(
    files: Sequence[UploadedFile],
    partner: str,
    shop: str,
    load_id: str,
    into: Path,
    *,
    limit_bytes: int,
) -> Path:
    """Write the upload as the load folder `<into>/<partner>/<shop>/<load_id>/`; returns that folder.

    `files` are the folder's files, or one zip holding them at its root or
    inside a single top folder. Raises UploadError, and leaves nothing
    behind, for anything refused.
    """
    try:
        key = LoadKey.of(partner, shop, load_id)
    except LoadKeyError as exc:
        raise UploadError(str(exc)) from None
    if not files:
        raise UploadError("nothing was uploaded: choose the load's files, or one zip of its folder")
    zips = [f for f in files if f.name.lower().endswith(".zip")]
    if zips and len(files) > 1:
        raise UploadError(f"{zips[0].name}: upload one zip of the load folder, or the folder's files, not both")
    target = key.folder_under(into)
    if target.exists():
        raise UploadError(f"{target} already exists: an upload of load {key} is staged there already")
    scratch: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".upload-{key.load_id}-", dir=target.parent))
        if zips:
            _extract(zips[0], scratch, limit_bytes)
        else:
            _write_files(files, scratch, limit_bytes)
        os.rename(scratch, target)
    except OSError as exc:
        raise UploadError(f"could not stage the upload in {target.parent}: {exc.strerror or exc}") from exc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _check_path(where: str, name: str) -> list[str]:
    """The parts of a name as written in an upload, refused if it could point anywhere but into the folder."""
    shown = f"{where}{name[:200]!r}"
    if "\\" in name:
        raise UploadError(f"{shown} has a backslash: names in an upload use '/' and must stay inside the folder")
    if name.startswith("/") or _DRIVE.match(name):
        raise UploadError(f"{shown} is an absolute path: an upload holds only the load folder's files")
    parts = name.split("/")
    if ".." in parts:
        raise UploadError(f"{shown} leads out of the folder ('..'): an upload holds only the load folder's files")
    if any(p in ("", ".") for p in parts[:-1]) or "\x00" in name:
        raise UploadError(f"{shown} is not {_NAME_RULE}")
    return parts


def _plain(where: str, name: str) -> str:
    if not _PLAIN_NAME.fullmatch(name):
        raise UploadError(f"{where}{name[:200]!r} is not {_NAME_RULE}")
    return name


def _no_duplicates(where: str, names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        earlier = seen.get(name.lower())
        if earlier == name:
            raise UploadError(f"{where}{name!r} appears more than once")
        if earlier is not None:
            raise UploadError(f"{where}{earlier!r} and {name!r} differ only in case: send one of them")
        seen[name.lower()] = name
    if len(names) > MAX_FILES:
        raise UploadError(f"{where.rstrip(': ') or 'the upload'} holds {len(names):,} files; a load folder holds"
                          f" at most {MAX_FILES}")


def _write_files(files: Sequence[UploadedFile], into: Path, limit_bytes: int) -> None:
    for upload in files:
        parts = _check_path("", upload.name)
        if len(parts) > 1:
            raise UploadError(f"{upload.name!r} is in a folder: upload the load folder's files themselves, or a zip")
        _plain("", upload.name)
    _no_duplicates("", [f.name for f in files])
    total = sum(len(f.data) for f in files)
    if total > limit_bytes:
        raise _over_limit(f"the files come to {_megabytes(total)}", limit_bytes)
    for upload in files:
        # "x": never over a file that is there, nor through a link.
        with open(into / upload.name, "xb") as out:
            out.write(upload.data)


def _is_mac_metadata(name: str) -> bool:
    parts = name.split("/")
    return parts[0] == _MAC_FOLDER or parts[-1] == _MAC_FILE


def _extract(upload: UploadedFile, into: Path, limit_bytes: int) -> None:
    where = f"{upload.name}: "
    if len(upload.data) > limit_bytes:
        raise _over_limit(f"{where}the zip is {_megabytes(len(upload.data))}", limit_bytes)
    try:
        archive = zipfile.ZipFile(io.BytesIO(upload.data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise UploadError(f"{where}not a zip file that can be read ({exc})") from None
    with archive:
        entries = [info for info in archive.infolist() if not _is_mac_metadata(info.filename)]
        if len(entries) > MAX_FILES + 1:
            raise UploadError(f"{where}holds {len(entries):,} entries; a load folder holds at most {MAX_FILES} files")
        members = _members(where, entries)
        total = 0
        for info, name in members:
            try:
                with archive.open(info) as source, open(into / name, "xb") as out:
                    while chunk := source.read(_CHUNK):
                        total += len(chunk)
                        if total > limit_bytes:
                            raise _over_limit(f"{where}its files come to more than {_megabytes(limit_bytes)}"
                                              " uncompressed", limit_bytes)
                        out.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
                raise UploadError(f"{where}{info.filename!r} cannot be extracted: {exc}") from None


def _members(where: str, entries: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, str]]:
    """The zip's files with the names they get in the folder: all at its root, or all in one top folder."""
    members: list[tuple[zipfile.ZipInfo, str]] = []
    folders: set[str] = set()
    at_root: list[str] = []
    for info in entries:
        name = info.filename
        parts = _check_path(where, name)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UploadError(f"{where}{name!r} is a symbolic link: an upload holds only regular files")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UploadError(f"{where}{name!r} is not a regular file")
        if info.flag_bits & _ENCRYPTED:
            raise UploadError(f"{where}{name!r} is encrypted: zip the folder without a password")
        if info.is_dir():
            parts = parts[:-1]
        if len(parts) > 2 or (info.is_dir() and len(parts) > 1):
            raise UploadError(f"{where}{name!r} is in a folder inside a folder: zip the load folder itself (its"
                              " files at the zip's root or in one folder), with no folders in it")
        if len(parts) == 2 or info.is_dir():
            folders.add(parts[0])
        else:
            at_root.append(name)
        if not info.is_dir():
            members.append((info, _plain(where, parts[-1])))
    if len(folders) > 1:
        raise UploadError(f"{where}holds more than one folder ({', '.join(repr(f) for f in sorted(folders)[:5])}):"
                          " zip one load folder")
    if folders and at_root:
        raise UploadError(f"{where}holds files both at its root ({at_root[0]!r}) and in folder {min(folders)!r}:"
                          " zip one load folder")
    if not members:
        raise UploadError(f"{where}holds no files")
    _no_duplicates(where, [name for _, name in members])
    return members


def draft_manifest(folder: Path, contract: str | Contract = DEFAULT_CONTRACT, *,
                   encoding: str = "utf-8") -> dict[str, Any]:
    """The manifest.json the folder's contract files would need, for the operator to confirm ("write it for me").

    Rows are counted and files hashed as verification does it (the same
    header reader and record counter), in the partner's `encoding`. Only the
    contract's files are listed: verification names any other CSV file, in
    the command line's words.
    """
    try:
        key = LoadKey.from_folder(folder)
        chosen = contract if isinstance(contract, Contract) else load_contract(contract)
    except LoadKeyError as exc:
        raise UploadError(str(exc)) from None
    except KeyError as exc:
        raise UploadError(f"{MANIFEST}: {exc.args[0]}") from None
    order = {entity.name: i for i, entity in enumerate(chosen.entities)}
    found = []
    try:
        paths = sorted(folder.iterdir())
    except OSError as exc:
        raise UploadError(f"{folder}: cannot be read: {exc.strerror or exc}") from None
    for path in paths:
        entity = chosen.entity_for_file(path.name)
        if entity is not None and path.is_file() and not path.is_symlink():
            found.append((order[entity.name], path, entity))
    files = []
    for _, path, entity in sorted(found, key=lambda item: (item[0], item[1].name)):
        try:
            digest = count_and_digest(path, read_header(path, encoding, entity), encoding)
        except CsvFileError as exc:
            raise UploadError(f"{path.name}: cannot be read as CSV: {exc}") from None
        except OSError as exc:
            raise UploadError(f"{path.name}: cannot be read: {exc.strerror or exc}") from None
        files.append({"name": path.name, "rows": digest.records, "sha256": digest.sha256})
    return {"load_id": key.load_id, "contract": chosen.name, "files": files}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json into the folder, last and whole (a reader never sees half of it)."""
    try:
        checked = Manifest.model_validate(manifest)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                            for err in exc.errors(include_url=False))
        raise UploadError(f"{MANIFEST}: {details}") from None
    scratch = folder / f".{MANIFEST}.tmp"
    try:
        scratch.write_text(json.dumps(checked.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        os.replace(scratch, folder / MANIFEST)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        raise UploadError(f"{MANIFEST}: could not be written in {folder}: {exc.strerror or exc}") from exc


def verify_upload(folder: Path, settings: LoaderSettings) -> list[str]:
    """What `loader run` would refuse the folder for, line by line as it prints them; empty when it passes.

    Records are counted here too (a run counts them while landing), so every problem is found before queueing.
    """
    try:
        partners = load_partners(settings.partners_file)
    except PartnerSettingsError as exc:
        raise UploadError(str(exc)) from None
    verification = verify_folder(folder, partners.for_partner, count_records=True)
    return describe_problems(verification.refusals)


def submit_upload(warehouse: Warehouse, folder: Path, triggered_by: str, *, inbox: Path | None = None) -> int:
    """Queue the staged folder as `loader submit` does (its files kept in the inbox); returns the run id.

    `inbox` defaults to the settings' (LOADER_INBOX). Raises UploadError for
    a folder that cannot be queued, and InboxError when its files could not be kept.
    """
    try:
        return submit_folder(warehouse, folder, triggered_by, inbox or LoaderSettings().inbox_dir)
    except NotALoadFolder as exc:
        raise UploadError(str(exc)) from None
