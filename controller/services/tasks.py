"""The task service: what the task and run routes call (submit, get, list, cancel, logs).

Submission is idempotent on the run identity ``(dag_id, run_id, task_id, try_number)``: the unique
constraint on ``tasks`` decides, so concurrent duplicates also get one task. A submission is one
transaction (pipeline run, task, lock request, ``submitted`` event, task token): nothing is
half-recorded. A task with a ``run`` records the newest deployment carrying its ``dag_id``
(``controller.services.deployments``: the DAG version that ran it). All three service kinds are tasks
(``docs/service-kinds.md``): a ``server`` task needs a ``run`` and is queued without locks when the
run's server is already live; ``external`` tasks take params only (no inputs, no code). The token is
returned by ``submit`` only (a duplicate submission gets a fresh one).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, create_engine, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import SingletonThreadPool
from starlette.concurrency import run_in_threadpool

from controller.auth import issue_task_token
from controller.catalog import Resources
from controller.errors import InvalidInputError, RunNotFoundError, TaskNotFoundError, UnavailableError
from controller.logs.base import LogIndex, LogQuery, LogRecord
from controller.services.deployments_query import latest_deployment_for_dag
from controller.services.dispatch import TERMINAL_STATES, Dispatcher
from controller.services.refs import check_artifact_ref, resolve_artifact
from controller.services.server_routing import is_live
from controller.store.models import PipelineRun, ServiceKind, Task, TaskEvent, TaskState
from controller.store.services_repo import get_service

__all__ = [
    "CodeRef",
    "RunIdentity",
    "RunView",
    "SubmitResult",
    "TaskService",
    "TaskStatusReader",
    "TaskSubmission",
    "TaskView",
    "log_link",
    "status_reader",
    "task_view",
]

_TASKS = Task.__table__
_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)
WAIT_POLL = 0.02
"""Seconds between state reads of a long poll (``GET /tasks/{id}?wait=``)."""
MAX_WAIT = 60.0
"""The longest ``wait`` a long poll may ask for."""
_NAME = r"^[A-Za-z0-9_.:+~@-][A-Za-z0-9_.:+~@/ -]{0,249}$"


class CodeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(min_length=1, max_length=1024, description="a local path or a git URL")
    ref: str = Field(default="HEAD", min_length=1, max_length=255, description="branch, tag or commit")


class RunIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dag_id: str = Field(pattern=_NAME)
    run_id: str = Field(pattern=_NAME)
    task_id: str = Field(pattern=_NAME)
    try_number: int = Field(default=1, ge=0)


class TaskSubmission(BaseModel):
    """``POST /api/v1/tasks``."""

    model_config = ConfigDict(extra="forbid")
    service: str = Field(min_length=1, max_length=255)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list, max_length=1000, description="sha256:<hex>, name or name@latest")
    code: CodeRef | None = None
    run: RunIdentity | None = None
    resources: Resources | None = Field(default=None, description="overrides the service's resources")
    timeout: float | None = Field(default=None, gt=0, description="seconds; overrides the service's")


class TaskView(BaseModel):
    id: str
    service: str
    state: str
    exit_code: int | None
    reason: str | None
    run: RunIdentity | None
    params: dict[str, Any]
    inputs: list[dict[str, Any]]
    code: dict[str, Any] | None
    outputs: list[dict[str, Any]]
    details: dict[str, Any] = Field(default_factory=dict)
    """``server``: ``{"server": {name, url, proxy_path, ...}}``; ``external``: ``{"external": {http_status, ...}}``."""
    resources: dict[str, Any]
    timeout: float | None
    mlflow_run_id: str | None
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    links: dict[str, str] = Field(default_factory=dict)
    """``logs``: Kibana Discover filtered to the task when ``MLPROV_KIBANA_URL`` is set, else the embedded search."""


class SubmitResult(BaseModel):
    id: str
    state: str
    token: str
    created: bool


class RunView(BaseModel):
    dag_id: str
    run_id: str
    state: str
    mlflow_run_id: str | None
    created_at: datetime
    tasks: list[TaskView]


def _rison(text: str) -> str:
    """``text`` as a quoted Rison string (Kibana's URL state encoding)."""
    return "'" + text.replace("!", "!!").replace("'", "!'") + "'"


def log_link(task_id: str, kibana_url: str | None, since: datetime | None = None) -> str:
    """Where a task's log lines are: the ``mlprov-task-logs`` saved search in Kibana Discover filtered on
    ``task_id`` (infra/kibana/), or the embedded ``/api/v1/logs/search`` (relative to the controller)."""
    if not kibana_url:
        return "/api/v1/logs/search?" + urlencode({"task_id": task_id, "order": "asc"})
    kql = 'task_id:"' + task_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if since is not None:  # the store keeps naive UTC
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    start = _rison(since.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z") if since is not None else "now-7d"
    state_g = f"(time:(from:{start},to:now))"
    state_a = f"(query:(language:kuery,query:{_rison(kql)}))"
    safe = "()/:,!'*-_.~"
    return (
        f"{kibana_url.rstrip('/')}/app/discover#/view/mlprov-task-logs"
        f"?_g={quote(state_g, safe=safe)}&_a={quote(state_a, safe=safe)}"
    )


def task_view(task: Task, kibana_url: str | None = None) -> TaskView:
    run = None
    if task.dag_id is not None and task.run_id is not None and task.airflow_task_id is not None:
        run = RunIdentity(
            dag_id=task.dag_id, run_id=task.run_id, task_id=task.airflow_task_id, try_number=task.try_number or 0
        )
    return TaskView(
        id=task.id,
        service=task.service,
        state=task.state,
        exit_code=task.exit_code,
        reason=task.reason,
        run=run,
        params=task.params or {},
        inputs=list(task.inputs or []),
        code=task.code,
        outputs=list(task.outputs or []),
        details=dict(task.details or {}),
        resources=task.resources or {},
        timeout=task.timeout,
        mlflow_run_id=task.mlflow_run_id,
        submitted_at=task.submitted_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        cancel_requested=task.cancel_requested_at is not None,
        links={"logs": log_link(task.id, kibana_url, task.submitted_at)},
    )


def _run_state(tasks: list[Task]) -> str:
    states = {t.state for t in tasks}
    if not states or states & {TaskState.QUEUED, TaskState.WAITING_FOR_LOCK, TaskState.RUNNING}:
        return "running"
    if states == {TaskState.SUCCEEDED}:
        return "succeeded"
    return "failed"


class TaskService:
    """Per request: the request's session plus the app's dispatcher and log index."""

    def __init__(
        self,
        session: Session,
        dispatcher: Dispatcher | None,
        log_index: LogIndex | None = None,
        session_factory: sessionmaker[Session] | None = None,
        kibana_url: str | None = None,
    ) -> None:
        self.session = session
        self.dispatcher = dispatcher
        self.log_index = log_index
        self.session_factory = session_factory
        self.kibana_url = kibana_url

    # -- submit ---------------------------------------------------------------------------------

    def _validate(self, body: TaskSubmission) -> tuple[dict[str, Any], int]:
        spec = get_service(self.session, body.service)  # 400 bad name, 404 unknown
        if spec.kind is ServiceKind.SERVER and body.run is None:
            raise InvalidInputError(
                f"service {spec.name!r} is a server: give the task a `run` (dag_id, run_id, task_id), it lives for one"
            )
        if spec.kind is not ServiceKind.JOB and body.code is not None:
            raise InvalidInputError(f"service {spec.name!r} is a {spec.kind.value} service: `code` is for job services")
        if spec.kind is ServiceKind.EXTERNAL and body.inputs:
            raise InvalidInputError(f"service {spec.name!r} is external: it is called with params only, not inputs")
        names: dict[str, str] = {}
        for ref in body.inputs:
            check_artifact_ref(ref)
            resolved = resolve_artifact(self.session, ref)  # 400 unknown artifact
            if resolved.name in names and names[resolved.name] != ref:
                raise InvalidInputError(
                    f"inputs {names[resolved.name]!r} and {ref!r} would both be materialised as inputs/{resolved.name}"
                )
            names[resolved.name] = ref
        if body.code is not None and (body.code.repo.startswith("-") or body.code.ref.startswith("-")):
            raise InvalidInputError("code.repo and code.ref must not start with '-'")
        gpus = body.resources.gpus if body.resources is not None else spec.resources.gpus
        available = self._dispatcher().locks.gpu_count
        if gpus > available:
            raise InvalidInputError(f"the task needs {gpus} GPU(s) but this controller has {available}; ask for fewer")
        return spec.model_dump(mode="json"), gpus

    def _existing(self, run: RunIdentity) -> Task | None:
        return self.session.scalar(
            select(Task).where(
                Task.dag_id == run.dag_id,
                Task.run_id == run.run_id,
                Task.airflow_task_id == run.task_id,
                Task.try_number == run.try_number,
            )
        )

    def _pipeline_run(self, run: RunIdentity) -> str:
        found = self.session.scalar(
            select(PipelineRun.id).where(PipelineRun.dag_id == run.dag_id, PipelineRun.run_id == run.run_id)
        )
        if found is not None:
            return found
        row = PipelineRun(dag_id=run.dag_id, run_id=run.run_id)
        self.session.add(row)
        self.session.flush()
        return row.id

    def _dispatcher(self) -> Dispatcher:
        if self.dispatcher is None:
            raise UnavailableError("the dispatcher is not running: retry when the controller is ready")
        return self.dispatcher

    def submit(self, body: TaskSubmission) -> SubmitResult:
        dispatcher = self._dispatcher()
        for _ in range(3):  # a lost race on the run identity or the pipeline run: read what won
            if body.run is not None:
                existing = self._existing(body.run)
                if existing is not None:
                    token = issue_task_token(self.session, existing.id)
                    self.session.commit()
                    return SubmitResult(id=existing.id, state=existing.state, token=token, created=False)
            spec, gpus = self._validate(body)
            try:
                task = Task(
                    service=body.service,
                    service_spec=spec,
                    state=TaskState.QUEUED.value,
                    params=body.params,
                    inputs=[{"ref": ref} for ref in body.inputs],
                    code=body.code.model_dump() if body.code else None,
                    resources=(body.resources or Resources()).model_dump(exclude_none=True) | {"gpus": gpus},
                    timeout=body.timeout,
                )
                if body.run is not None:
                    task.dag_id, task.run_id = body.run.dag_id, body.run.run_id
                    task.airflow_task_id, task.try_number = body.run.task_id, body.run.try_number
                    task.pipeline_run_id = self._pipeline_run(body.run)
                    task.deployment_id = latest_deployment_for_dag(self.session, body.run.dag_id)
                self.session.add(task)
                self.session.flush()
                locks = list(spec.get("locks") or [])
                run = body.run
                if (
                    spec.get("kind") == ServiceKind.SERVER
                    and run
                    and is_live(self.session, run.dag_id, run.run_id, body.service)
                ):
                    locks, gpus = [], 0  # the live server holds them; this task only reports it
                dispatcher.locks.enqueue(self.session, task.id, locks, gpus)
                self.session.add(TaskEvent(task_id=task.id, event="submitted", detail={"service": body.service}))
                token = issue_task_token(self.session, task.id)
                self.session.commit()
            except IntegrityError:
                self.session.rollback()
                continue
            dispatcher.publish(
                [
                    LogRecord(
                        timestamp=time.time(), message="submitted", component="event", event="submitted",
                        run_id=task.run_id, dag_id=task.dag_id, task_id=task.id, fields={"service": task.service},
                    )
                ]
            )  # fmt: skip
            dispatcher.notify()
            return SubmitResult(id=task.id, state=task.state, token=token, created=True)
        raise UnavailableError("the task could not be recorded after 3 attempts (concurrent writers): retry")

    # -- reads ------------------------------------------------------------------------------------

    def _task(self, task_id: str) -> Task:
        task = self.session.get(Task, task_id)
        if task is None:
            raise TaskNotFoundError(f"no task {task_id!r}: check the id returned by POST /api/v1/tasks")
        return task

    def get(self, task_id: str) -> TaskView:
        """One task (the hot polling path: a Core select, about half the cost of an ORM load)."""
        row = self.session.execute(select(_TASKS).where(_TASKS.c.id == task_id)).mappings().one_or_none()
        if row is None:
            raise TaskNotFoundError(f"no task {task_id!r}: check the id returned by POST /api/v1/tasks")
        return task_view(Task(**row), self.kibana_url)

    def list_tasks(self, run_id: str | None = None, dag_id: str | None = None, limit: int = 500) -> list[TaskView]:
        query = select(Task).order_by(Task.submitted_at, Task.id).limit(limit)
        if run_id is not None:
            query = query.where(Task.run_id == run_id)
        if dag_id is not None:
            query = query.where(Task.dag_id == dag_id)
        return [task_view(t, self.kibana_url) for t in self.session.scalars(query)]

    def get_run(self, dag_id: str, run_id: str) -> RunView:
        run = self.session.scalar(select(PipelineRun).where(PipelineRun.dag_id == dag_id, PipelineRun.run_id == run_id))
        if run is None:
            raise RunNotFoundError(f"no pipeline run {dag_id}/{run_id}: tasks submitted with this run create it")
        tasks = list(
            self.session.scalars(select(Task).where(Task.pipeline_run_id == run.id).order_by(Task.submitted_at))
        )
        return RunView(
            dag_id=run.dag_id,
            run_id=run.run_id,
            state=_run_state(tasks) if run.state == "running" else run.state,  # ended: as POST .../end said
            mlflow_run_id=run.mlflow_run_id,
            created_at=run.created_at,
            tasks=[task_view(t, self.kibana_url) for t in tasks],
        )

    # -- cancel -----------------------------------------------------------------------------------

    def cancel(self, task_id: str) -> TaskView:
        self._task(task_id)
        dispatcher = self._dispatcher()
        self.session.rollback()  # end the read transaction: the dispatcher writes in its own
        dispatcher.cancel(task_id)
        self.session.expire_all()
        return task_view(self._task(task_id), self.kibana_url)

    # -- logs -------------------------------------------------------------------------------------

    def logs(self, task_id: str, limit: int = 1000, cursor: str | None = None) -> tuple[list[LogRecord], str | None]:
        self._task(task_id)
        if self.log_index is None:
            raise UnavailableError("the log index is not running: retry when the controller is ready")
        page = self.log_index.search(LogQuery(task_id=task_id, limit=limit, cursor=cursor, order="asc"))
        return list(page.records), page.next_cursor

    def follow_logs(self, task_id: str, poll: float = 0.25, settle: float = 1.0) -> Iterator[LogRecord]:
        """Every record of the task, then new ones as they are indexed, until the task ended and the
        index has been quiet for ``settle`` seconds (the log pipeline lags the bus slightly).

        Checks happen now (404, 503); the iterator reads only the index and its own sessions."""
        self._task(task_id)
        index, factory = self.log_index, self.session_factory
        if index is None or factory is None:
            raise UnavailableError("the log index is not running: retry when the controller is ready")
        return self._follow(index, factory, task_id, poll, settle)

    @staticmethod
    def _follow(
        index: LogIndex, factory: sessionmaker[Session], task_id: str, poll: float, settle: float
    ) -> Iterator[LogRecord]:
        seen: set[str] = set()
        since: float | None = None
        quiet_since: float | None = None
        while True:
            cursor: str | None = None
            fresh = 0
            while True:
                window = None if since is None else since - 2.0  # late records with earlier timestamps
                page = index.search(LogQuery(task_id=task_id, since=window, limit=500, cursor=cursor, order="asc"))
                for record in page.records:
                    key = record.id or f"{record.timestamp}:{record.message}"
                    if key in seen:
                        continue
                    seen.add(key)
                    fresh += 1
                    since = record.timestamp if since is None else max(since, record.timestamp)
                    yield record
                cursor = page.next_cursor
                if cursor is None:
                    break
            with factory() as session:
                task = session.get(Task, task_id)
                ended = task is None or TaskState(task.state) in TERMINAL_STATES
            if ended and fresh == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            time.sleep(poll)


class TaskStatusReader:
    """The hot polling path (``GET /tasks/{id}``: every Airflow operator polls it): one Core select.

    On a SQLite file store it reads on the event-loop thread through a dedicated connection (a
    ``SingletonThreadPool`` engine: its own connection per thread, never waiting for the app's pool,
    so no loop stall behind sync handlers). WAL readers never wait for writers; the busy timeout is
    kept short and a busy store falls back to the thread pool. Any other database (PostgreSQL: a
    network round trip) is always read on the thread pool. Measured: ~1.3x the requests/s of the
    thread-pool path on this 2-core machine (bench/bench_status_reads.py).
    """

    def __init__(self, engine: Engine, kibana_url: str | None = None) -> None:
        self._engine = engine
        self._kibana_url = kibana_url
        url = engine.url
        file_sqlite = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        self._loop_engine = (
            create_engine(
                url, poolclass=SingletonThreadPool, connect_args={"timeout": 0.05, "check_same_thread": False}
            )
            if file_sqlite
            else None
        )

    def _read(self, conn: Connection, task_id: str) -> bytes:
        row = conn.execute(select(_TASKS).where(_TASKS.c.id == task_id)).mappings().one_or_none()
        if row is None:
            raise TaskNotFoundError(f"no task {task_id!r}: check the id returned by POST /api/v1/tasks")
        return task_view(Task(**row), self._kibana_url).model_dump_json().encode()

    def _read_pooled(self, task_id: str) -> bytes:
        with self._engine.connect() as conn:
            return self._read(conn, task_id)

    async def get_json(self, task_id: str) -> bytes:
        """The task's ``TaskView`` as JSON bytes; :class:`TaskNotFoundError` when unknown."""
        if self._loop_engine is not None:
            try:
                with self._loop_engine.connect() as conn:
                    return self._read(conn, task_id)
            except OperationalError:
                pass  # the store is busy (a checkpoint, a schema change): wait on the thread pool instead
        return await run_in_threadpool(self._read_pooled, task_id)

    @staticmethod
    def _read_state(conn: Connection, task_id: str) -> str:
        state = conn.execute(select(_TASKS.c.state).where(_TASKS.c.id == task_id)).scalar_one_or_none()
        if state is None:
            raise TaskNotFoundError(f"no task {task_id!r}: check the id returned by POST /api/v1/tasks")
        return str(state)

    def _state_pooled(self, task_id: str) -> str:
        with self._engine.connect() as conn:
            return self._read_state(conn, task_id)

    async def _state(self, task_id: str) -> str:
        if self._loop_engine is not None:
            try:
                with self._loop_engine.connect() as conn:
                    return self._read_state(conn, task_id)
            except OperationalError:
                pass
        return await run_in_threadpool(self._state_pooled, task_id)

    async def wait_json(self, task_id: str, wait: float, state: str | None = None) -> bytes:
        """Long poll: the task's JSON as soon as its state is not ``state`` (default: its state now) or is
        terminal, at the latest after ``wait`` seconds. Saves the caller a poll interval at every change,
        e.g. between a job's end and the Airflow task's: the state is re-read every ``WAIT_POLL`` seconds
        (one indexed single-column select)."""
        deadline = time.monotonic() + wait
        reference = state if state is not None else await self._state(task_id)
        while True:
            current = await self._state(task_id)
            if current != reference or current in _TERMINAL or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))
        return await self.get_json(task_id)

    def close(self) -> None:
        if self._loop_engine is not None:
            self._loop_engine.dispose()


_READERS: weakref.WeakKeyDictionary[Engine, TaskStatusReader] = weakref.WeakKeyDictionary()


def status_reader(engine: Engine, kibana_url: str | None = None) -> TaskStatusReader:
    """The reader of the app whose store is ``engine`` (one per engine; goes with it)."""
    reader = _READERS.get(engine)
    if reader is None:
        reader = _READERS[engine] = TaskStatusReader(engine, kibana_url)
    return reader
