"""Artifacts: upload (``PUT /tasks/{task_id}/artifacts/{digest}``, the sidecar's task token or admin) and
queries (``GET /artifacts``, ``GET /artifacts/{digest}``, ``GET /artifacts/{digest}/content``: admin or
read-only tokens). See ``controller.services.uploads`` and ``controller.services.artifacts_query``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from controller.api.deps import ReaderDep, SessionDep, StateDep, TaskTokenDep
from controller.artifacts.base import ArtifactStore, split_digest
from controller.errors import PayloadTooLargeError, UnavailableError
from controller.services.artifacts_query import artifact_view, list_artifacts
from controller.services.uploads import TAR_MEDIA_TYPE, ingest_upload
from controller.state import AppState

__all__ = ["router"]

router = APIRouter(tags=["artifacts"])

_CHUNK = 1024 * 1024


def _store(state: AppState) -> ArtifactStore:
    if state.artifact_store is None:
        raise UnavailableError("the artifact store is not configured")
    return state.artifact_store


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the artifact exceeds MLPROV_MAX_ARTIFACT_BYTES ({limit} bytes)")


@router.put(
    "/tasks/{task_id}/artifacts/{digest}",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "already stored"},
        400: {"description": "digest mismatch, malformed digest, unsafe or invalid tar"},
        413: {"description": "larger than MLPROV_MAX_ARTIFACT_BYTES"},
    },
)
async def upload_artifact(
    task_id: str, digest: str, request: Request, state: StateDep, _: TaskTokenDep
) -> JSONResponse:
    """The artifact's bytes: a file as ``application/octet-stream``, a directory as ``application/x-tar``."""
    split_digest(digest)
    store = _store(state)
    limit = state.settings.max_artifact_bytes
    media_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    spool_dir = state.settings.home / "uploads"
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="upload-")
    spool = Path(name)
    sha = hashlib.sha256()
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise _too_large(limit)
                sha.update(chunk)
                out.write(chunk)
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    result = await run_in_threadpool(
        lambda: ingest_upload(
            spool=spool,
            digest=digest,
            media_type=TAR_MEDIA_TYPE if media_type == TAR_MEDIA_TYPE else media_type,
            streamed_sha256=sha.hexdigest(),
            store=store,
            session_factory=state.session_factory,
        )
    )
    return JSONResponse(result.to_dict(), status_code=201 if result.created else 200)


@router.get("/artifacts")
def search_artifacts(
    session: SessionDep,
    _: ReaderDep,
    name: str | None = None,
    kind: str | None = None,
    run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Artifacts by name, kind or producing pipeline run, oldest first; follow ``next_cursor``."""
    return list_artifacts(session, name=name, kind=kind, run_id=run_id, limit=limit, cursor=cursor)


@router.get("/artifacts/{digest}", responses={404: {"description": "unknown artifact"}})
def get_artifact(digest: str, session: SessionDep, _: ReaderDep) -> dict[str, Any]:
    """The artifact, its manifests and the task(s) that produced it."""
    return artifact_view(session, digest)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


@router.get(
    "/artifacts/{digest}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}, TAR_MEDIA_TYPE: {}}}, 404: {}},
)
def artifact_content(digest: str, state: StateDep, _: ReaderDep) -> StreamingResponse:
    """The bytes: a file as stored, a directory as an uncompressed tar of its files (sorted)."""
    from provenance.sidecar.delivery import tar_directory

    store = _store(state)
    split_digest(digest)
    tmp = Path(tempfile.mkdtemp(prefix="mlprov-content-"))
    try:
        path_of = getattr(store, "path_of", None)  # the local store serves its file in place
        local = path_of(digest) if callable(path_of) else store.get(digest, tmp / "artifact")
        if local.is_dir():
            archive = tmp / "artifact.tar"
            with open(archive, "wb") as out:
                tar_directory(local, out)
            path, media = archive, TAR_MEDIA_TYPE
        else:
            path, media = local, "application/octet-stream"
        size = path.stat().st_size
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def stream() -> Iterator[bytes]:
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    headers = {"Content-Length": str(size), "X-Mlprov-Digest": digest}
    return StreamingResponse(stream(), media_type=media, headers=headers)
