"""Preparing a granted job task for launch: resolve, materialise, mint its token, build the JobSpec.

The dispatcher's first step for a ``job`` task (:mod:`controller.services.dispatch`), kept apart from
its threads and bookkeeping. :meth:`JobPreparer.prepare` resolves artifact refs (name/alias -> digest)
and the code ref (git ref -> commit, outside any transaction), materialises the workspace (``params.json``
and, locally, ``inputs/`` from the artifact store; on Kubernetes the pod's init step fetches them and the
image is pinned to a digest), records the launch (attempt, resolved inputs, the sidecar's task token) in
one transaction, writes ``task.json`` for the sidecar and returns the runtime's :class:`JobSpec`. A task
that cannot or must not start raises :class:`LaunchAborted` with the state and reason to record.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore
from controller.catalog import ServiceSpec
from controller.errors import ControllerError
from controller.logs.base import LogRecord
from controller.runtime import k8s_staging
from controller.runtime.base import JobHandle, JobSpec, Runtime
from controller.services import outputs as outputs_mod
from controller.services.locks import Grant
from controller.services.refs import resolve_artifact, resolve_git_ref
from controller.services.server_routing import env_for_run
from controller.services.task_records import deep_merge, record_launching
from controller.services.taskfile import write_task_file
from controller.store.db import session_scope
from controller.store.models import Task, TaskAttempt, TaskState
from provenance.errors import ProvenanceError

__all__ = ["ActiveTask", "JobPreparer", "LaunchAborted", "TokenIssuer"]

LOG_TAIL_LINES = 20_000
TokenIssuer = Callable[[Session, str], str]


class LaunchAborted(Exception):
    """The task ended before its job started (cancelled, or a ref/input could not be resolved)."""

    def __init__(self, state: TaskState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass
class ActiveTask:
    """What the dispatcher keeps in memory about a task it is running."""

    task_id: str
    attempt: int = 1
    handle: JobHandle | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    ident: dict[str, Any] = field(default_factory=dict)
    """run_id / dag_id for log records."""
    service: str = ""
    kind: str = "job"
    mlflow_thread: threading.Thread | None = None


class JobPreparer:
    """Everything :meth:`prepare` needs from the controller's configuration; ``publish`` sends the
    events of committed transactions to the log bus."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        runtime: Runtime,
        runtime_name: str,
        artifact_store: ArtifactStore,
        work_dir: Path,
        controller_url: str,
        git_timeout: float,
        sidecar_command: list[str] | None,
        sidecar_env: dict[str, str],
        issue_token: TokenIssuer,
        publish: Callable[[list[LogRecord]], None],
    ) -> None:
        self._sf = session_factory
        self._runtime = runtime
        self._runtime_name = runtime_name
        self._store = artifact_store
        self._work_dir = work_dir
        self._controller_url = controller_url
        self._git_timeout = git_timeout
        self._sidecar = sidecar_command
        self._sidecar_env = sidecar_env
        self._issue_token = issue_token
        self._publish = publish

    def prepare(self, active: ActiveTask, grant: Grant) -> JobSpec:
        """Resolve refs, materialise the workspace, mint the sidecar's token (the launch transaction)."""
        with session_scope(self._sf) as session:
            task = self.live_task(session, active)
            service = ServiceSpec.model_validate(task.service_spec or {})
            code = dict(task.code) if task.code else None
            refs = [entry["ref"] for entry in task.inputs]
            # artifact name/alias -> digest now, at launch (checked at submission, re-resolved here)
            params = deep_merge(service.params, task.params or {})
            timeout = task.timeout or service.timeout
            active.attempt = 1 + len(
                list(session.scalars(select(TaskAttempt.id).where(TaskAttempt.task_id == task.id)))
            )
            labels = {k: str(v) for k, v in (("dag_id", task.dag_id), ("run_id", task.run_id)) if v is not None}
            try:
                resolved = [resolve_artifact(session, ref) for ref in refs]
            except (ControllerError, ProvenanceError) as exc:
                raise LaunchAborted(TaskState.FAILED, str(exc)) from exc
        try:
            if code is not None:  # outside any transaction: git may take seconds
                code["commit"] = resolve_git_ref(code["repo"], code["ref"], self._git_timeout)
        except (ControllerError, ProvenanceError) as exc:
            raise LaunchAborted(TaskState.FAILED, str(exc)) from exc
        workspace = self._work_dir / active.task_id
        outputs_mod.prepare_workspace(workspace, params)
        kube = self._runtime_name == "kubernetes"  # the pod's init step fetches inputs; images are pinned
        image, k8s_inputs = None, []
        if kube:
            try:
                image = k8s_staging.resolve_image(self._runtime, service.image)
                k8s_inputs = k8s_staging.input_entries(self._store, self._controller_url, resolved)
            except (ControllerError, ProvenanceError) as exc:
                raise LaunchAborted(TaskState.FAILED, str(exc)) from exc
        for item in [] if kube else resolved:
            try:
                self._store.get(item.digest, workspace / "inputs" / item.name)
            except (ControllerError, ProvenanceError) as exc:
                raise LaunchAborted(TaskState.FAILED, f"input {item.ref!r} ({item.digest}) unavailable: {exc}") from exc
        if active.cancel.is_set():
            raise LaunchAborted(TaskState.CANCELLED, "cancelled before the job started")
        token, pending = record_launching(
            self._sf, active.task_id, active.attempt, resolved, code, workspace, self._runtime_name, self._issue_token
        )
        if token is None:
            raise LaunchAborted(TaskState.CANCELLED, "cancelled before the job started")
        self._publish(pending)
        with session_scope(self._sf) as session:  # what the sidecar links to (docs/sidecar-protocol.md section 1)
            launched = self.live_task(session, active)
            write_task_file(
                workspace,
                task=launched,
                inputs=list(launched.inputs),
                code=code,
                session=session,
                attempt=active.attempt,
                environment=k8s_staging.task_environment(image),
            )
            recorded = k8s_staging.record_image(session, launched, active.attempt, image) if image else []
        self._publish(recorded)
        env = dict(service.env)
        if self._sidecar:
            env.update(self._sidecar_env)  # the launcher hands these to the sidecar only
        env.update(
            MLPROV_TASK_ID=active.task_id,
            MLPROV_TASK_TOKEN=token,
            MLPROV_CONTROLLER_URL=self._controller_url,
            MLPROV_ATTEMPT=str(active.attempt),
        )
        env.update(env_for_run(self._sf, active.ident.get("dag_id"), active.ident.get("run_id")))
        if grant.gpu_indices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in grant.gpu_indices)
        spec = JobSpec(
            task_id=active.task_id,
            attempt=active.attempt,
            workspace=workspace,
            command=service.command,
            image=service.image,
            env=env,
            timeout=timeout,
            labels={**labels, "task_id": active.task_id, "attempt": str(active.attempt)},
            sidecar_command=self._sidecar,
            resources=service.resources.model_dump(exclude_none=True),
        )
        return k8s_staging.kubernetes_spec(spec, service, image, k8s_inputs) if kube else spec

    def live_task(self, session: Session, active: ActiveTask) -> Task:
        task = session.get(Task, active.task_id)
        if task is None:
            raise LaunchAborted(TaskState.LOST, "the task row disappeared")
        if active.cancel.is_set() or task.cancel_requested_at is not None:
            raise LaunchAborted(TaskState.CANCELLED, "cancelled before the job started")
        return task
