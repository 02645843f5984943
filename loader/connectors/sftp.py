"""SFTP: load folders a partner drops on an SSH server, `base_path/{partner}/{shop}/{load}/`, read with paramiko.

The server is trusted only as far as its host key: it must be the key the
configured known_hosts file lists for it (never the system's files, never added
on first sight). Everything on it is partner-controlled: names are checked
before they are used in a path, entries are looked at with lstat semantics
(SFTP's READDIR), and a symbolic link or anything but a folder or a regular
file is reported and never followed, opened or downloaded.
"""

from __future__ import annotations

import errno
import os
import posixpath
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from loader.connectors.base import PROCESSED, ConnectorError, Listing, RemoteLoad, Skipped, incomplete, shown
from loader.connectors.config import KeyAuth, PasswordAuth, SftpConnectorSettings
from loader.intake.load_key import PART, PART_RULE, LoadKey
from loader.intake.manifest import MANIFEST
from loader.intake.manifest_json import MAX_MANIFEST_BYTES

# Where move_to_processed puts taken loads; at the partner level it is the product's, not a partner's.
# Each read asks the server for at most 32 KiB (paramiko's request size); a chunk is many of them.
_CHUNK = 1 << 20
_UNREACHABLE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
# What the server, the network or paramiko's protocol layer can raise; anything else is a bug, and not hidden.
_WIRE_ERRORS = (paramiko.SSHException, OSError, EOFError)


@dataclass(frozen=True)
class _Entry:
    name: str
    mode: int | None
    size: int | None

    @property
    def kind(self) -> str | None:
        """None for what may be used (a folder or a regular file); otherwise what it is, for the report."""
        if self.mode is None:
            return "of a kind the server does not say"
        if stat.S_ISDIR(self.mode) or stat.S_ISREG(self.mode):
            return None
        if stat.S_ISLNK(self.mode):
            return "a symbolic link, which is never followed"
        return "not a folder or a regular file"


class _HostKeyUnknown(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _RefuseUnknown(paramiko.RejectPolicy):  # type: ignore[misc]
    """paramiko's RejectPolicy, saying which key and which host: never adds a key, only refuses."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _HostKeyUnknown(f"{hostname} offered {key.get_name()} key {key.fingerprint}, and {self.known_hosts}"
                              f" lists no key for {hostname}; after checking that fingerprint with the partner, add"
                              f" the server's key to known_hosts as '{hostname} {key.get_name()} {key.get_base64()}'")



def _secret(variable: str, setting: str) -> str:
    """A password or passphrase, read from its environment variable at each connect and kept nowhere."""
    value = os.environ.get(variable)
    if not value:
        raise ConnectorError("authentication failed", f"environment variable {variable} (setting {setting}) is not"
                                                      " set")
    return value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _timed_out(exc: BaseException) -> bool:
    return any(isinstance(e, TimeoutError) for e in _chain(exc))


class SftpConnector:
    """A Connector for one sftp entry of connectors.yml; it connects at first use and again after a failure."""

    def __init__(self, cfg: SftpConnectorSettings, *, progress: Callable[[str, int], None] | None = None) -> None:
        """`progress` is told (remote path, bytes so far) after each chunk a fetch writes, to follow a large load."""
        self.system_code = cfg.system_code
        self._cfg = cfg
        self._base = posixpath.normpath(cfg.base_path)
        self._progress = progress
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def _where(self) -> str:
        return f"{self._cfg.username}@{self._cfg.host}:{self._cfg.port}"

    # -- the connection ---------------------------------------------------------------------------------------

    def _session(self) -> paramiko.SFTPClient:
        if self._sftp is not None and self._client is not None and self._active(self._client):
            return self._sftp
        self.close()
        credentials = self._credentials()
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(os.fspath(self._cfg.known_hosts))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            client.close()
            shown = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConnectorError("host key refused", f"known_hosts {self._cfg.known_hosts} cannot be read ({shown}),"
                                                     " so no host key can be checked") from None
        client.set_missing_host_key_policy(_RefuseUnknown(self._cfg.known_hosts))
        timeout = self._cfg.timeout_seconds
        started = time.monotonic()
        try:
            client.connect(self._cfg.host, self._cfg.port, username=self._cfg.username, **credentials,
                           allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout, channel_timeout=timeout)
            sftp = client.open_sftp()
            # Every later read or request waits at most this long for the server.
            sftp.get_channel().settimeout(timeout)
        except (*_WIRE_ERRORS, _HostKeyUnknown) as exc:
            transport = client.get_transport()
            # What broke in paramiko's own thread (a banner that never came), when connect saw only the aftermath.
            inner = transport.get_exception() if transport is not None else None
            client.close()
            # paramiko's handshake wait gives up as silently as its banner wait fails loudly: either way it
            # waited the whole timeout, and what it raises then ("No existing session") says nothing of why.
            waited = time.monotonic() - started >= timeout
            raise self._connect_error(exc, inner, waited) from None
        self._client, self._sftp = client, sftp
        return sftp

    @staticmethod
    def _active(client: paramiko.SSHClient) -> bool:
        transport = client.get_transport()
        return transport is not None and bool(transport.is_active())

    def _credentials(self) -> dict[str, Any]:
        auth = self._cfg.auth
        if isinstance(auth, PasswordAuth):
            return {"password": _secret(auth.password_env, "auth.password_env")}
        passphrase = _secret(auth.passphrase_env, "auth.passphrase_env") if auth.passphrase_env else None
        return {"pkey": self._private_key(auth.key_file, passphrase)}

    def _private_key(self, path: Path, passphrase: str | None) -> paramiko.PKey:
        """The key file loaded here rather than by paramiko's connect, so that a bad file says what is wrong."""
        encrypted = False
        for key_class in _KEY_CLASSES:
            try:
                return key_class.from_private_key_file(os.fspath(path), passphrase)
            except OSError as exc:
                raise ConnectorError("authentication failed", f"key file {path} (setting auth.key_file) cannot be"
                                                              f" read: {exc.strerror or exc}") from None
            except paramiko.PasswordRequiredException:
                encrypted = True
            except (paramiko.SSHException, ValueError):
                continue
        if encrypted and passphrase is None:
            raise ConnectorError("authentication failed", f"key file {path} is encrypted: name the environment"
                                                          " variable holding its passphrase in auth.passphrase_env")
        wrong = " or its passphrase (auth.passphrase_env) is wrong" if passphrase is not None else ""
        raise ConnectorError("authentication failed", f"key file {path} (setting auth.key_file) cannot be used: it is"
                                                      f" not an Ed25519, ECDSA or RSA private key{wrong}")

    def _connect_error(self, exc: Exception, inner: BaseException | None, waited: bool) -> ConnectorError:
        cfg = self._cfg
        if isinstance(exc, _HostKeyUnknown):
            return ConnectorError("host key refused", exc.detail)
        if isinstance(exc, paramiko.BadHostKeyException):
            return ConnectorError(
                "host key refused",
                f"{exc.hostname}:{cfg.port} offered {exc.key.get_name()} key {exc.key.fingerprint}, but"
                f" {cfg.known_hosts} lists {exc.expected_key.get_name()} key {exc.expected_key.fingerprint} for it:"
                " the server's key changed or this is not the server; see known_hosts, and change it only after"
                " checking the new fingerprint with the partner")
        if isinstance(exc, paramiko.BadAuthenticationType):
            allowed = ", ".join(exc.allowed_types) or "nothing"
            return ConnectorError("authentication failed", f"{self._where} does not accept {cfg.auth.method}"
                                                           f" authentication (it allows: {allowed})")
        if isinstance(exc, paramiko.AuthenticationException):
            if "timeout" in str(exc).lower():
                return ConnectorError("timed out", f"{self._where} did not answer the authentication within"
                                                   f" {cfg.timeout_seconds:g} s (setting timeout_seconds)")
            what = f"key file {cfg.auth.key_file}" if isinstance(cfg.auth, KeyAuth) else \
                f"password from {cfg.auth.password_env}"
            return ConnectorError("authentication failed", f"{self._where} refused the {what}")
        if isinstance(exc, socket.gaierror):
            return ConnectorError("unreachable", f"host name {cfg.host} (setting host) cannot be resolved:"
                                                 f" {exc.strerror}")
        if _timed_out(exc) or (inner is not None and _timed_out(inner)) or waited:
            return ConnectorError("timed out", f"{cfg.host}:{cfg.port} did not answer within {cfg.timeout_seconds:g}"
                                               " s (setting timeout_seconds)")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or (
                isinstance(exc, OSError) and exc.errno in _UNREACHABLE):
            return ConnectorError("unreachable", f"{cfg.host}:{cfg.port} cannot be reached:"
                                                 f" {exc.strerror or 'connection refused'}")
        cause = inner or exc
        return ConnectorError("connection lost", f"no SFTP session with {self._where} could be set up: "
                                                 f"{cause or type(cause).__name__}")

    def _failure(self, exc: Exception, doing: str) -> ConnectorError:
        """What a failed request on an open session means; the session is dropped unless it is still sound."""
        if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
            return ConnectorError("not found", f"{doing}: it is not there")
        if isinstance(exc, OSError) and exc.errno == errno.EACCES:
            return ConnectorError("permission denied", f"{doing}: the server refused {self._cfg.username}")
        if (isinstance(exc, OSError) and not isinstance(exc, TimeoutError | ConnectionError)
                and self._client is not None and self._active(self._client)):
            # An SFTP status the server answered with (a rename it cannot do, a full disk): the session is fine.
            return ConnectorError("server error", f"{doing}: the server answered: {exc}")
        self.close()
        if _timed_out(exc):
            return ConnectorError("timed out", f"{doing}: {self._where} did not answer within"
                                               f" {self._cfg.timeout_seconds:g} s (setting timeout_seconds)")
        return ConnectorError("connection lost", f"{doing}: the connection to {self._where} broke"
                                                 f" ({exc or type(exc).__name__})")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None

    # -- listing ---------------------------------------------------------------------------------------------

    def _listdir(self, path: str) -> list[_Entry]:
        sftp = self._session()
        return [_Entry(a.filename, a.st_mode, a.st_size) for a in sftp.listdir_attr(path)]

    def _usable(self, path: str, entries: list[_Entry], skipped: list[Skipped]) -> list[_Entry]:
        """The entries with allowed names and kinds; the others reported in `skipped`."""
        usable = []
        for entry in sorted(entries, key=lambda e: e.name):
            where = posixpath.join(path, shown(entry.name))
            if not PART.fullmatch(entry.name):
                skipped.append(Skipped(where, f"the name is not allowed (path parts are {PART_RULE})"))
            elif entry.kind is not None:
                skipped.append(Skipped(where, entry.kind))
            else:
                usable.append(entry)
        return usable

    def _listed(self, path: str, listing: Listing) -> list[_Entry] | None:
        """The folder's entries, or None when it cannot be listed (reported: it is left alone, the rest is walked)."""
        try:
            return self._listdir(path)
        except UnicodeDecodeError:
            # paramiko decodes a whole listing at once, so one such name hides the folder's every entry.
            listing.skipped.append(Skipped(path, "holds a name that is not UTF-8, so it cannot be listed"))
            return None
        except _WIRE_ERRORS as exc:
            error = self._failure(exc, f"listing {path}")
            if error.reason not in ("not found", "permission denied"):
                raise error from None
            listing.skipped.append(Skipped(path, f"cannot be listed: {error.reason}"))
            return None

    def _folders(self, path: str, listing: Listing) -> list[str]:
        """The folders in `path` that may be walked; a folder that cannot be listed is reported, not fatal."""
        folders: list[str] = []
        for entry in self._usable(path, self._listed(path, listing) or [], listing.skipped):
            if entry.mode is not None and stat.S_ISDIR(entry.mode):
                folders.append(entry.name)
            else:
                listing.skipped.append(Skipped(posixpath.join(path, entry.name), "a file where a folder is expected"))
        return folders

    def list_loads(self) -> Listing:
        listing = Listing()
        try:
            partners = self._listdir(self._base)
        except UnicodeDecodeError:
            raise ConnectorError("bad name", f"base_path {self._base} holds a name that is not UTF-8, so it cannot"
                                             " be listed: rename it on the server") from None
        except _WIRE_ERRORS as exc:
            raise self._failure(exc, f"listing base_path {self._base}") from None
        for partner in self._usable(self._base, [p for p in partners if p.name != PROCESSED], listing.skipped):
            partner_path = posixpath.join(self._base, partner.name)
            if partner.mode is None or not stat.S_ISDIR(partner.mode):
                listing.skipped.append(Skipped(partner_path, "a file where a partner's folder is expected"))
                continue
            for shop in self._folders(partner_path, listing):
                shop_path = posixpath.join(partner_path, shop)
                for load_id in self._folders(shop_path, listing):
                    self._look_at(partner.name, shop, load_id, posixpath.join(shop_path, load_id), listing)
        return listing

    def _look_at(self, partner: str, shop: str, load_id: str, path: str, listing: Listing) -> None:
        entries = self._listed(path, listing)
        if entries is None:
            return
        files: dict[str, int] = {}
        for entry in self._usable(path, entries, listing.skipped):
            if entry.mode is not None and stat.S_ISDIR(entry.mode):
                listing.skipped.append(Skipped(posixpath.join(path, entry.name), "a folder inside a load folder"))
            else:
                files[entry.name] = entry.size or 0
        why = self._incomplete(path, files, entries)
        if why:
            listing.waiting.append(Skipped(path, why))
        else:
            listing.complete.append(RemoteLoad(partner, shop, load_id, path, files))

    def _incomplete(self, path: str, files: dict[str, int], entries: list[_Entry]) -> str | None:
        """Why the folder is not complete yet, or None when its manifest parses and every file it lists is there."""
        if MANIFEST not in files:
            if any(e.name == MANIFEST for e in entries):
                return f"{MANIFEST} is not a regular file"
            return f"no {MANIFEST} yet"
        if files[MANIFEST] > MAX_MANIFEST_BYTES:
            return f"{MANIFEST} is {files[MANIFEST]:,} bytes; a manifest may be at most {MAX_MANIFEST_BYTES:,}"
        try:
            with self._session().open(posixpath.join(path, MANIFEST), "rb") as remote:
                data = remote.read(MAX_MANIFEST_BYTES + 1)
        except _WIRE_ERRORS as exc:
            error = self._failure(exc, f"reading {path}/{MANIFEST}")
            if error.reason not in ("not found", "permission denied"):
                raise error from None
            return f"{MANIFEST} cannot be read: {error.reason}"
        return incomplete(data, files.keys())

    # -- fetching and after success ---------------------------------------------------------------------------

    def fetch(self, load: RemoteLoad, into: Path) -> Path:
        target = load.new_folder_under(into)
        for name, size in sorted(load.files.items()):
            if not PART.fullmatch(name):
                raise ValueError(f"{load.key}: file name {name!r} did not come from list_loads")
            self._download(posixpath.join(load.location, name), target / name, size)
        return target

    def _download(self, remote_path: str, local: Path, size: int) -> None:
        try:
            out = open(local, "xb")  # noqa: SIM115 - closed below; "x": never over a file, nor through a link
        except OSError as exc:
            raise ConnectorError("local write failed", f"{local}: {exc.strerror or exc}") from None
        with out:
            done = self._copy(remote_path, out, size)
        if done == size:
            return
        if self._client is None or not self._active(self._client):
            self.close()
            raise ConnectorError("connection lost", f"downloading {remote_path}: the connection to {self._where}"
                                                    f" broke after {done:,} of {size:,} bytes")
        more = "more than" if done > size else f"only {done:,} of"
        raise ConnectorError("changed while downloading", f"{remote_path} was listed with {size:,} bytes, and"
                                                          f" {more} that were there when it was downloaded")

    def _copy(self, remote_path: str, out: BinaryIO, size: int) -> int:
        """Copy the remote file into `out`, up to one byte more than `size` (enough to tell that it grew)."""
        done = 0
        try:
            sftp = self._session()
            # Looked at again just before opening: what was a regular file when listed may be a link now.
            mode = sftp.lstat(remote_path).st_mode
            if mode is None or not stat.S_ISREG(mode):
                raise ConnectorError("changed while downloading", f"{remote_path} is no longer a regular file")
            with sftp.open(remote_path, "rb") as remote:
                while done <= size and (chunk := remote.read(min(_CHUNK, size + 1 - done))):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise ConnectorError("local write failed", f"{out.name}: {exc.strerror or exc}") from None
                    done += len(chunk)
                    if self._progress is not None:
                        self._progress(remote_path, done)
        except _WIRE_ERRORS as exc:
            raise self._failure(exc, f"downloading {remote_path}") from None
        return done

    def after_success(self, load: RemoteLoad) -> None:
        if self._cfg.after_success != "move_to_processed":
            return
        key = LoadKey.of(load.partner_id, load.shop_id, load.load_id)
        parent = self._base
        for part in (PROCESSED, key.partner_id, key.shop_id):
            parent = posixpath.join(parent, part)
            self._folder_there(parent)
        target = posixpath.join(parent, key.load_id)
        doing = f"moving {load.location} to {target}"
        try:
            sftp = self._session()
            if self._exists(target):
                raise ConnectorError("not moved", f"{doing}: {target} is there already, so {load.location} stays")
            sftp.posix_rename(load.location, target)
        except _WIRE_ERRORS as exc:
            raise self._failure(exc, doing) from None

    def _exists(self, path: str) -> bool:
        try:
            self._session().lstat(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def _folder_there(self, path: str) -> None:
        """Make the folder unless it is there; a link or a file in its place is refused, never written through."""
        try:
            sftp = self._session()
            try:
                mode = sftp.lstat(path).st_mode
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                sftp.mkdir(path)
                return
            if mode is None or not stat.S_ISDIR(mode):
                raise ConnectorError("not moved", f"{path} is there but is not a folder, so nothing is moved into it")
        except _WIRE_ERRORS as exc:
            raise self._failure(exc, f"making folder {path}") from None
