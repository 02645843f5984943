"""Settings read from the environment, validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LoaderSettings(BaseSettings):
    """`LOADER_*` environment variables.

    With no database URL the loader runs an embedded PostgreSQL under `home`.
    """

    model_config = SettingsConfigDict(env_prefix="LOADER_", extra="ignore")

    database_url: str | None = Field(default=None, description="postgresql:// URL of the warehouse")
    home: Path = Field(default=Path(".loader"), description="data folder for the embedded server and kept loads")
    partners_file: Path = Field(default=Path("partners.yml"), description="partner settings (encodings, date formats)")
    connectors_file: Path = Field(default=Path("connectors.yml"), description="intake connectors (SFTP, local folders)")
    land_workers: int = Field(default=2, ge=1, le=16, description="parallel COPY streams when landing")
    inbox: Path | None = Field(default=None, description="where loads' kept files go (default: inbox under home)")
    lease_seconds: float = Field(default=30.0, ge=1, le=3600,
                                 description="a run whose worker has not been heard from for this long is taken back")
    max_attempts: int = Field(default=3, ge=1, le=100, description="tries of a run that hits transient failures")
    retry_base_seconds: float = Field(default=5.0, ge=0, le=3600,
                                      description="the first retry's delay; each next one doubles it (with jitter)")
    retry_max_seconds: float = Field(default=300.0, ge=0, le=86400, description="the longest delay between retries")
    poll_seconds: float = Field(default=2.0, gt=0, le=300,
                                description="how often an idle worker looks at the queue (it is also woken at once)")
    retention_days: int = Field(default=90, ge=1, le=36500,
                                description="loader purge drops the raw data and kept files of runs older than this")
    dashboard_url: str = Field(default="http://127.0.0.1:8501",
                               description="the dashboard's base URL, for links in notifications")
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=120, description="how long one webhook POST may take")
    webhook_max_attempts: int = Field(default=8, ge=1, le=100,
                                      description="tries of one webhook delivery before it is given up")
    webhook_retry_base_seconds: float = Field(default=10.0, ge=0, le=3600,
                                              description="the first redelivery's delay; each next one doubles it")
    recheck_unchanged: bool = Field(default=False,
                                    description="check every row of a reload again, also those identical to the"
                                                " previous load's accepted rows")
    production_partitions: int = Field(default=0, ge=0, le=1024,
                                       description="hash-partition the production tables by shop into this many"
                                                   " partitions when they are created (0: plain tables)")
    dashboard_session_minutes: int = Field(default=480, ge=1, le=43200,
                                           description="a dashboard login lasts this long; then log in again")
    upload_limit_mb: int = Field(default=200, ge=1, le=102400, description="the most one upload may hold, in MB")
    log_format: Literal["text", "json"] = Field(default="text",
                                                description="text, or json: one JSON object per line")

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

    @property
    def inbox_dir(self) -> Path:
        return self.inbox.expanduser().resolve() if self.inbox else self.home_dir / "inbox"


def settings_error(exc: ValidationError) -> str:
    """What is wrong with the LOADER_* settings, each naming its variable."""
    details = "; ".join(f"LOADER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                        for e in exc.errors(include_url=False))
    return f"invalid setting: {details}"
