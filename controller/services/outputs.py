"""A job's workspace on the way in and its outputs on the way out (used by the dispatcher).

In: ``inputs/``, ``outputs/`` and ``params.json`` (service defaults overlaid by the task's params).
Out (until the provenance sidecar does it with signatures): every top-level entry of ``outputs/``,
file or directory, except hidden and temporary names, is hashed (``provenance.hashing.hash_path``:
a file's sha256, a directory's OMS root digest), stored in the ``ArtifactStore`` under that digest and
recorded as an artifact with a ``task -produced-> artifact`` lineage edge. ``outputs/metrics.json``
(a flat JSON object of numbers) is read for MLflow and is itself an ``evaluation`` artifact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.artifacts.base import ArtifactStore
from controller.errors import InvalidInputError
from controller.logging import get_logger
from controller.services.refs import check_artifact_name
from controller.store.models import Artifact, LineageEdge, Manifest, utcnow
from provenance.hashing import format_digest, hash_path

__all__ = [
    "METRICS_FILE",
    "Output",
    "add_edge",
    "collect",
    "prepare_workspace",
    "read_metrics",
    "record_output",
    "registered_outputs",
    "unsigned_outputs",
]

log = get_logger(__name__)

METRICS_FILE = "metrics.json"
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")
_MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".ckpt", ".h5", ".keras", ".joblib", ".pkl")


@dataclass(frozen=True)
class Output:
    name: str
    digest: str
    size: int
    kind: str
    uri: str
    is_dir: bool
    manifest_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "kind": self.kind,
            "manifest_id": self.manifest_id,
        }


def prepare_workspace(workspace: Path, params: dict[str, Any]) -> None:
    """A fresh workspace (an earlier attempt's files are removed) with ``params.json``."""
    if workspace.exists():
        shutil.rmtree(workspace)
    (workspace / "inputs").mkdir(parents=True)
    (workspace / "outputs").mkdir()
    (workspace / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))


def _kind(path: Path) -> str:
    if path.name == METRICS_FILE:
        return "evaluation"
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    if any(f.suffix.lower() in _MODEL_SUFFIXES for f in files):
        return "model"
    return "dataset"


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(_TEMP_SUFFIXES)


def collect(outputs_dir: Path, store: ArtifactStore) -> list[Output]:
    """Hash and store every top-level output; raises (a ProvenanceError, e.g. for a symlink) to fail the task."""
    found: list[Output] = []
    if not outputs_dir.is_dir():
        return found
    for path in sorted(outputs_dir.iterdir()):
        if _ignored(path.name):
            continue
        try:
            check_artifact_name(path.name)
        except InvalidInputError as exc:
            raise InvalidInputError(f"outputs/{path.name}: {exc}") from exc
        digest = format_digest(hash_path(path))
        stored = store.put(path, digest)
        found.append(Output(path.name, stored.digest, stored.size, _kind(path), stored.uri, stored.is_dir))
    return found


def registered_outputs(session: Session, task_id: str) -> list[Output]:
    """The outputs the task's sidecar registered: one per output manifest (the latest per name)."""
    rows = session.execute(
        select(Manifest, Artifact)
        .join(Artifact, Manifest.artifact_digest == Artifact.digest)
        .where(Manifest.task_id == task_id, Manifest.role == "output", Manifest.deleted_at.is_(None))
        .order_by(Manifest.created_at)
    ).all()
    by_name: dict[str, Output] = {}
    for manifest, artifact in rows:
        info = (manifest.meta or {}).get("artifact") or {}
        name = str(info.get("name") or artifact.name or artifact.digest)
        by_name[name] = Output(
            name=name,
            digest=artifact.digest,
            size=artifact.size,
            kind=str(info.get("kind") or artifact.kind),
            uri=(artifact.uris or [""])[0],
            is_dir=artifact.media_type == "application/x-directory",
            manifest_id=manifest.id,
        )
    return [by_name[name] for name in sorted(by_name)]


def unsigned_outputs(outputs_dir: Path, registered: list[Output]) -> list[str]:
    """Top-level outputs left without a registered manifest: a traceability gap the task must not hide."""
    if not outputs_dir.is_dir():
        return []
    names = {o.name for o in registered}
    return sorted(p.name for p in outputs_dir.iterdir() if not _ignored(p.name) and p.name not in names)


def read_metrics(outputs_dir: Path) -> dict[str, Any]:
    """The JSON object in ``outputs/metrics.json`` ({} when absent; the recorder keeps the numbers)."""
    path = outputs_dir / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidInputError(f"outputs/{METRICS_FILE} is not JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _insert_ignore(session: Session, table: Table, values: dict[str, Any]) -> None:
    """INSERT that does nothing when the row exists (two tasks may record one digest at once)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).values(**values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(table).values(**values).on_conflict_do_nothing())


def add_edge(session: Session, src_type: str, src_id: str, dst_type: str, dst_id: str, role: str) -> None:
    values = {"src_type": src_type, "src_id": src_id, "dst_type": dst_type, "dst_id": dst_id, "role": role}
    _insert_ignore(session, LineageEdge.__table__, {**values, "created_at": utcnow()})  # type: ignore[arg-type]


def record_output(session: Session, task_id: str, output: Output) -> None:
    """The artifact row (first producer names it) and the ``task -produced-> artifact`` edge."""
    row = {
        "digest": output.digest,
        "kind": output.kind,
        "name": output.name,
        "size": output.size,
        "media_type": "application/x-directory" if output.is_dir else None,
        "uris": [output.uri],
        "created_at": utcnow(),
    }
    _insert_ignore(session, Artifact.__table__, row)  # type: ignore[arg-type]
    add_edge(session, "task", task_id, "artifact", output.digest, "produced")
