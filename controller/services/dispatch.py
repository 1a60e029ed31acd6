"""The dispatcher: from a queued task to a recorded ending, on background threads in the controller.

Per task: **locks first** (named locks, GPU slots and a run slot, all-or-nothing FIFO:
:mod:`controller.services.locks`), then **resolve** mutable refs (git ref -> commit, artifact
name/alias -> digest; both recorded), **materialise** inputs into ``inputs/`` and write
``params.json`` (service defaults overlaid by the task's params), **launch** through the ``Runtime``,
**follow** the job (its output lines and the task events go to the ``LogBus``), and **record the end**
-- outputs hashed and stored, artifacts and lineage edges, state, exit code, locks released, task
tokens revoked -- in one transaction. Every state change is one transaction; events are published to
the bus after their transaction committed.

Preparing a job (resolve, materialise, token, JobSpec) is :mod:`controller.services.job_prep`.
Kinds: ``server`` and ``external`` tasks get their locks the same way, then go to ``ServerManager``
and ``ExternalCaller`` (``controller.services.servers`` / ``.external``; ``docs/service-kinds.md``).

Threads: one scheduler thread (woken on submit, cancel and every ending; also every second) and one
thread per granted task. ``stop()`` leaves jobs running: :meth:`Dispatcher.start` of the next
controller re-attaches to them (or records them ``lost``), finishes tasks whose job ended while no
controller watched, and puts grants that never launched back in the queue at their ticket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller import metrics
from controller.artifacts.base import ArtifactStore
from controller.auth import issue_task_token, revoke_task_tokens
from controller.errors import ControllerError, JobLaunchError
from controller.logging import get_logger
from controller.logs.base import LogBus, LogRecord
from controller.runtime.base import JobHandle, JobState, JobStatus, OutputLine, Runtime
from controller.services import outputs as outputs_mod
from controller.services.external import ExternalCaller
from controller.services.ingest import backfill_mlflow
from controller.services.job_prep import ActiveTask, JobPreparer, LaunchAborted, TokenIssuer
from controller.services.locks import Grant, LockService
from controller.services.servers import ServerManager
from controller.services.task_records import (
    MlflowBridge,
    add_event,
    options_from,
    record_end,
    record_end_without_job,
    record_started,
)
from controller.store.db import session_scope
from controller.store.models import Job, LockQueueEntry, Task, TaskState, utcnow
from provenance.errors import ProvenanceError

if TYPE_CHECKING:
    from controller.state import AppState

__all__ = ["TERMINAL_STATES", "Dispatcher", "build_dispatcher"]

log = get_logger(__name__)

TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST})
_JOB_TO_TASK = {
    JobState.SUCCEEDED: TaskState.SUCCEEDED,
    JobState.FAILED: TaskState.FAILED,
    JobState.TIMED_OUT: TaskState.FAILED,
    JobState.CANCELLED: TaskState.CANCELLED,
    JobState.LOST: TaskState.LOST,
}


class Dispatcher:
    """See the module docstring. ``start()`` reconciles then schedules; ``stop()`` leaves jobs running."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        runtime: Runtime,
        artifact_store: ArtifactStore,
        log_bus: LogBus,
        work_dir: Path,
        max_concurrent_jobs: int = 4,
        gpu_count: int = 0,
        sidecar_command: list[str] | None = None,
        sidecar_env: dict[str, str] | None = None,
        controller_url: str = "http://127.0.0.1:8080",
        recorder: Any | None = None,
        on_mlflow_run: Callable[[str], object] | None = None,
        runtime_name: str = "local",
        git_timeout: float = 30.0,
        issue_token: TokenIssuer = issue_task_token,
        timeout_slack: float = 30.0,
        server_options: dict[str, Any] | None = None,
        external_options: dict[str, Any] | None = None,
    ) -> None:
        self._sf = session_factory
        self._runtime = runtime
        self._store = artifact_store
        self._bus = log_bus
        self._work_dir = work_dir
        self._max_jobs = max_concurrent_jobs
        self.locks = LockService(gpu_count)
        self._sidecar = sidecar_command
        self._recorder = recorder
        self._mlflow = MlflowBridge(session_factory, recorder, on_mlflow_run) if recorder is not None else None
        self._timeout_slack = timeout_slack
        self._active: dict[str, ActiveTask] = {}
        self._active_lock = threading.Lock()
        self._sched_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None
        shared: dict[str, Any] = dict(session_factory=session_factory, locks=self.locks, store=artifact_store)
        self._preparer = JobPreparer(
            session_factory=session_factory, runtime=runtime, runtime_name=runtime_name,
            artifact_store=artifact_store, work_dir=work_dir, controller_url=controller_url,
            git_timeout=git_timeout, sidecar_command=sidecar_command, sidecar_env=dict(sidecar_env or {}),
            issue_token=issue_token, publish=self.publish,
        )  # fmt: skip
        self.servers = ServerManager(
            **shared, runtime=runtime, work_dir=work_dir, publish=self.publish, notify=self.notify,
            controller_url=controller_url, **(server_options or {}),
        )  # fmt: skip
        self.external = ExternalCaller(**shared, work_dir=work_dir, publish=self.publish, **(external_options or {}))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Reconcile what a previous controller left, then start scheduling."""
        self._stopping.clear()
        self.reconcile()
        self.servers.start()
        self._scheduler = threading.Thread(target=self._schedule_loop, name="dispatch-scheduler", daemon=True)
        self._scheduler.start()
        self.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling and following; running jobs keep running (the next ``start`` re-attaches)."""
        self._stopping.set()
        self._wake.set()
        self.servers.stop()  # before the runtime stops following: a stopped server's ending is recorded
        close = getattr(self._runtime, "close", None)
        if callable(close):
            close()  # stop following (no line is consumed after the bus closes); the jobs keep running
        deadline = time.monotonic() + timeout
        with self._active_lock:
            threads = [self._scheduler, *self._threads]
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def notify(self) -> None:
        """Something changed (a submit, a cancel, an ending): run a scheduling pass soon."""
        self._wake.set()

    # -- events ---------------------------------------------------------------------------------------

    def publish(self, records: list[LogRecord]) -> None:
        """Hand committed events / output lines to the bus (a bus outage is logged, never raised)."""
        if not records:
            return
        try:
            self._bus.publish_many(records)
        except Exception:  # the state is committed; a bus outage must not undo or crash the dispatcher
            log.exception("log bus publish failed", records=len(records))

    # -- scheduling -------------------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.schedule_once()
            except Exception:
                log.exception("scheduling pass failed")
                time.sleep(0.2)

    def schedule_once(self) -> list[Grant]:
        """One pass: grant what can run now and start a thread per grant; record who waits for what."""
        pending: list[LogRecord] = []
        with self._sched_lock:
            with session_scope(self._sf) as session:
                plan = self.locks.schedule(session, self._max_jobs)
                ids = [*plan.waiting_for_lock, *plan.waiting_for_slot, *(g.task_id for g in plan.grants)]
                tasks = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_(ids)))} if ids else {}
                for task_id, blockers in plan.waiting_for_lock.items():
                    task = tasks[task_id]
                    if task.state == TaskState.QUEUED:
                        task.state = TaskState.WAITING_FOR_LOCK
                        add_event(session, task, "lock_waiting", pending, waiting_for=blockers)
                for task_id in plan.waiting_for_slot:
                    if tasks[task_id].state == TaskState.WAITING_FOR_LOCK:
                        tasks[task_id].state = TaskState.QUEUED
                for grant in plan.grants:
                    task = tasks[grant.task_id]
                    if task.state == TaskState.WAITING_FOR_LOCK:
                        task.state = TaskState.QUEUED
                    if grant.locks:
                        add_event(session, task, "lock_acquired", pending, locks=list(grant.locks))
                    self._register(task)
            self.publish(pending)
            for grant in plan.grants:
                self._spawn(self._run, grant)
        return plan.grants

    def _register(self, task: Task) -> ActiveTask:
        active = ActiveTask(task.id, ident={"run_id": task.run_id, "dag_id": task.dag_id}, service=task.service)
        active.kind = str((task.service_spec or {}).get("kind") or "job")
        with self._active_lock:
            self._active[task.id] = active
        return active

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        """A daemon thread that ``stop()`` joins (an MLflow call must not outlive its app: the next app's
        Alembic migration shares Alembic's process-global proxies with MLflow's store set-up)."""
        thread = threading.Thread(target=target, args=args, name=f"dispatch-{target.__name__}", daemon=True)
        with self._active_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    # -- cancel -------------------------------------------------------------------------------------

    def cancel(self, task_id: str) -> None:
        """Cancel a task (idempotent): a waiting one ends at once, a running one is killed, then recorded."""
        pending: list[LogRecord] = []
        with self._sched_lock, session_scope(self._sf) as session:
            task = session.get(Task, task_id)
            if task is None or TaskState(task.state) in TERMINAL_STATES:
                return
            if not self.locks.is_granted(session, task_id):
                self.locks.release(session, task_id)
                revoke_task_tokens(session, task_id)
                task.state, task.reason, task.finished_at = TaskState.CANCELLED, "cancelled before it started", utcnow()
                add_event(session, task, "cancelled", pending, reason=task.reason)
                granted = False
            else:
                if task.cancel_requested_at is None:
                    task.cancel_requested_at = utcnow()
                    add_event(session, task, "cancel_requested", pending)
                granted = True
        self.publish(pending)
        if granted:
            with self._active_lock:
                active = self._active.get(task_id)
            if active is not None:
                active.cancel.set()
                if active.handle is not None:
                    self._runtime.cancel(active.handle)
        self.notify()

    # -- running a task -------------------------------------------------------------------------

    def _run(self, grant: Grant) -> None:
        with self._active_lock:
            active = self._active[grant.task_id]
        if active.kind != "job":
            self._run_by_controller(active)
            return
        try:
            spec = self._preparer.prepare(active, grant)
        except LaunchAborted as exc:
            self._finish_without_job(active, exc.state, exc.reason)
            return
        except Exception as exc:  # never leave a granted task unknown
            log.exception("task preparation failed", task_id=active.task_id)
            self._finish_without_job(active, TaskState.FAILED, f"the controller could not prepare the job: {exc}")
            return
        try:
            handle = self._runtime.launch(spec, self._sink(active))
        except JobLaunchError as exc:
            self._finish_without_job(active, TaskState.FAILED, str(exc))
            return
        except Exception as exc:
            log.exception("job launch failed", task_id=active.task_id)
            self._finish_without_job(active, TaskState.FAILED, f"the job could not start: {exc}")
            return
        self._record_started(active, handle)
        if self._mlflow is not None:
            active.mlflow_thread = self._spawn(self._mlflow.start, active.task_id, active.attempt)
        self._follow(active, handle, spec.timeout)

    def _run_by_controller(self, active: ActiveTask) -> None:
        """A ``server`` or ``external`` task: the controller itself does the work (no job)."""
        handler = self.servers.run_task if active.kind == "server" else self.external.run_task
        try:
            active.attempt = handler(active.task_id, active.cancel)
        except Exception as exc:  # never leave a granted task unknown
            log.exception("task failed in the controller", task_id=active.task_id, kind=active.kind)
            self._finish_without_job(active, TaskState.FAILED, f"the controller could not run the task: {exc}")
            return
        self._forget(active.task_id)
        self._record_mlflow(active, {})

    def _sink(self, active: ActiveTask) -> Callable[[OutputLine], None]:
        def sink(line: OutputLine) -> None:
            active.lines.append(f"{line.component} {line.stream}: {line.text}")
            self.publish(
                [
                    LogRecord(
                        timestamp=line.timestamp,
                        message=line.text,
                        component=line.component,
                        level="warning" if line.stream == "stderr" else "info",
                        stream=line.stream,
                        task_id=active.task_id,
                        attempt=active.attempt,
                        fields={"service": active.service},
                        **active.ident,
                    )
                ]
            )

        return sink

    def _record_started(self, active: ActiveTask, handle: JobHandle) -> None:
        active.handle = handle
        submitted, now, pending = record_started(self._sf, active.task_id, active.attempt, handle.ref)
        metrics.DISPATCH_LATENCY.labels(phase="submit_to_start").observe(max(0.0, (now - submitted).total_seconds()))
        self.publish(pending)
        if active.cancel.is_set():
            self._runtime.cancel(handle)

    def _follow(self, active: ActiveTask, handle: JobHandle, timeout: float | None) -> None:
        """Wait for the job's end (a thread per job); on ``stop()`` return and leave the job running."""
        deadline = None if timeout is None else time.monotonic() + timeout + self._timeout_slack
        while True:
            status = self._runtime.wait(handle, timeout=0.5)
            if self._stopping.is_set():  # the next controller re-attaches, reads the rest and records the end
                return
            if status.state not in (JobState.RUNNING, JobState.PENDING):
                break
            if deadline is not None and time.monotonic() > deadline:  # the runtime's own timeout did not fire
                log.warning("job overran its timeout; cancelling", task_id=active.task_id)
                self._runtime.cancel(handle)
                deadline = None
        self._finish(active, status)

    # -- endings ----------------------------------------------------------------------------------

    def _finish_without_job(self, active: ActiveTask, state: TaskState, reason: str) -> None:
        self.publish(record_end_without_job(self._sf, self.locks, active.task_id, active.attempt, state, reason))
        self._forget(active.task_id)

    def _finish(self, active: ActiveTask, status: JobStatus) -> None:
        """Record the job's ending: outputs, artifacts, lineage, state, locks released (one transaction)."""
        state = _JOB_TO_TASK.get(status.state, TaskState.FAILED)
        reason = status.reason
        if active.cancel.is_set() and state is not TaskState.SUCCEEDED:
            state, reason = TaskState.CANCELLED, "cancelled"
        workspace = self._work_dir / active.task_id
        collected: list[outputs_mod.Output] = []
        metric_values: dict[str, Any] = {}
        if state is TaskState.SUCCEEDED:
            try:
                if self._sidecar:  # the sidecar signed, uploaded and registered each output
                    with self._sf() as session:
                        collected = outputs_mod.registered_outputs(session, active.task_id)
                    unsigned = outputs_mod.unsigned_outputs(workspace / "outputs", collected)
                    if unsigned:
                        state = TaskState.FAILED
                        reason = f"outputs without a registered manifest (the sidecar did not deliver them): {unsigned}"
                else:
                    collected = outputs_mod.collect(workspace / "outputs", self._store)
                metric_values = outputs_mod.read_metrics(workspace / "outputs")
            except (ControllerError, ProvenanceError, OSError) as exc:
                state, reason = TaskState.FAILED, f"the outputs could not be recorded: {exc}"
        started, now, pending = record_end(
            self._sf, self.locks, active.task_id, active.attempt, status, state, reason, collected
        )
        if status.finished_at is not None:
            metrics.DISPATCH_LATENCY.labels(phase="exit_to_final").observe(max(0.0, time.time() - status.finished_at))
        if started is not None:
            metrics.JOB_DURATION.labels(service=active.service, state=state.value).observe(
                (now - started).total_seconds()
            )
        self.publish(pending)
        self._forget(active.task_id)
        self._record_mlflow(active, metric_values)

    def _record_mlflow(self, active: ActiveTask, metric_values: dict[str, Any]) -> None:
        if self._mlflow is not None:
            log_text = "\n".join(active.lines)
            self._spawn(
                self._mlflow.record, active.task_id, active.attempt, active.mlflow_thread, metric_values, log_text
            )

    def _forget(self, task_id: str) -> None:
        with self._active_lock:
            self._active.pop(task_id, None)
        self.notify()

    # -- reconcile ------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """After a restart: re-attach to running jobs, record vanished ones ``lost``, requeue unlaunched grants."""
        with session_scope(self._sf) as session:
            granted = list(session.scalars(select(LockQueueEntry).where(LockQueueEntry.granted_at.is_not(None))))
            work: list[tuple[Task, Job | None]] = []
            for entry in granted:
                task = session.get(Task, entry.task_id)
                job = session.scalars(
                    select(Job).where(Job.task_id == entry.task_id).order_by(Job.attempt.desc())
                ).first()
                if task is not None:
                    work.append((task, job))
        for task, job in work:
            active = self._register(task)
            if job is None:
                with self._sched_lock, session_scope(self._sf) as session:
                    self.locks.ungrant(session, task.id)
                self._forget(task.id)
                continue
            active.attempt = job.attempt
            if job.ref is None:
                self._finish_without_job(active, TaskState.LOST, "the controller stopped while launching the job")
                continue
            handle = JobHandle(task.id, job.attempt, job.ref)
            active.handle = handle
            status = self._runtime.reattach(handle, self._sink(active))
            log.info("reconciled job", task_id=task.id, state=status.state.value)
            if task.cancel_requested_at is not None:
                active.cancel.set()
                if status.state is JobState.RUNNING:
                    self._runtime.cancel(handle)
            if status.state in (JobState.RUNNING, JobState.PENDING):
                self._spawn(self._follow, active, handle, None)
            else:
                self._spawn(self._finish, active, status)


def build_dispatcher(state: AppState) -> Dispatcher | None:
    """The app's dispatcher from its state (``None`` while a component it needs is missing)."""
    settings = state.settings
    if state.runtime is None or state.artifact_store is None or state.log_bus is None:
        log.warning("dispatcher not started: runtime, artifact store or log bus missing")
        return None
    return Dispatcher(
        session_factory=state.session_factory,
        runtime=state.runtime,
        artifact_store=state.artifact_store,
        log_bus=state.log_bus,
        work_dir=settings.work_dir,
        max_concurrent_jobs=settings.max_concurrent_jobs,
        gpu_count=int(getattr(settings, "gpu_count", 0)),
        sidecar_command=settings.effective_sidecar_command,
        sidecar_env={"MLPROV_HOME": str(settings.home)},
        controller_url=settings.effective_controller_url,
        recorder=state.recorder,
        on_mlflow_run=partial(backfill_mlflow, state.session_factory, state.provenance_mlflow),
        runtime_name=settings.runtime,
        server_options=options_from(settings, "server_", ServerManager),
        external_options=options_from(settings, "external_", ExternalCaller),
    )
