"""``GET /software-manifests?repo=&commit=``: the software manifest kept for a code commit
(docs/sidecar-protocol.md section 2.3). Open to any task token (its sidecar asks before building one),
admin and read-only tokens.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from controller.api.deps import TASK_TOKEN_ROUTE, SessionDep, TaskTokenOrReaderDep
from controller.errors import NotFoundError
from controller.services.ingest import software_key
from controller.store.models import Manifest, SoftwareManifest

__all__ = ["router"]

router = APIRouter(prefix="/software-manifests", tags=["manifests"])


@router.get("", openapi_extra=TASK_TOKEN_ROUTE, responses={404: {"description": "none registered for this commit"}})
def find_software_manifest(
    session: SessionDep,
    _: TaskTokenOrReaderDep,
    repo: Annotated[str, Query(min_length=1, max_length=1024)],
    commit: Annotated[str, Query(min_length=1, max_length=64)],
) -> dict[str, Any]:
    """``{"id", "manifest"}`` of the software manifest kept for (repo, commit)."""
    kept = session.get(SoftwareManifest, software_key(repo, commit))
    row = session.get(Manifest, kept.manifest_id) if kept is not None else None
    if row is None:
        raise NotFoundError(f"no software manifest is registered for {repo}@{commit}")
    return {"id": row.id, "manifest": row.manifest, "log_index": row.log_index}
