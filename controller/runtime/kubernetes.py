"""The Kubernetes ``Runtime``: one ``batch/v1`` Job per task attempt, a Deployment + Service per run server.

Lifecycle rules (ARCHITECTURE section 5; docs/adr/0004-kubernetes-job-lifecycle.md):

- **Labels are identity.** The handle's ref is ``k8s:<namespace>:<kind>:<label selector>`` (managed-by,
  task ID, attempt); object names are random labels. Found again after a restart by that selector.
- **Every call has a timeout** (``_request_timeout``); watches also ask the server to end them.
- **Status comes from watches** of Jobs and Pods (one each for the namespace, by the managed-by label,
  with resync: :mod:`controller.runtime.k8s_watch`), not from polling each Job.
- **Evidence before deletion.** A Job is created without ``ttlSecondsAfterFinished``; once it ended, the
  runtime reads the final pod states (exit code, reason), drains the followed logs of the init step, the
  sidecar and the stage, and only then patches the TTL onto the Job. ``wait``/``status`` report the end
  only after that, so the dispatcher records the task with everything collected. The sidecar delivered
  its manifests before its container ended (the pod ends after its native sidecar).
- **A vanished Job is ``LOST``**, a recorded outcome: deleted while running, or gone on re-attach.
- **Cancel keeps the evidence:** it sets ``activeDeadlineSeconds`` to 1 (the Job fails, its pods get
  their grace period, the sidecar drains); the end is then reported ``cancelled``.
- **Retries are Airflow's:** ``backoffLimit: 0``.

Logs: each container's log is followed (``follow``, ``timestamps``) into the dispatcher's sink as
component ``sidecar`` for the sidecar and ``job`` for the stage and its init step; a dropped stream is
re-opened and lines already seen are skipped by timestamp.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from controller.errors import JobLaunchError
from controller.runtime.base import JobHandle, JobSpec, JobState, JobStatus, OutputLine, OutputSink
from controller.runtime.k8s_calls import ApiCalls, api_error, job_state, log_time, make_ref, parse_ref, parse_time
from controller.runtime.k8s_objects import (
    INIT_CONTAINER,
    JOB_CONTAINER,
    LABEL_ATTEMPT,
    LABEL_KIND,
    LABEL_TASK,
    MANAGED_SELECTOR,
    SIDECAR_CONTAINER,
    K8sJobSpec,
    ObjectConfig,
    attempt_selector,
    job_body,
    object_name,
    owner_patch,
    pvc_body,
    run_hash,
    secret_body,
)
from controller.runtime.k8s_server_objects import deployment_body, server_url, service_body
from controller.runtime.k8s_watch import ResourceWatch, iter_lines

if TYPE_CHECKING:
    from controller.services.images import ResolvedImage

__all__ = ["KubernetesRuntime", "job_state"]

log = structlog.get_logger(__name__)

_COMPONENT = {JOB_CONTAINER: "job", INIT_CONTAINER: "job", SIDECAR_CONTAINER: "sidecar"}
_LIVE = (JobState.PENDING, JobState.RUNNING)
_VANISHED = "the Job vanished before its end was observed (deleted while running, or while no controller watched)"


@dataclass
class _Attempt:
    handle: JobHandle
    sink: OutputSink
    kind: str  # "job" | "server"
    name: str | None = None
    registered: float = field(default_factory=time.time)
    state: JobState = JobState.PENDING
    reason: str | None = None
    started_at: float | None = None
    final: JobStatus | None = None
    finishing: bool = False
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    followers: dict[tuple[str, str], threading.Thread] = field(default_factory=dict)
    terminated: set[tuple[str, str]] = field(default_factory=set)
    server_checked: float = 0.0
    port: int = 8080


class KubernetesRuntime:
    """See the module docstring. ``batch``/``core``/``apps``: ``BatchV1Api``/``CoreV1Api``/``AppsV1Api``."""

    def __init__(
        self,
        *,
        batch: Any,
        core: Any,
        apps: Any = None,
        config: ObjectConfig | None = None,
        request_timeout: float = 10.0,
        watch_timeout: int = 300,
        ttl_after_collection: int = 600,
        log_drain_timeout: float = 30.0,
        start_watches: bool = True,
        resolver: Callable[[str], ResolvedImage] | None = None,
    ) -> None:
        self._batch, self._core, self._apps = batch, core, apps
        self.config = config or ObjectConfig()
        self._ns = self.config.namespace
        self._timeout = request_timeout
        calls = ApiCalls(request_timeout)
        self._list, self._call, self._quietly = calls.list, calls.call, calls.quietly
        self._watch_timeout = watch_timeout
        self._ttl = ttl_after_collection
        self._drain = log_drain_timeout
        self._start_watches = start_watches
        self._resolver = resolver
        self._pinned = False
        self._attempts: dict[str, _Attempt] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watches: list[ResourceWatch] = []

    # -- Runtime -------------------------------------------------------------------------------------

    def resolve_image(self, reference: str) -> ResolvedImage | None:
        """The image pinned to its digest (the dispatcher calls it before launch); None without a resolver."""
        return self._resolver(reference) if self._resolver is not None else None

    def launch(self, spec: JobSpec, on_output: OutputSink) -> JobHandle:
        if not spec.image:
            raise JobLaunchError(f"task {spec.task_id}: the kubernetes runtime runs images; give the service an image")
        self._pin_own_images()
        if spec.labels.get("kind") == "server":
            return self._launch_server(spec, on_output)
        task_json, params_json = self._staged(spec)
        name = object_name("mlprov", getattr(spec, "service", "") or "job", spec.task_id[:8], f"a{spec.attempt}")
        pvc = self._ensure_pvc(spec)
        secret = secret_body(
            self.config, spec, name, task_json=task_json, params_json=params_json, task_token=spec.env.get(
                "MLPROV_TASK_TOKEN"
            )
        )  # fmt: skip
        self._call("create the attempt's Secret", self._core.create_namespaced_secret, self._ns, secret)
        body = job_body(self.config, spec, name, pvc=pvc)
        handle = JobHandle(
            spec.task_id, spec.attempt, make_ref(self._ns, "job", attempt_selector(spec.task_id, spec.attempt))
        )
        # tracked before the create (its first events may arrive before the call returns), but no re-list
        # may call it vanished until the create has returned
        attempt = _Attempt(handle=handle, sink=on_output, kind="job", name=name, registered=float("inf"))
        self._track(attempt)
        try:
            created = self._call("create the Job", self._batch.create_namespaced_job, self._ns, body)
        except JobLaunchError:
            with self._lock:
                self._attempts.pop(handle.ref, None)
            self._quietly(self._core.delete_namespaced_secret, name, self._ns)
            raise
        attempt.registered = time.time()
        self._quietly(self._core.patch_namespaced_secret, name, self._ns, owner_patch(created))
        log.info("job_launched", task_id=spec.task_id, attempt=spec.attempt, job=name, namespace=self._ns)
        return handle

    def _pin_own_images(self) -> None:
        """Resolve the sidecar and init images to digests once (they run in every pod, and are provenance
        too: the sidecar signs); a failure fails the launch."""
        resolver = self._resolver
        if resolver is None:
            return
        with self._lock:
            if self._pinned:
                return
            try:
                sidecar = resolver(self.config.sidecar_image).pinned
                init = resolver(self.config.init_image).pinned
            except JobLaunchError as exc:
                raise JobLaunchError(f"the mlprov sidecar/init image: {exc}") from exc
            self.config = replace(self.config, sidecar_image=sidecar, init_image=init)
            self._pinned = True

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        attempt = self._attempts.get(handle.ref)
        if attempt is None or attempt.kind == "server":
            return self.status(handle)
        attempt.done.wait(timeout)
        return self.status(handle)

    def status(self, handle: JobHandle) -> JobStatus:
        attempt = self._attempts.get(handle.ref)
        if attempt is None:
            return self._read_status(handle)
        if attempt.kind == "server":
            return self._server_status(attempt)
        if attempt.final is not None:
            return attempt.final
        return JobStatus(attempt.state, reason=attempt.reason, started_at=attempt.started_at)

    def cancel(self, handle: JobHandle) -> None:
        namespace, kind, selector = parse_ref(handle.ref)
        attempt = self._attempts.get(handle.ref)
        if attempt is not None:
            attempt.cancel_requested = True
            if attempt.final is not None:
                return
        if kind == "server":
            self._delete_server(namespace, selector)
            return
        for job in self._list(self._batch.list_namespaced_job, namespace, selector):
            if job_state(job)[0] in _LIVE:  # failing it by deadline keeps the Job and its pods' evidence
                patch = {"spec": {"activeDeadlineSeconds": 1}}
                self._quietly(self._batch.patch_namespaced_job, job["metadata"]["name"], namespace, patch)

    def reattach(self, handle: JobHandle, on_output: OutputSink) -> JobStatus:
        namespace, kind, selector = parse_ref(handle.ref)
        attempt = _Attempt(handle=handle, sink=on_output, kind=kind)
        if kind == "server":
            self._track(attempt)
            return self._server_status(attempt, force=True)
        jobs = self._list(self._batch.list_namespaced_job, namespace, selector)
        if not jobs:
            return JobStatus(JobState.LOST, reason=_VANISHED)
        attempt.name = jobs[0]["metadata"]["name"]
        self._track(attempt)
        self.on_job_event("MODIFIED", jobs[0])
        return self.status(handle)

    def close(self) -> None:
        """Stop watching and following (the Jobs keep running; the next controller re-attaches)."""
        self._closed.set()
        for watch in self._watches:
            watch.stop()
        self._watches.clear()

    # -- servers -------------------------------------------------------------------------------------

    def server_url(self, handle: JobHandle) -> str | None:
        """The cluster DNS URL of a server launched by this runtime (None for a job)."""
        attempt = self._attempts.get(handle.ref)
        if attempt is None or attempt.kind != "server" or attempt.name is None:
            return None
        return server_url(self.config, attempt.name, attempt.port)

    def _launch_server(self, spec: JobSpec, on_output: OutputSink) -> JobHandle:
        if self._apps is None:
            raise JobLaunchError("the kubernetes runtime was built without an AppsV1Api: servers need Deployments")
        k8s = spec if isinstance(spec, K8sJobSpec) else K8sJobSpec(**{**spec.__dict__})
        task_json, params_json = self._staged(spec)
        run = run_hash(spec.labels.get("dag_id"), spec.labels.get("run_id"))[:8]
        name = object_name("mlprov-srv", k8s.service or "server", run)
        secret = secret_body(self.config, k8s, name, task_json=task_json, params_json=params_json, kind="server")
        self._call("create the server's Secret", self._core.create_namespaced_secret, self._ns, secret)
        try:
            created = self._call(
                "create the server's Deployment",
                self._apps.create_namespaced_deployment,
                self._ns,
                deployment_body(self.config, k8s, name),
            )
            self._call(
                "create the server's Service",
                self._core.create_namespaced_service,
                self._ns,
                service_body(self.config, k8s, name),
            )
        except JobLaunchError:
            self._quietly(self._apps.delete_namespaced_deployment, name, self._ns)
            self._quietly(self._core.delete_namespaced_secret, name, self._ns)
            raise
        self._quietly(self._core.patch_namespaced_secret, name, self._ns, owner_patch(created))
        selector = f"{attempt_selector(spec.task_id, spec.attempt)},{LABEL_KIND}=server"
        handle = JobHandle(spec.task_id, spec.attempt, make_ref(self._ns, "server", selector))
        attempt = _Attempt(handle=handle, sink=on_output, kind="server", name=name, state=JobState.RUNNING)
        attempt.port = k8s.port or 8080
        attempt.server_checked = time.monotonic()
        self._track(attempt)
        log.info("server_launched", task_id=spec.task_id, deployment=name, namespace=self._ns)
        return handle

    def _server_status(self, attempt: _Attempt, *, force: bool = False) -> JobStatus:
        """A server's Deployment, read at most every 2 s (the server manager asks often)."""
        if attempt.final is not None:
            return attempt.final
        now = time.monotonic()
        if force or now - attempt.server_checked >= 2.0:
            attempt.server_checked = now
            namespace, _, selector = parse_ref(attempt.handle.ref)
            found = self._list(self._apps.list_namespaced_deployment, namespace, selector) if self._apps else []
            if not found:
                state = JobState.CANCELLED if attempt.cancel_requested else JobState.LOST
                reason = "stopped" if attempt.cancel_requested else "the server's Deployment vanished"
                attempt.final = JobStatus(state, reason=reason, finished_at=time.time())
                return attempt.final
            if attempt.name is None:
                attempt.name = found[0]["metadata"]["name"]
                ports = found[0]["spec"]["template"]["spec"]["containers"][0].get("ports") or [{}]
                attempt.port = int(ports[0].get("containerPort", 8080))
        return JobStatus(JobState.RUNNING, started_at=attempt.started_at)

    def _delete_server(self, namespace: str, selector: str) -> None:
        if self._apps is None:
            return
        options = {"propagation_policy": "Background"}
        for dep in self._list(self._apps.list_namespaced_deployment, namespace, selector):
            self._quietly(self._apps.delete_namespaced_deployment, dep["metadata"]["name"], namespace, **options)
        for svc in self._list(self._core.list_namespaced_service, namespace, selector):
            self._quietly(self._core.delete_namespaced_service, svc["metadata"]["name"], namespace)

    # -- events (called by the watches; tests call them directly) ----------------------------------

    def on_job_event(self, kind: str, job: dict[str, Any]) -> None:
        attempt = self._attempt_of(job)
        if attempt is None or attempt.final is not None or attempt.finishing:
            return
        if kind == "DELETED":
            self._finish(attempt, JobState.LOST, _VANISHED, None)
            return
        attempt.name = attempt.name or job["metadata"]["name"]
        state, reason = job_state(job)
        attempt.started_at = attempt.started_at or parse_time((job.get("status") or {}).get("startTime"))
        if state in _LIVE:
            attempt.state, attempt.reason = state, reason
            return
        finished = parse_time((job.get("status") or {}).get("completionTime"))
        self._finish(attempt, state, reason, finished)

    def on_job_sync(self, jobs: list[dict[str, Any]], listed_at: float) -> None:
        """A full list: apply each Job; a tracked live attempt registered before the list and missing from
        it has vanished."""
        seen = set()
        for job in jobs:
            attempt = self._attempt_of(job)
            if attempt is not None:
                seen.add(attempt.handle.ref)
                self.on_job_event("MODIFIED", job)
        with self._lock:
            missing = [
                a
                for ref, a in self._attempts.items()
                if a.kind == "job" and ref not in seen and a.final is None and a.registered < listed_at
            ]
        for attempt in missing:
            if not attempt.finishing:
                self._finish(attempt, JobState.LOST, _VANISHED, None)

    def on_pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        attempt = self._attempt_of(pod)
        if attempt is None or kind == "DELETED" or self._closed.is_set():
            return
        name = pod["metadata"]["name"]
        pod_status = pod.get("status") or {}
        statuses = [*(pod_status.get("initContainerStatuses") or []), *(pod_status.get("containerStatuses") or [])]
        for status in statuses:
            container = str(status.get("name"))
            if container not in _COMPONENT:
                continue
            state = status.get("state") or {}
            if "terminated" in state:
                attempt.terminated.add((name, container))
            if "running" not in state and "terminated" not in state:
                continue
            with self._lock:  # the pod watch and the collector may both see the container
                if (name, container) in attempt.followers:
                    continue
                thread = threading.Thread(
                    target=self._follow_log, args=(attempt, name, container), name=f"k8s-log-{container}", daemon=True
                )
                attempt.followers[(name, container)] = thread
            thread.start()

    def on_pod_sync(self, pods: list[dict[str, Any]], listed_at: float) -> None:
        for pod in pods:
            self.on_pod_event("MODIFIED", pod)

    # -- internals ------------------------------------------------------------------------------------

    def _track(self, attempt: _Attempt) -> None:
        with self._lock:
            self._attempts[attempt.handle.ref] = attempt
            start = self._start_watches and not self._watches and not self._closed.is_set()
            if start:
                for name, list_fn, on_sync, on_event in (
                    ("jobs", self._batch.list_namespaced_job, self.on_job_sync, self.on_job_event),
                    ("pods", self._core.list_namespaced_pod, self.on_pod_sync, self.on_pod_event),
                ):
                    self._watches.append(
                        ResourceWatch(
                            name=name, list_fn=list_fn, namespace=self._ns, selector=MANAGED_SELECTOR,
                            on_sync=on_sync, on_event=on_event, request_timeout=self._timeout,
                            watch_timeout=self._watch_timeout,
                        )
                    )  # fmt: skip
        if start:
            for watch in self._watches:
                watch.start()

    def _attempt_of(self, obj: dict[str, Any]) -> _Attempt | None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        task, number = labels.get(LABEL_TASK), labels.get(LABEL_ATTEMPT)
        if task is None or number is None:
            return None
        kind = labels.get(LABEL_KIND, "job")
        selector = attempt_selector(task, int(number))
        if kind == "server":
            selector += f",{LABEL_KIND}=server"
        return self._attempts.get(make_ref(self._ns, kind, selector))

    def _finish(self, attempt: _Attempt, state: JobState, reason: str | None, finished: float | None) -> None:
        """The Job ended (or vanished): collect, then report (on a thread: never block a watch)."""
        attempt.finishing = True
        threading.Thread(
            target=self._collect, args=(attempt, state, reason, finished), name="k8s-collect", daemon=True
        ).start()

    def _collect(self, attempt: _Attempt, state: JobState, reason: str | None, finished: float | None) -> None:
        exit_code: int | None = 0 if state is JobState.SUCCEEDED else None
        namespace, _, selector = parse_ref(attempt.handle.ref)
        if state is not JobState.LOST:
            pods = self._list(self._core.list_namespaced_pod, namespace, selector)
            for pod in pods:
                self.on_pod_event("MODIFIED", pod)  # followers for containers the watch did not show running
                for status in (pod.get("status") or {}).get("containerStatuses") or []:
                    term = (status.get("state") or {}).get("terminated")
                    if status.get("name") == JOB_CONTAINER and term:
                        exit_code = term.get("exitCode", exit_code)
                        if state is not JobState.SUCCEEDED and term.get("reason") not in (None, "Error", "Completed"):
                            reason = f"{reason}; container {JOB_CONTAINER}: {term.get('reason')}"
        deadline = time.monotonic() + self._drain
        for thread in list(attempt.followers.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        if attempt.cancel_requested and state is not JobState.SUCCEEDED:
            state, reason = JobState.CANCELLED, "cancelled"
        if state is not JobState.LOST and attempt.name is not None:  # evidence collected: now it may expire
            patch = {"spec": {"ttlSecondsAfterFinished": self._ttl}}
            self._quietly(self._batch.patch_namespaced_job, attempt.name, namespace, patch)
        attempt.final = JobStatus(
            state,
            exit_code=exit_code,
            reason=reason,
            started_at=attempt.started_at,
            finished_at=finished or time.time(),
        )
        attempt.done.set()
        log.info("job_ended", task_id=attempt.handle.task_id, attempt=attempt.handle.attempt, state=state.value)

    def _follow_log(self, attempt: _Attempt, pod: str, container: str) -> None:
        """Follow one container's log into the sink until the container ended and the stream is drained."""
        component = _COMPONENT[container]
        last = 0.0
        seen_at_last: set[str] = set()
        failures = 0
        while not self._closed.is_set():
            try:
                response = self._core.read_namespaced_pod_log(
                    pod, self._ns, container=container, follow=True, timestamps=True,
                    _preload_content=False, _request_timeout=(self._timeout, 3600),
                )  # fmt: skip
                try:
                    for line in iter_lines(response):
                        stamp, _, text = line.partition(" ")
                        when = log_time(stamp)
                        if when < last or (when == last and text in seen_at_last):
                            continue
                        if when > last:
                            last, seen_at_last = when, set()
                        seen_at_last.add(text)
                        self._emit(attempt, OutputLine("stdout", component, when, text))
                finally:
                    release = getattr(response, "release_conn", None)
                    if callable(release):
                        release()
            except Exception as exc:  # a dropped stream or a pod not ready yet: retry (consecutive failures bounded)
                failures += 1
                log.debug("log_follow_failed", pod=pod, container=container, error=str(exc)[:200])
                if failures > 5:
                    log.warning("log_follow_gave_up", task_id=attempt.handle.task_id, pod=pod, container=container)
                    return
                self._closed.wait(min(1.0 * failures, 5.0))
                continue
            failures = 0  # the stream ended normally: done once the container has ended
            if (pod, container) in attempt.terminated or attempt.finishing or attempt.final is not None:
                return
            self._closed.wait(1.0)

    @staticmethod
    def _emit(attempt: _Attempt, line: OutputLine) -> None:
        try:
            attempt.sink(line)
        except Exception:  # a failing sink must not stop the follower
            log.exception("output_sink_failed", task_id=attempt.handle.task_id)

    def _read_status(self, handle: JobHandle) -> JobStatus:
        namespace, kind, selector = parse_ref(handle.ref)
        if kind == "server":
            found = self._list(self._apps.list_namespaced_deployment, namespace, selector) if self._apps else []
            return JobStatus(JobState.RUNNING) if found else JobStatus(JobState.LOST, reason="no Deployment")
        jobs = self._list(self._batch.list_namespaced_job, namespace, selector)
        if not jobs:
            return JobStatus(JobState.LOST, reason=_VANISHED)
        state, reason = job_state(jobs[0])
        return JobStatus(state, exit_code=0 if state is JobState.SUCCEEDED else None, reason=reason)

    def _staged(self, spec: JobSpec) -> tuple[str, str]:
        """task.json and params.json as the dispatcher wrote them into the staging workspace."""
        try:
            task_json = (spec.workspace / ".mlprov" / "task.json").read_text()
        except OSError:
            task_json = json.dumps({"task_id": spec.task_id, "attempt": spec.attempt})
        try:
            params_json = (spec.workspace / "params.json").read_text()
        except OSError:
            params_json = "{}"
        return task_json, params_json

    def _ensure_pvc(self, spec: JobSpec) -> str | None:
        options = spec.kubernetes if isinstance(spec, K8sJobSpec) else None
        if options is None or options.workspace.type != "pvc" or not isinstance(spec, K8sJobSpec):
            return None
        name = f"mlprov-ws-{run_hash(spec.labels.get('dag_id'), spec.labels.get('run_id'))[:20]}"
        try:
            response = self._core.create_namespaced_persistent_volume_claim(
                self._ns, pvc_body(self.config, spec, name), _preload_content=False, _request_timeout=self._timeout
            )
            release = getattr(response, "release_conn", None)
            if callable(release):
                release()
        except Exception as exc:
            if getattr(exc, "status", None) != 409:  # 409: the run's PVC exists already
                raise JobLaunchError(f"cannot create the run's workspace PVC {name}: {api_error(exc)}") from exc
        return name
