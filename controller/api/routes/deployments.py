"""Deployments: the history of a pipeline's definitions, each a signed manifest (docs/deployments.md).

- ``POST /deployments`` (admin: CI's ``mlprov deploy``): record one; 201, or 200 with the same body when
  this (pipeline, environment, CI pipeline, CI job, commit) is already recorded with the same content.
- ``GET /deployments?pipeline=&environment=&dag_id=&limit=&cursor=``: newest first; follow ``next_cursor``.
- ``GET /deployments/{deployment_id}`` and ``GET /deployments/{deployment_id}/manifest`` (the signed
  manifest; it is also ``GET /manifests/{manifest_id}`` and verifies like any other).

Thin: the work is in ``controller.services.deployments`` (write) and ``deployments_query`` (read).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from controller.api.deps import AdminDep, ReaderDep, SessionDep, StateDep
from controller.errors import UnavailableError
from controller.services.deployments import DeploymentRecorder, DeploymentRequest
from controller.services.deployments_query import (
    deployment_manifest,
    deployment_view,
    get_deployment,
    list_deployments,
)
from provenance.keys import SigningIdentity, load_identity

__all__ = ["get_recorder", "router"]

router = APIRouter(prefix="/deployments", tags=["deployments"])

_404: dict[int | str, dict[str, Any]] = {404: {"description": "no such deployment"}}


def get_recorder(state: StateDep) -> DeploymentRecorder:
    if state.trust is None or state.tlog is None:
        raise UnavailableError("the trust store or transparency log is not ready")
    home = state.settings.home

    def identity() -> SigningIdentity:
        return load_identity(home)

    return DeploymentRecorder(state.session_factory, state.tlog, state.trust, identity)


RecorderDep = Annotated[DeploymentRecorder, Depends(get_recorder)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "this deployment was already recorded (same request key and content)"},
        409: {"description": "this request key is recorded with other content"},
        422: {"description": "malformed record (the field is named)"},
    },
)
async def record_deployment(body: DeploymentRequest, recorder: RecorderDep, _: AdminDep) -> JSONResponse:
    """Sign, log and store a deployment record linked to the previous one of its pipeline and environment."""
    created, answer = await run_in_threadpool(recorder.record, body)
    return JSONResponse(answer, status_code=201 if created else 200)


@router.get("")
def search_deployments(
    session: SessionDep,
    _: ReaderDep,
    pipeline: str | None = None,
    environment: str | None = None,
    dag_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Deployments, newest first, optionally of one pipeline, environment or DAG."""
    return list_deployments(
        session, pipeline=pipeline, environment=environment, dag_id=dag_id, limit=limit, cursor=cursor
    )


@router.get("/{deployment_id}", responses=_404)
def read_deployment(deployment_id: str, session: SessionDep, _: ReaderDep) -> dict[str, Any]:
    return deployment_view(get_deployment(session, deployment_id))


@router.get("/{deployment_id}/manifest", responses=_404)
def read_deployment_manifest(deployment_id: str, session: SessionDep, _: ReaderDep) -> dict[str, Any]:
    """The signed Atlas manifest of the deployment."""
    return deployment_manifest(session, deployment_id)
