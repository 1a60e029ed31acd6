"""The sidecar's one typed settings object (prefix ``MLPROV_SIDECAR_``), plus the job environment the
runtime gives every sidecar: ``MLPROV_TASK_ID``, ``MLPROV_TASK_TOKEN``, ``MLPROV_WORKSPACE``,
``MLPROV_CONTROLLER_URL`` and, on Kubernetes, ``MLPROV_IMAGE_DIGEST`` and ``MLPROV_TASK_TOKEN_FILE`` (the
projected token, in place of ``MLPROV_TASK_TOKEN``).

Lists (markers, ignore and temp patterns) are a JSON array or comma-separated in the environment.
The building blocks take plain dataclasses (:class:`WatchConfig`, :class:`Backoff`, ...); the methods
here build them, so tests and ``mlprov sidecar`` can also construct those directly.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from provenance.sidecar.classify import Classifier
from provenance.sidecar.completion import (
    DEFAULT_IGNORE_PATTERNS,
    DEFAULT_MARKERS,
    DEFAULT_TEMP_PATTERNS,
    CompletionRules,
    IgnoreRules,
)
from provenance.sidecar.spool import Backoff
from provenance.sidecar.watcher import WatchConfig

__all__ = ["PLACEHOLDER_TOKENS", "SidecarSettings", "get_sidecar_settings"]

PLACEHOLDER_TOKENS = frozenset({"", "changeme", "change-me", "changethis", "secret", "password", "token"})
STATE_DIR_NAME = ".mlprov-sidecar"

ListFromEnv = Annotated[list[str], NoDecode]


class SidecarSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLPROV_SIDECAR_", extra="ignore", populate_by_name=True)

    # --- the job, as the runtime describes it ----------------------------------------------------
    task_id: str | None = Field(default=None, validation_alias=AliasChoices("task_id", "MLPROV_TASK_ID"))
    task_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("task_token", "MLPROV_TASK_TOKEN"))
    task_token_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("task_token_file", "MLPROV_TASK_TOKEN_FILE")
    )
    """Kubernetes: the pod's projected, audience-bound service-account token; re-read on every request
    (the kubelet rotates it). Used when ``MLPROV_TASK_TOKEN`` is unset."""
    workspace: Path = Field(default=Path("."), validation_alias=AliasChoices("workspace", "MLPROV_WORKSPACE"))
    """``inputs/``, ``outputs/`` and ``params.json`` live here; so does the sidecar's state."""
    controller_url: str | None = Field(
        default=None, validation_alias=AliasChoices("controller_url", "MLPROV_CONTROLLER_URL")
    )
    image_digest: str | None = Field(default=None, validation_alias=AliasChoices("image_digest", "MLPROV_IMAGE_DIGEST"))
    """Kubernetes: the job image's digest, recorded as its environment."""
    interpreter: Path | None = None
    """The job's Python (local runtime); unset: the sidecar's own, unless an image digest is given."""

    # --- where things go -------------------------------------------------------------------------
    outputs_dir: Path | None = None
    """Default ``<workspace>/outputs``."""
    state_dir: Path | None = None
    """Default ``<workspace>/.mlprov-sidecar`` (``state.json``, ``spool/``)."""
    spool_dir: Path | None = None
    """Default ``<state_dir>/spool``."""

    # --- completion ------------------------------------------------------------------------------
    stable_interval: float = Field(default=2.0, gt=0)
    recheck_interval: float = Field(default=0.05, gt=0)
    exit_settle_interval: float = Field(default=0.3, gt=0)
    overlap_rename_recheck: bool = True
    """Sign a renamed artifact during its ``recheck_interval`` rather than after it (the fingerprint is still
    compared at or after rename + ``recheck_interval`` before anything is kept; see completion.py)."""
    markers: ListFromEnv = Field(default_factory=lambda: list(DEFAULT_MARKERS))
    ignore_patterns: ListFromEnv = Field(default_factory=lambda: list(DEFAULT_IGNORE_PATTERNS))
    temp_patterns: ListFromEnv = Field(default_factory=lambda: list(DEFAULT_TEMP_PATTERNS))
    use_polling: bool = False
    poll_interval: float = Field(default=1.0, gt=0)
    rescan_interval: float = Field(default=30.0, gt=0)

    # --- classification, delivery, environment ---------------------------------------------------
    classifier_rules: Path | None = None
    """A YAML/JSON rules file (see :mod:`provenance.sidecar.classify`); unset: the defaults."""
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    backoff_jitter: float = Field(default=0.5, ge=0, le=1)
    max_attempts: int | None = Field(default=None, ge=1)
    """Dead-letter an item after this many failed attempts; unset: retry until drained."""
    drain_timeout: float = Field(default=60.0, ge=0)
    """At job exit, how long to keep delivering before reporting what is left."""
    env_capture_timeout: float = Field(default=30.0, gt=0)
    http_timeout: float = Field(default=10.0, gt=0)
    """Seconds per HTTP call to the controller (an upload of a big artifact gets this per read/write)."""
    exit_marker: Path | None = None
    """The job-exit marker file (default ``<workspace>/.mlprov/job-exit``): when it appears, flush and exit."""

    @field_validator("markers", "ignore_patterns", "temp_patterns", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("workspace")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("task_token")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_TOKENS:
            raise ValueError("MLPROV_TASK_TOKEN is empty or a placeholder; the runtime sets the task's real token")
        return value

    @model_validator(mode="after")
    def _check_backoff(self) -> SidecarSettings:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("MLPROV_SIDECAR_BACKOFF_MAX must be at least MLPROV_SIDECAR_BACKOFF_INITIAL")
        return self

    # --- resolved values -------------------------------------------------------------------------
    @property
    def effective_outputs_dir(self) -> Path:
        return self.outputs_dir or self.workspace / "outputs"

    @property
    def effective_state_dir(self) -> Path:
        return self.state_dir or self.workspace / STATE_DIR_NAME

    @property
    def state_file(self) -> Path:
        return self.effective_state_dir / "state.json"

    @property
    def effective_exit_marker(self) -> Path:
        return self.exit_marker or self.workspace / ".mlprov" / "job-exit"

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or self.effective_state_dir / "spool"

    def completion_rules(self) -> CompletionRules:
        return CompletionRules(
            stable_interval=self.stable_interval,
            recheck_interval=self.recheck_interval,
            exit_settle_interval=self.exit_settle_interval,
            overlap_rename_recheck=self.overlap_rename_recheck,
            markers=tuple(self.markers),
            ignore=IgnoreRules(tuple(self.ignore_patterns), tuple(self.temp_patterns)),
        )

    def watch_config(self) -> WatchConfig:
        return WatchConfig(
            rules=self.completion_rules(),
            use_polling=self.use_polling,
            poll_interval=self.poll_interval,
            rescan_interval=self.rescan_interval,
        )

    def backoff(self) -> Backoff:
        return Backoff(
            initial=self.backoff_initial,
            maximum=self.backoff_max,
            multiplier=self.backoff_multiplier,
            jitter=self.backoff_jitter,
        )

    def classifier(self) -> Classifier:
        return Classifier.from_file(self.classifier_rules) if self.classifier_rules else Classifier()


@lru_cache(maxsize=1)
def get_sidecar_settings() -> SidecarSettings:
    """The sidecar process's settings, read once from the environment."""
    return SidecarSettings()
