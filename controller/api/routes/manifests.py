"""Manifests: registration (``POST /manifests``: a task token for its own task's manifests, or admin;
docs/sidecar-protocol.md section 2.2) and reads (``GET /manifests/{id}``, ``/c2pa``, ``/oms-bundle``:
admin or read-only). The work is in ``controller.services.ingest``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from controller.api.deps import TASK_TOKEN_ROUTE, ReaderDep, SessionDep, StateDep, TaskTokenOrReaderDep
from controller.errors import NotFoundError, UnavailableError
from controller.services.artifacts_query import get_manifest_row, manifest_view
from controller.services.ingest import ManifestIngest, Registration, decode_b64

__all__ = ["ArtifactRef", "ManifestRegistration", "get_ingest", "router"]

router = APIRouter(prefix="/manifests", tags=["manifests"])


class ArtifactRef(BaseModel):
    digest: str = Field(min_length=1, max_length=80)
    name: str | None = Field(default=None, max_length=255)
    kind: str | None = Field(default=None, max_length=32)
    size: int | None = Field(default=None, ge=0)
    media_type: str | None = Field(default=None, max_length=255)


class ManifestRegistration(BaseModel):
    manifest: dict[str, Any]
    c2pa: str | None = Field(default=None, description="base64 .c2pa sidecar")
    oms_bundle: str | None = Field(default=None, description="base64 OMS (Sigstore) bundle JSON")
    artifact: ArtifactRef | None = None
    role: Literal["output", "code"] = "output"


class RegistrationAnswer(BaseModel):
    id: str
    log_index: int | None
    artifact: dict[str, Any] | None


def get_ingest(state: StateDep) -> ManifestIngest:
    if state.trust is None or state.tlog is None:
        raise UnavailableError("the trust store or transparency log is not ready")
    return ManifestIngest(state.session_factory, state.trust, state.tlog, state.provenance_mlflow)


IngestDep = Annotated[ManifestIngest, Depends(get_ingest)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RegistrationAnswer,
    openapi_extra=TASK_TOKEN_ROUTE,
    responses={
        200: {"description": "this manifest (same ID and hash) was already registered"},
        400: {"description": "malformed manifest, bad or untrusted signature, unknown or mismatched artifact"},
        403: {"description": "the manifest's mlprov.task is not the token's task"},
        409: {"description": "the manifest ID is registered with other content"},
    },
)
async def register_manifest(
    body: ManifestRegistration, ingest: IngestDep, principal: TaskTokenOrReaderDep
) -> JSONResponse:
    """Validate, store, link, log and record a signed manifest; idempotent on its ID."""
    registration = Registration(
        manifest=body.manifest,
        role=body.role,
        c2pa=decode_b64(body.c2pa, "c2pa"),
        oms_bundle=decode_b64(body.oms_bundle, "oms_bundle"),
        artifact=body.artifact.model_dump() if body.artifact is not None else None,
    )
    result = await run_in_threadpool(ingest.store, registration, principal)
    return JSONResponse(result.answer, status_code=201 if result.created else 200)


@router.get("/{manifest_id}", responses={404: {"description": "unknown manifest"}})
def get_manifest(manifest_id: str, session: SessionDep, _: ReaderDep) -> dict[str, Any]:
    """The manifest JSON, where its C2PA sidecar and OMS bundle are, and its transparency-log index."""
    return manifest_view(session, manifest_id)


@router.get("/{manifest_id}/c2pa", response_class=Response, responses={404: {}})
def get_c2pa(manifest_id: str, session: SessionDep, _: ReaderDep) -> Response:
    """The C2PA sidecar manifest (``.c2pa`` bytes)."""
    row = get_manifest_row(session, manifest_id)
    if row.c2pa is None:
        raise NotFoundError(f"manifest {manifest_id} has no C2PA sidecar")
    return Response(row.c2pa, media_type="application/c2pa")


@router.get("/{manifest_id}/oms-bundle", response_class=Response, responses={404: {}})
def get_oms_bundle(manifest_id: str, session: SessionDep, _: ReaderDep) -> Response:
    """The OpenSSF Model Signing bundle (Sigstore bundle JSON)."""
    row = get_manifest_row(session, manifest_id)
    if row.oms_bundle is None:
        raise NotFoundError(f"manifest {manifest_id} has no OMS bundle (only models have one)")
    return Response(row.oms_bundle, media_type="application/vnd.dev.sigstore.bundle.v0.3+json")
