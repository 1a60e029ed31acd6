"""``/api/v1/runs/{dag_id}/{run_id}``: a pipeline run (one Airflow DAG run), its tasks and its servers.

- ``GET  /runs/{dag_id}/{run_id}``: the run and its tasks.
- ``POST /runs/{dag_id}/{run_id}/end`` ``{state}``: the DAG ended (the Airflow side calls it at DAG end);
  the run's servers are stopped. Idempotent: the first state stays.
- ``GET  /runs/{dag_id}/{run_id}/servers``: the run's ``server`` services (state, URL, proxy path).
- ``ANY  /runs/{dag_id}/{run_id}/servers/{name}/{path}``: forwarded to the run's healthy server ``name``
  (streamed; the caller's token is not forwarded). Read-only tokens may use the safe methods.

Thin: the logic is in ``controller.services.servers`` and ``controller.services.server_routing``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from controller.api.deps import AdminDep, ReaderDep, StateDep
from controller.api.routes.tasks import TaskServiceDep
from controller.services import server_routing
from controller.services.server_routing import RunEndResult, ServerView
from controller.services.servers import server_manager
from controller.services.tasks import RunView

__all__ = ["RunEnd", "router"]

router = APIRouter(prefix="/runs", tags=["runs"])

_RUN_404: dict[int | str, dict[str, Any]] = {404: {"description": "no such run"}}


class RunEnd(BaseModel):
    """``POST /runs/{dag_id}/{run_id}/end``."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["succeeded", "failed", "cancelled"]


@router.get("/{dag_id}/{run_id}", response_model=RunView, responses=_RUN_404)
def get_run(dag_id: str, run_id: str, service: TaskServiceDep, _: ReaderDep) -> RunView:
    return service.get_run(dag_id, run_id)


@router.post("/{dag_id}/{run_id}/end", response_model=RunEndResult, responses=_RUN_404)
def end_run(dag_id: str, run_id: str, body: RunEnd, state: StateDep, _: AdminDep) -> RunEndResult:
    """Mark the run ended and stop its servers (waits for them to stop)."""
    return server_manager(state).end_run(dag_id, run_id, body.state)


@router.get("/{dag_id}/{run_id}/servers", response_model=list[ServerView], responses=_RUN_404)
async def list_servers(dag_id: str, run_id: str, state: StateDep, _: ReaderDep) -> list[ServerView]:
    return await run_in_threadpool(server_routing.list_servers, state.session_factory, dag_id, run_id)


async def proxy_to_server(
    dag_id: str, run_id: str, name: str, path: str, request: Request, state: StateDep
) -> StreamingResponse:
    """Forward the request to the run's server ``name`` (502 unreachable, 503 not healthy, 504 too slow)."""
    timeout = server_manager(state).proxy_timeout  # 503 while the dispatcher (owning the servers) is down
    return await server_routing.proxy(state.session_factory, dag_id, run_id, name, path, request, timeout)


for _method in server_routing.PROXY_METHODS:  # one route per method: distinct OpenAPI operation ids
    router.add_api_route(
        "/{dag_id}/{run_id}/servers/{name}/{path:path}",
        proxy_to_server,
        methods=[_method],
        name=f"proxy_to_server_{_method.lower()}",
        response_class=StreamingResponse,
        responses={404: {"description": "no such run or server"}, 502: {}, 503: {}, 504: {}},
    )
