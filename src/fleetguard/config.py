"""Settings for one installation, read from ``FLEETGUARD_*`` environment variables.

The data directory holds the SQLite database (unless ``FLEETGUARD_DATABASE_URL`` names another), the
installation file written by ``fleetguard init`` and the signing keys. Every bound that protects a
server from its input lives here so that operators can see and tune it in one place.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

_MIB = 1024 * 1024


class Settings(BaseSettings):
    """One installation's configuration; every field can be set as ``FLEETGUARD_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLEETGUARD_", frozen=True, extra="ignore")

    data_dir: Path = Path("fleetguard-data")
    database_url: str | None = None
    bus_url: str = "memory://"
    bus_partitions: int = Field(default=16, ge=1, le=1024)
    trust_domain: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)

    # Bounds on input; each protects a server from one request or one file.
    max_request_bytes: int = Field(default=1 * _MIB, ge=1024)
    max_import_bytes: int = Field(default=256 * _MIB, ge=1024)
    max_import_rows: int = Field(default=2_000_000, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: the configured one, or SQLite under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleetguard.db').resolve()}"
