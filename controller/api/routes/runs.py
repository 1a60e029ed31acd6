"""``/api/v1/runs/{dag_id}/{run_id}``: a pipeline run (one Airflow DAG run) and its tasks."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import ReaderDep
from controller.api.routes.tasks import TaskServiceDep
from controller.services.tasks import RunView

__all__ = ["router"]

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("/{dag_id}/{run_id}", response_model=RunView, responses={404: {"description": "no such run"}})
def get_run(dag_id: str, run_id: str, service: TaskServiceDep, _: ReaderDep) -> RunView:
    return service.get_run(dag_id, run_id)
