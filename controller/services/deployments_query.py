"""Read side of deployments: ``GET /api/v1/deployments[/{id}[/manifest]]`` and what tasks say about theirs.

Listing is keyset-paginated on ``(created_at, id)``, newest first: ``cursor`` is the opaque ``next_cursor``
of the previous page. :func:`latest_deployment_for_dag` is what a task records at submission (the newest
deployment carrying its dag_id, any pipeline or environment); :func:`deployment_refs` gives the
:class:`DeploymentRef` that task.json, the lineage graph and run provenance carry. The write side is
:mod:`controller.services.deployments`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from controller.errors import InvalidInputError, NotFoundError
from controller.store.models import Deployment, DeploymentDag, Manifest

__all__ = [
    "DeploymentNotFoundError",
    "DeploymentRef",
    "deployment_manifest",
    "deployment_refs",
    "deployment_view",
    "get_deployment",
    "latest_deployment_for_dag",
    "list_deployments",
]


class DeploymentNotFoundError(NotFoundError):
    code = "deployment_not_found"


# --- views -----------------------------------------------------------------------------------------------


class DeploymentRef(BaseModel):
    """What a task (task.json, lineage node, run provenance) says about the DAG version that ran it."""

    id: str
    pipeline: str
    environment: str
    sequence: int
    commit: str
    manifest_id: str
    manifest_hash: str = Field(description="hex SHA-256 of the deployment manifest")
    dag_id: str | None = None
    dag_file: str | None = Field(default=None, description="the path of the file defining the DAG")
    dag_file_digest: str | None = None


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def deployment_view(row: Deployment) -> dict[str, Any]:
    """The API answer for one deployment (identical for the same row: idempotent replays compare equal)."""
    return {
        "id": row.id,
        "sequence": row.sequence,
        "pipeline": row.pipeline,
        "environment": row.environment,
        "commit": row.commit,
        "ref": row.ref,
        "files": list(row.files or []),
        "services": list(row.services or []),
        "ci": dict(row.ci or {}),
        "target": dict(row.target or {}),
        "dag_ids": list(row.dag_ids or []),
        "created_at": _iso(row.created_at),
        "manifest_id": row.manifest_id,
        "manifest_hash": f"sha256:{row.manifest_hash}",
        "log_index": row.log_index,
        "previous_id": row.previous_id,
        "previous_manifest_id": row.previous_manifest_id,
        "links": {
            "self": f"/api/v1/deployments/{row.id}",
            "manifest": f"/api/v1/deployments/{row.id}/manifest",
            "verify": f"/api/v1/manifests/{row.manifest_id}",
        },
    }


# --- reads -----------------------------------------------------------------------------------------------


def get_deployment(session: Session, deployment_id: str) -> Deployment:
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise DeploymentNotFoundError(f"no deployment {deployment_id!r}: see GET /api/v1/deployments")
    return row


def deployment_manifest(session: Session, deployment_id: str) -> dict[str, Any]:
    """The signed manifest of a deployment."""
    row = get_deployment(session, deployment_id)
    manifest = session.get(Manifest, row.manifest_id)
    if manifest is None:  # pragma: no cover - written in the same transaction
        raise DeploymentNotFoundError(f"deployment {deployment_id} has no stored manifest {row.manifest_id}")
    return dict(manifest.manifest)


def _encode_cursor(row: Deployment) -> str:
    return base64.urlsafe_b64encode(json.dumps([_iso(row.created_at), row.id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        when, ident = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return dt.datetime.fromisoformat(str(when).replace("Z", "+00:00")), str(ident)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(f"cursor is not one this API returned: {exc}") from None


def list_deployments(
    session: Session,
    *,
    pipeline: str | None = None,
    environment: str | None = None,
    dag_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """``{"deployments": [...], "next_cursor"}``, newest first (keyset on ``(created_at, id)``)."""
    query = select(Deployment)
    if pipeline is not None:
        query = query.where(Deployment.pipeline == pipeline)
    if environment is not None:
        query = query.where(Deployment.environment == environment)
    if dag_id is not None:
        carrying = select(DeploymentDag.deployment_id).where(DeploymentDag.dag_id == dag_id)
        query = query.where(Deployment.id.in_(carrying))
    if cursor is not None:
        when, ident = _decode_cursor(cursor)
        query = query.where(
            or_(Deployment.created_at < when, and_(Deployment.created_at == when, Deployment.id < ident))
        )
    rows = session.scalars(query.order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(limit + 1)).all()
    page = list(rows[:limit])
    return {
        "deployments": [deployment_view(r) for r in page],
        "next_cursor": _encode_cursor(page[-1]) if len(rows) > limit else None,
    }


def latest_deployment_for_dag(session: Session, dag_id: str) -> str | None:
    """The ID of the newest deployment carrying ``dag_id`` (any pipeline or environment), or None."""
    return session.scalar(
        select(DeploymentDag.deployment_id)
        .where(DeploymentDag.dag_id == dag_id)
        .order_by(DeploymentDag.created_at.desc(), DeploymentDag.deployment_id.desc())
        .limit(1)
    )


def deployment_refs(session: Session, pairs: Iterable[tuple[str, str | None]]) -> dict[str, DeploymentRef]:
    """``{deployment_id: DeploymentRef}`` for ``(deployment_id, dag_id)`` pairs, in two statements.

    The DAG file is the one defining ``dag_id`` in that deployment (None when the deployment does not
    carry it). A deployment asked for with two dag_ids gets the first pair's."""
    wanted: dict[str, str | None] = {}
    for deployment_id, dag_id in pairs:
        wanted.setdefault(deployment_id, dag_id)
    if not wanted:
        return {}
    rows = session.scalars(select(Deployment).where(Deployment.id.in_(wanted))).all()
    dags = {
        (d.deployment_id, d.dag_id): d
        for d in session.scalars(select(DeploymentDag).where(DeploymentDag.deployment_id.in_(wanted)))
    }
    found: dict[str, DeploymentRef] = {}
    for row in rows:
        dag_id = wanted[row.id]
        dag = dags.get((row.id, dag_id)) if dag_id is not None else None
        found[row.id] = DeploymentRef(
            id=row.id,
            pipeline=row.pipeline,
            environment=row.environment,
            sequence=row.sequence,
            commit=row.commit,
            manifest_id=row.manifest_id,
            manifest_hash=row.manifest_hash,
            dag_id=dag_id,
            dag_file=dag.path if dag is not None else None,
            dag_file_digest=dag.digest if dag is not None else None,
        )
    return found
