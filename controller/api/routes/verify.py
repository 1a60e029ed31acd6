"""``POST /api/v1/verify``: full-chain verification of an artifact or manifest, answered as a report.

A read-only token suffices: verification writes nothing (POST only because the request has a body).
``controller.main`` includes this router with ``require_reader`` instead of the method-based rule.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from controller.api.deps import ReaderDep, SessionDep, StateDep
from controller.services.verification import (
    VerificationService,
    VerifyRequest,
    VerifyResult,
    build_verification_service,
)

__all__ = ["router"]

router = APIRouter(prefix="/verify", tags=["verification"])


def get_verification_service(state: StateDep, session: SessionDep) -> VerificationService:
    return build_verification_service(state, session)


VerificationServiceDep = Annotated[VerificationService, Depends(get_verification_service)]


@router.post(
    "",
    response_model=VerifyResult,
    responses={404: {"description": "no artifact with that digest, or no manifest with that ID"}},
)
async def verify(body: VerifyRequest, service: VerificationServiceDep, _: ReaderDep) -> VerifyResult:
    """Verify the chain upstream of the artifact (its latest manifest) or manifest: signatures, manifest
    hashes and links, the target's bytes re-hashed from the artifact store (``rehash``; every node's with
    ``rehash_all``), transparency-log inclusion of every manifest, and the policies (code resolved to a
    commit, no unsigned ancestor). ``ok: false`` is still a 200: the report names the first broken node."""
    return await run_in_threadpool(service.verify, body)
