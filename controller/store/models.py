"""The controller's tables, as SQLAlchemy 2 typed ORM classes.

Portable types only (``JSON``, ``LargeBinary``, ``String``, timezone-aware ``DateTime``) so the
same schema runs on SQLite (embedded default) and PostgreSQL. Alembic migrations in
``controller/store/migrations`` must produce exactly this metadata (``tests/integration/test_migrations.py``);
after changing a table here, regenerate the initial revision with
``python -m controller.store.migrations.regenerate``.

Groups:

- catalog: ``services``
- execution: ``pipeline_runs``, ``tasks``, ``task_attempts``, ``jobs``, ``servers``, ``task_events``,
  ``locks``, ``lock_queue``, ``api_tokens``
- provenance: ``artifacts``, ``manifests``, ``software_manifests``, ``lineage_edges``
- configuration: ``deployments``, ``deployment_dags`` (docs/deployments.md)
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "Artifact",
    "Base",
    "Deployment",
    "DeploymentDag",
    "Job",
    "LineageEdge",
    "Lock",
    "LockQueueEntry",
    "Manifest",
    "PipelineRun",
    "Server",
    "ServerState",
    "Service",
    "ServiceKind",
    "SoftwareManifest",
    "Task",
    "TaskAttempt",
    "TaskEvent",
    "TaskState",
    "TokenScope",
    "UTCDateTime",
    "new_id",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                "naive datetime given to the store: pass an aware UTC datetime (controller.store.models.utcnow)"
            )
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ServiceKind(enum.StrEnum):
    JOB = "job"
    SERVER = "server"
    EXTERNAL = "external"


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    WAITING_FOR_LOCK = "waiting_for_lock"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class ServerState(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


class TokenScope(enum.StrEnum):
    TASK = "task"


# Deterministic constraint names: Alembic can diff and drop them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime,
    }


# --- catalog ----------------------------------------------------------------------------------


class Service(Base):
    """A registered ML service; ``spec`` is the validated ``controller.catalog.ServiceSpec`` as JSON."""

    __tablename__ = "services"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- execution --------------------------------------------------------------------------------


class PipelineRun(Base):
    """One Airflow DAG run; the parent of its tasks (and of their MLflow runs)."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (UniqueConstraint("dag_id", "run_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    state: Mapped[str] = mapped_column(String(32), default="running")
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Task(Base):
    """One task submission. The run identity (dag, run, Airflow task, try) makes submission idempotent."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("dag_id", "run_id", "airflow_task_id", "try_number"),
        Index("ix_tasks_run_id", "run_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    service: Mapped[str] = mapped_column(String(63))
    service_spec: Mapped[dict[str, Any] | None]
    """The service spec as it was at submission (the catalog entry may change later)."""
    state: Mapped[str] = mapped_column(String(32), default=TaskState.QUEUED.value, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inputs: Mapped[list[Any]] = mapped_column(default=list)
    """Input artifact references as submitted and as resolved (name/alias -> digest)."""
    code: Mapped[dict[str, Any] | None]
    """``{repo, ref, commit}``: the mutable ref as submitted and the commit it resolved to."""
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timeout: Mapped[float | None] = mapped_column(Float)
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    airflow_task_id: Mapped[str | None] = mapped_column(String(250))
    try_number: Mapped[int | None] = mapped_column(Integer)
    pipeline_run_id: Mapped[str | None] = mapped_column(ForeignKey("pipeline_runs.id"), index=True)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    """The latest deployment whose DAGs held ``dag_id`` when the task was submitted (None: none known)."""
    outputs: Mapped[list[Any]] = mapped_column(default=list)
    """What the job produced: ``[{name, digest, size}]`` (recorded in the same transaction as the end)."""
    details: Mapped[dict[str, Any] | None]
    """Kind-specific results: ``{"server": {name, url, ...}}``, ``{"external": {http_status, ...}}``."""
    cancel_requested_at: Mapped[datetime | None]
    """Set by ``DELETE /tasks/{id}`` while the job runs; a restarted dispatcher honours it."""
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TaskAttempt(Base):
    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Job(Base):
    """What a runtime launched for one attempt; ``ref`` finds it again after a controller restart."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("task_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    runtime: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str | None] = mapped_column(String(255))
    workspace: Mapped[str | None] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(32))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Server(Base):
    """A ``server`` service running for one pipeline run (started by the task in ``task_id``, whose
    named locks and GPUs it holds until it stops); ``ref`` finds its process again after a restart."""

    __tablename__ = "servers"
    __table_args__ = (UniqueConstraint("pipeline_run_id", "service"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    pipeline_run_id: Mapped[str] = mapped_column(ForeignKey("pipeline_runs.id"))
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    service: Mapped[str] = mapped_column(String(63))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(32), default=ServerState.STARTING.value, index=True)
    url: Mapped[str | None] = mapped_column(String(1024))
    port: Mapped[int | None] = mapped_column(Integer)
    ref: Mapped[str | None] = mapped_column(String(255))
    workspace: Mapped[str | None] = mapped_column(String(1024))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    healthy_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Last proxied request (written at most every few seconds); the run's idle timeout also counts tasks."""


class TaskEvent(Base):
    """Submitted, lock acquired, started, finished, ...: also published to the LogBus."""

    __tablename__ = "task_events"
    __table_args__ = (Index("ix_task_events_task_id_id", "task_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int | None] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class Lock(Base):
    """A held named lock (or GPU slot); a row exists only while someone holds it."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder_task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"))
    acquired_at: Mapped[datetime | None]


class LockQueueEntry(Base):
    """A task waiting for all of its locks at once; served FIFO by ``ticket`` (never reused)."""

    __tablename__ = "lock_queue"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy reads this class attribute

    ticket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), unique=True)
    lock_names: Mapped[list[Any]] = mapped_column(default=list)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    granted_at: Mapped[datetime | None]
    """Set when the task got all its locks (it then holds a run slot); the entry is deleted when it ends."""


class ApiToken(Base):
    """A bearer token known by its SHA-256 only; today per-task tokens (the sidecar's)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default=TokenScope.TASK.value)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


# --- provenance -------------------------------------------------------------------------------


class Artifact(Base):
    __tablename__ = "artifacts"

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    """``sha256:<hex>``; for a directory its OMS root digest."""
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(255), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str | None] = mapped_column(String(255))
    uris: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Manifest(Base):
    __tablename__ = "manifests"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """``urn:c2pa:<uuid>`` (Atlas manifest ID)."""
    artifact_digest: Mapped[str | None] = mapped_column(ForeignKey("artifacts.digest"), index=True)
    """The artifact it describes; None for a software manifest naming a commit only, or an Atlas
    manifest whose asset the controller does not hold."""
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="output")
    """``output`` (a task's artifact), ``code`` (software manifest of a commit), ``atlas`` (stored
    through the Atlas storage API)."""
    manifest: Mapped[dict[str, Any]]
    manifest_hash: Mapped[str] = mapped_column(String(80))
    c2pa: Mapped[bytes | None] = mapped_column(LargeBinary)
    oms_bundle: Mapped[bytes | None] = mapped_column(LargeBinary)
    log_index: Mapped[int | None] = mapped_column(BigInteger)
    """Index of the manifest hash's entry in the transparency log (appended before the row is committed)."""
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Envelope facts kept for the APIs that serve it back: the Atlas entry's ``manifest_type`` and
    ``created_at`` and any extra fields of its POST body."""
    deleted_at: Mapped[datetime | None]
    """Set by ``DELETE /manifests/{id}`` (Atlas API): hidden from listings, kept with its log entry."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SoftwareManifest(Base):
    """The one software manifest kept per code commit (``GET /software-manifests?repo=&commit=``).

    ``key`` is SHA-256 of ``repo`` NUL ``commit``, so two sidecars racing for the same commit collide on
    the primary key and the loser is answered with the winner's manifest.
    """

    __tablename__ = "software_manifests"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    repo: Mapped[str] = mapped_column(Text)
    commit: Mapped[str] = mapped_column(String(64))
    manifest_id: Mapped[str] = mapped_column(ForeignKey("manifests.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LineageEdge(Base):
    """``src -role-> dst`` between artifacts, tasks, manifests and code (MLMD/OpenLineage style)."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint("src_type", "src_id", "dst_type", "dst_id", "role"),
        Index("ix_lineage_edges_src", "src_type", "src_id"),
        Index("ix_lineage_edges_dst", "dst_type", "dst_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    src_type: Mapped[str] = mapped_column(String(16))  # artifact | task | manifest | code
    src_id: Mapped[str] = mapped_column(String(255))
    dst_type: Mapped[str] = mapped_column(String(16))
    dst_id: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # consumed | produced | code | ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- configuration --------------------------------------------------------------------------------


class Deployment(Base):
    """One deployment of a pipeline's definitions (DAGs, plugins, services.yaml) to an environment.

    Immutable once written; ``sequence`` counts the deployments of one (pipeline, environment) from 1 and
    ``previous_id`` links each to the one before it, as the signed manifest's cross-reference does.
    ``request_key`` (SHA-256 of pipeline, environment, CI pipeline and job IDs, commit) makes
    ``POST /deployments`` idempotent; ``request_digest`` tells an identical repeat from a conflicting one.
    """

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("pipeline", "environment", "sequence"),
        UniqueConstraint("request_key"),
        Index("ix_deployments_created_at_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    pipeline: Mapped[str] = mapped_column(String(250))
    environment: Mapped[str] = mapped_column(String(250))
    sequence: Mapped[int] = mapped_column(Integer)
    commit: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(255))
    files: Mapped[list[Any]] = mapped_column(default=list)
    """``[{path, digest, size, role, dag_ids}]`` sorted by path."""
    services: Mapped[list[Any]] = mapped_column(default=list)
    ci: Mapped[dict[str, Any]] = mapped_column(default=dict)
    target: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dag_ids: Mapped[list[Any]] = mapped_column(default=list)
    manifest_id: Mapped[str] = mapped_column(String(255), unique=True)
    """The signed manifest's ID (in ``manifests``; not a foreign key: tasks -> deployments -> manifests ->
    tasks would be a cycle, which SQLite cannot create)."""
    manifest_hash: Mapped[str] = mapped_column(String(80))
    """Hex SHA-256 of the manifest (as a cross-reference carries it)."""
    log_index: Mapped[int | None] = mapped_column(BigInteger)
    """The manifest's transparency-log entry (appended before this row was committed)."""
    previous_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id"))
    previous_manifest_id: Mapped[str | None] = mapped_column(String(255))
    request_key: Mapped[str] = mapped_column(String(64))
    request_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentDag(Base):
    """A DAG a deployment carries (one row per dag_id): finds "the latest deployment of DAG X" by index."""

    __tablename__ = "deployment_dags"
    __table_args__ = (Index("ix_deployment_dags_dag_id_created_at", "dag_id", "created_at"),)

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    digest: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    """The deployment's ``created_at`` (copied: the newest deployment of a DAG is one index scan)."""
