"""connectors.yml (LOADER_CONNECTORS_FILE): where loads come from, validated strictly (see contracts/connectors.md).

An unknown key, a bad value, a secret variable that is not set or a file that
is not there is refused at start-up, in a message that names the file, the
connector and the setting. Secrets themselves never sit in these models: only
the names of the environment variables that hold them, read at use time.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loader.connectors.base import ConnectorError

SYSTEM_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}")
SYSTEM_CODE_RULE = "1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Validation context key: whether files and environment variables are checked too (start-up), or only the
# file's shape (each poll, where a connector whose folder went away fails alone, not the whole file).
CHECK_ENVIRONMENT = "check_environment"
# The values of a discriminated union's tag, which pydantic puts into an error's location after the union.
_TAGS = {"sftp", "local", "key", "password"}


class ConnectorSettingsError(ValueError):
    """connectors.yml is unreadable or invalid; the message names the file, the connector and the setting."""


def _checking(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(CHECK_ENVIRONMENT))


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _env_set(value: str, info: ValidationInfo) -> str:
    value = _env_name(value)
    if _checking(info) and not os.environ.get(value):
        raise ValueError(f"{value} is not set")
    return value


def _readable_file(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    if _checking(info):
        if not value.is_file():
            raise ValueError(f"{value} is not there (or is not a file)")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{value} cannot be read by this user")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Schedule(_Strict):
    """Exactly one of `every_minutes` or `cron` (five fields, UTC)."""

    every_minutes: StrictInt | None = Field(default=None, ge=1)
    cron: StrictStr | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CronTrigger.from_crontab(value, timezone=dt.UTC)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a crontab expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        if (self.every_minutes is None) == (self.cron is None):
            raise ValueError("give exactly one of every_minutes or cron")
        return self

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} (UTC)"
        return "every minute" if self.every_minutes == 1 else f"every {self.every_minutes} minutes"


class KeyAuth(_Strict):
    method: Literal["key"]
    key_file: Path
    passphrase_env: StrictStr | None = None

    _key_file = field_validator("key_file")(_readable_file)

    @field_validator("passphrase_env")
    @classmethod
    def _passphrase_set(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _env_set(value, info)


class PasswordAuth(_Strict):
    method: Literal["password"]
    password_env: StrictStr

    _password_env = field_validator("password_env")(_env_set)

    def password(self) -> str:
        """The password, read from its variable now (never kept in a field that could be printed)."""
        value = os.environ.get(self.password_env)
        if not value:
            raise ConnectorError("authentication failed", f"environment variable {self.password_env} (setting"
                                                          " auth.password_env) is not set")
        return value


AfterSuccess = Literal["keep", "move_to_processed"]


class _Connector(_Strict):
    system_code: StrictStr
    name: StrictStr | None = None
    active: StrictBool = True
    schedule: Schedule
    after_success: AfterSuccess = "keep"

    @field_validator("system_code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not SYSTEM_CODE.fullmatch(value):
            raise ValueError(f"{value!r} is not allowed: use {SYSTEM_CODE_RULE}")
        return value

    @property
    def title(self) -> str:
        return self.name or self.system_code


class SftpConnectorSettings(_Connector):
    type: Literal["sftp"]
    host: StrictStr = Field(min_length=1)
    port: StrictInt = Field(default=22, ge=1, le=65535)
    username: StrictStr = Field(min_length=1)
    auth: Annotated[KeyAuth | PasswordAuth, Field(discriminator="method")]
    known_hosts: Path
    base_path: StrictStr = Field(min_length=1)
    timeout_seconds: Annotated[float, Field(strict=True, gt=0, le=3600)] = 30.0

    _known_hosts = field_validator("known_hosts")(_readable_file)

    @property
    def location(self) -> str:
        return f"sftp://{self.username}@{self.host}:{self.port}{'' if self.base_path.startswith('/') else '/'}" \
               f"{self.base_path}"


class LocalConnectorSettings(_Connector):
    type: Literal["local"]
    path: Path
    on_detection: StrictBool = False

    @field_validator("path")
    @classmethod
    def _folder_there(cls, value: Path, info: ValidationInfo) -> Path:
        value = value.expanduser()
        if _checking(info) and not value.is_dir():
            raise ValueError(f"{value} is not there (or is not a folder)")
        return value

    @property
    def location(self) -> str:
        return str(self.path)


ConnectorSettings = Annotated[SftpConnectorSettings | LocalConnectorSettings, Field(discriminator="type")]


class ConnectorsFile(_Strict):
    connectors: list[ConnectorSettings] = Field(default_factory=list)

    def named(self, system_code: str) -> SftpConnectorSettings | LocalConnectorSettings | None:
        return next((c for c in self.connectors if c.system_code == system_code), None)


def _which(raw: Any, index: int) -> str:
    """How a message names the connector at `index`: its system_code when it has a usable one."""
    entries = raw.get("connectors") if isinstance(raw, dict) else None
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    code = entry.get("system_code") if isinstance(entry, dict) else None
    if isinstance(code, str) and SYSTEM_CODE.fullmatch(code):
        return f"connector {code}"
    return f"connector #{index + 1}"


def _describe(raw: Any, err: Any) -> str:
    loc = list(err["loc"])
    kind, message = err["type"], err["msg"]
    if kind == "value_error":
        message = str(err["ctx"]["error"])
    elif kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a setting (a misspelt name?)"
    where = ""
    if len(loc) >= 2 and loc[0] == "connectors" and isinstance(loc[1], int):
        where = _which(raw, loc[1]) + ": "
        loc = loc[2:]
    # pydantic names the union member after the union ("auth", "password", ...); people wrote no such key.
    setting = [str(p) for i, p in enumerate(loc) if not (p in _TAGS and (i == 0 or loc[i - 1] == "auth"))]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = "method" if setting and setting[-1] == "auth" else "type"
        choices = "key or password" if tag == "method" else "sftp or local"
        setting.append(tag)
        given = err.get("ctx", {}).get("tag")
        message = f"must be {choices}, not {given!r}" if kind == "union_tag_invalid" else \
            f"is required ({choices})"
    return f"{where}{'.'.join(setting) or '(top level)'}: {message}"


class _UniqueKeys(yaml.SafeLoader):
    """YAML as safe_load reads it, except that a key given twice is refused rather than the last one kept."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_connectors(path: Path, *, check_environment: bool = True) -> ConnectorsFile:
    """Read connectors.yml; a missing file means no connectors. Raises ConnectorSettingsError.

    With `check_environment` (start-up), every key file, known_hosts file, local folder and secret variable must
    be there too; without it (each poll) only the file's shape is checked, so that a connector whose folder or
    secret went away fails its own poll with the reason and the others are polled as usual.
    """
    if not path.exists():
        return ConnectorsFile()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConnectorSettingsError(f"{path}: cannot be read: {exc}") from None
    try:
        parsed = ConnectorsFile.model_validate(raw, context={CHECK_ENVIRONMENT: check_environment})
    except ValidationError as exc:
        details = "; ".join(_describe(raw, err) for err in exc.errors(include_url=False))
        raise ConnectorSettingsError(f"{path}: {details}") from None
    first: dict[str, int] = {}
    for index, cfg in enumerate(parsed.connectors):
        if cfg.system_code in first:
            raise ConnectorSettingsError(f"{path}: connector {cfg.system_code}: system_code: also used by connector"
                                         f" #{first[cfg.system_code] + 1}; checkpoints are kept by system_code, so"
                                         " each connector needs its own")
        first[cfg.system_code] = index
    return parsed
