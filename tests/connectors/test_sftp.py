"""The SFTP connector against a real OpenSSH server on 127.0.0.1 (tests/connectors/sshd.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sshd
from helpers import LOADER, make_load, query

from loader.connectors.base import ConnectorError, Listing, RemoteLoad
from loader.connectors.config import KeyAuth, PasswordAuth, Schedule, SftpConnectorSettings
from loader.connectors.poll import PollResult, poll_connector
from loader.connectors.sftp import SftpConnector
from loader.database import Warehouse
from loader.intake.load_key import PART_RULE
from loader.runs.registry import ensure_registry
from loader.settings import LoaderSettings

PASSWORD_ENV = "LOADER_TEST_SFTP_PASSWORD"
PASSPHRASE_ENV = "LOADER_TEST_SFTP_PASSPHRASE"


Settings = SftpConnectorSettings


def key_auth(key_file: Path, passphrase_env: str | None = None) -> KeyAuth:
    return KeyAuth(method="key", key_file=key_file, passphrase_env=passphrase_env)


def replace(cfg: Settings, **changes: Any) -> Settings:
    return cfg.model_copy(update=changes)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshServer]:
    with sshd.running_sshd(tmp_path_factory.mktemp("sshd")) as running:
        yield running


@pytest.fixture
def live(server: sshd.SshServer) -> Iterator[sshd.SshServer]:
    """The server, started again after a test that killed or stopped it."""
    if server.process is None:
        server.start()
    yield server
    for session in server.sessions():
        session.send_signal(signal.SIGCONT)
    if server.process is None:
        server.start()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    folder = tmp_path / "remote"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(live: sshd.SshServer, tmp_path: Path, remote: Path) -> Settings:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(live.known_hosts_line)
    return Settings(type="sftp", system_code="acme-sftp", schedule=Schedule(every_minutes=15), host=sshd.HOST,
                    port=live.port, username=live.user, auth=key_auth(live.client_key), known_hosts=known_hosts,
                    base_path=str(remote), timeout_seconds=10)


@pytest.fixture
def connectors() -> Iterator[list[SftpConnector]]:
    made: list[SftpConnector] = []
    yield made
    for connector in made:
        connector.close()


@pytest.fixture
def connect(connectors: list[SftpConnector]) -> Any:
    def make(cfg: Settings, **options: Any) -> SftpConnector:
        connector = SftpConnector(cfg, **options)
        connectors.append(connector)
        return connector
    return make


def password_settings(settings: Settings, live: sshd.SshServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    if live.password is None:
        pytest.fail("password auth on the test sshd needs root: its password lives in a private copy of /etc/shadow"
                    " (see tests/connectors/sshd.py)")
    monkeypatch.setenv(PASSWORD_ENV, live.password)
    return replace(settings, auth=PasswordAuth(method="password", password_env=PASSWORD_ENV))


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def refusal(connector: SftpConnector) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        connector.list_loads()
    return caught.value


def fingerprint(public_key_file: Path) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it (an independent computation)."""
    return subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key_file)], capture_output=True,
                          text=True, check=True).stdout.split()[1]


def test_a_complete_load_is_listed_and_fetched_byte_identical(settings: Settings, remote: Path, tmp_path: Path,
                                                              connect: Any) -> None:
    folder = make_load(remote, partner="acme", shop="shop-17", load_id="2026-01-05_a")
    expected = files_of(folder)

    listing = connect(settings).list_loads()

    assert listing.waiting == [] and listing.skipped == []
    assert [load.key for load in listing.complete] == ["acme/shop-17/2026-01-05_a"]
    load = listing.complete[0]
    assert load.location == str(folder)
    assert load.files == {name: len(data) for name, data in expected.items()}
    fetched = connect(settings).fetch(load, tmp_path / "into")
    assert fetched == tmp_path / "into" / "acme" / "shop-17" / "2026-01-05_a"
    assert files_of(fetched) == expected
    assert files_of(folder) == expected, "keep leaves the remote folder as it was"


def test_password_auth(settings: Settings, live: sshd.SshServer, remote: Path, tmp_path: Path, connect: Any,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_load(remote, load_id="by-password")
    connector = connect(password_settings(settings, live, monkeypatch))

    [load] = connector.list_loads().complete
    assert files_of(connector.fetch(load, tmp_path / "into")) == files_of(folder)


def test_a_key_with_a_passphrase(settings: Settings, live: sshd.SshServer, remote: Path, connect: Any,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    make_load(remote)
    locked = replace(settings, auth=key_auth(live.locked_client_key, PASSPHRASE_ENV))
    monkeypatch.setenv(PASSPHRASE_ENV, live.locked_key_passphrase)
    assert [load.key for load in connect(locked).list_loads().complete] == ["acme/shop-1/load-1"]

    monkeypatch.setenv(PASSPHRASE_ENV, "not-" + live.locked_key_passphrase)
    error = refusal(connect(locked))
    assert error.reason == "authentication failed"
    assert "passphrase" in error.detail and live.locked_key_passphrase not in str(error)

    no_passphrase = refusal(connect(replace(settings, auth=key_auth(live.locked_client_key))))
    assert no_passphrase.reason == "authentication failed"
    assert "is encrypted" in no_passphrase.detail and "auth.passphrase_env" in no_passphrase.detail


def test_move_to_processed_renames_the_folder_under_processed(settings: Settings, remote: Path, tmp_path: Path,
                                                              connect: Any) -> None:
    folder = make_load(remote, partner="acme", shop="shop-2", load_id="L1")
    other = make_load(remote, partner="acme", shop="shop-2", load_id="L2")
    expected = files_of(folder)
    connector = connect(replace(settings, after_success="move_to_processed"))
    loads = {load.load_id: load for load in connector.list_loads().complete}

    connector.after_success(loads["L1"])

    moved = remote / "processed" / "acme" / "shop-2" / "L1"
    assert not folder.exists()
    assert files_of(moved) == expected
    assert other.is_dir(), "only the load that succeeded moves"
    again = connector.list_loads()
    assert [load.load_id for load in again.complete] == ["L2"]
    assert again.skipped == [] and again.waiting == [], "the processed folder is the product's, never a partner's"

    connector.after_success(loads["L2"])
    assert sorted(p.name for p in (remote / "processed" / "acme" / "shop-2").iterdir()) == ["L1", "L2"]
    assert sorted(p.name for p in remote.iterdir()) == ["acme", "processed"]
    assert list((remote / "acme" / "shop-2").iterdir()) == []


def test_keep_leaves_the_folder_where_it_is(settings: Settings, remote: Path, connect: Any) -> None:
    folder = make_load(remote)
    connector = connect(settings)
    [load] = connector.list_loads().complete
    connector.after_success(load)
    assert folder.is_dir() and not (remote / "processed").exists()


def test_move_to_processed_never_replaces_a_folder_already_there(settings: Settings, remote: Path,
                                                                connect: Any) -> None:
    folder = make_load(remote)
    earlier = make_load(remote / "processed", files={"customers.csv": b"external_customer_id\r\n"})
    connector = connect(replace(settings, after_success="move_to_processed"))
    [load] = connector.list_loads().complete
    with pytest.raises(ConnectorError) as caught:
        connector.after_success(load)
    assert caught.value.reason == "not moved" and str(earlier) in caught.value.detail
    assert folder.is_dir() and (earlier / "customers.csv").read_bytes() == b"external_customer_id\r\n"


def test_a_folder_whose_manifest_lists_a_missing_file_waits(settings: Settings, remote: Path, tmp_path: Path,
                                                            connect: Any) -> None:
    folder = make_load(remote)
    vehicles = (folder / "vehicles.csv").read_bytes()
    (folder / "vehicles.csv").unlink()
    connector = connect(settings)

    listing = connector.list_loads()
    assert listing.complete == []
    assert [(w.where, w.reason) for w in listing.waiting] == [
        (str(folder), "manifest.json lists vehicles.csv, not there yet as a regular file")]

    (folder / "vehicles.csv").write_bytes(vehicles)
    [load] = connector.list_loads().complete
    assert files_of(connector.fetch(load, tmp_path / "into")) == files_of(folder)


def test_folders_without_a_usable_manifest_wait(settings: Settings, remote: Path, connect: Any) -> None:
    no_manifest = make_load(remote, load_id="no-manifest")
    (no_manifest / "manifest.json").unlink()
    half_written = make_load(remote, load_id="half-written")
    text = (half_written / "manifest.json").read_text()
    (half_written / "manifest.json").write_text(text[: len(text) // 2])
    not_a_manifest = make_load(remote, load_id="not-a-manifest")
    (not_a_manifest / "manifest.json").write_text(json.dumps({"load_id": "not-a-manifest"}))

    listing = connect(settings).list_loads()

    assert listing.complete == []
    reasons = {Path(w.where).name: w.reason for w in listing.waiting}
    assert reasons.keys() == {"no-manifest", "half-written", "not-a-manifest"}
    assert reasons["no-manifest"] == "no manifest.json yet"
    assert reasons["half-written"].startswith("manifest.json: not valid JSON")
    assert reasons["not-a-manifest"] == "manifest.json is not a manifest yet (files: Field required)"


def test_hostile_remote_names_are_skipped_and_never_downloaded(settings: Settings, remote: Path, tmp_path: Path,
                                                               connect: Any) -> None:
    legal = make_load(remote, partner="acme", shop="shop-1", load_id="x..y")
    make_load(remote, partner="a b", shop="shop-1", load_id="L")
    make_load(remote, partner="acme", shop="it's", load_id="L")
    make_load(remote, partner="acme", shop="shop-1", load_id=".hidden")
    elsewhere = make_load(tmp_path / "elsewhere", load_id="linked")
    (remote / "acme" / "shop-1" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (remote / "evil").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"not for the partner\r\n")
    (legal / "extra.csv").symlink_to(secret)
    (legal / "quote'd.csv").write_bytes(b"x\r\n")
    os.mkfifo(legal / "pipe.csv")
    (legal / "nested").mkdir()
    (remote / "stray.txt").write_bytes(b"a file where partner folders are")
    outside = make_load(remote, partner="acme", shop="shop-3", load_id="outside")
    body = json.loads((outside / "manifest.json").read_text())
    body["files"][0]["name"] = "../../../../secret.csv"
    (outside / "manifest.json").write_text(json.dumps(body))
    listed_link = make_load(remote, partner="acme", shop="shop-2", load_id="listed-link")
    (listed_link / "vehicles.csv").unlink()
    (listed_link / "vehicles.csv").symlink_to(secret)

    listing = connect(settings).list_loads()

    root = str(remote)
    assert {(s.where, s.reason) for s in listing.skipped} == {
        (f"{root}/a b", f"the name is not allowed (path parts are {PART_RULE})"),
        (f"{root}/acme/it's", f"the name is not allowed (path parts are {PART_RULE})"),
        (f"{root}/acme/shop-1/.hidden", f"the name is not allowed (path parts are {PART_RULE})"),
        (f"{root}/acme/shop-1/linked", "a symbolic link, which is never followed"),
        (f"{root}/evil", "a symbolic link, which is never followed"),
        (f"{root}/acme/shop-1/x..y/extra.csv", "a symbolic link, which is never followed"),
        (f"{root}/acme/shop-1/x..y/quote'd.csv", f"the name is not allowed (path parts are {PART_RULE})"),
        (f"{root}/acme/shop-1/x..y/pipe.csv", "not a folder or a regular file"),
        (f"{root}/acme/shop-1/x..y/nested", "a folder inside a load folder"),
        (f"{root}/stray.txt", "a file where a partner's folder is expected"),
        (f"{root}/acme/shop-2/listed-link/vehicles.csv", "a symbolic link, which is never followed"),
    }
    assert {(w.where, w.reason) for w in listing.waiting} == {
        (str(listed_link), "manifest.json lists vehicles.csv, not there yet as a regular file"),
        (str(outside), "manifest.json lists ../../../../secret.csv, not there yet as a regular file")}
    assert [load.key for load in listing.complete] == ["acme/shop-1/x..y"]
    load = listing.complete[0]
    assert "extra.csv" not in load.files and "pipe.csv" not in load.files
    fetched = connect(settings).fetch(load, tmp_path / "into")
    assert sorted(p.name for p in fetched.iterdir()) == sorted(load.files)
    assert not any(b"not for the partner" in p.read_bytes() for p in fetched.iterdir())


def test_a_name_that_is_not_utf8_skips_its_folder_only(settings: Settings, remote: Path, connect: Any) -> None:
    bad = make_load(remote, load_id="odd")
    with open(os.fsencode(bad) + b"/caf\xe9.csv", "wb") as odd:
        odd.write(b"x\r\n")
    make_load(remote, load_id="fine")

    listing = connect(settings).list_loads()

    assert [load.load_id for load in listing.complete] == ["fine"]
    assert [(s.where, s.reason) for s in listing.skipped] == [
        (str(bad), "holds a name that is not UTF-8, so it cannot be listed")]


def test_an_unknown_host_is_refused_and_never_added(settings: Settings, connect: Any) -> None:
    settings.known_hosts.write_text("")

    error = refusal(connect(settings))

    assert error.reason == "host key refused"
    assert f"[127.0.0.1]:{settings.port} offered ssh-ed25519 key" in error.detail
    assert str(settings.known_hosts) in error.detail
    assert settings.known_hosts.read_text() == ""


def test_a_known_hosts_line_for_another_port_does_not_vouch_for_this_one(settings: Settings, live: sshd.SshServer,
                                                                         connect: Any) -> None:
    settings.known_hosts.write_text(f"127.0.0.1 {live.host_key_line}\n")
    assert refusal(connect(settings)).reason == "host key refused"


def test_a_changed_host_key_is_refused(settings: Settings, live: sshd.SshServer, tmp_path: Path,
                                       connect: Any) -> None:
    other = sshd.keygen(tmp_path / "other_host_key")
    kind, body = other.split()[:2]
    settings.known_hosts.write_text(f"[127.0.0.1]:{live.port} {kind} {body}\n")
    before = settings.known_hosts.read_text()

    error = refusal(connect(settings))

    assert error.reason == "host key refused"
    assert fingerprint(live.folder / "host_ed25519.pub") in error.detail
    assert fingerprint(tmp_path / "other_host_key.pub") in error.detail
    assert "known_hosts" in error.detail
    assert settings.known_hosts.read_text() == before


def test_a_hashed_known_hosts_entry_is_accepted(settings: Settings, remote: Path, connect: Any) -> None:
    make_load(remote)
    subprocess.run(["ssh-keygen", "-H", "-f", str(settings.known_hosts)], capture_output=True, check=True)
    assert "|1|" in settings.known_hosts.read_text()
    assert len(connect(settings).list_loads().complete) == 1


def test_a_missing_known_hosts_file_refuses(settings: Settings, tmp_path: Path, connect: Any) -> None:
    error = refusal(connect(replace(settings, known_hosts=tmp_path / "nowhere")))
    assert error.reason == "host key refused" and "cannot be read" in error.detail


def test_a_wrong_password_fails_authentication(settings: Settings, live: sshd.SshServer, connect: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = password_settings(settings, live, monkeypatch)
    monkeypatch.setenv(PASSWORD_ENV, "wrong-Secret-123")

    error = refusal(connect(cfg))

    assert error.reason == "authentication failed"
    assert PASSWORD_ENV in error.detail
    assert "wrong-Secret-123" not in str(error) and live.password not in str(error)


def test_an_unset_password_variable_fails_authentication(settings: Settings, connect: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    error = refusal(connect(replace(settings, auth=PasswordAuth(method="password", password_env=PASSWORD_ENV))))
    assert (error.reason, error.detail) == (
        "authentication failed", f"environment variable {PASSWORD_ENV} (setting auth.password_env) is not set")


def test_a_key_the_server_does_not_know_fails_authentication(settings: Settings, tmp_path: Path,
                                                             connect: Any) -> None:
    sshd.keygen(tmp_path / "stranger")
    error = refusal(connect(replace(settings, auth=key_auth(tmp_path / "stranger"))))
    assert error.reason == "authentication failed" and str(tmp_path / "stranger") in error.detail


def test_a_key_file_that_is_not_a_key_fails_authentication(settings: Settings, tmp_path: Path,
                                                           connect: Any) -> None:
    missing = refusal(connect(replace(settings, auth=key_auth(tmp_path / "nokey"))))
    assert missing.reason == "authentication failed" and "cannot be read" in missing.detail
    (tmp_path / "garbage").write_text("hello\n")
    garbage = refusal(connect(replace(settings, auth=key_auth(tmp_path / "garbage"))))
    assert garbage.reason == "authentication failed" and "not an Ed25519, ECDSA or RSA" in garbage.detail


def test_a_closed_port_is_unreachable(settings: Settings, connect: Any) -> None:
    error = refusal(connect(replace(settings, port=sshd.free_port())))
    assert error.reason == "unreachable"


def test_an_unknown_host_name_is_unreachable(settings: Settings, connect: Any) -> None:
    error = refusal(connect(replace(settings, host="no-such-host.invalid")))
    assert error.reason == "unreachable" and "no-such-host.invalid" in error.detail


def test_a_server_that_never_speaks_times_out(settings: Settings, connect: Any) -> None:
    with socket.socket() as silent:
        silent.bind((sshd.HOST, 0))
        silent.listen()
        started = time.monotonic()
        error = refusal(connect(replace(settings, port=silent.getsockname()[1], timeout_seconds=1)))
        assert error.reason == "timed out"
        assert time.monotonic() - started < 8


def test_a_missing_base_path_is_not_found(settings: Settings, remote: Path, connect: Any) -> None:
    error = refusal(connect(replace(settings, base_path=str(remote / "nothing-here"))))
    assert error.reason == "not found"


def customers(rows: int) -> bytes:
    body = b"".join(b"C%d,Ann,Smith,ann%d@example.com\r\n" % (i, i) for i in range(rows))
    return b"external_customer_id,first_name,last_name,email\r\n" + body


@pytest.fixture(scope="module")
def big_customers() -> bytes:
    """A customers.csv of a few tens of MB: each 1 MiB chunk of it is a small part."""
    return customers(700_000)


def test_a_server_killed_mid_download_is_a_lost_connection_and_the_next_fetch_succeeds(
        settings: Settings, live: sshd.SshServer, remote: Path, tmp_path: Path, connect: Any,
        big_customers: bytes) -> None:
    assert len(big_customers) > 25 << 20
    folder = make_load(remote, {"customers.csv": big_customers})
    seen: list[int] = []

    def kill_after_first_chunk(path: str, done: int) -> None:
        if path.endswith("/customers.csv"):
            seen.append(done)
            if len(seen) == 1:
                live.kill()

    connector = connect(settings, progress=kill_after_first_chunk)
    [load] = connector.list_loads().complete
    with pytest.raises(ConnectorError) as caught:
        connector.fetch(load, tmp_path / "first")
    assert caught.value.reason == "connection lost"
    assert "customers.csv" in caught.value.detail
    assert len(seen) == 1 and seen[0] < len(big_customers)

    live.start()
    fetched = connector.fetch(load, tmp_path / "second")
    assert hashlib.sha256((fetched / "customers.csv").read_bytes()).digest() == \
        hashlib.sha256(big_customers).digest()
    assert files_of(fetched) == files_of(folder)


def test_a_server_that_stops_answering_mid_download_times_out(settings: Settings, live: sshd.SshServer,
                                                              remote: Path, tmp_path: Path, connect: Any) -> None:
    make_load(remote, {"customers.csv": customers(100_000)})

    def freeze_after_first_chunk(path: str, done: int) -> None:
        if path.endswith("/customers.csv") and done <= 1 << 20:
            for session in live.sessions():
                session.send_signal(signal.SIGSTOP)

    connector = connect(replace(settings, timeout_seconds=1), progress=freeze_after_first_chunk)
    [load] = connector.list_loads().complete
    started = time.monotonic()
    with pytest.raises(ConnectorError) as caught:
        connector.fetch(load, tmp_path / "into")
    assert caught.value.reason == "timed out"
    assert time.monotonic() - started < 20


def test_a_file_that_grows_after_listing_is_refused(settings: Settings, remote: Path, tmp_path: Path,
                                                    connect: Any) -> None:
    folder = make_load(remote)
    connector = connect(settings)
    [load] = connector.list_loads().complete
    with (folder / "customers.csv").open("ab") as grow:
        grow.write(b"C3,Cy,Lee,cy@example.com\r\n")
    with pytest.raises(ConnectorError) as caught:
        connector.fetch(load, tmp_path / "into")
    assert caught.value.reason == "changed while downloading"


def test_many_shops_and_loads(settings: Settings, remote: Path, connect: Any) -> None:
    made = {f"p{p}/s{s}/l{n}" for p in range(2) for s in range(3) for n in range(2)}
    for key in made:
        partner, shop, load_id = key.split("/")
        make_load(remote, partner=partner, shop=shop, load_id=load_id)
    listing: Listing = connect(settings).list_loads()
    assert {load.key for load in listing.complete} == made
    assert all(isinstance(load, RemoteLoad) for load in listing.complete)


# -- through the poll: fetched into a temporary folder, digests checked, kept in the inbox, queued ---------------


@pytest.fixture
def registry(db: Warehouse) -> Warehouse:
    ensure_registry(db)
    return db


def runs(db: Warehouse) -> list[tuple[object, ...]]:
    return query(db, "select run_id, partner_id || '/' || shop_id || '/' || load_id, status, triggered_by"
                     " from loader_registry.runs order by run_id")


def kept_files(db: Warehouse, run_id: int) -> dict[str, bytes]:
    [(source,)] = query(db, "select source_path from loader_registry.runs where run_id = %s", (run_id,))
    return files_of(Path(str(source)))


def left_behind() -> list[Path]:
    """What polls left in the inbox and their temporary folders (nothing, after a failed take)."""
    settings = LoaderSettings()
    roots = [settings.inbox_dir, settings.home_dir / "intake"]
    return [p for root in roots if root.exists() for p in root.rglob("*") if not p.is_dir()]


def test_poll_takes_a_load_once_runs_it_and_then_moves_it(registry: Warehouse, settings: Settings, remote: Path,
                                                          connect: Any) -> None:
    folder = make_load(remote, partner="acme", shop="shop-17", load_id="2026-01-05_a")
    expected = files_of(folder)
    cfg = replace(settings, after_success="move_to_processed")

    first = poll_connector(registry, LoaderSettings(), cfg)

    assert first.error_reason is None and first.found == 1 and first.waiting == [] and first.skipped == []
    [taken] = first.taken
    assert runs(registry) == [(taken.run_id, "acme/shop-17/2026-01-05_a", "queued", "connector:acme-sftp")]
    assert kept_files(registry, taken.run_id) == expected
    second = poll_connector(registry, LoaderSettings(), cfg)
    assert (second.found, second.taken, second.error_reason) == (0, [], None)
    assert folder.is_dir(), "queued, not run yet: the folder stays on the server"

    worker = subprocess.run([str(LOADER), "worker", "--once", "--concurrency", "1"], capture_output=True, text=True,
                            timeout=900, check=False)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert [r[2] for r in runs(registry)] == ["completed"]
    third = poll_connector(registry, LoaderSettings(), cfg)
    assert third.error_reason is None and third.taken == []
    assert not folder.exists()
    assert files_of(remote / "processed" / "acme" / "shop-17" / "2026-01-05_a") == expected
    assert poll_connector(registry, LoaderSettings(), cfg) == PollResult(system_code="acme-sftp")
    assert len(runs(registry)) == 1


def test_poll_leaves_a_load_with_a_missing_csv_and_takes_it_once_complete(registry: Warehouse, settings: Settings,
                                                                          remote: Path) -> None:
    folder = make_load(remote)
    vehicles = (folder / "vehicles.csv").read_bytes()
    (folder / "vehicles.csv").unlink()

    waiting = poll_connector(registry, LoaderSettings(), settings)
    assert waiting.error_reason is None and waiting.taken == []
    assert [(n.where, n.reason) for n in waiting.waiting] == [
        (str(folder), "manifest.json lists vehicles.csv, not there yet as a regular file")]
    assert runs(registry) == [] and left_behind() == []

    # Present but still being written: listed as complete, its digest tells the poll it is not whole yet.
    (folder / "vehicles.csv").write_bytes(vehicles[: len(vehicles) // 2])
    growing = poll_connector(registry, LoaderSettings(), settings)
    assert growing.taken == [] and [n.reason for n in growing.waiting] == [
        "vehicles.csv: sha256 does not match manifest.json yet"]
    assert runs(registry) == [] and left_behind() == []

    (folder / "vehicles.csv").write_bytes(vehicles)
    [taken] = poll_connector(registry, LoaderSettings(), settings).taken
    assert kept_files(registry, taken.run_id) == files_of(folder)
    assert poll_connector(registry, LoaderSettings(), settings).taken == []


def test_poll_with_the_server_killed_mid_download_keeps_nothing_and_the_next_poll_takes_the_load(
        registry: Warehouse, settings: Settings, live: sshd.SshServer, remote: Path, connect: Any,
        big_customers: bytes) -> None:
    make_load(remote, {"customers.csv": big_customers})
    killed: list[int] = []

    def kill_after_first_chunk(path: str, done: int) -> None:
        if path.endswith("/customers.csv") and not killed:
            killed.append(done)
            live.kill()

    failed = poll_connector(registry, LoaderSettings(), settings,
                            connector=connect(settings, progress=kill_after_first_chunk))

    assert failed.error_reason == "connection lost" and failed.taken == []
    assert killed and killed[0] < len(big_customers)
    assert left_behind() == [] and runs(registry) == []
    assert query(registry, "select count(*) from loader_registry.connector_checkpoints") == [(0,)]
    assert query(registry, "select error_reason from loader_registry.connector_polls") == [("connection lost",)]

    live.start()
    [taken] = poll_connector(registry, LoaderSettings(), settings).taken
    kept = kept_files(registry, taken.run_id)
    assert hashlib.sha256(kept["customers.csv"]).digest() == hashlib.sha256(big_customers).digest()


def write_connectors(path: Path, entries: list[Settings]) -> Path:
    body = {"connectors": [cfg.model_dump(mode="json", exclude_none=True) for cfg in entries]}
    path.write_text(json.dumps(body), encoding="utf-8")  # JSON is YAML
    return path


def test_refused_connectors_fail_with_their_reason_and_the_others_are_still_polled(
        registry: Warehouse, settings: Settings, live: sshd.SshServer, remote: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_load(remote)
    unknown = tmp_path / "known_hosts_empty"
    unknown.write_text("")
    changed = tmp_path / "known_hosts_changed"
    kind, body = sshd.keygen(tmp_path / "impostor").split()[:2]
    changed.write_text(f"[127.0.0.1]:{live.port} {kind} {body}\n")
    wrong = password_settings(settings, live, monkeypatch)
    monkeypatch.setenv("LOADER_TEST_SFTP_WRONG", "wrong-Secret-123")
    entries = [
        replace(settings, system_code="unknown-host", known_hosts=unknown),
        replace(settings, system_code="changed-key", known_hosts=changed),
        replace(wrong, system_code="wrong-password",
                auth=PasswordAuth(method="password", password_env="LOADER_TEST_SFTP_WRONG")),
        replace(settings, system_code="closed-port", port=sshd.free_port()),
        replace(settings, system_code="good"),
    ]
    monkeypatch.setenv("LOADER_CONNECTORS_FILE", str(write_connectors(tmp_path / "connectors.yml", entries)))

    polled = subprocess.run([str(LOADER), "poll", "--json"], capture_output=True, text=True, timeout=300,
                            check=False)

    assert polled.returncode == 1, polled.stdout + polled.stderr
    results = {r["system_code"]: r for r in json.loads(polled.stdout)}
    assert {code: r["error_reason"] for code, r in results.items()} == {
        "unknown-host": "host key refused", "changed-key": "host key refused",
        "wrong-password": "authentication failed", "closed-port": "unreachable", "good": None}
    assert [t["load"] for t in results["good"]["taken"]] == ["acme/shop-1/load-1"]
    shown = subprocess.run([str(LOADER), "connectors", "--json"], capture_output=True, text=True, timeout=300,
                           check=False)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    statuses = {s["system_code"]: s for s in json.loads(shown.stdout)}
    assert {code: (s["last_error"] or {}).get("reason") for code, s in statuses.items()} == {
        "unknown-host": "host key refused", "changed-key": "host key refused",
        "wrong-password": "authentication failed", "closed-port": "unreachable", "good": None}
    assert fingerprint(tmp_path / "impostor.pub") in statuses["changed-key"]["last_error"]["message"]
    everything = polled.stdout + polled.stderr + shown.stdout + shown.stderr + json.dumps(
        query(registry, "select error from loader_registry.connector_polls"))
    assert "wrong-Secret-123" not in everything and str(live.password) not in everything
    assert unknown.read_text() == "", "an unknown host key is never added"
