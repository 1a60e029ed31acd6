"""``/api/v1/lineage/{ref}``: the lineage graph around an artifact (by digest or manifest ID)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import ReaderDep, SessionDep
from controller.services.lineage import DEFAULT_DEPTH, MAX_DEPTH, Direction, LineageGraph, lineage

__all__ = ["router"]

router = APIRouter(prefix="/lineage", tags=["lineage"])


@router.get(
    "/{ref}",
    response_model=LineageGraph,
    responses={404: {"description": "no artifact with that digest, and no manifest with that ID"}},
)
def get_lineage(
    ref: str,
    session: SessionDep,
    _: ReaderDep,
    direction: Direction = Direction.UPSTREAM,
    depth: Annotated[int, Query(ge=0, le=MAX_DEPTH, description="edges to follow (artifact->task->artifact is 2)")] = (
        DEFAULT_DEPTH
    ),
) -> LineageGraph:
    """Nodes (artifacts, tasks, code) and edges (roles consumed, produced, code) within ``depth`` edges of
    the artifact, walked in the database; ``truncated`` says a larger depth would show more."""
    return lineage(session, ref, direction=direction, depth=depth)
