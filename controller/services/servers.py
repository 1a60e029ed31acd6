"""``server`` services: a long-running API process per pipeline run, health-checked, routed to by name.

A server task means **"ensure this server is up for this run"** (the full contract, with the env a
server gets, what it holds and when it stops: ``docs/service-kinds.md``). :meth:`ServerManager.run_task`
(on the dispatcher's grant thread) starts it through the ``Runtime`` on a free 127.0.0.1 port, waits
for its health check and records it (``servers`` table); a later task of the run finds it and succeeds
at once. One monitor thread marks servers whose process ended ``failed``/``lost``, stops those failing
``health_failures`` checks in a row and those of runs idle for ``idle_timeout`` s. :meth:`end_run` and
controller shutdown stop them; after a crash :meth:`start` re-attaches or marks them ``lost``. Every
change is an event on the task that started the server. Routing by name: ``server_routing``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore
from controller.catalog import ServiceSpec
from controller.errors import ControllerError, JobLaunchError, UnavailableError
from controller.logging import get_logger
from controller.logs.base import LogRecord
from controller.runtime import k8s_staging
from controller.runtime.base import JobHandle, JobSpec, JobState, OutputLine, OutputSink, Runtime
from controller.services import outputs as outputs_mod
from controller.services.locks import LockService
from controller.services.refs import resolve_artifact
from controller.services.server_routing import LIVE, RunEndResult, list_servers, run_row, view
from controller.services.task_records import (
    add_event,
    deep_merge,
    next_attempt,
    record_call_end,
    record_call_started,
    record_end_without_job,
)
from controller.store.db import session_scope
from controller.store.models import Lock, PipelineRun, Server, ServerState, Task, TaskState, utcnow
from provenance.errors import ProvenanceError

if TYPE_CHECKING:
    from controller.state import AppState

__all__ = ["LIVE", "ServerManager", "server_manager"]

log = get_logger(__name__)
_ACTIVE_TASK_STATES = ("queued", "waiting_for_lock", "running")
_LOCAL_HOST = "127.0.0.1"


@dataclass
class _Outcome:
    state: TaskState
    reason: str | None = None
    exit_code: int | None = None
    details: dict[str, Any] | None = None
    keep_locks: bool = False


class ServerManager:
    """See the module docstring. Owned by the dispatcher (``dispatcher.servers``); thread-safe."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        runtime: Runtime,
        locks: LockService,
        store: ArtifactStore,
        work_dir: Path,
        publish: Callable[[list[LogRecord]], None],
        notify: Callable[[], None],
        controller_url: str = "http://127.0.0.1:8080",
        idle_timeout: float = 1800.0,
        health_interval: float = 10.0,
        health_failures: int = 3,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        check_interval: float = 1.0,
        proxy_timeout: float = 300.0,
        stop_on_shutdown: bool = True,
    ) -> None:
        self._sf, self._runtime, self._locks, self._store = session_factory, runtime, locks, store
        self._work_dir, self._publish, self._notify = work_dir, publish, notify
        self._controller_url = controller_url
        self.idle_timeout, self.health_interval, self.health_failures = idle_timeout, health_interval, health_failures
        self._start_timeout, self._stop_timeout = start_timeout, stop_timeout
        self._check_interval, self.proxy_timeout = check_interval, proxy_timeout
        self.stop_on_shutdown = stop_on_shutdown
        self._handles: dict[str, JobHandle] = {}
        self._failures: dict[str, int] = {}
        self._checked: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._keys: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self._ports: deque[int] = deque(maxlen=64)
        self._halt = threading.Event()
        self._monitor: threading.Thread | None = None
        self._http = httpx.Client(timeout=2.0, trust_env=False)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Re-attach to servers a previous controller left running (or mark them lost), then watch."""
        self._halt.clear()
        self.reconcile()
        self._monitor = threading.Thread(target=self._monitor_loop, name="servers-monitor", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop watching; stop every live server unless ``stop_on_shutdown`` is off (then they are re-attached)."""
        self._halt.set()
        if self._monitor is not None:
            self._monitor.join(self._check_interval + 5)
        if self.stop_on_shutdown:
            with session_scope(self._sf) as session:
                ids = list(session.scalars(select(Server.id).where(Server.state.in_(LIVE))))
            self._stop_many(ids, ServerState.STOPPED, "the controller shut down")
        self._http.close()

    def reconcile(self) -> None:
        with session_scope(self._sf) as session:
            rows = list(session.scalars(select(Server).where(Server.state.in_(LIVE))))
            session.expunge_all()
        for row in rows:
            if row.ref is None:
                self._mark(row.id, ServerState.LOST, "the controller stopped while launching the server")
                continue
            handle = JobHandle(row.task_id, row.attempt, row.ref)
            status = self._runtime.reattach(
                handle, self._sink(row.task_id, row.attempt, row.dag_id, row.run_id, row.service)
            )
            if status.state in (JobState.RUNNING, JobState.PENDING):
                with self._lock:
                    self._handles[row.id] = handle
                log.info("server re-attached", server=row.service, run_id=row.run_id)
            elif status.state is JobState.LOST:
                self._mark(row.id, ServerState.LOST, status.reason or "the server's process is gone")
            else:
                self._mark(row.id, ServerState.FAILED, f"the server exited while no controller ran ({status.reason})")

    # -- the ensure task ------------------------------------------------------------------------

    def run_task(self, task_id: str, cancel: threading.Event) -> int:
        """Ensure the task's server is up for its run (see the module docstring); returns the attempt."""
        with session_scope(self._sf) as session:
            task = session.get(Task, task_id)
            if task is None:
                return 1
            attempt = next_attempt(session, task_id)
            spec = ServiceSpec.model_validate(task.service_spec or {})
            params = deep_merge(spec.params, task.params or {})
            timeout = task.timeout or spec.timeout or self._start_timeout
            run = session.get(PipelineRun, task.pipeline_run_id) if task.pipeline_run_id else None
            run_key = (run.id, run.dag_id, run.run_id, run.state) if run is not None else None
            failure: str | None = None
            resolved: list[Any] = []
            try:
                resolved = [resolve_artifact(session, entry["ref"]) for entry in task.inputs]
            except (ControllerError, ProvenanceError) as exc:
                failure = str(exc)
        if run_key is None:
            failure = "a server task needs `run` {dag_id, run_id, task_id}: a server lives for one pipeline run"
        elif run_key[3] != "running":
            failure = f"pipeline run {run_key[1]}/{run_key[2]} has ended ({run_key[3]}): no server starts for it"
        if failure is not None or run_key is None:
            end = record_end_without_job(self._sf, self._locks, task_id, attempt, TaskState.FAILED, failure or "")
            self._publish(end)
            return attempt
        started = record_call_started(self._sf, task_id, attempt, resolved, server=spec.name)
        if started is None:
            reason = "cancelled before the server started"
            self._publish(record_end_without_job(self._sf, self._locks, task_id, attempt, TaskState.CANCELLED, reason))
            return attempt
        self._publish(started)
        with self._lock:
            key_lock = self._keys.setdefault((run_key[0], spec.name), threading.Lock())
        with key_lock:  # one ensure per (run, service) at a time: the second finds the first's server
            try:
                outcome = self._ensure(task_id, attempt, spec, params, resolved, timeout, cancel, run_key)
            except Exception as exc:
                log.exception("server start failed", task_id=task_id)
                outcome = _Outcome(TaskState.FAILED, f"the controller could not start the server: {exc}")
        self._publish(
            record_call_end(
                self._sf, self._locks, task_id, attempt, outcome.state, outcome.exit_code, outcome.reason, (),
                outcome.details, keep_locks=outcome.keep_locks,
            )
        )  # fmt: skip
        return attempt

    def _ensure(
        self,
        task_id: str,
        attempt: int,
        spec: ServiceSpec,
        params: dict[str, Any],
        resolved: list[Any],
        timeout: float,
        cancel: threading.Event,
        run_key: tuple[str, str, str, str],
    ) -> _Outcome:
        pipeline_run_id = run_key[0]
        with session_scope(self._sf) as session:
            row = session.scalar(
                select(Server).where(Server.pipeline_run_id == pipeline_run_id, Server.service == spec.name)
            )
            live = row is not None and row.state in LIVE and row.ref is not None
            server_id = row.id if row is not None else None
        handle = self._handle(server_id) if live and server_id is not None else None
        if server_id is not None and handle is not None and self._runtime.status(handle).state is JobState.RUNNING:
            with session_scope(self._sf) as session:
                existing = session.get(Server, server_id)
                assert existing is not None
                if existing.state == ServerState.HEALTHY:
                    return _Outcome(TaskState.SUCCEEDED, None, 0, {"server": view(existing).model_dump(mode="json")})
                url = existing.url or ""
        else:
            server_id, handle, url = self._launch(task_id, attempt, spec, params, resolved, run_key, server_id)
            if handle is None:
                return self._failed_outcome(server_id)
        return self._wait_healthy(server_id, handle, url + (spec.health_path or "/"), timeout, cancel)

    def _launch(
        self,
        task_id: str,
        attempt: int,
        spec: ServiceSpec,
        params: dict[str, Any],
        resolved: list[Any],
        run_key: tuple[str, str, str, str],
        server_id: str | None,
    ) -> tuple[str, JobHandle | None, str]:
        pipeline_run_id, dag_id, run_id, _ = run_key
        port = self._free_port()
        url = f"http://{_LOCAL_HOST}:{port}"
        workspace = self._work_dir / task_id
        outputs_mod.prepare_workspace(workspace, params)
        for item in [] if callable(getattr(self._runtime, "server_url", None)) else resolved:
            self._store.get(item.digest, workspace / "inputs" / item.name)  # on kubernetes the pod fetches them
        with session_scope(self._sf) as session:
            row = session.get(Server, server_id) if server_id is not None else None
            if row is None:
                row = Server(
                    pipeline_run_id=pipeline_run_id, dag_id=dag_id, run_id=run_id, service=spec.name, task_id=task_id
                )
                session.add(row)
            row.task_id, row.attempt, row.state, row.port, row.url = (
                task_id,
                attempt,
                ServerState.STARTING.value,
                port,
                url,
            )
            row.ref, row.workspace, row.reason, row.healthy_at, row.stopped_at = None, str(workspace), None, None, None
            row.last_activity_at = utcnow()
            session.flush()
            server_id = row.id
        argv = [a.replace("${PORT}", str(port)).replace("$PORT", str(port)) for a in spec.command or []]
        env = {
            **spec.env, "PORT": str(port), "MLPROV_SERVER_PORT": str(port), "HOST": _LOCAL_HOST,
            "MLPROV_SERVER_HOST": _LOCAL_HOST, "MLPROV_TASK_ID": task_id, "MLPROV_CONTROLLER_URL": self._controller_url,
            "MLPROV_DAG_ID": dag_id, "MLPROV_RUN_ID": run_id,
        }  # fmt: skip
        job = JobSpec(
            task_id=task_id, attempt=attempt, workspace=workspace, command=argv or None, image=spec.image, env=env,
            labels={"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "attempt": str(attempt), "kind": "server"},
            resources=spec.resources.model_dump(exclude_none=True),
        )  # fmt: skip
        cluster_url = getattr(self._runtime, "server_url", None)  # kubernetes: a Deployment + Service
        try:
            if callable(cluster_url):
                image = k8s_staging.resolve_image(self._runtime, spec.image)
                inputs = k8s_staging.input_entries(self._store, self._controller_url, resolved)
                job = k8s_staging.kubernetes_spec(job, spec, image, inputs)
            handle = self._runtime.launch(job, self._sink(task_id, attempt, dag_id, run_id, spec.name))
        except (JobLaunchError, ControllerError) as exc:
            self._mark(server_id, ServerState.FAILED, str(exc), release=False)
            return server_id, None, url
        if callable(cluster_url):
            url = str(cluster_url(handle) or url)
        with session_scope(self._sf) as session:
            started = session.get(Server, server_id)
            if started is not None:
                started.ref, started.url = handle.ref, url
        with self._lock:
            self._handles[server_id] = handle
        return server_id, handle, url

    def _wait_healthy(
        self, server_id: str, handle: JobHandle, health_url: str, timeout: float, cancel: threading.Event
    ) -> _Outcome:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if cancel.is_set():
                self._stop_many([server_id], ServerState.STOPPED, "cancelled while starting")
                return _Outcome(TaskState.CANCELLED, "cancelled while the server was starting")
            status = self._runtime.status(handle)
            if status.state not in (JobState.RUNNING, JobState.PENDING):
                lost = status.state is JobState.LOST
                why = f"the server exited before it was healthy ({status.reason or status.state.value})"
                self._mark(
                    server_id, ServerState.LOST if lost else ServerState.FAILED, why, release=False, only_live=True
                )
                return self._failed_outcome(server_id, status.exit_code)
            healthy, last = self._probe(health_url)
            if healthy and self._mark_healthy(server_id):
                with session_scope(self._sf) as session:
                    row = session.get(Server, server_id)
                    assert row is not None
                    return _Outcome(TaskState.SUCCEEDED, None, 0, {"server": view(row).model_dump(mode="json")}, True)
            if healthy:  # stopped meanwhile (the run ended)
                return self._failed_outcome(server_id)
            if time.monotonic() >= deadline:
                why = f"no 2xx answer from GET {health_url} within {timeout:g} s (last: {last})"
                self._stop_many([server_id], ServerState.FAILED, why, release=False)
                return _Outcome(TaskState.FAILED, why, None)
            cancel.wait(0.1)

    def _failed_outcome(self, server_id: str, exit_code: int | None = None) -> _Outcome:
        with session_scope(self._sf) as session:
            row = session.get(Server, server_id)
            reason = (row.reason if row is not None else None) or "the server did not start"
        return _Outcome(TaskState.FAILED, reason, exit_code)

    # -- watching -------------------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._halt.wait(self._check_interval):
            try:
                self.check_once()
            except Exception:
                log.exception("server check failed")

    def check_once(self) -> None:
        """One pass of the monitor: ended processes, failing health checks, idle runs."""
        with session_scope(self._sf) as session:
            found = session.execute(
                select(Server.id, Server.url, Server.pipeline_run_id, Task.service_spec)
                .join(Task, Task.id == Server.task_id)
                .where(Server.state == ServerState.HEALTHY.value)
            ).all()
        # the health path comes from the starting task's snapshot of the spec
        rows = [(sid, url, run_pk, str((spec or {}).get("health_path") or "/")) for sid, url, run_pk, spec in found]
        now = time.monotonic()
        for server_id, url, _, health_path in rows:
            handle = self._handle(server_id)
            if handle is None:
                continue
            status = self._runtime.status(handle)
            if status.state not in (JobState.RUNNING, JobState.PENDING):
                lost = status.state is JobState.LOST
                why = status.reason or f"the server exited ({status.state.value})"
                self._mark(server_id, ServerState.LOST if lost else ServerState.FAILED, f"{why}", only_live=True)
                continue
            if now - self._checked.get(server_id, 0.0) < self.health_interval:
                continue
            self._checked[server_id] = now
            ok, why = self._probe((url or "") + health_path)
            self._failures[server_id] = 0 if ok else self._failures.get(server_id, 0) + 1
            if self._failures[server_id] >= self.health_failures:
                reason = f"health check failed {self._failures[server_id]} times in a row (last: {why})"
                self._stop_many([server_id], ServerState.FAILED, reason)
        for run_pk in {r[2] for r in rows}:
            if self._idle_for(run_pk) > self.idle_timeout:
                with session_scope(self._sf) as session:
                    ids = list(
                        session.scalars(
                            select(Server.id).where(Server.pipeline_run_id == run_pk, Server.state.in_(LIVE))
                        )
                    )
                self._stop_many(ids, ServerState.STOPPED, f"the run had no activity for {self.idle_timeout:g} s")

    def _idle_for(self, pipeline_run_id: str) -> float:
        """Seconds since the run's last activity (0 while one of its tasks is queued or running)."""
        with session_scope(self._sf) as session:
            busy = session.scalar(
                select(func.count()).select_from(Task)
                .where(Task.pipeline_run_id == pipeline_run_id, Task.state.in_(_ACTIVE_TASK_STATES))
            )  # fmt: skip
            if busy:
                return 0.0
            stamps = session.execute(
                select(func.max(Task.submitted_at), func.max(Task.finished_at)).where(
                    Task.pipeline_run_id == pipeline_run_id
                )
            ).one()
            touched = session.scalar(
                select(func.max(Server.last_activity_at)).where(Server.pipeline_run_id == pipeline_run_id)
            )
        latest = [s for s in (*stamps, touched) if s is not None]
        if not latest:
            return 0.0
        newest = max(s if s.tzinfo else s.replace(tzinfo=utcnow().tzinfo) for s in latest)
        return (utcnow() - newest) / timedelta(seconds=1)

    def _probe(self, url: str) -> tuple[bool, str]:
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            return False, " ".join((str(exc) or type(exc).__name__).split())
        return 200 <= response.status_code < 300, f"HTTP {response.status_code}"

    # -- state changes ------------------------------------------------------------------------------

    def _handle(self, server_id: str) -> JobHandle | None:
        with self._lock:
            handle = self._handles.get(server_id)
        if handle is not None:
            return handle
        with session_scope(self._sf) as session:
            row = session.get(Server, server_id)
            if row is None or row.ref is None:
                return None
            handle = JobHandle(row.task_id, row.attempt, row.ref)
            sink = self._sink(row.task_id, row.attempt, row.dag_id, row.run_id, row.service)
        self._runtime.reattach(handle, sink)
        with self._lock:
            self._handles[server_id] = handle
        return handle

    def _mark_healthy(self, server_id: str) -> bool:
        pending: list[LogRecord] = []
        with session_scope(self._sf) as session:
            row = session.get(Server, server_id)
            if row is None or row.state != ServerState.STARTING:
                return False
            row.state, row.healthy_at, row.last_activity_at = ServerState.HEALTHY.value, utcnow(), utcnow()
            task = session.get(Task, row.task_id)
            if task is not None:
                add_event(
                    session, task, "server_healthy", pending, attempt=row.attempt, server=row.service, url=row.url
                )
        self._publish(pending)
        return True

    def _mark(
        self, server_id: str, state: ServerState, reason: str, *, release: bool = True, only_live: bool = False
    ) -> None:
        """Record a server's ending (an event on its task); ``release``: free the locks it held."""
        pending: list[LogRecord] = []
        with session_scope(self._sf) as session:
            row = session.get(Server, server_id)
            if row is None or (only_live and row.state not in LIVE):
                return
            row.state, row.reason, row.stopped_at = state.value, reason, utcnow()
            task = session.get(Task, row.task_id)
            if release and task is not None and task.state not in _ACTIVE_TASK_STATES:
                session.execute(delete(Lock).where(Lock.holder_task_id == row.task_id))
            if task is not None:
                add_event(
                    session, task, f"server_{state.value}", pending, attempt=row.attempt, server=row.service,
                    url=row.url, reason=reason,
                )  # fmt: skip
        with self._lock:
            self._handles.pop(server_id, None)
            self._failures.pop(server_id, None)
        self._publish(pending)
        self._notify()
        log.info("server ended", server_id=server_id, state=state.value, reason=reason)

    def _stop_many(self, server_ids: list[str], state: ServerState, reason: str, *, release: bool = True) -> None:
        """Stop the servers' processes (all at once, then wait for each) and record them ``state``."""
        handles = [(sid, self._handle(sid)) for sid in server_ids]
        for _, handle in handles:
            if handle is not None:
                self._runtime.cancel(handle)
        for sid, handle in handles:
            if handle is not None:
                self._runtime.wait(handle, timeout=self._stop_timeout)
            self._mark(sid, state, reason, release=release, only_live=True)

    def _sink(self, task_id: str, attempt: int, dag_id: str, run_id: str, service: str) -> OutputSink:
        def sink(line: OutputLine) -> None:
            self._publish(
                [
                    LogRecord(
                        timestamp=line.timestamp, message=line.text,
                        component="server" if line.component == "job" else line.component,
                        level="warning" if line.stream == "stderr" else "info", stream=line.stream,
                        run_id=run_id, dag_id=dag_id, task_id=task_id, attempt=attempt,
                        fields={"service": service, "server": service},
                    )
                ]
            )  # fmt: skip

        return sink

    def _free_port(self) -> int:
        with self._lock:
            for _ in range(50):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((_LOCAL_HOST, 0))
                    port = int(sock.getsockname()[1])
                if port not in self._ports:
                    self._ports.append(port)
                    return port
        raise UnavailableError("no free port on 127.0.0.1 for the server: retry")

    # -- queries and the API --------------------------------------------------------------------

    def end_run(self, dag_id: str, run_id: str, state: Literal["succeeded", "failed", "cancelled"]) -> RunEndResult:
        """Mark the run ended (the first call's state stays) and stop its servers; idempotent."""
        with session_scope(self._sf) as session:
            run = run_row(session, dag_id, run_id)
            if run.state == "running":
                run.state = state
            ended = run.state
            ids = list(
                session.scalars(select(Server.id).where(Server.pipeline_run_id == run.id, Server.state.in_(LIVE)))
            )
        self._stop_many(ids, ServerState.STOPPED, f"the pipeline run ended ({ended})")
        return RunEndResult(dag_id=dag_id, run_id=run_id, state=ended, servers=list_servers(self._sf, dag_id, run_id))


def server_manager(state: AppState) -> ServerManager:
    """The app's server manager (the dispatcher's); 503 while the dispatcher is not running."""
    manager = getattr(state.dispatcher, "servers", None)
    if not isinstance(manager, ServerManager):
        raise UnavailableError("the dispatcher is not running: retry when the controller is ready")
    return manager
