"""The controller's one typed settings object (prefix ``MLPROV_``; ARCHITECTURE section 2).

Unset means embedded: SQLite under ``$MLPROV_HOME``, a local artifact directory, the embedded log
bus and index, a SQLite MLflow store. Served by the cached :func:`get_settings`; tests pass their
own ``Settings`` to ``create_app`` or override ``get_settings`` through ``dependency_overrides``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["PLACEHOLDER_SECRETS", "Settings", "get_settings"]

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "changethis", "secret", "admin", "password", "token"})
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret


def _split_list(value: Any) -> Any:
    """Lists from the environment: a JSON array, or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLPROV_", extra="ignore", validate_default=True)

    home: Path = Path(".mlprov")
    """Everything embedded lives here: controller.db, work/, artifacts/, logs, mlflow.db, admin-token."""
    environment: Literal["development", "production"] = "development"
    database_url: str | None = None
    """``sqlite:///...`` or ``postgresql://user@host:port/db``; unset: ``$MLPROV_HOME/controller.db``."""

    admin_token: SecretStr | None = None
    """Full access. Placeholders are refused in production; in development an unset token is
    generated once and kept in ``$MLPROV_HOME/admin-token`` (mode 0600)."""
    read_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Read-only tokens (GET/HEAD only); JSON array or comma-separated in the environment."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    runtime: Literal["local", "kubernetes"] = "local"
    max_concurrent_jobs: int = Field(default=4, ge=1)
    gpu_count: int = Field(default=0, ge=0)
    """GPU slots the dispatcher hands out on this machine (tasks asking for more wait)."""
    sidecar: bool = True
    """Run the provenance sidecar beside every job (``MLPROV_SIDECAR=false`` only to measure its cost:
    without it outputs are hashed and stored but never signed)."""
    sidecar_command: Annotated[list[str] | None, NoDecode] = None
    """The sidecar's command; unset: this interpreter's ``-m provenance.cli sidecar``. JSON array or a
    shell-quoted string."""
    controller_url: str | None = None
    """How jobs' sidecars reach this controller; unset: ``http://<host>:<port>``."""
    fork_server: bool = True
    """Local runtime: fork every job's launcher and sidecar from one warm process (ADR 0006) instead of
    warming up a fresh sidecar interpreter per job; ``false`` falls back to the standby spare launcher."""

    server_idle_timeout: float = Field(default=1800.0, gt=0)
    """A ``server`` service with no task activity in its run for this long is stopped."""
    server_health_interval: float = Field(default=10.0, gt=0)
    server_health_failures: int = Field(default=3, ge=1)
    """Consecutive failed health checks after which a running server is marked failed."""
    server_start_timeout: float = Field(default=60.0, gt=0)
    server_stop_on_shutdown: bool = True
    external_max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    external_connect_retries: int = Field(default=3, ge=1)

    artifact_store: str | None = None
    """Unset: ``$MLPROV_HOME/artifacts``; a directory path; or ``s3://bucket[/prefix]``."""
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = True

    kafka_bootstrap: str | None = None
    """``host:port[,host:port]``: the Kafka ``LogBus`` (issue 6); unset: the embedded bus."""
    kafka_events_topic: str = "mlprov.task-events"
    """Records with an ``event`` (task events) go here; every other line to ``kafka_logs_topic``."""
    kafka_logs_topic: str = "mlprov.component-logs"
    kafka_consumer_group: str = "mlprov-log-index"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    """``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``, ``OAUTHBEARER``...; passed through to kafka-python."""
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_timeout_ms: int = Field(default=5000, ge=100)
    """Bound on every Kafka client constructor (``bootstrap_timeout_ms``) and call (request, block)."""
    kafka_linger_ms: int = Field(default=20, ge=0)
    kafka_batch_bytes: int = Field(default=256 * 1024, ge=1024)
    kafka_spill_dir: Path | None = None
    """Unset: ``$MLPROV_HOME/logs/kafka-spill``."""
    kafka_spill_max_bytes: int = Field(default=1024**3, ge=1024)
    elasticsearch_url: str | None = None
    """The Elasticsearch ``LogIndex`` (issue 6); unset: the embedded SQLite FTS5 index."""
    elasticsearch_data_stream: str = "mlprov-logs"
    """The data stream the records go to; its index template and ILM policy share the name."""
    elasticsearch_username: str | None = None
    elasticsearch_password: SecretStr | None = None
    elasticsearch_api_key: SecretStr | None = None
    elasticsearch_ca_certs: Path | None = None
    elasticsearch_timeout: float = Field(default=10.0, gt=0)
    elasticsearch_rollover_max_size: str = "10gb"
    """ILM: roll the write index over at this primary shard size or age."""
    elasticsearch_rollover_max_age: str = "1d"
    elasticsearch_retention: str = "30d"
    """ILM: delete backing indices this long after rollover."""
    kibana_url: str | None = None
    mlflow_tracking_uri: str | None = None
    """Unset: ``sqlite:///$MLPROV_HOME/mlflow.db``."""

    services_file: Path | None = None
    """services.yaml loaded at start. Unset: none for the app itself; ``mlprov serve`` then uses
    ``./services.yaml`` when it exists (the deployable's convention, kept out of library use and tests)."""
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """JSON and other request bodies; artifact uploads have their own limit (``max_artifact_bytes``)."""
    max_artifact_bytes: int = Field(default=64 * 1024**3, ge=1024)
    """``PUT /api/v1/tasks/{task_id}/artifacts/{digest}``: the largest artifact (file or tar) accepted;
    streamed to a temporary file, never held in memory."""
    tlog_dir: Path | None = None
    """The embedded transparency log; unset: ``$MLPROV_HOME/tlog``."""
    atlas_anonymous_writes: bool = False
    """Accept token-less ``POST /manifests/{id}`` on the Atlas storage API (atlas-cli sends no token).
    Signatures are still verified against the trust store. Implies ``atlas_anonymous_reads``."""
    atlas_anonymous_reads: bool = False
    """Accept token-less ``GET /manifests[/{id}]`` on the Atlas storage API."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- Kubernetes runtime (MLPROV_RUNTIME=kubernetes; docs/adr/0004-kubernetes-job-lifecycle.md) ---
    kubernetes_namespace: str = Field(default="mlprov", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Where jobs, their per-attempt Secrets and run servers are created."""
    kubernetes_in_cluster: bool | None = None
    """Load the pod's in-cluster config; unset: in-cluster when ``KUBERNETES_SERVICE_HOST`` is set."""
    kubernetes_kubeconfig: Path | None = None
    """Out of cluster: this kubeconfig (unset: ``$KUBECONFIG`` or ``~/.kube/config``)."""
    kubernetes_context: str | None = None
    kubernetes_service_account: str = "mlprov-job"
    """The jobs' service account (a service may name its own); its projected token is the sidecar's credential."""
    kubernetes_sidecar_image: str | None = None
    """The mlprov image the sidecar runs (``mlprov sidecar``); required with the kubernetes runtime."""
    kubernetes_init_image: str | None = None
    """The image of the init step that fetches and checks inputs; unset: the sidecar image."""
    kubernetes_token_audience: str = "mlprov-controller"  # noqa: S105 - an audience, not a secret
    """Audience of the sidecar's projected service-account token, checked by the TokenReview."""
    kubernetes_token_expiration: int = Field(default=3600, ge=600)
    """Seconds; the kubelet rotates the projected token before it expires."""
    kubernetes_sidecar_credential: Literal["service-account", "task-token"] = "service-account"
    """``service-account``: the sidecar reads its projected token from ``MLPROV_TASK_TOKEN_FILE`` and the
    controller checks it through the TokenReview API; ``task-token``: the per-task ``mlpt_`` token, in the
    attempt's Secret (for sidecars that read only ``MLPROV_TASK_TOKEN``)."""
    kubernetes_signing_secret: str = "mlprov-signing-identity"  # noqa: S105 - a Secret object name
    """The Secret holding the signing identity (``mlprov keys init`` output: keys ``signer.key``,
    ``signer.pem``, ``chain.pem``, ``ca.pem``), mounted read-only as the sidecar's ``MLPROV_HOME`` with
    ``items`` mapping them to ``keys/`` and ``trust/ca.pem`` (``k8s_objects.SIGNING_ITEMS``)."""
    kubernetes_sidecar_command: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["mlprov", "sidecar"])
    """The sidecar's argv inside ``kubernetes_sidecar_image``."""
    kubernetes_request_timeout: float = Field(default=10.0, gt=0)
    """Seconds, every Kubernetes API call (``_request_timeout``); watches add their own server timeout."""
    kubernetes_watch_timeout: int = Field(default=300, ge=10)
    """A watch ends after this many seconds and the runtime re-lists (the periodic resync)."""
    kubernetes_ttl_after_collection: int = Field(default=600, ge=0)
    """``ttlSecondsAfterFinished`` patched onto a Job once its logs and sidecar output are collected."""
    kubernetes_timeout_default: int = Field(default=86_400, ge=60)
    """``activeDeadlineSeconds`` of a job whose service and task give no timeout."""
    kubernetes_image_pull_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Secrets every job pod pulls with (a service adds its own); also read by the digest resolver."""
    kubernetes_registry_insecure: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Registries the digest resolver reaches over plain HTTP (e.g. a local ``127.0.0.1:5000``)."""
    kubernetes_resolve_digests: bool = True
    """Resolve every job image tag to a digest before launch (refuse the launch when it cannot)."""

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("read_tokens", mode="before")
    @classmethod
    def _parse_read_tokens(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("read_tokens")
    @classmethod
    def _no_placeholder_read_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(t.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS for t in value):
            raise ValueError("a read token is empty or a placeholder: use a random value (openssl rand -hex 32)")
        return value

    @field_validator("kubernetes_image_pull_secrets", "kubernetes_registry_insecure", mode="before")
    @classmethod
    def _parse_kubernetes_lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("sidecar_command", "kubernetes_sidecar_command", mode="before")
    @classmethod
    def _parse_sidecar(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            return json.loads(text) if text.startswith("[") else shlex.split(text)
        return value

    @field_validator("artifact_store")
    @classmethod
    def _check_artifact_store(cls, value: str | None) -> str | None:
        if value and value.startswith("s3://") and not value[5:].split("/", 1)[0]:
            raise ValueError("MLPROV_ARTIFACT_STORE=s3:// needs a bucket: s3://<bucket>[/prefix]")
        if value and "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError("MLPROV_ARTIFACT_STORE must be a directory, file:///dir or s3://bucket[/prefix]")
        return value

    @model_validator(mode="after")
    def _check_admin_token(self) -> Settings:
        token = self.admin_token.get_secret_value() if self.admin_token is not None else None
        is_placeholder = token is None or token.strip().lower() in PLACEHOLDER_SECRETS
        if self.environment != "development":
            if is_placeholder:
                raise ValueError(
                    "MLPROV_ADMIN_TOKEN is unset or a placeholder; outside development set it to a random "
                    "value (e.g. `openssl rand -hex 32`)"
                )
            return self
        if token is None or not token.strip():
            self.admin_token = SecretStr(self._development_admin_token())
        return self

    def _development_admin_token(self) -> str:
        """Read ``$MLPROV_HOME/admin-token``, creating it (0600) with a random token the first time."""
        path = self.home / ADMIN_TOKEN_FILE
        if path.is_file():
            existing = path.read_text().strip()
            if existing:
                return existing
        self.home.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.chmod(path, 0o600)
        return token

    # --- resolved values (unset means embedded) ---------------------------------------------

    @property
    def admin_token_value(self) -> str:
        assert self.admin_token is not None  # the validator always sets it
        return self.admin_token.get_secret_value()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'controller.db'}"

    @property
    def effective_mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def effective_sidecar_command(self) -> list[str] | None:
        """The command started beside every job, or None when the sidecar is off."""
        if not self.sidecar:
            return None
        return self.sidecar_command or [sys.executable, "-m", "provenance.cli", "sidecar"]

    @property
    def effective_controller_url(self) -> str:
        return self.controller_url or f"http://{self.host}:{self.port}"

    @property
    def work_dir(self) -> Path:
        """Job workspaces: ``$MLPROV_HOME/work/<task>/``."""
        return self.home / "work"

    @property
    def trust_dir(self) -> Path:
        """The trust store manifests are verified against: ``$MLPROV_HOME/trust`` (``*.pem``)."""
        return self.home / "trust"

    @property
    def effective_tlog_dir(self) -> Path:
        return self.tlog_dir if self.tlog_dir is not None else self.home / "tlog"

    @property
    def effective_kafka_spill_dir(self) -> Path:
        return self.kafka_spill_dir if self.kafka_spill_dir is not None else self.home / "logs" / "kafka-spill"

    @property
    def artifact_dir(self) -> Path | None:
        """The local artifact directory, or None when the store is S3."""
        if self.artifact_store is None:
            return self.home / "artifacts"
        if self.artifact_store.startswith("s3://"):
            return None
        return Path(self.artifact_store.removeprefix("file://")).expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
