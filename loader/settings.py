"""Settings read from the environment, validated once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LoaderSettings(BaseSettings):
    """`LOADER_*` environment variables.

    With no database URL the loader runs an embedded PostgreSQL under `home`.
    """

    model_config = SettingsConfigDict(env_prefix="LOADER_", extra="ignore")

    database_url: str | None = Field(default=None, description="postgresql:// URL of the warehouse")
    home: Path = Field(default=Path(".loader"), description="data folder for the embedded server and kept loads")
    partners_file: Path = Field(default=Path("partners.yml"), description="partner settings (encodings, date formats)")
    land_workers: int = Field(default=2, ge=1, le=16, description="parallel COPY streams when landing")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("LOADER_DATABASE_URL must be a postgresql:// URL")
        return value

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()
