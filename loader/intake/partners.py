"""Partner settings: per-partner file encoding and date format, from a YAML file."""

from __future__ import annotations

import codecs
import datetime as dt
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loader.intake.load_key import PART


class PartnerSettingsError(ValueError):
    """The partner settings file is unreadable or invalid; the message names the file and setting."""


class PartnerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    encoding: str = Field(default="utf-8", description="encoding of the partner's CSV files")
    date_format: str | None = Field(default=None, description="strftime format of dates, e.g. %m/%d/%Y")

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


class PartnersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    partners: dict[str, PartnerSettings] = Field(default_factory=dict)

    @field_validator("partners")
    @classmethod
    def _valid_ids(cls, value: dict[str, PartnerSettings]) -> dict[str, PartnerSettings]:
        for partner_id in value:
            if not PART.fullmatch(partner_id):
                raise ValueError(f"partner id {partner_id!r} is not a valid load key part")
        return value

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
