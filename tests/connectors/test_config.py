"""connectors.yml: strict validation, each refusal naming the file, the connector and the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.connectors.base import ConnectorError
from loader.connectors.config import (
    ConnectorSettingsError,
    LocalConnectorSettings,
    PasswordAuth,
    SftpConnectorSettings,
    load_connectors,
)

PASSWORD_ENV = "LOADER_TEST_ACME_SFTP_PASSWORD"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0000000000000000000000000000000000"
                           "0000000\n")
    key = tmp_path / "id_ed25519"
    key.write_text("not checked here: the key is read when the connector connects\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-value")
    return {"known_hosts": known_hosts, "key": key, "drop": drop, "file": tmp_path / "connectors.yml"}


def sftp_entry(files: dict[str, Path], **changes: str) -> str:
    fields = {
        "system_code": "acme-sftp",
        "name": "ACME shop exports",
        "type": "sftp",
        "host": "sftp.acme.example",
        "username": "loader",
        "auth": f"{{method: password, password_env: {PASSWORD_ENV}}}",
        "known_hosts": str(files["known_hosts"]),
        "base_path": "/exports/imports",
        "schedule": "{every_minutes: 15}",
    }
    fields.update(changes)
    lines = [f"{k}: {v}" for k, v in fields.items() if v != "-"]
    return "  - " + "\n    ".join(lines) + "\n"


def local_entry(files: dict[str, Path], **changes: str) -> str:
    fields = {"system_code": "district-drop", "type": "local", "path": str(files["drop"]),
              "schedule": "{cron: \"0 2 * * *\"}"}
    fields.update(changes)
    lines = [f"{k}: {v}" for k, v in fields.items() if v != "-"]
    return "  - " + "\n    ".join(lines) + "\n"


def refusal(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConnectorSettingsError) as caught:
        load_connectors(path)
    return str(caught.value)


def test_the_contracts_example_is_read_with_its_defaults(files: dict[str, Path]) -> None:
    path = files["file"]
    path.write_text("connectors:\n" + sftp_entry(files, port="2222")
                    + local_entry(files, on_detection="true", after_success="move_to_processed"), encoding="utf-8")
    sftp, local = load_connectors(path).connectors
    assert isinstance(sftp, SftpConnectorSettings) and isinstance(local, LocalConnectorSettings)
    assert (sftp.port, sftp.timeout_seconds, sftp.after_success, sftp.active) == (2222, 30.0, "keep", True)
    assert sftp.known_hosts == files["known_hosts"] and sftp.schedule.describe() == "every 15 minutes"
    assert isinstance(sftp.auth, PasswordAuth) and sftp.auth.password() == "s3cret-value"
    assert (local.path, local.on_detection, local.after_success) == (files["drop"], True, "move_to_processed")
    assert local.schedule.cron == "0 2 * * *" and local.schedule.describe() == "cron 0 2 * * * (UTC)"
    assert local.title == "district-drop" and sftp.title == "ACME shop exports"


def test_the_secret_itself_is_in_no_field(files: dict[str, Path]) -> None:
    files["file"].write_text("connectors:\n" + sftp_entry(files), encoding="utf-8")
    [sftp] = load_connectors(files["file"]).connectors
    assert "s3cret-value" not in repr(sftp) and "s3cret-value" not in sftp.model_dump_json()


def test_a_missing_file_is_no_connectors(tmp_path: Path) -> None:
    assert load_connectors(tmp_path / "absent.yml").connectors == []


def test_a_secret_variable_that_is_not_set(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    path = files["file"]
    assert refusal(path, "connectors:\n" + sftp_entry(files)) == (
        f"{path}: connector acme-sftp: auth.password_env: {PASSWORD_ENV} is not set")


def test_a_passphrase_variable_that_is_not_set(files: dict[str, Path]) -> None:
    auth = f"{{method: key, key_file: {files['key']}, passphrase_env: LOADER_TEST_NO_SUCH_VARIABLE}}"
    message = refusal(files["file"], "connectors:\n" + sftp_entry(files, auth=auth))
    assert message == (f"{files['file']}: connector acme-sftp: auth.passphrase_env: LOADER_TEST_NO_SUCH_VARIABLE"
                       " is not set")


def test_a_key_file_that_is_not_there(files: dict[str, Path]) -> None:
    gone = files["key"].with_name("gone")
    message = refusal(files["file"], "connectors:\n" + sftp_entry(files, auth=f"{{method: key, key_file: {gone}}}"))
    assert message == f"{files['file']}: connector acme-sftp: auth.key_file: {gone} is not there (or is not a file)"


def test_known_hosts_is_required_and_must_be_there(files: dict[str, Path]) -> None:
    path = files["file"]
    assert refusal(path, "connectors:\n" + sftp_entry(files, known_hosts="-")) == (
        f"{path}: connector acme-sftp: known_hosts: is required")
    gone = files["known_hosts"].with_name("nowhere")
    assert refusal(path, "connectors:\n" + sftp_entry(files, known_hosts=str(gone))) == (
        f"{path}: connector acme-sftp: known_hosts: {gone} is not there (or is not a file)")


def test_an_unknown_key(files: dict[str, Path]) -> None:
    path = files["file"]
    assert refusal(path, "connectors:\n" + local_entry(files) + sftp_entry(files, colour="blue")) == (
        f"{path}: connector acme-sftp: colour: is not a setting (a misspelt name?)")
    assert refusal(path, "connectors:\n" + sftp_entry(files, auth=f"{{method: password, password_env: {PASSWORD_ENV}"
                                                                  ", password: hunter2}")) == (
        f"{path}: connector acme-sftp: auth.password: is not a setting (a misspelt name?)")
    assert refusal(path, "connector:\n" + local_entry(files)) == f"{path}: connector: is not a setting (a misspelt" \
                                                                 " name?)"


@pytest.mark.parametrize(("schedule", "says"), [
    ("{every_minutes: 5, cron: '* * * * *'}", "schedule: give exactly one of every_minutes or cron"),
    ("{}", "schedule: give exactly one of every_minutes or cron"),
    ("-", "schedule: is required"),
    ("{every_minutes: 0}", "schedule.every_minutes: Input should be greater than or equal to 1"),
    ("{every_minutes: '15'}", "schedule.every_minutes: Input should be a valid integer"),
    ("{every_minutes: true}", "schedule.every_minutes: Input should be a valid integer"),
    ("{cron: '61 * * * *'}", "schedule.cron: '61 * * * *' is not a crontab expression"),
    ("{cron: '0 2 * *'}", "schedule.cron: '0 2 * *' is not a crontab expression: Wrong number of fields"),
    ("{hourly: true}", "schedule.hourly: is not a setting"),
])
def test_a_bad_schedule(files: dict[str, Path], schedule: str, says: str) -> None:
    message = refusal(files["file"], "connectors:\n" + local_entry(files, schedule=schedule))
    assert message.startswith(f"{files['file']}: connector district-drop: {says}"), message


def test_duplicate_system_codes(files: dict[str, Path]) -> None:
    message = refusal(files["file"], "connectors:\n" + local_entry(files, system_code="acme-sftp") + sftp_entry(files))
    assert message.startswith(f"{files['file']}: connector acme-sftp: system_code: also used by connector #1")


@pytest.mark.parametrize(("changes", "says"), [
    ({"system_code": "'acme sftp'"}, "connector #2: system_code: 'acme sftp' is not allowed: use 1-64 characters"),
    ({"system_code": "x" * 65}, "connector #2: system_code: "),
    ({"type": "ftp"}, "connector acme-sftp: type: must be sftp or local, not 'ftp'"),
    ({"type": "-"}, "connector acme-sftp: type: is required (sftp or local)"),
    ({"auth": "{method: agent}"}, "connector acme-sftp: auth.method: must be key or password, not 'agent'"),
    ({"auth": "{method: password, password_env: 'not a name'}"},
     "connector acme-sftp: auth.password_env: 'not a name' is not an environment variable name"),
    ({"port": "0"}, "connector acme-sftp: port: Input should be greater than or equal to 1"),
    ({"port": "'22'"}, "connector acme-sftp: port: Input should be a valid integer"),
    ({"active": "'yes please'"}, "connector acme-sftp: active: Input should be a valid boolean"),
    ({"after_success": "delete"}, "connector acme-sftp: after_success: Input should be 'keep' or 'move_to_processed'"),
    ({"timeout_seconds": "0"}, "connector acme-sftp: timeout_seconds: Input should be greater than 0"),
    ({"host": "-"}, "connector acme-sftp: host: is required"),
])
def test_bad_values_name_connector_and_setting(files: dict[str, Path], changes: dict[str, str], says: str) -> None:
    message = refusal(files["file"], "connectors:\n" + local_entry(files) + sftp_entry(files, **changes))
    assert message.startswith(f"{files['file']}: {says}"), message


def test_a_local_path_that_is_not_there(files: dict[str, Path]) -> None:
    gone = files["drop"].with_name("gone")
    message = refusal(files["file"], "connectors:\n" + local_entry(files, path=str(gone)))
    assert message == f"{files['file']}: connector district-drop: path: {gone} is not there (or is not a folder)"


def test_a_key_given_twice_is_refused_not_overridden(files: dict[str, Path]) -> None:
    message = refusal(files["file"], "connectors:\n" + local_entry(files) + "    schedule: {every_minutes: 1}\n")
    assert message.startswith(f"{files['file']}: cannot be read: ") and "key 'schedule' appears twice" in message


def test_not_yaml(files: dict[str, Path]) -> None:
    assert refusal(files["file"], "connectors: [\n").startswith(f"{files['file']}: cannot be read: ")
    assert refusal(files["file"], "connectors: 5\n") == f"{files['file']}: connectors: Input should be a valid list"


def test_each_poll_checks_only_the_shape(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """What went away after start-up (a folder, a secret) fails that connector's poll, not the whole file."""
    monkeypatch.delenv(PASSWORD_ENV)
    gone = files["drop"].with_name("gone")
    files["file"].write_text("connectors:\n" + sftp_entry(files) + local_entry(files, path=str(gone)),
                             encoding="utf-8")
    sftp, local = load_connectors(files["file"], check_environment=False).connectors
    assert isinstance(local, LocalConnectorSettings) and local.path == gone
    assert isinstance(sftp, SftpConnectorSettings) and isinstance(sftp.auth, PasswordAuth)
    with pytest.raises(ConnectorError, match=f"{PASSWORD_ENV} .*is not set") as caught:
        sftp.auth.password()
    assert caught.value.reason == "authentication failed"
    with pytest.raises(ConnectorSettingsError):
        load_connectors(files["file"])

