"""Liveness, readiness and Prometheus metrics, at the root and without a token.

They carry no task data: orchestrators and Prometheus scrape them without credentials
(``/metrics`` exposes counts and latencies only).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from controller.metrics import CONTENT_TYPE_LATEST, TASKS_BY_STATE, render
from controller.state import AppState
from controller.store.models import Task, TaskState

__all__ = ["router"]

router = APIRouter(tags=["health"])


def _state(request: Request) -> AppState | None:
    state: AppState | None = getattr(request.app.state, "mlprov", None)
    return state


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: the body says what is missing"}})
def readyz(request: Request) -> JSONResponse:
    """Readiness: started and the database answers. ``runtime`` says whether job launches are warm yet
    (``warming`` for about a second after start-up, while the local fork server imports the sidecar):
    the controller serves meanwhile, and a task submitted then starts once the warm-up is done."""
    state = _state(request)
    if state is None:
        return JSONResponse({"status": "starting", "database": "unknown"}, status_code=503)
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse(
            {"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"}, status_code=503
        )
    warmed = getattr(state.runtime, "warmed", None)  # optional: runtimes with a warm-up (local fork server)
    runtime = "warming" if callable(warmed) and not warmed() else "ready"
    return JSONResponse({"status": "ready", "database": "ok", "runtime": runtime})


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text format; ``mlprov_tasks{state=...}`` is counted from the store at each scrape."""
    state = _state(request)
    if state is not None:
        counts = dict.fromkeys((s.value for s in TaskState), 0)
        try:
            with state.session_factory() as session:
                for task_state, count in session.execute(select(Task.state, func.count()).group_by(Task.state)):
                    counts[task_state] = count
        except SQLAlchemyError:
            counts = {}
        for task_state, count in counts.items():
            TASKS_BY_STATE.labels(state=task_state).set(count)
    return Response(render(), media_type=CONTENT_TYPE_LATEST)
