"""The dispatcher's writes: each task state change is one transaction, its events published after commit.

Functions take the session factory and return the bus records to publish (the caller publishes them
once the transaction committed, so the bus never carries an event of a rolled-back change).
:class:`MlflowBridge` turns a task into its MLflow run (``controller.mlflow_recorder``), off the
dispatch path and never failing the task.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.auth import revoke_task_tokens
from controller.logging import get_logger
from controller.logs.base import LogRecord
from controller.runtime.base import JobStatus
from controller.services import outputs as outputs_mod
from controller.services.locks import LockService
from controller.services.refs import ResolvedArtifact
from controller.store.db import session_scope
from controller.store.models import Job, LockQueueEntry, PipelineRun, Task, TaskAttempt, TaskEvent, TaskState, utcnow

__all__ = [
    "MlflowBridge",
    "add_event",
    "deep_merge",
    "next_attempt",
    "options_from",
    "record_call_end",
    "record_call_started",
    "record_end",
    "record_end_without_job",
    "record_launching",
    "record_started",
]

log = get_logger(__name__)

_END_EVENT = {TaskState.CANCELLED: "cancelled", TaskState.LOST: "lost"}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``; nested dicts are merged, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def add_event(
    session: Session,
    task: Task,
    event: str,
    pending: list[LogRecord],
    attempt: int | None = None,
    *,
    component: str = "event",
    **detail: Any,
) -> None:
    """A task event row in the caller's transaction, and its bus record queued for after the commit."""
    session.add(TaskEvent(task_id=task.id, attempt=attempt, event=event, detail=detail))
    message = event.replace("_", " ") + (f": {detail['reason']}" if detail.get("reason") else "")
    pending.append(
        LogRecord(
            timestamp=time.time(),
            message=message,
            component=component,
            level="error" if event in ("failed", "lost", "server_failed", "server_lost") else "info",
            run_id=task.run_id,
            dag_id=task.dag_id,
            task_id=task.id,
            attempt=attempt,
            event=event,
            fields={"service": task.service, **detail},
        )
    )


def _job(session: Session, task_id: str, attempt: int) -> Job:
    job = session.scalar(select(Job).where(Job.task_id == task_id, Job.attempt == attempt))
    assert job is not None, f"no job row for {task_id} attempt {attempt}"
    return job


def _attempt(session: Session, task_id: str, attempt: int) -> TaskAttempt:
    row = session.scalar(select(TaskAttempt).where(TaskAttempt.task_id == task_id, TaskAttempt.attempt == attempt))
    assert row is not None, f"no attempt row for {task_id} attempt {attempt}"
    return row


def record_launching(
    factory: sessionmaker[Session],
    task_id: str,
    attempt: int,
    resolved: Sequence[ResolvedArtifact],
    code: dict[str, Any] | None,
    workspace: Path,
    runtime_name: str,
    issue_token: Callable[[Session, str], str],
) -> tuple[str | None, list[LogRecord]]:
    """Refs resolved and workspace ready: record both refs and what they resolved to, the consumed and
    code lineage edges, the attempt and job rows (``launching``) and the sidecar's task token.

    Returns (token, records); the token is None (nothing recorded) when a cancel arrived meanwhile."""
    pending: list[LogRecord] = []
    with session_scope(factory) as session:
        task = session.get(Task, task_id)
        if task is None or task.cancel_requested_at is not None:
            return None, pending
        task.inputs = [{"ref": r.ref, "digest": r.digest, "name": r.name, "size": r.size} for r in resolved]
        if code is not None:
            task.code = code
            add_event(session, task, "code_resolved", pending, attempt=attempt, **code)
            outputs_mod.add_edge(session, "code", f"{code['repo']}@{code['commit']}", "task", task_id, "code")
        for item in resolved:
            add_event(session, task, "input_resolved", pending, attempt=attempt, ref=item.ref, digest=item.digest)
            outputs_mod.add_edge(session, "artifact", item.digest, "task", task_id, "consumed")
        session.add(TaskAttempt(task_id=task_id, attempt=attempt, state="launching", created_at=utcnow()))
        session.add(
            Job(task_id=task_id, attempt=attempt, runtime=runtime_name, workspace=str(workspace), state="launching")
        )
        return issue_token(session, task_id), pending


def record_started(
    factory: sessionmaker[Session], task_id: str, attempt: int, ref: str
) -> tuple[datetime, datetime, list[LogRecord]]:
    """Job launched: job, attempt and task ``running``; returns (submitted_at, now, records)."""
    pending: list[LogRecord] = []
    with session_scope(factory) as session:
        task = session.get(Task, task_id)
        assert task is not None
        now = utcnow()
        job = _job(session, task_id, attempt)
        job.ref, job.state, job.started_at = ref, "running", now
        row = _attempt(session, task_id, attempt)
        row.state, row.started_at = "running", now
        task.state, task.started_at = TaskState.RUNNING, now
        add_event(session, task, "started", pending, attempt=attempt, job=ref)
        return task.submitted_at, now, pending


def record_end_without_job(
    factory: sessionmaker[Session], locks: LockService, task_id: str, attempt: int, state: TaskState, reason: str
) -> list[LogRecord]:
    """The task ended before (or while) its job was launched: failed, cancelled or lost; locks released."""
    pending: list[LogRecord] = []
    with session_scope(factory) as session:
        task = session.get(Task, task_id)
        if task is None:
            return pending
        now = utcnow()
        for job in session.scalars(select(Job).where(Job.task_id == task_id, Job.state == "launching")):
            job.state, job.reason, job.finished_at = state.value, reason, now
        for row in session.scalars(
            select(TaskAttempt).where(TaskAttempt.task_id == task_id, TaskAttempt.state == "launching")
        ):
            row.state, row.reason, row.finished_at = state.value, reason, now
        task.state, task.reason, task.finished_at = state, reason, now
        released = locks.release(session, task_id)
        revoke_task_tokens(session, task_id)
        add_event(
            session, task, _END_EVENT.get(state, "failed"), pending, attempt=attempt, reason=reason, released=released
        )
    return pending


def record_end(
    factory: sessionmaker[Session],
    locks: LockService,
    task_id: str,
    attempt: int,
    status: JobStatus,
    state: TaskState,
    reason: str | None,
    collected: Iterable[outputs_mod.Output],
) -> tuple[datetime | None, datetime, list[LogRecord]]:
    """The job's ending: outputs, artifacts, lineage, states, exit code, locks and tokens released.

    Returns (started_at, now, records)."""
    pending: list[LogRecord] = []
    with session_scope(factory) as session:
        task = session.get(Task, task_id)
        assert task is not None
        now = utcnow()
        items = list(collected)
        for item in items:
            outputs_mod.record_output(session, task_id, item)
        task.outputs = [item.as_dict() for item in items]
        task.state, task.exit_code, task.reason, task.finished_at = state, status.exit_code, reason, now
        job = _job(session, task_id, attempt)
        job.state, job.exit_code, job.reason, job.finished_at = status.state.value, status.exit_code, reason, now
        row = _attempt(session, task_id, attempt)
        row.state, row.exit_code, row.reason, row.finished_at = state.value, status.exit_code, reason, now
        released = locks.release(session, task_id)
        revoke_task_tokens(session, task_id)
        add_event(
            session, task, _END_EVENT.get(state, "finished"), pending, attempt=attempt, state=state.value,
            exit_code=status.exit_code, reason=reason, outputs=task.outputs, released=released,
        )  # fmt: skip
        return task.started_at, now, pending


def options_from(settings: Any, prefix: str, cls: type) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that ``settings`` sets as ``<prefix><name>`` (undeclared ones keep
    the class's defaults), e.g. ``server_idle_timeout`` -> ``ServerManager(idle_timeout=...)``."""
    names = inspect.signature(cls).parameters
    return {name: getattr(settings, prefix + name) for name in names if hasattr(settings, prefix + name)}


def next_attempt(session: Session, task_id: str) -> int:
    """The number of the attempt about to start (1 + the attempts recorded)."""
    count = session.scalar(select(func.count()).select_from(TaskAttempt).where(TaskAttempt.task_id == task_id))
    return 1 + int(count or 0)


def record_call_started(
    factory: sessionmaker[Session],
    task_id: str,
    attempt: int,
    resolved: Sequence[ResolvedArtifact] = (),
    **detail: Any,
) -> list[LogRecord] | None:
    """A task run by the controller itself (``server``, ``external``: no job row) started: inputs as
    resolved with their consumed edges, the attempt row, task ``running``. None when a cancel came first."""
    pending: list[LogRecord] = []
    with session_scope(factory) as session:
        task = session.get(Task, task_id)
        if task is None or task.cancel_requested_at is not None:
            return None
        now = utcnow()
        task.inputs = [{"ref": r.ref, "digest": r.digest, "name": r.name, "size": r.size} for r in resolved]
        for item in resolved:
            add_event(session, task, "input_resolved", pending, attempt=attempt, ref=item.ref, digest=item.digest)
            outputs_mod.add_edge(session, "artifact", item.digest, "task", task_id, "consumed")
        session.add(TaskAttempt(task_id=task_id, attempt=attempt, state="running", created_at=now, started_at=now))
        task.state, task.started_at = TaskState.RUNNING, now
        add_event(session, task, "started", pending, attempt=attempt, **detail)
    return pending


def record_call_end(
    factory: sessionmaker[Session],
    locks: LockService,
    task_id: str,
    attempt: int,
    state: TaskState,
    exit_code: int | None,
    reason: str | None,
    collected: Iterable[outputs_mod.Output] = (),
    details: dict[str, Any] | None = None,
    *,
    keep_locks: bool = False,
) -> list[LogRecord]:
    """The end of a controller-run task: outputs and lineage, details, states, tokens revoked; its run
    slot freed and its locks released, or kept (``keep_locks``: a healthy server holds them until it stops)."""
    pending: list[LogRecord] = []
    with session_scope(factory) as session:
        task = session.get(Task, task_id)
        if task is None:
            return pending
        now = utcnow()
        items = list(collected)
        for item in items:
            outputs_mod.record_output(session, task_id, item)
        task.outputs = [item.as_dict() for item in items]
        task.details = details
        task.state, task.exit_code, task.reason, task.finished_at = state, exit_code, reason, now
        row = session.scalar(select(TaskAttempt).where(TaskAttempt.task_id == task_id, TaskAttempt.attempt == attempt))
        if row is not None:
            row.state, row.exit_code, row.reason, row.finished_at = state.value, exit_code, reason, now
        if keep_locks:
            session.execute(delete(LockQueueEntry).where(LockQueueEntry.task_id == task_id))
            released = []
        else:
            released = locks.release(session, task_id)
        revoke_task_tokens(session, task_id)
        add_event(
            session, task, _END_EVENT.get(state, "finished"), pending, attempt=attempt, state=state.value,
            exit_code=exit_code, reason=reason, outputs=task.outputs, released=released,
        )  # fmt: skip
    return pending


class MlflowBridge:
    """One MLflow run per task (the recorder nests it under the pipeline run)."""

    def __init__(
        self, factory: sessionmaker[Session], recorder: Any, on_run: Callable[[str], object] | None = None
    ) -> None:
        self._sf = factory
        self._recorder = recorder
        self._on_run = on_run
        """Called with the task ID once its run exists and again when the task ended: the manifests its
        sidecar registered before the run existed join it (``controller.services.ingest.backfill_mlflow``)."""

    def _backfill(self, task_id: str) -> None:
        if self._on_run is None:
            return
        try:
            self._on_run(task_id)
        except Exception:
            log.exception("mlflow back-fill failed", task_id=task_id)

    def start(self, task_id: str, attempt: int) -> None:
        """Open the task's run and remember its id (MLflow calls take ~0.1 s: not on the launch path)."""
        try:
            with session_scope(self._sf) as session:
                task = session.get(Task, task_id)
            if task is None or task.mlflow_run_id:
                return
            run_id = self._recorder.start_task(
                dag_id=task.dag_id,
                run_id=task.run_id,
                task_id=task.airflow_task_id or task.id,
                attempt=task.try_number if task.try_number is not None else attempt,
                service=task.service,
                mlprov_task_id=task.id,
                params=deep_merge((task.service_spec or {}).get("params") or {}, task.params or {}),
                code_commit=(task.code or {}).get("commit"),
            )
            if run_id:
                with session_scope(self._sf) as session:
                    row = session.get(Task, task_id)
                    if row is not None:
                        row.mlflow_run_id = str(run_id)
                        self._remember_parent(session, row)
        except Exception:
            log.exception("mlflow start failed", task_id=task_id)

    def _remember_parent(self, session: Session, task: Task) -> None:
        """The pipeline run's MLflow parent run id, kept on the first of its tasks to start."""
        if task.pipeline_run_id is None or task.run_id is None:
            return
        pipeline = session.get(PipelineRun, task.pipeline_run_id)
        if pipeline is not None and not pipeline.mlflow_run_id:
            parent = self._recorder.find_pipeline_run(task.dag_id, task.run_id)
            if parent:
                pipeline.mlflow_run_id = str(parent)

    def record(
        self,
        task_id: str,
        attempt: int,
        start_thread: threading.Thread | None,
        metrics: dict[str, Any],
        log_text: str,
    ) -> None:
        """After the task ended: wait for its ``start`` (or run it now: re-attached, or ended before the
        start ran), then :meth:`finish`. Runs on its own thread."""
        if start_thread is not None:
            start_thread.join(60)
        else:
            self.start(task_id, attempt)
        self._backfill(task_id)  # every manifest is registered by now (the outputs were taken from them)
        self.finish(task_id, metrics, log_text)

    def finish(self, task_id: str, metrics: dict[str, Any], log_text: str) -> None:
        """Metrics from ``outputs/metrics.json``, the task's log, the final state; never fails the task."""
        try:
            with session_scope(self._sf) as session:
                task = session.get(Task, task_id)
            if task is not None and task.mlflow_run_id:
                self._recorder.finish_task(task.mlflow_run_id, state=task.state, metrics=metrics, log_text=log_text)
        except Exception:
            log.exception("mlflow recording failed", task_id=task_id)
