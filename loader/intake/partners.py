"""Partner settings from a YAML file: per partner the files' encoding and date format, the
review thresholds (with per-shop overrides) and the webhooks to notify."""

from __future__ import annotations

import codecs
import datetime as dt
import re
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loader.intake.load_key import PART


class PartnerSettingsError(ValueError):
    """The partner settings file is unreadable or invalid; the message names the file and setting."""


Event = Literal["completed", "failed", "needs_review", "rejected"]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Thresholds(BaseModel):
    """Limits past which a load is held for review (needs_review) instead of published; None is no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_reject_pct: float | None = Field(default=None, ge=0, le=100,
                                         description="share of an entity's landed rows that are rejected")
    max_update_pct: float | None = Field(default=None, ge=0, le=100,
                                         description="share of the shop's production rows of an entity updated")

    def overridden_by(self, other: Thresholds) -> Thresholds:
        """These limits with every one that `other` sets replaced by `other`'s."""
        return self.model_copy(update=other.model_dump(exclude_unset=True))


class Webhook(BaseModel):
    """A URL that is POSTed a JSON summary of each of the partner's runs that ends in one of `events`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="http:// or https:// URL")
    events: list[Event] = Field(min_length=1, description="of completed, failed, needs_review, rejected")
    secret_env: str = Field(description="environment variable holding the HMAC-SHA256 signing secret")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("events")
    @classmethod
    def _no_repeats(cls, value: list[Event]) -> list[Event]:
        return list(dict.fromkeys(value))

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


class ShopSettings(BaseModel):
    """What one shop (or district) of a partner overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: Thresholds = Field(default_factory=Thresholds)


_T = TypeVar("_T")


def _load_key_parts(value: dict[str, _T], what: str) -> dict[str, _T]:
    """`value`, whose keys name load key parts (partner or shop ids) and must be valid ones."""
    for part in value:
        if not PART.fullmatch(part):
            raise ValueError(f"{what} {part!r} is not a valid load key part")
    return value


class PartnerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    encoding: str = Field(default="utf-8", description="encoding of the partner's CSV files")
    date_format: str | None = Field(default=None, description="strftime format of dates, e.g. %m/%d/%Y")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    notify: list[Webhook] = Field(default_factory=list)
    shops: dict[str, ShopSettings] = Field(default_factory=dict)

    @field_validator("encoding")
    @classmethod
    def _known_ascii_compatible(cls, value: str) -> str:
        try:
            name = codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        # Files are split into records on raw bytes, so commas, quotes and
        # newlines must be single ASCII bytes in the encoding.
        if ',"\r\nAz09'.encode(name, errors="replace") != b',"\r\nAz09':
            raise ValueError(f"encoding {value!r} is not ASCII-compatible; CSV files must use one that is")
        return name

    @field_validator("date_format")
    @classmethod
    def _date_format_round_trips(cls, value: str | None) -> str | None:
        if value is None:
            return None
        sample = dt.date(2024, 3, 15)
        try:
            parsed = dt.datetime.strptime(sample.strftime(value), value).date()
        except ValueError as exc:
            raise ValueError(f"date_format {value!r} does not parse its own output: {exc}") from None
        if parsed != sample:
            raise ValueError(f"date_format {value!r} must hold a day, a month and a four-digit year")
        return value

    @field_validator("shops")
    @classmethod
    def _valid_shop_ids(cls, value: dict[str, ShopSettings]) -> dict[str, ShopSettings]:
        return _load_key_parts(value, "shop id")

    def thresholds_for(self, shop_id: str) -> Thresholds:
        shop = self.shops.get(shop_id)
        return self.thresholds if shop is None else self.thresholds.overridden_by(shop.thresholds)


class PartnersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    partners: dict[str, PartnerSettings] = Field(default_factory=dict)

    @field_validator("partners")
    @classmethod
    def _valid_ids(cls, value: dict[str, PartnerSettings]) -> dict[str, PartnerSettings]:
        return _load_key_parts(value, "partner id")

    def for_partner(self, partner_id: str) -> PartnerSettings:
        return self.partners.get(partner_id, PartnerSettings())


def load_partners(path: Path) -> PartnersFile:
    """Read partner settings; a missing file means defaults for everyone."""
    if not path.exists():
        return PartnersFile()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PartnerSettingsError(f"{path}: cannot read partner settings: {exc}") from exc
    try:
        return PartnersFile.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise PartnerSettingsError(f"{path}: invalid partner settings: {details}") from exc
