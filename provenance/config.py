"""The CLI's settings: one typed object, read from ``MLPROV_*`` environment variables.

=====================  ===========================  ==============================================
variable               default                      meaning
=====================  ===========================  ==============================================
``MLPROV_HOME``        ``./.mlprov``                signing identity (``keys/``) and trust store
``MLPROV_TOKEN``       unset                        bearer token for the storage service
``MLPROV_STORAGE_TYPE`` ``database``                default of ``--storage-type``
``MLPROV_STORAGE_URL`` ``http://localhost:8080``    default of ``--storage-url``
``MLPROV_HTTP_TIMEOUT`` ``30``                      seconds per HTTP request to a store
``MLPROV_TLOG``        ``on``                       ``off``: no transparency log (as ``--no-tlog``)
``MLPROV_TLOG_DIR``    ``$MLPROV_HOME/tlog``        the local transparency log's directory
``MLPROV_TLOG_VKEY``   the log's own ``log.vkey``   pinned verifier key for the log's checkpoints
``MLPROV_CONTROLLER_URL`` unset                     controller of ``lineage`` (default ``--server``)
=====================  ===========================  ==============================================

Transparency log: every manifest the CLI stores is appended to the log in ``tlog_path`` (created on
first use); ``verify`` checks inclusion whenever that log exists. Pin ``MLPROV_TLOG_VKEY`` (the output
of ``mlprov log vkey``) so a replaced log key is detected rather than trusted.

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
    tlog: bool = Field(default=True, description="append stored manifests to the log and verify inclusion")
    tlog_dir: Path | None = Field(default=None, description="the local transparency log (default: home/tlog)")
    tlog_vkey: str | None = Field(default=None, description="pinned verifier key of the log's checkpoints")
    controller_url: str | None = Field(default=None, description="the controller `mlprov lineage` asks by default")

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def trust_dir(self) -> Path:
        return self.home / "trust"

    @property
    def tlog_path(self) -> Path:
        return self.tlog_dir if self.tlog_dir is not None else self.home / "tlog"

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None


def load_settings() -> CliSettings:
    """Read the settings from the environment now (not cached: each CLI invocation reads once)."""
    return CliSettings()
