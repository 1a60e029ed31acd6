"""Deployments: each deployment of a pipeline's definitions is recorded as a signed, chained manifest.

``POST /api/v1/deployments`` (CI's ``mlprov deploy``, admin token) calls :meth:`DeploymentRecorder.record`:

1. **Validate** (:class:`DeploymentRequest`, 422 naming the field): digests ``sha256:<64 hex>``, a 40 (or
   64) hex commit, relative file paths without ``..``, no duplicate path, no dag_id in two files, roles
   ``dag|plugin|services|other`` (dag_ids only on ``dag`` files).
2. **Idempotency**: the request key is SHA-256 of (pipeline, environment, CI pipeline ID, CI job ID,
   commit). A key already recorded with the same normalised body answers 200 with the stored record;
   with another body 409 (a CI retry posts the same record; a changed one is a new job).
3. **Build and sign** an Atlas ``software`` manifest with the controller's own identity
   (``$MLPROV_HOME/keys``): one sha256 ingredient per deployed file (its URL ``git+<project>@<commit>#<path>``
   is a label; the controller does not hold the files), a ``mlprov.deployment`` CustomAssertion (the
   whole record, including the previous deployment), and a cross-reference to the previous deployment's
   manifest of the same (pipeline, environment) with its hash: verifying the newest deployment walks the
   whole history. The signature is checked against the controller's trust store before anything is kept.
4. **Log first, then one transaction**, as manifest ingestion does: the manifest's leaf is appended to the
   transparency log, then the ``Manifest`` row (role ``deployment``, with the log index), the
   ``Deployment`` row, its ``DeploymentDag`` rows and the ``manifest -linked-> manifest`` edge commit
   together. Two deployments of one pipeline racing for the same sequence collide on the unique
   (pipeline, environment, sequence): the loser rolls back and starts again from step 2 (a log entry of a
   manifest never stored is harmless: the log proves submission, not storage). On PostgreSQL a
   transaction-scoped advisory lock per (pipeline, environment) queues them instead, so N concurrent CI
   jobs cost no retries; it blocks only deployments of the same pipeline and environment.

The read side (listing, one deployment, what a task records about its DAG version) is
:mod:`controller.services.deployments_query`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.errors import ConflictError, UnavailableError
from controller.services.deployments_query import deployment_view
from controller.services.tlog import GroupCommitLog
from controller.store.models import Deployment, DeploymentDag, LineageEdge, Manifest
from provenance.errors import KeyMaterialError, VerificationError
from provenance.keys import SigningIdentity, TrustStore
from provenance.manifest import build_manifest, custom_assertion, manifest_hash
from provenance.signing import SignatureVerifier, sign_manifest
from provenance.tlog.entries import manifest_entry

__all__ = [
    "DEPLOYMENT_LABEL",
    "DEPLOYMENT_ROLE",
    "CiInfo",
    "DeploymentFile",
    "DeploymentRecorder",
    "DeploymentRequest",
    "build_deployment_manifest",
]

log = structlog.get_logger(__name__)

DEPLOYMENT_LABEL = "mlprov.deployment"
DEPLOYMENT_ROLE = "deployment"
"""``Manifest.role`` of a deployment manifest."""
_ATTEMPTS = 8
_NAME = r"^[A-Za-z0-9_.:+~@-][A-Za-z0-9_.:+~@/ -]{0,249}$"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SERVICE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_MEDIA_TYPES = {
    ".py": "text/x-python",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".json": "application/json",
    ".toml": "application/toml",
}
_SHORT = 2048


# --- the request ---------------------------------------------------------------------------------------


class DeploymentFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=1024, description="relative to the repository root")
    digest: str = Field(description="sha256:<64 lowercase hex> of the file's bytes")
    size: int | None = Field(default=None, ge=0)
    role: Literal["dag", "plugin", "services", "other"]
    dag_ids: list[str] = Field(default_factory=list, max_length=1000, description="the DAGs a `dag` file defines")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{value!r} must be a relative path without '.', '..', '//' or backslashes")
        if any(ord(c) < 32 for c in value):
            raise ValueError(f"{value!r} holds a control character")
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _DIGEST.match(value):
            raise ValueError(f"{value!r} is not sha256:<64 lowercase hex>")
        return value

    @field_validator("dag_ids")
    @classmethod
    def _dag_ids(cls, value: list[str]) -> list[str]:
        for dag_id in value:
            if not re.match(_NAME, dag_id):
                raise ValueError(f"{dag_id!r} is not a valid dag_id")
        if len(set(value)) != len(value):
            raise ValueError("a dag_id is listed twice")
        return sorted(value)

    @model_validator(mode="after")
    def _dags_only_on_dag_files(self) -> DeploymentFile:
        if self.dag_ids and self.role != "dag":
            raise ValueError(f"dag_ids: only a file with role 'dag' defines DAGs ({self.path} is {self.role!r})")
        return self


class CiInfo(BaseModel):
    """Who and what deployed (all optional strings; numbers are taken as their text; extra string keys kept)."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)
    provider: str | None = Field(default=None, max_length=64)
    pipeline_id: str | None = Field(default=None, max_length=255)
    job_id: str | None = Field(default=None, max_length=255)
    project: str | None = Field(default=None, max_length=1024)
    pipeline_url: str | None = Field(default=None, max_length=_SHORT)
    triggered_by: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _extras_are_strings(self) -> CiInfo:
        for key, value in (self.model_extra or {}).items():
            if len(key) > 64 or not (value is None or (isinstance(value, str) and len(value) <= _SHORT)):
                raise ValueError(f"ci.{key[:64]}: extra CI fields must be strings of at most {_SHORT} characters")
        return self


class DeploymentRequest(BaseModel):
    """``POST /api/v1/deployments`` (docs/deployments.md)."""

    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(pattern=_NAME)
    environment: str = Field(pattern=_NAME)
    commit: str = Field(description="the deployed git commit: 40 (or 64) lowercase hex")
    ref: str | None = Field(default=None, min_length=1, max_length=255)
    files: list[DeploymentFile] = Field(min_length=1, max_length=10_000)
    services: list[str] = Field(default_factory=list, max_length=1000)
    ci: CiInfo = Field(default_factory=CiInfo)
    target: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("commit")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not _COMMIT.match(value):
            raise ValueError(f"{value!r} is not a full commit hash (40 or 64 lowercase hex)")
        return value

    @field_validator("services")
    @classmethod
    def _services(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_SERVICE, name):
                raise ValueError(f"{name!r} is not a service name ({_SERVICE})")
        if len(set(value)) != len(value):
            raise ValueError("a service is listed twice")
        return sorted(value)

    @field_validator("target")
    @classmethod
    def _target(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if len(key) > 64 or len(item) > _SHORT:
                raise ValueError(f"target.{key[:64]}: keys at most 64 and values at most {_SHORT} characters")
        return value

    @model_validator(mode="after")
    def _unique(self) -> DeploymentRequest:
        paths: set[str] = set()
        dags: dict[str, str] = {}
        for i, f in enumerate(self.files):
            if f.path in paths:
                raise ValueError(f"files[{i}].path: {f.path!r} is listed twice")
            paths.add(f.path)
            for dag_id in f.dag_ids:
                if dag_id in dags:
                    raise ValueError(f"files[{i}].dag_ids: {dag_id!r} is also defined by {dags[dag_id]}")
                dags[dag_id] = f.path
        self.files = sorted(self.files, key=lambda f: f.path)
        return self

    def normalised(self) -> dict[str, Any]:
        """The record as stored and signed (files sorted by path, services sorted, empty CI fields dropped)."""
        return {
            "pipeline": self.pipeline,
            "environment": self.environment,
            "commit": self.commit,
            "ref": self.ref,
            "files": [f.model_dump() for f in self.files],
            "services": list(self.services),
            "ci": {k: v for k, v in self.ci.model_dump().items() if v is not None},
            "target": dict(sorted(self.target.items())),
        }

    def request_key(self) -> str:
        parts = (self.pipeline, self.environment, self.ci.pipeline_id or "", self.ci.job_id or "", self.commit)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _digest_of(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- recording -------------------------------------------------------------------------------------------


def _ingredient(f: DeploymentFile, repo: str, commit: str) -> dict[str, Any]:
    suffix = f.path[f.path.rfind(".") :] if "." in f.path.rsplit("/", 1)[-1] else ""
    return {
        "title": f.path,
        "relationship": "componentOf",
        "dc:format": _MEDIA_TYPES.get(suffix.lower(), "application/octet-stream"),
        "document_id": f"uuid:{uuid.uuid4()}",
        "instance_id": f"uuid:{uuid.uuid4()}",
        "data": {
            "url": f"git+{repo}@{commit}#{f.path}",
            "alg": "sha256",
            "hash": f.digest.removeprefix("sha256:"),
            "data_types": ["c2pa.types.generator"],
            "linked_ingredient_url": None,
            "linked_ingredient_hash": None,
        },
        "linked_ingredient": None,
    }


def build_deployment_manifest(
    deployment_id: str, sequence: int, request: DeploymentRequest, previous: Deployment | None
) -> dict[str, Any]:
    """The unsigned Atlas ``software`` manifest of one deployment (see the module docstring)."""
    record = request.normalised()
    repo = request.ci.project or request.pipeline
    prev = (
        {"id": previous.id, "manifest_id": previous.manifest_id, "manifest_hash": previous.manifest_hash}
        if previous is not None
        else None
    )
    assertion = {
        "id": deployment_id,
        "sequence": sequence,
        **record,
        "dag_ids": sorted(d for f in request.files for d in f.dag_ids),
        "previous": prev,
    }
    refs = []
    if previous is not None:
        link = {"manifest_url": previous.manifest_id, "manifest_hash": previous.manifest_hash}
        refs.append({**link, "media_type": "application/json"})
    return build_manifest(
        kind="software",
        title=f"{request.pipeline} deployment #{sequence} to {request.environment} @ {request.commit[:12]}",
        ingredients=[_ingredient(f, repo, request.commit) for f in request.files],
        author_org=request.ci.project or request.pipeline,
        author_name=request.ci.triggered_by,
        description=f"pipeline definitions of {request.pipeline} deployed to {request.environment}",
        cross_references=refs,
        assertions=[custom_assertion(DEPLOYMENT_LABEL, assertion)],
        software_type="deployment",
        version=request.commit,
    )


class DeploymentRecorder:
    """Records deployments (see the module docstring). Thread-safe; one per request is fine."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        tlog: GroupCommitLog,
        trust: TrustStore,
        identity: Callable[[], SigningIdentity],
    ) -> None:
        self.session_factory = session_factory
        self.tlog = tlog
        self.verifier = SignatureVerifier(trust)
        self._identity = identity

    def _sign(self, unsigned: dict[str, Any]) -> dict[str, Any]:
        try:
            identity = self._identity()
        except KeyMaterialError as exc:
            raise UnavailableError(f"the controller cannot sign deployment manifests: {exc}") from None
        signed = sign_manifest(unsigned, identity, hash_alg="sha256")
        try:
            self.verifier.verify(signed)
        except VerificationError as exc:
            raise UnavailableError(
                f"the controller's own signing identity does not verify against its trust store: {exc}"
            ) from None
        return signed

    def record(self, request: DeploymentRequest) -> tuple[bool, dict[str, Any]]:
        """``(created, answer)``: a new deployment, or the one already recorded for this request key."""
        record = request.normalised()
        key, digest = request.request_key(), _digest_of(record)
        for attempt in range(_ATTEMPTS):
            try:
                return self._record_once(request, key, digest)
            except IntegrityError:
                if attempt == _ATTEMPTS - 1:
                    raise
                log.info("deployment_race", pipeline=request.pipeline, environment=request.environment, attempt=attempt)
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 - jitter, not a secret
        raise AssertionError("unreachable")

    def _record_once(self, request: DeploymentRequest, key: str, digest: str) -> tuple[bool, dict[str, Any]]:
        with self.session_factory() as session:
            if session.get_bind().dialect.name == "postgresql":
                # One writer per (pipeline, environment) until commit: concurrent CI jobs queue here instead
                # of racing for the next sequence (on SQLite, writes are serial and a lost race retries).
                lock = int.from_bytes(
                    hashlib.sha256(f"{request.pipeline}\0{request.environment}".encode()).digest()[:8],
                    "big",
                    signed=True,
                )
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock})
            existing = session.scalar(select(Deployment).where(Deployment.request_key == key))
            if existing is not None:
                if existing.request_digest != digest:
                    raise ConflictError(
                        f"deployment {existing.id} already records {request.pipeline}/{request.environment} at "
                        f"commit {request.commit[:12]} for this CI pipeline and job with other files, services, "
                        "ref or target: a retry must post the same record"
                    )
                return False, deployment_view(existing)
            previous = session.scalar(
                select(Deployment)
                .where(Deployment.pipeline == request.pipeline, Deployment.environment == request.environment)
                .order_by(Deployment.sequence.desc())
                .limit(1)
            )
            sequence = previous.sequence + 1 if previous is not None else 1
            deployment_id = str(uuid.uuid4())
            manifest = self._sign(build_deployment_manifest(deployment_id, sequence, request, previous))
            manifest_id, hex_hash = str(manifest["instance_id"]), manifest_hash(manifest)
            entry = self.tlog.append(manifest_entry(manifest))  # durable before any row is written
            record = request.normalised()
            row = Deployment(
                id=deployment_id,
                pipeline=request.pipeline,
                environment=request.environment,
                sequence=sequence,
                commit=request.commit,
                ref=request.ref,
                files=record["files"],
                services=record["services"],
                ci=record["ci"],
                target=record["target"],
                dag_ids=sorted(d for f in request.files for d in f.dag_ids),
                manifest_id=manifest_id,
                manifest_hash=hex_hash,
                log_index=entry.index,
                previous_id=previous.id if previous is not None else None,
                previous_manifest_id=previous.manifest_id if previous is not None else None,
                request_key=key,
                request_digest=digest,
            )
            session.add(
                Manifest(
                    id=manifest_id,
                    role=DEPLOYMENT_ROLE,
                    manifest=manifest,
                    manifest_hash=hex_hash,
                    log_index=entry.index,
                    meta={"manifest_type": "Software", "deployment_id": deployment_id},
                )
            )
            session.add(row)
            session.flush()
            session.add_all(
                DeploymentDag(
                    deployment_id=deployment_id, dag_id=d, path=f.path, digest=f.digest, created_at=row.created_at
                )
                for f in request.files
                for d in f.dag_ids
            )
            if previous is not None:
                edge = {"src_type": "manifest", "src_id": previous.manifest_id, "dst_type": "manifest",
                        "dst_id": manifest_id, "role": "linked"}  # fmt: skip
                insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
                session.execute(insert(LineageEdge).values([edge]).on_conflict_do_nothing())
            session.commit()
            answer = deployment_view(row)
        log.info(
            "deployment_recorded",
            deployment_id=deployment_id,
            pipeline=request.pipeline,
            environment=request.environment,
            sequence=sequence,
            commit=request.commit,
            manifest_id=manifest_id,
            log_index=entry.index,
            dag_ids=answer["dag_ids"],
        )
        return True, answer
