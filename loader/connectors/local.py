"""A watched local folder: load folders partners drop under `path/{partner}/{shop}/{load}/`.

What is under the folder is partner-controlled, as on an SFTP server: names are
checked before they are used, and a symbolic link or anything but a folder or a
regular file is reported and never followed. Every folder below the root is
opened relative to its parent with O_NOFOLLOW, and every file the same way,
so a link swapped in between the listing and the copy is refused rather than
followed out of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from loader.connectors.base import PROCESSED, ConnectorError, Listing, RemoteLoad, Skipped, incomplete, shown
from loader.connectors.config import LocalConnectorSettings
from loader.intake.load_key import PART, PART_RULE, LoadKey
from loader.intake.manifest import MANIFEST
from loader.intake.manifest_json import MAX_MANIFEST_BYTES

# Where move_to_processed puts taken loads; at the partner level it is the product's, not a partner's.
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not hang the open; fstat then refuses it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK



def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "not found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "changed while reading"
    return "read failed"


@contextlib.contextmanager
def _opened(name: str, flags: int, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


class LocalFolder:
    """A Connector over one local entry of connectors.yml."""

    def __init__(self, cfg: LocalConnectorSettings) -> None:
        self.system_code = cfg.system_code
        self._cfg = cfg
        self._root = cfg.path

    def _open_root(self) -> int:
        # The root itself is the operator's setting, so a link there (/srv/imports -> /data/imports) is followed.
        try:
            return os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConnectorError(_reason(exc), f"folder {self._root} (setting path) cannot be opened:"
                                               f" {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        fd = self._open_root()
        try:
            yield fd
        finally:
            os.close(fd)

    # -- listing ---------------------------------------------------------------------------------------------

    def _entries(self, fd: int, path: Path, skipped: list[Skipped]) -> list[os.DirEntry[str]]:
        """The entries of a folder with allowed names, sorted; the others are reported in `skipped`."""
        usable = []
        with os.scandir(fd) as scan:
            found = sorted(scan, key=lambda e: e.name)
        for entry in found:
            where = str(path / shown(entry.name))
            if not PART.fullmatch(entry.name):
                skipped.append(Skipped(where, f"the name is not allowed (path parts are {PART_RULE})"))
            elif entry.is_symlink():
                skipped.append(Skipped(where, "a symbolic link, which is never followed"))
            elif not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
                skipped.append(Skipped(where, "not a folder or a regular file"))
            else:
                usable.append(entry)
        return usable

    def _subfolders(self, fd: int, path: Path, entries: list[os.DirEntry[str]],
                    listing: Listing) -> Iterator[tuple[str, int]]:
        """(name, open fd) of each folder among `entries`; the fd is closed when the caller moves on."""
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                listing.skipped.append(Skipped(str(path / entry.name), "a file where a folder is expected"))
                continue
            try:
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                listing.skipped.append(Skipped(str(path / entry.name), f"cannot be opened: {_reason(exc)}"))
                continue
            try:
                yield entry.name, sub
            finally:
                os.close(sub)

    def _folders(self, fd: int, path: Path, listing: Listing) -> Iterator[tuple[str, int]]:
        """The sub-folders of a partner's or a shop's folder; one that cannot be listed is reported, not fatal."""
        try:
            entries = self._entries(fd, path, listing.skipped)
        except OSError as exc:
            listing.skipped.append(Skipped(str(path), f"cannot be listed: {_reason(exc)}"))
            return
        yield from self._subfolders(fd, path, entries, listing)

    def list_loads(self) -> Listing:
        listing = Listing()
        with self._root_fd() as root:
            try:
                partners = [e for e in self._entries(root, self._root, listing.skipped) if e.name != PROCESSED]
            except OSError as exc:
                raise ConnectorError(_reason(exc), f"folder {self._root} (setting path) cannot be listed:"
                                                   f" {exc.strerror or exc}") from None
            for partner, partner_fd in self._subfolders(root, self._root, partners, listing):
                for shop, shop_fd in self._folders(partner_fd, self._root / partner, listing):
                    for load_id, load_fd in self._folders(shop_fd, self._root / partner / shop, listing):
                        self._look_at(LoadKey.of(partner, shop, load_id), load_fd, listing)
        return listing

    def _look_at(self, key: LoadKey, fd: int, listing: Listing) -> None:
        path = key.folder_under(self._root)
        try:
            entries = self._entries(fd, path, listing.skipped)
        except OSError as exc:
            listing.skipped.append(Skipped(str(path), f"cannot be listed: {_reason(exc)}"))
            return
        files: dict[str, int] = {}
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                listing.skipped.append(Skipped(str(path / entry.name), "a folder inside a load folder"))
            else:
                files[entry.name] = entry.stat(follow_symlinks=False).st_size
        why = self._incomplete(fd, files)
        if why:
            listing.waiting.append(Skipped(str(path), why))
        else:
            listing.complete.append(RemoteLoad(key.partner_id, key.shop_id, key.load_id, str(path), files))

    @staticmethod
    def _incomplete(fd: int, files: dict[str, int]) -> str | None:
        """Why the folder is not complete yet, or None when its manifest parses and every file it lists is there."""
        if MANIFEST not in files:
            return f"no {MANIFEST} yet"
        try:
            with _opened(MANIFEST, _FILE_FLAGS, fd) as manifest_fd:
                if not stat.S_ISREG(os.fstat(manifest_fd).st_mode):
                    return f"{MANIFEST} is not a regular file"
                data = os.read(manifest_fd, MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            return f"{MANIFEST} cannot be read: {_reason(exc)}"
        return incomplete(data, files.keys())

    # -- fetching and after success ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _load_fd(self, key: LoadKey) -> Iterator[int]:
        """The load folder opened part by part from the root, never through a link."""
        with contextlib.ExitStack() as stack:
            fd = self._open_root()
            stack.callback(os.close, fd)
            for part in (key.partner_id, key.shop_id, key.load_id):
                try:
                    fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise ConnectorError(_reason(exc), f"{key.folder_under(self._root)}: {exc.strerror or exc}"
                                                       " (a folder on the way is gone, or became a link)") from None
                stack.callback(os.close, fd)
            yield fd

    def fetch(self, load: RemoteLoad, into: Path) -> Path:
        key = LoadKey.of(load.partner_id, load.shop_id, load.load_id)
        target = load.new_folder_under(into)
        with self._load_fd(key) as fd:
            for name in sorted(load.files):
                if not PART.fullmatch(name):
                    raise ValueError(f"{load.key}: file name {name!r} did not come from list_loads")
                self._copy(fd, name, target / name, f"{load.location}/{name}")
        return target

    @staticmethod
    def _copy(dir_fd: int, name: str, to: Path, shown: str) -> None:
        try:
            source = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise ConnectorError(_reason(exc), f"{shown}: {exc.strerror or exc} (gone, or became a link)") from None
        try:
            if not stat.S_ISREG(os.fstat(source).st_mode):
                raise ConnectorError("changed while reading", f"{shown} is no longer a regular file")
            os.set_blocking(source, True)
            try:
                # "x": never over a file that is there, nor through a link.
                with open(to, "xb") as out:
                    while chunk := os.read(source, _CHUNK):
                        out.write(chunk)
            except OSError as exc:
                raise ConnectorError("local write failed", f"copying {shown} to {to}: {exc.strerror or exc}") \
                    from None
        finally:
            os.close(source)

    def after_success(self, load: RemoteLoad) -> None:
        if self._cfg.after_success != "move_to_processed":
            return
        key = LoadKey.of(load.partner_id, load.shop_id, load.load_id)
        target = Path(self._root, PROCESSED, key.partner_id, key.shop_id, key.load_id)
        with contextlib.ExitStack() as stack:
            source_parent = self._parent_fd(stack, (key.partner_id, key.shop_id), make=False)
            target_parent = self._parent_fd(stack, (PROCESSED, key.partner_id, key.shop_id), make=True)
            try:
                os.lstat(key.load_id, dir_fd=target_parent)
            except FileNotFoundError:
                pass
            else:
                raise ConnectorError("not moved", f"{target} is there already, so {load.location} stays")
            try:
                os.rename(key.load_id, key.load_id, src_dir_fd=source_parent, dst_dir_fd=target_parent)
            except OSError as exc:
                raise ConnectorError(_reason(exc), f"moving {load.location} to {target}: {exc.strerror or exc}") \
                    from None

    def _parent_fd(self, stack: contextlib.ExitStack, parts: tuple[str, ...], *, make: bool) -> int:
        """The folder `root/parts...` opened part by part without following links; with `make`, made as needed."""
        fd = self._open_root()
        stack.callback(os.close, fd)
        path = self._root
        for part in parts:
            path = path / part
            try:
                if make:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise ConnectorError("not moved", f"{path}: {exc.strerror or exc} (it must be a folder, not a link)") \
                    from None
            stack.callback(os.close, fd)
        return fd

    def close(self) -> None:
        """Nothing is held open between calls."""
