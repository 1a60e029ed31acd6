"""The Atlas storage API at the root (``/manifests``), as atlas-cli's ``--storage-type database`` calls it.

Auth is its own rule (these routes are outside ``/api/v1``): a bearer token as everywhere (admin: all;
read-only: GET; task tokens: none of these), ``DELETE`` admin only. atlas-cli sends no token, so a
request without ``Authorization`` is accepted only when the operator allows it:
``MLPROV_ATLAS_ANONYMOUS_WRITES=true`` (POST and GET) or ``MLPROV_ATLAS_ANONYMOUS_READS=true`` (GET).
Every stored manifest's signature is verified against the trust store either way. Semantics, including
DELETE as a tombstone: ``controller.services.atlas_store``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, status
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from controller.api.deps import SessionDep, SettingsDep, bearer_token
from controller.api.routes.manifests import IngestDep
from controller.auth import SAFE_METHODS, Principal, Role, authenticate, authorize
from controller.errors import ForbiddenError, UnauthorizedError
from controller.services.atlas_store import delete_entry, get_entry, list_entries, post_entry

__all__ = ["require_atlas_access", "router"]


def require_atlas_access(request: Request, settings: SettingsDep, session: SessionDep) -> Principal | None:
    """The caller (None: anonymous, when allowed); see the module docstring."""
    token = bearer_token(request)
    method = request.method.upper()
    if token is None:
        if method == "POST" and settings.atlas_anonymous_writes:
            return None
        if method in SAFE_METHODS and (settings.atlas_anonymous_reads or settings.atlas_anonymous_writes):
            return None
        raise UnauthorizedError(
            "missing bearer token: send `Authorization: Bearer <token>` (MLPROV_TOKEN for the mlprov CLI), "
            "or let the operator set MLPROV_ATLAS_ANONYMOUS_WRITES=true for atlas-cli"
        )
    principal = authenticate(token, settings, session)
    authorize(principal, method, request.path_params)
    if method == "DELETE" and principal.role is not Role.ADMIN:
        raise ForbiddenError("deleting a manifest needs the admin token")
    return principal


AtlasCaller = Annotated[Principal | None, Depends(require_atlas_access)]

router = APIRouter(prefix="/manifests", tags=["atlas storage API"])


@router.post("/{manifest_id}", status_code=status.HTTP_201_CREATED, responses={200: {}, 400: {}, 409: {}})
async def atlas_post(
    manifest_id: str, body: Annotated[dict[str, Any], Body()], ingest: IngestDep, caller: AtlasCaller
) -> JSONResponse:
    """Store ``{manifest_id, manifest_type, manifest, created_at}`` (+ ``mlprov_c2pa``, ``mlprov_oms_bundle``)."""
    result = await run_in_threadpool(post_entry, ingest, manifest_id, body, caller)
    return JSONResponse(
        {"manifest_id": manifest_id, "log_index": result.answer.get("log_index")},
        status_code=201 if result.created else 200,
    )


@router.get("")
def atlas_list(session: SessionDep, _: AtlasCaller) -> list[dict[str, Any]]:
    return list_entries(session)


@router.get("/{manifest_id}", responses={404: {}})
def atlas_get(manifest_id: str, session: SessionDep, _: AtlasCaller) -> dict[str, Any]:
    return get_entry(session, manifest_id)


@router.delete("/{manifest_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses={404: {}})
def atlas_delete(manifest_id: str, session: SessionDep, _: AtlasCaller) -> Response:
    """Tombstone the manifest (admin): hidden here, kept with its log entry and lineage."""
    delete_entry(session, manifest_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
