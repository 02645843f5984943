"""A real OpenSSH server on 127.0.0.1 for the SFTP tests: Debian's sshd with its own host key, config and port.

It runs as the current user. Key auth uses a client key of the test's own
(an absolute AuthorizedKeysFile, StrictModes off). Password auth needs a real
password in /etc/shadow, which root does not have here and must not be given:
when run as root, sshd is started in a private mount namespace (`unshare
--mount`) in which /etc/shadow is a copy whose root entry holds this server's
random password. The machine's own shadow file, root's password and every
other process are untouched; nothing outlives the server but /run/sshd, the
folder root's sshd needs, made if missing (a fresh install makes it at boot).
When not run as root, `password` is None and only key auth can be tested.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

SSHD = Path("/usr/sbin/sshd")
INSTALL = "the SFTP tests run Debian's OpenSSH server: install it with `apt-get install openssh-server`"
HOST = "127.0.0.1"
# Root's sshd refuses to start without its privilege separation folder, which a fresh install makes at boot only.
PRIVSEP = Path("/run/sshd")
STARTUP_SECONDS = 15.0


def _run(*command: str, stdin: str | None = None) -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def keygen(path: Path, passphrase: str = "", comment: str = "loader-sftp-test") -> str:
    """A new ed25519 key pair at `path` (and `path`.pub); returns the public line."""
    if shutil.which("ssh-keygen") is None:
        pytest.fail(f"ssh-keygen is missing; {INSTALL}")
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path))
    return path.with_name(path.name + ".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class SshServer:
    """One sshd; `start` and `kill` may be called again (a restart keeps the port and the host key)."""

    folder: Path
    port: int = 0
    user: str = field(default_factory=lambda: psutil.Process().username())
    # The password `user` logs in with; None when not root (see the module's docstring).
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def host_key_line(self) -> str:
        return (self.folder / "host_ed25519.pub").read_text().strip()

    @property
    def known_hosts_line(self) -> str:
        kind, body = self.host_key_line.split()[:2]
        return f"[{HOST}]:{self.port} {kind} {body}\n"

    @property
    def client_key(self) -> Path:
        return self.folder / "client_ed25519"

    @property
    def locked_client_key(self) -> Path:
        """A client key encrypted with `locked_key_passphrase`."""
        return self.folder / "client_locked_ed25519"

    @property
    def locked_key_passphrase(self) -> str:
        return (self.folder / "client_locked_passphrase").read_text()

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def prepare(self) -> None:
        if not SSHD.exists():
            pytest.fail(f"{SSHD} is missing; {INSTALL}")
        self.folder.mkdir(parents=True, exist_ok=True)
        keygen(self.folder / "host_ed25519", comment="loader-sftp-test-host")
        passphrase = secrets.token_urlsafe(12)
        (self.folder / "client_locked_passphrase").write_text(passphrase)
        authorized = [keygen(self.client_key), keygen(self.locked_client_key, passphrase)]
        (self.folder / "authorized_keys").write_text("\n".join(authorized) + "\n")
        if os.geteuid() == 0:
            PRIVSEP.mkdir(mode=0o755, exist_ok=True)
            self.password = secrets.token_urlsafe(16)
            self._write_shadow(self.password)

    def _write_shadow(self, password: str) -> None:
        hashed = _run("openssl", "passwd", "-6", "-stdin", stdin=password + "\n").strip()
        lines = []
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == self.user:
                fields[1] = hashed
            lines.append(":".join(fields))
        shadow = self.folder / "shadow"
        shadow.touch(mode=0o600)
        shadow.write_text("\n".join(lines) + "\n")

    def _config(self) -> Path:
        config = self.folder / "sshd_config"
        config.write_text(
            f"ListenAddress {HOST}:{self.port}\n"
            f"HostKey {self.folder / 'host_ed25519'}\n"
            f"PidFile {self.folder / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            f"AllowUsers {self.user}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin yes\n"
            "MaxStartups 100\n"
            "Subsystem sftp internal-sftp\n"
            "ForceCommand internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        return config

    def start(self) -> None:
        """Start sshd (on a free port the first time) and wait until it answers with its banner."""
        attempts = 1 if self.port else 5
        for _ in range(attempts):
            if not self.port or attempts > 1:
                self.port = free_port()
            command = [str(SSHD), "-D", "-e", "-f", str(self._config())]
            if self.password is not None:
                # unshare execs the shell, which execs sshd: the process started here is sshd itself.
                command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$1" /etc/shadow && shift && exec "$@"', "sh", str(self.folder / "shadow"),
                           *command]
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_for_banner():
                return
        pytest.fail(f"sshd did not start on {HOST}:{self.port}; its log ({self.log}):\n{self._log_tail()}")

    def _wait_for_banner(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return True
            time.sleep(0.05)
        self.kill()
        return False

    def _log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL sshd and every session it forked (a dropped connection, not a clean shutdown)."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        try:
            victims = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)
        self.process.wait(timeout=10)
        self.process = None

    def sessions(self) -> list[psutil.Process]:
        """The processes sshd forked for connections that are open now."""
        if self.process is None:
            return []
        return psutil.Process(self.process.pid).children(recursive=True)


@contextlib.contextmanager
def running_sshd(folder: Path) -> Iterator[SshServer]:
    server = SshServer(folder)
    server.prepare()
    server.start()
    try:
        yield server
    finally:
        server.kill()
