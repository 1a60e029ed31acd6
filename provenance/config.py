"""The CLI's settings: one typed object, read from ``MLPROV_*`` environment variables.

=====================  ===========================  ==============================================
variable               default                      meaning
=====================  ===========================  ==============================================
``MLPROV_HOME``        ``./.mlprov``                signing identity (``keys/``) and trust store
``MLPROV_TOKEN``       unset                        bearer token for the storage service
``MLPROV_STORAGE_TYPE`` ``database``                default of ``--storage-type``
``MLPROV_STORAGE_URL`` ``http://localhost:8080``    default of ``--storage-url``
``MLPROV_HTTP_TIMEOUT`` ``30``                      seconds per HTTP request to a store
=====================  ===========================  ==============================================

The defaults of the storage flags are atlas-cli's, so an atlas-cli script behaves the same; the
environment only changes them when set. Imported lazily by the CLI (pydantic is not needed by
``mlprov hash`` or ``--help``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from provenance.storage.base import StorageType

__all__ = ["CliSettings", "load_settings"]


class CliSettings(BaseSettings):
    """Settings of the ``mlprov`` command line (prefix ``MLPROV_``)."""

    model_config = SettingsConfigDict(env_prefix="MLPROV_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".mlprov"), description="signing identity and trust store")
    token: SecretStr | None = Field(default=None, description="bearer token for the manifest storage service")
    storage_type: StorageType = Field(default="database", description="default --storage-type")
    storage_url: str = Field(default="http://localhost:8080", description="default --storage-url")
    http_timeout: float = Field(default=30.0, gt=0, description="seconds per HTTP request to a store")

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def trust_dir(self) -> Path:
        return self.home / "trust"

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None


def load_settings() -> CliSettings:
    """Read the settings from the environment now (not cached: each CLI invocation reads once)."""
    return CliSettings()
