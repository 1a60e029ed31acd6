"""Manifest ingestion: ``POST /api/v1/manifests`` (sidecar) and ``POST /manifests/{id}`` (Atlas API).

One path for both (:meth:`ManifestIngest.store`), in this order:

1. **Validate** (reads only): Atlas layout (``canonical_manifest``: 400 naming the field), signature
   against the trust store (400 ``invalid_signature`` / ``untrusted_signer``), for a task token that
   the ``mlprov.task`` assertion names its task (403), that the artifact was uploaded (or is known)
   and is the manifest's ingredient (400), base64 of the C2PA sidecar and OMS bundle (400).
2. **Idempotency**: a manifest ID already registered with the same manifest hash answers 200 with the
   same body; with another hash 409. For ``role: code`` the answer always names the software manifest
   kept for the (repo, commit) of its ``mlprov.code`` assertion.
3. **Log first**: the manifest's entry (:func:`provenance.tlog.entries.manifest_entry`) is appended
   to the transparency log (grouped with concurrent registrations, :mod:`controller.services.tlog`)
   *before* the database transaction starts. No database lock is held while the fsync runs.
4. **One transaction**: the ``Manifest`` row with its ``log_index``, the ``Artifact`` row's name/kind,
   the ``SoftwareManifest`` row (role code, first of its commit), and the lineage edges; commit.
5. After commit, the MLflow copy is queued (:mod:`controller.services.provenance_mlflow`).

Why this order is safe: a crash (or a failed commit) after step 3 leaves a log entry for a manifest
the store does not hold. That is harmless: the log only ever proves that a manifest with this exact
hash was submitted, and the retry (the sidecar's spool retries until it gets an answer) appends the
same data, which the log answers with the *same* entry (appends are idempotent). The reverse, a
committed manifest the log does not hold, cannot happen: the row is written only with the index of
an entry already durable. Concurrent registrations of one ID, or of two software manifests of one
commit, collide on primary keys in step 4; the loser rolls back and re-runs from step 2.

Lineage edges (``lineage_edges``, ``src -role-> dst``; inserted with ON CONFLICT DO NOTHING):

- ``artifact:<input digest> -consumed-> task:<id>`` for every input recorded on the task;
- ``task:<id> -produced-> artifact:<digest>`` for an output;
- ``code:<repo>@<commit> -code-> task:<id>`` (the task's resolved code, else ``mlprov.code``), and for
  a software manifest with a code file ``artifact:<digest> -code-> task:<id>``;
- ``manifest:<referenced ID> -linked-> manifest:<ID>`` for every cross-reference, and
  ``artifact:<referenced artifact> -linked-> artifact:<digest>`` when both manifests' artifacts are
  known and the manifest has no task (Atlas-stored manifests join the graph through these).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.auth import Principal, Role
from controller.errors import ConflictError, ForbiddenError, InvalidInputError, UnknownArtifactError
from controller.services.provenance_mlflow import MlflowJob, ProvenanceMlflow
from controller.services.tlog import GroupCommitLog
from controller.services.uploads import UNCLASSIFIED
from controller.store.models import Artifact, LineageEdge, Manifest, SoftwareManifest, Task
from provenance.canonical import canonical_manifest
from provenance.errors import InvalidInputError as ProvenanceInvalidInput
from provenance.errors import UntrustedSignerError, VerificationError
from provenance.keys import TrustStore
from provenance.manifest import find_assertion, manifest_hash
from provenance.signing import SignatureVerifier
from provenance.tlog.entries import manifest_entry

__all__ = [
    "InvalidSignatureError",
    "ManifestIngest",
    "Registration",
    "StoreResult",
    "UntrustedManifestSignerError",
    "answer_for",
    "backfill_mlflow",
    "software_key",
]

log = structlog.get_logger(__name__)

_ATTEMPTS = 4


class InvalidSignatureError(InvalidInputError):
    code = "invalid_signature"


class UntrustedManifestSignerError(InvalidInputError):
    code = "untrusted_signer"


@dataclass
class Registration:
    """What is to be stored (both APIs build one)."""

    manifest: dict[str, Any]
    role: str  # output | code | atlas
    c2pa: bytes | None = None
    oms_bundle: bytes | None = None
    artifact: dict[str, Any] | None = None
    """``{digest, name, kind, size, media_type}`` as the sidecar sends it (role output/code)."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreResult:
    created: bool
    answer: dict[str, Any]


def software_key(repo: str, commit: str) -> str:
    return hashlib.sha256(f"{repo}\0{commit}".encode()).hexdigest()


def decode_b64(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{what} is not valid base64") from None


def _ingredient_digest(manifest: dict[str, Any]) -> str | None:
    ingredients = manifest["claim"]["ingredients"]
    if len(ingredients) != 1:
        return None
    data = ingredients[0].get("data") or {}
    return f"{data.get('alg')}:{data.get('hash')}"


def _artifact_dict(row: Artifact | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"digest": row.digest, "name": row.name, "kind": row.kind, "size": row.size, "media_type": row.media_type}


def answer_for(session: Session, row: Manifest) -> dict[str, Any]:
    """``{"id", "log_index", "artifact"}``; for a software manifest, the one kept for its commit."""
    if row.role == "code":
        code = find_assertion(row.manifest, "mlprov.code") or {}
        kept_ref = session.get(SoftwareManifest, software_key(str(code.get("repo")), str(code.get("commit"))))
        kept = session.get(Manifest, kept_ref.manifest_id) if kept_ref is not None else None
        row = kept or row
    artifact = session.get(Artifact, row.artifact_digest) if row.artifact_digest else None
    return {"id": row.id, "log_index": row.log_index, "artifact": _artifact_dict(artifact)}


class ManifestIngest:
    """Stores manifests (see the module docstring). Thread-safe; one per app."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        trust: TrustStore,
        tlog: GroupCommitLog,
        mlflow: ProvenanceMlflow | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.verifier = SignatureVerifier(trust)
        self.tlog = tlog
        self.mlflow = mlflow

    # -- validation ------------------------------------------------------------------------------
    def _validate(self, reg: Registration) -> str:
        try:
            canonical_manifest(reg.manifest)
        except ProvenanceInvalidInput as exc:
            raise InvalidInputError(f"malformed manifest: {exc}") from None
        manifest_id = reg.manifest["instance_id"]
        try:
            self.verifier.verify(reg.manifest)
        except UntrustedSignerError as exc:
            raise UntrustedManifestSignerError(f"manifest {manifest_id}: untrusted signer: {exc}") from None
        except VerificationError as exc:
            raise InvalidSignatureError(f"manifest {manifest_id}: bad signature: {exc}") from None
        return str(manifest_id)

    def _task(self, session: Session, reg: Registration, principal: Principal | None) -> Task | None:
        named = find_assertion(reg.manifest, "mlprov.task")
        task_id = named.get("task_id") if isinstance(named, dict) else None
        if principal is not None and principal.role is Role.TASK and task_id != principal.task_id:
            raise ForbiddenError(
                f"the manifest's mlprov.task names {task_id!r}, not this token's task: "
                "a task token registers only its own task's manifests"
            )
        if reg.role == "atlas" or task_id is None:
            return None
        task = session.get(Task, str(task_id))
        if task is None:
            raise InvalidInputError(f"the manifest's mlprov.task names an unknown task {task_id!r}")
        return task

    def _artifact(self, session: Session, reg: Registration) -> Artifact | None:
        ingredient = _ingredient_digest(reg.manifest)
        if reg.role == "atlas":
            return session.get(Artifact, ingredient) if ingredient and ingredient.startswith("sha256:") else None
        if reg.artifact is None:
            if reg.role == "code":
                return None
            raise InvalidInputError("an output registration needs `artifact` ({digest, name, kind, ...})")
        digest = reg.artifact.get("digest")
        if digest != ingredient:
            raise InvalidInputError(
                f"artifact {digest} is not the manifest's ingredient ({ingredient or 'none or several'})"
            )
        row = session.get(Artifact, str(digest))
        if row is None:
            raise UnknownArtifactError(f"artifact {digest} was not uploaded: PUT it to /tasks/<id>/artifacts/ first")
        return row

    # -- the entry point ------------------------------------------------------------------------
    def store(self, reg: Registration, principal: Principal | None) -> StoreResult:
        """Validate, log, record (see the module docstring); the answer and whether it was new."""
        manifest_id = self._validate(reg)
        digest = manifest_hash(reg.manifest)
        for attempt in range(_ATTEMPTS):
            try:
                return self._store_once(reg, principal, manifest_id, digest)
            except IntegrityError:
                if attempt == _ATTEMPTS - 1:
                    raise
                log.info("manifest_registration_race", manifest_id=manifest_id, attempt=attempt + 1)
        raise AssertionError("unreachable")

    def _store_once(self, reg: Registration, principal: Principal | None, manifest_id: str, digest: str) -> StoreResult:
        with self.session_factory() as session:
            task = self._task(session, reg, principal)
            existing = session.get(Manifest, manifest_id)
            if existing is not None:
                return self._replay(session, existing, digest, reg)
            artifact = self._artifact(session, reg)
            code_key: str | None = None
            if reg.role == "code":
                code = find_assertion(reg.manifest, "mlprov.code")
                if not isinstance(code, dict) or not code.get("repo") or not code.get("commit"):
                    raise InvalidInputError("a software manifest (role code) needs an mlprov.code {repo, commit}")
                code_key = software_key(str(code["repo"]), str(code["commit"]))
                if session.get(SoftwareManifest, code_key) is not None:
                    code_key = None  # another one is kept for this commit; this one is stored beside it
            # Only reads so far: no write lock is held while the log's fsync runs (pysqlite begins a
            # transaction at the first INSERT; PostgreSQL reads take no row locks).
            entry = self.tlog.append(manifest_entry(reg.manifest))

            row = Manifest(
                id=manifest_id,
                artifact_digest=artifact.digest if artifact is not None else None,
                task_id=task.id if task is not None else None,
                role="code" if reg.role == "code" else reg.role,
                manifest=reg.manifest,
                manifest_hash=digest,
                c2pa=reg.c2pa,
                oms_bundle=reg.oms_bundle,
                log_index=entry.index,
                meta=reg.meta or ({"artifact": dict(reg.artifact)} if reg.artifact else {}),
            )
            session.add(row)
            if artifact is not None and reg.artifact is not None:
                artifact = session.merge(artifact)
                if artifact.kind == UNCLASSIFIED or artifact.name is None:
                    artifact.name = reg.artifact.get("name") or artifact.name
                    artifact.kind = str(reg.artifact.get("kind") or artifact.kind)
                    artifact.media_type = reg.artifact.get("media_type") or artifact.media_type
            session.flush()
            if code_key is not None:
                code = find_assertion(reg.manifest, "mlprov.code") or {}
                session.add(
                    SoftwareManifest(
                        key=code_key, repo=str(code["repo"]), commit=str(code["commit"]), manifest_id=manifest_id
                    )
                )
            self._edges(session, row, task, reg)
            session.flush()
            answer = answer_for(session, row)
            datasets = self._dataset_inputs(session, task)
            session.commit()
        log.info(
            "manifest_registered",
            manifest_id=manifest_id,
            role=row.role,
            task_id=row.task_id,
            artifact=row.artifact_digest,
            log_index=entry.index,
        )
        self._queue_mlflow(row, task, datasets)
        return StoreResult(True, answer)

    def _replay(self, session: Session, existing: Manifest, digest: str, reg: Registration) -> StoreResult:
        if existing.manifest_hash != digest:
            raise ConflictError(
                f"manifest {existing.id} is already registered with other content (hash {existing.manifest_hash[:16]}…)"
            )
        if existing.deleted_at is not None and reg.role == "atlas":  # re-stored after a DELETE: visible again
            existing.deleted_at = None
            session.commit()
            return StoreResult(True, answer_for(session, existing))
        return StoreResult(False, answer_for(session, existing))

    # -- lineage -------------------------------------------------------------------------------
    def _edges(self, session: Session, row: Manifest, task: Task | None, reg: Registration) -> None:
        edges: list[tuple[str, str, str, str, str]] = []
        if task is not None:
            for item in task.inputs or []:
                if isinstance(item, dict) and item.get("digest"):
                    edges.append(("artifact", str(item["digest"]), "task", task.id, "consumed"))
            if row.role == "output" and row.artifact_digest:
                edges.append(("task", task.id, "artifact", row.artifact_digest, "produced"))
            code = task.code if isinstance(task.code, dict) and task.code.get("commit") else None
            code = code or find_assertion(row.manifest, "mlprov.code")
            if isinstance(code, dict) and code.get("repo") and code.get("commit"):
                edges.append(("code", f"{code['repo']}@{code['commit']}", "task", task.id, "code"))
            if row.role == "code" and row.artifact_digest:
                edges.append(("artifact", str(row.artifact_digest), "task", task.id, "code"))
        cross = [r for r in row.manifest.get("cross_references") or [] if isinstance(r, dict)]
        refs = [str(r["manifest_url"]) for r in cross if r.get("manifest_url")]
        for ref in refs:
            edges.append(("manifest", ref, "manifest", row.id, "linked"))
        if task is None and row.artifact_digest and refs:
            linked = session.scalars(
                select(Manifest.artifact_digest).where(Manifest.id.in_(refs), Manifest.artifact_digest.is_not(None))
            ).all()
            edges += [("artifact", str(d), "artifact", row.artifact_digest, "linked") for d in set(linked)]
        if not edges:
            return
        values = [
            {"src_type": s, "src_id": si, "dst_type": d, "dst_id": di, "role": r}
            for s, si, d, di, r in dict.fromkeys(edges)
        ]
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        session.execute(insert(LineageEdge).values(values).on_conflict_do_nothing())

    # -- MLflow --------------------------------------------------------------------------------
    @staticmethod
    def _dataset_inputs(session: Session, task: Task | None) -> list[dict[str, Any]]:
        inputs = [
            i for i in (task.inputs if task is not None else None) or [] if isinstance(i, dict) and i.get("digest")
        ]
        if not inputs:
            return []
        digests = [str(i["digest"]) for i in inputs]
        rows = session.execute(select(Artifact.digest, Artifact.kind).where(Artifact.digest.in_(digests)))
        kinds = {str(digest): str(kind) for digest, kind in rows}
        return [
            {"name": i.get("name"), "digest": str(i["digest"])}
            for i in inputs
            if kinds.get(str(i["digest"])) == "dataset"
        ]

    def _queue_mlflow(self, row: Manifest, task: Task | None, datasets: list[dict[str, Any]]) -> None:
        _queue_mlflow(self.mlflow, row, task, datasets)


def backfill_mlflow(session_factory: sessionmaker[Session], mlflow: ProvenanceMlflow | None, task_id: str) -> int:
    """Queue every manifest registered for ``task_id`` into its MLflow run; how many were queued.

    The task's run is opened off the launch path, so a fast job's sidecar can register manifests
    before ``Task.mlflow_run_id`` is set: those were not queued at registration. The dispatcher calls
    this once the run exists and again when the task ends; the writer skips what it already wrote."""
    if mlflow is None:
        return 0
    with session_factory() as session:
        task = session.get(Task, task_id)
        if task is None or not task.mlflow_run_id:
            return 0
        rows = session.scalars(
            select(Manifest)
            .where(Manifest.task_id == task_id, Manifest.deleted_at.is_(None))
            .order_by(Manifest.created_at)
        ).all()
        datasets = ManifestIngest._dataset_inputs(session, task)
        for row in rows:
            _queue_mlflow(mlflow, row, task, datasets)
    return len(rows)


def _queue_mlflow(
    mlflow: ProvenanceMlflow | None, row: Manifest, task: Task | None, datasets: list[dict[str, Any]]
) -> None:
    if mlflow is None or task is None or not task.mlflow_run_id:
        return
    try:
        name = None
        if row.role == "output":
            assertion = find_assertion(row.manifest, "mlprov.artifact")
            name = assertion.get("name") if isinstance(assertion, dict) else None
        mlflow.submit(
            MlflowJob(
                mlflow_run_id=task.mlflow_run_id,
                manifest_id=row.id,
                role=row.role,
                manifest_json=json.dumps(row.manifest, indent=2).encode(),
                c2pa=row.c2pa,
                oms_bundle=row.oms_bundle,
                artifact_name=name or row.manifest.get("title"),
                artifact_digest=row.artifact_digest,
                dataset_inputs=datasets,
            )
        )
    except Exception as exc:  # MLflow is a view: never fail a registration
        log.warning("mlflow_provenance_failed", manifest_id=row.id, error=f"{type(exc).__name__}: {exc}")
