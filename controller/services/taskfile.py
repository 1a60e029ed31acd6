"""``$WORKSPACE/.mlprov/task.json``: what the dispatcher tells a job's sidecar (docs/sidecar-protocol.md section 1).

The dispatcher calls :func:`write_task_file` before it starts the job::

    write_task_file(workspace, task=task, inputs=[{"name": "train.parquet", "digest": "sha256:…"}],
                    code={"repo": "/src", "ref": "main", "commit": "<40 hex>", "path": "stages/x.py"},
                    session=session, attempt=1, environment={"interpreter": sys.executable})

Each input gets ``path`` (default ``inputs/<name>``), ``kind`` (given, else the ``Artifact`` row's, else
null) and the ``manifest_id`` / ``manifest_hash`` of the most recent manifest registered for its digest
(not deleted), or null for an input without one (an unsigned ancestor, which the sidecar records and
verification reports). ``params`` is the task's parameters. ``deployment`` is the deployment the task
recorded at submission (``{id, pipeline, environment, sequence, commit, manifest_id, manifest_hash, dag_id,
dag_file, dag_file_digest}``: the DAG version that runs it; docs/deployments.md), or null. The file is
written atomically (temporary file, fsync, rename) so the sidecar never reads half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.services.deployments_query import deployment_refs
from controller.store.models import Artifact, Manifest, Task

__all__ = ["TASK_FILE", "latest_manifest", "task_file_content", "write_task_file"]

TASK_FILE = Path(".mlprov") / "task.json"


def latest_manifest(session: Session, digest: str) -> Manifest | None:
    """The most recent live manifest describing the artifact ``digest``."""
    return session.scalars(
        select(Manifest)
        .where(Manifest.artifact_digest == digest, Manifest.deleted_at.is_(None))
        .order_by(Manifest.created_at.desc(), Manifest.id.desc())
        .limit(1)
    ).first()


def _input(session: Session, item: dict[str, Any]) -> dict[str, Any]:
    name, digest = str(item["name"]), str(item["digest"])
    kind = item.get("kind")
    if kind is None:
        row = session.get(Artifact, digest)
        kind = row.kind if row is not None else None
    manifest = latest_manifest(session, digest)
    return {
        "name": name,
        "digest": digest,
        "path": item.get("path") or f"inputs/{name}",
        "kind": kind,
        "manifest_id": manifest.id if manifest is not None else None,
        "manifest_hash": manifest.manifest_hash if manifest is not None else None,
    }


def task_file_content(
    *,
    task: Task,
    inputs: list[dict[str, Any]],
    code: dict[str, Any] | None,
    session: Session,
    attempt: int = 1,
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object of task.json (see the module docstring)."""
    run = None
    if task.dag_id is not None or task.run_id is not None:
        run = {
            "dag_id": task.dag_id,
            "run_id": task.run_id,
            "task_id": task.airflow_task_id,
            "try_number": task.try_number,
        }
    content: dict[str, Any] = {
        "task_id": task.id,
        "attempt": attempt,
        "service": task.service,
        "run": run or {},
        "params": dict(task.params or {}),
        "code": dict(code) if code else None,
        "inputs": [_input(session, item) for item in inputs],
        "environment": dict(environment or {}),
    }
    content["deployment"] = _deployment(session, task)
    return content


def _deployment(session: Session, task: Task) -> dict[str, Any] | None:
    """The deployment the task recorded at submission (the DAG version that runs it), or None."""
    if not task.deployment_id:
        return None
    ref = deployment_refs(session, [(task.deployment_id, task.dag_id)]).get(task.deployment_id)
    return ref.model_dump() if ref is not None else None


def write_task_file(
    workspace: Path,
    *,
    task: Task,
    inputs: list[dict[str, Any]],
    code: dict[str, Any] | None,
    session: Session,
    attempt: int = 1,
    environment: dict[str, Any] | None = None,
) -> Path:
    """Write ``<workspace>/.mlprov/task.json`` atomically; return its path."""
    content = task_file_content(
        task=task, inputs=inputs, code=code, session=session, attempt=attempt, environment=environment
    )
    target = Path(workspace) / TASK_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".task.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(content, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
