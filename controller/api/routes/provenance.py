"""``/api/v1/runs/{dag_id}/{run_id}/provenance``: everything a pipeline run consumed and produced."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import ReaderDep, SessionDep
from controller.services.lineage import RunProvenance, run_provenance

__all__ = ["router"]

router = APIRouter(prefix="/runs", tags=["runs", "lineage"])


@router.get(
    "/{dag_id}/{run_id}/provenance",
    response_model=RunProvenance,
    responses={404: {"description": "no such run"}},
)
def get_run_provenance(dag_id: str, run_id: str, session: SessionDep, _: ReaderDep) -> RunProvenance:
    """Per task (every try): artifacts consumed and produced, code commits, manifests registered; and for
    the run: its inputs (consumed, not made in the run), its outputs, every manifest involved."""
    return run_provenance(session, dag_id, run_id)
