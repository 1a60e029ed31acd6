"""Read side of artifacts and manifests: ``GET /api/v1/artifacts[/{digest}]``, ``GET /api/v1/manifests/{id}``.

Listing is keyset-paginated on ``(created_at, digest)``, oldest first: ``cursor`` is the opaque
``next_cursor`` of the previous page (base64 JSON of the last row's key), so pages stay stable while
artifacts are added. ``run_id`` selects the artifacts produced (``role`` output manifests) by tasks of
that pipeline run (the Airflow run ID).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from controller.errors import ArtifactNotFoundError, InvalidInputError, NotFoundError
from controller.store.models import Artifact, Manifest, Task

__all__ = ["ManifestNotFound", "artifact_view", "get_manifest_row", "list_artifacts", "manifest_view"]

API = "/api/v1"


class ManifestNotFound(NotFoundError):
    code = "manifest_not_found"


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when is not None else None


def _artifact_fields(row: Artifact) -> dict[str, Any]:
    return {
        "digest": row.digest,
        "name": row.name,
        "kind": row.kind,
        "size": row.size,
        "media_type": row.media_type,
        "uris": list(row.uris or []),
        "created_at": _iso(row.created_at),
        "content": f"{API}/artifacts/{row.digest}/content",
    }


def _task_summary(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "service": task.service,
        "state": task.state,
        "dag_id": task.dag_id,
        "run_id": task.run_id,
        "airflow_task_id": task.airflow_task_id,
        "try_number": task.try_number,
        "mlflow_run_id": task.mlflow_run_id,
    }


def _manifest_summary(row: Manifest) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "task_id": row.task_id,
        "manifest_hash": row.manifest_hash,
        "log_index": row.log_index,
        "created_at": _iso(row.created_at),
        "deleted": row.deleted_at is not None,
        "href": f"{API}/manifests/{row.id}",
    }


def artifact_view(session: Session, digest: str) -> dict[str, Any]:
    """The artifact, every manifest describing it (oldest first) and the task(s) that produced it."""
    row = session.get(Artifact, digest)
    if row is None:
        raise ArtifactNotFoundError(f"no artifact {digest} is known to the controller")
    manifests = session.scalars(
        select(Manifest).where(Manifest.artifact_digest == digest).order_by(Manifest.created_at, Manifest.id)
    ).all()
    producers = session.scalars(
        select(Task)
        .join(Manifest, Manifest.task_id == Task.id)
        .where(Manifest.artifact_digest == digest, Manifest.role == "output")
        .distinct()
    ).all()
    return {
        **_artifact_fields(row),
        "manifests": [_manifest_summary(m) for m in manifests],
        "produced_by": [_task_summary(t) for t in producers],
    }


def _encode_cursor(row: Artifact) -> str:
    key = json.dumps([_iso(row.created_at), row.digest])
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        when, digest = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return dt.datetime.fromisoformat(str(when).replace("Z", "+00:00")), str(digest)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(f"cursor is not one this API returned: {exc}") from None


def list_artifacts(
    session: Session,
    *,
    name: str | None = None,
    kind: str | None = None,
    run_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """``{"artifacts": [...], "next_cursor": str | None}``."""
    query = select(Artifact)
    if name is not None:
        query = query.where(Artifact.name == name)
    if kind is not None:
        query = query.where(Artifact.kind == kind)
    if run_id is not None:
        produced = (
            select(Manifest.artifact_digest)
            .join(Task, Task.id == Manifest.task_id)
            .where(Task.run_id == run_id, Manifest.role == "output", Manifest.artifact_digest.is_not(None))
        )
        query = query.where(Artifact.digest.in_(produced))
    if cursor is not None:
        when, digest = _decode_cursor(cursor)
        query = query.where(
            or_(Artifact.created_at > when, and_(Artifact.created_at == when, Artifact.digest > digest))
        )
    rows = session.scalars(query.order_by(Artifact.created_at, Artifact.digest).limit(limit + 1)).all()
    page = list(rows[:limit])
    return {
        "artifacts": [_artifact_fields(r) for r in page],
        "next_cursor": _encode_cursor(page[-1]) if len(rows) > limit else None,
    }


def get_manifest_row(session: Session, manifest_id: str) -> Manifest:
    row = session.get(Manifest, manifest_id)
    if row is None:
        raise ManifestNotFound(f"no manifest {manifest_id} is registered")
    return row


def manifest_view(session: Session, manifest_id: str) -> dict[str, Any]:
    """The manifest JSON, where its C2PA sidecar and OMS bundle are, its log index."""
    row = get_manifest_row(session, manifest_id)
    base = f"{API}/manifests/{row.id}"
    return {
        **_manifest_summary(row),
        "artifact_digest": row.artifact_digest,
        "deleted_at": _iso(row.deleted_at),
        "manifest": row.manifest,
        "c2pa": f"{base}/c2pa" if row.c2pa is not None else None,
        "oms_bundle": f"{base}/oms-bundle" if row.oms_bundle is not None else None,
        "log": {
            "index": row.log_index,
            "entry": f"{API}/log/entries/{row.log_index}" if row.log_index is not None else None,
            "inclusion_proof": f"{API}/log/proof/inclusion?hash={row.id}",
        },
    }
