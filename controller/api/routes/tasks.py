"""``/api/v1/tasks``: submit, read, list, cancel, logs. Thin: every call goes to ``TaskService``.

Auth (on top of the rule every ``/api/v1`` route has): submit and cancel need the admin token;
listing needs admin or read-only; a task's own endpoints also accept that task's token (the sidecar).

``GET /tasks/{task_id}/logs?follow=true`` streams **NDJSON** (``application/x-ndjson``): one JSON
log record per line (``timestamp``, ``message``, ``component``, ``stream``, ``level``, ``event`` ...),
first everything recorded so far, then new lines as they arrive, until the task has ended.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from controller.api.deps import AdminDep, ReaderDep, SessionDep, StateDep, TaskTokenDep
from controller.logs.base import LogRecord
from controller.services.tasks import (
    MAX_WAIT,
    SubmitResult,
    TaskService,
    TaskSubmission,
    TaskView,
    status_reader,
)

__all__ = ["get_task_service", "router"]

router = APIRouter(prefix="/tasks", tags=["tasks"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "no such task"}}


async def get_task_service(session: SessionDep, state: StateDep) -> TaskService:
    # async: no I/O here, and no thread-pool hop on the hot status-read path
    return TaskService(
        session, state.dispatcher, state.log_index, state.session_factory, kibana_url=state.settings.kibana_url
    )


TaskServiceDep = Annotated[TaskService, Depends(get_task_service)]


class LogsPage(BaseModel):
    records: list[dict[str, Any]]
    next_cursor: str | None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmitResult,
    responses={
        400: {"description": "unknown input artifact, bad name (path traversal), too many GPUs, wrong service kind"},
        404: {"description": "unknown service"},
    },
)
def submit_task(body: TaskSubmission, service: TaskServiceDep, _: AdminDep) -> SubmitResult:
    """Queue a task; the same ``run`` identity returns the same task. ``token`` is only in this answer."""
    return service.submit(body)


@router.get("", response_model=list[TaskView])
def list_tasks(
    service: TaskServiceDep,
    _: ReaderDep,
    run_id: str | None = None,
    dag_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[TaskView]:
    return service.list_tasks(run_id=run_id, dag_id=dag_id, limit=limit)


@router.get("/{task_id}", response_model=TaskView, responses=_ERRORS)
async def get_task(
    task_id: str,
    state: StateDep,
    wait: Annotated[
        float | None,
        Query(gt=0, le=MAX_WAIT, description="long poll: answer when the state changes, at the latest after this"),
    ] = None,
    since_state: Annotated[
        str | None,
        Query(alias="state", max_length=32, description="with wait: the state the caller saw last (default: now)"),
    ] = None,
) -> Response:
    """The task's state, exit code, reason, outputs, timings, resolved refs (admin, read-only, or its task
    token: the rule every /api/v1 route has). The hot polling endpoint: see ``TaskStatusReader``.

    ``?wait=S`` makes it a long poll: the answer comes as soon as the task's state differs from ``state``
    (default: its state when the request arrived) or is terminal, else after ``S`` seconds (at most 60)."""
    reader = status_reader(state.engine, state.settings.kibana_url)
    body = await (reader.get_json(task_id) if wait is None else reader.wait_json(task_id, wait, since_state))
    return Response(body, media_type="application/json")


@router.delete("/{task_id}", status_code=status.HTTP_202_ACCEPTED, response_model=TaskView, responses=_ERRORS)
def cancel_task(task_id: str, service: TaskServiceDep, _: AdminDep) -> TaskView:
    """Cancel (idempotent): a waiting task ends at once, a running one is killed then recorded ``cancelled``."""
    return service.cancel(task_id)


def _ndjson(records: Iterator[LogRecord]) -> Iterator[bytes]:
    for record in records:
        yield (json.dumps(record.to_dict()) + "\n").encode()


@router.get(
    "/{task_id}/logs",
    response_model=LogsPage,
    responses={
        **_ERRORS,
        200: {"content": {"application/x-ndjson": {}}, "description": "a page, or NDJSON when following"},
    },
)
def task_logs(
    task_id: str,
    service: TaskServiceDep,
    _: TaskTokenDep,
    follow: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    cursor: str | None = None,
) -> LogsPage | StreamingResponse:
    """The task's output lines and events, oldest first (``follow=true``: NDJSON until the task ends)."""
    if follow:
        return StreamingResponse(_ndjson(service.follow_logs(task_id)), media_type="application/x-ndjson")
    records, next_cursor = service.logs(task_id, limit=limit, cursor=cursor)
    return LogsPage(records=[r.to_dict() for r in records], next_cursor=next_cursor)
