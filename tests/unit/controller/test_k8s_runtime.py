"""The Kubernetes runtime against autospec'd API clients: the exact calls (verb, namespace, selector, body),
the lifecycle (evidence before TTL, vanished = lost, cancel by deadline), logs into the sink, servers."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY, MagicMock, create_autospec

import kubernetes_validate
import pytest
from kubernetes.client import AppsV1Api, BatchV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from controller.catalog import KubernetesOptions
from controller.errors import JobLaunchError
from controller.runtime import JobState, OutputLine, Runtime
from controller.runtime.k8s_objects import (
    INIT_CONTAINER,
    JOB_CONTAINER,
    MANAGED_SELECTOR,
    SIDECAR_CONTAINER,
    K8sJobSpec,
    ObjectConfig,
)
from controller.runtime.kubernetes import KubernetesRuntime, job_state

NS = "ml-jobs"
TIMEOUT = 7.0
PINNED = "reg.example/mlprov@sha256:" + "b" * 64
IMAGE = "reg.example/ml/train@sha256:" + "a" * 64
TASK = "0f8e2c1a-1111-2222-3333-444455556666"
SELECTOR = f"{MANAGED_SELECTOR},mlprov.io/task-id={TASK},mlprov.io/attempt=1"


class Resp:
    """What a ``_preload_content=False`` call returns (urllib3): ``data`` or a ``stream``."""

    def __init__(self, body: Any = None, lines: list[str] | None = None) -> None:
        self.data = json.dumps(body or {}).encode()
        self._lines = lines or []
        self.released = False

    def stream(self, amt: int) -> Any:
        for line in self._lines:
            yield (line + "\n").encode()

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        pass


def _job(name: str, status: dict[str, Any] | None = None, task: str = TASK, attempt: int = 1) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "mlprov", "mlprov.io/task-id": task, "mlprov.io/attempt": str(attempt),
              "mlprov.io/kind": "job"}  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "uid": "uid-123", "labels": labels},
        "status": status or {},
    }


def _pod(name: str, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "mlprov", "mlprov.io/task-id": TASK, "mlprov.io/attempt": "1",
              "mlprov.io/kind": "job"}  # fmt: skip
    init = [
        {"name": c, "state": states[c], "restartCount": 0} for c in (INIT_CONTAINER, SIDECAR_CONTAINER) if c in states
    ]
    main = (
        [{"name": JOB_CONTAINER, "state": states[JOB_CONTAINER], "restartCount": 0}] if JOB_CONTAINER in states else []
    )
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"initContainerStatuses": init, "containerStatuses": main},
    }


class Env:
    def __init__(self, tmp: Path) -> None:
        self.batch = create_autospec(BatchV1Api, instance=True)
        self.core = create_autospec(CoreV1Api, instance=True)
        self.apps = create_autospec(AppsV1Api, instance=True)
        self.lines: list[OutputLine] = []
        self.workspace = tmp / "ws"
        (self.workspace / ".mlprov").mkdir(parents=True)
        (self.workspace / ".mlprov" / "task.json").write_text(json.dumps({"task_id": TASK, "attempt": 1}))
        (self.workspace / "params.json").write_text('{"lr": 0.1}')
        self.config = ObjectConfig(namespace=NS, sidecar_image=PINNED, init_image=PINNED)
        self.runtime = KubernetesRuntime(
            batch=self.batch, core=self.core, apps=self.apps, config=self.config, request_timeout=TIMEOUT,
            start_watches=False, ttl_after_collection=600, log_drain_timeout=5,
        )  # fmt: skip
        self.core.create_namespaced_secret.return_value = Resp({})
        self.core.patch_namespaced_secret.return_value = Resp({})
        self.batch.patch_namespaced_job.return_value = Resp({})
        self.core.list_namespaced_pod.return_value = Resp({"items": []})

    def spec(self, **kw: Any) -> K8sJobSpec:
        base: dict[str, Any] = dict(
            task_id=TASK, attempt=1, workspace=self.workspace, image=IMAGE, timeout=600,
            env={"A": "1", "MLPROV_TASK_TOKEN": "mlpt_secret", "MLPROV_HOME": "/home/x", "MLPROV_TASK_ID": TASK},
            labels={"dag_id": "demo", "run_id": "manual__2026-01-01T00:00:00+00:00", "task_id": TASK, "attempt": "1"},
            sidecar_command=["mlprov", "sidecar"], resources={"cpu": "500m", "memory": "1Gi", "gpus": 1},
            service="finetune", image_digest="sha256:" + "a" * 64,
            kubernetes=KubernetesOptions.model_validate(
                {"node_selector": {"nvidia.com/gpu.present": "true"},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
            ),
            inputs=[{"name": "train.csv", "digest": "sha256:" + "c" * 64, "path": "inputs/train.csv",
                     "url": "http://controller/api/v1/artifacts/x/content", "auth": "bearer"}],
        )  # fmt: skip
        base.update(kw)
        return K8sJobSpec(**base)

    def launch(self, **kw: Any) -> tuple[Any, str]:
        def created(ns: str, body: dict[str, Any], **_: Any) -> Resp:
            return Resp({**body, "metadata": {**body["metadata"], "uid": "uid-123"}})

        self.batch.create_namespaced_job.side_effect = created
        handle = self.runtime.launch(self.spec(**kw), self.lines.append)
        name = self.batch.create_namespaced_job.call_args.args[1]["metadata"]["name"]
        return handle, name


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_it_honours_the_runtime_protocol(env: Env) -> None:
    assert isinstance(env.runtime, Runtime)


def test_launch_creates_secret_then_job_then_owns_the_secret(env: Env) -> None:
    handle, name = env.launch()
    assert handle.ref == f"k8s:{NS}:job:{SELECTOR}"
    env.core.create_namespaced_secret.assert_called_once_with(NS, ANY, _preload_content=False, _request_timeout=TIMEOUT)
    secret = env.core.create_namespaced_secret.call_args.args[1]
    assert secret["metadata"]["name"] == name
    assert secret["immutable"] is True
    assert json.loads(secret["stringData"]["params.json"]) == {"lr": 0.1}
    assert json.loads(secret["stringData"]["inputs.json"])[0]["digest"] == "sha256:" + "c" * 64
    assert "task-token" not in secret["stringData"]  # service-account mode: the mlpt_ token never leaves
    env.batch.create_namespaced_job.assert_called_once_with(NS, ANY, _preload_content=False, _request_timeout=TIMEOUT)
    job = env.batch.create_namespaced_job.call_args.args[1]
    env.core.patch_namespaced_secret.assert_called_once_with(
        name, NS,
        {"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "uid-123",
                                           "controller": False, "blockOwnerDeletion": False}]}},
        _preload_content=False, _request_timeout=TIMEOUT,
    )  # fmt: skip
    # the Job: identity labels, no retries, a deadline, no TTL until its evidence is collected
    assert job["metadata"]["labels"]["mlprov.io/task-id"] == TASK
    assert job["metadata"]["labels"]["mlprov.io/attempt"] == "1"
    assert job["metadata"]["annotations"]["mlprov.io/run-id"] == "manual__2026-01-01T00:00:00+00:00"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert "ttlSecondsAfterFinished" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [INIT_CONTAINER, SIDECAR_CONTAINER]
    assert pod["initContainers"][1]["restartPolicy"] == "Always"  # the native sidecar
    main = pod["containers"][0]
    assert main["image"] == IMAGE
    assert main["resources"] == {"requests": {"cpu": "500m", "memory": str(2**30), "nvidia.com/gpu": "1"},
                                 "limits": {"memory": str(2**30), "nvidia.com/gpu": "1"}}  # fmt: skip
    main_env = {e["name"]: e.get("value") for e in main["env"]}
    assert main_env["A"] == "1"
    assert "MLPROV_TASK_TOKEN" not in main_env
    assert "MLPROV_HOME" not in main_env
    sidecar_env = {e["name"]: e.get("value") for e in pod["initContainers"][1]["env"]}
    assert sidecar_env["MLPROV_IMAGE_DIGEST"] == IMAGE
    assert sidecar_env["MLPROV_TASK_TOKEN_FILE"] == "/var/run/secrets/mlprov/token"
    assert "mlpt_secret" not in json.dumps(job)
    token = next(v for v in pod["volumes"] if v["name"] == "mlprov-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "mlprov-controller"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert kubernetes_validate.validate(job, "1.33", strict=True) == "1.33"
    assert kubernetes_validate.validate(secret, "1.33", strict=True) == "1.33"


def test_job_bodies_pass_the_manifest_policy(env: Env) -> None:
    from controller.runtime.k8s_policy import check_objects

    env.launch()
    job = env.batch.create_namespaced_job.call_args.args[1]
    secret = env.core.create_namespaced_secret.call_args.args[1]
    assert check_objects([job, secret]) == []


def test_task_token_mode_puts_the_token_in_the_secret_only(env: Env) -> None:
    env.runtime.config = ObjectConfig(
        namespace=NS, sidecar_image=PINNED, init_image=PINNED, sidecar_credential="task-token"
    )
    env.launch()
    secret = env.core.create_namespaced_secret.call_args.args[1]
    job = env.batch.create_namespaced_job.call_args.args[1]
    assert secret["stringData"]["task-token"] == "mlpt_secret"
    sidecar = job["spec"]["template"]["spec"]["initContainers"][1]
    ref = next(e for e in sidecar["env"] if e["name"] == "MLPROV_TASK_TOKEN")
    assert ref["valueFrom"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "task-token"}}
    assert "mlpt_secret" not in json.dumps(job)


def test_a_refused_job_fails_the_launch_and_removes_its_secret(env: Env) -> None:
    env.batch.create_namespaced_job.side_effect = ApiException(status=422, reason="Unprocessable Entity")
    with pytest.raises(JobLaunchError, match="cannot create the Job: HTTP 422"):
        env.runtime.launch(env.spec(), env.lines.append)
    name = env.core.create_namespaced_secret.call_args.args[1]["metadata"]["name"]
    env.core.delete_namespaced_secret.assert_called_once_with(
        name, NS, _preload_content=False, _request_timeout=TIMEOUT
    )


def test_a_job_without_image_is_refused_before_any_call(env: Env) -> None:
    with pytest.raises(JobLaunchError, match="give the service an image"):
        env.runtime.launch(env.spec(image=None, command=["python", "x.py"]), env.lines.append)
    env.core.create_namespaced_secret.assert_not_called()
    env.batch.create_namespaced_job.assert_not_called()


def test_success_streams_logs_then_patches_the_ttl_then_reports(env: Env) -> None:
    handle, name = env.launch()
    env.runtime.on_job_event("MODIFIED", _job(name, {"active": 1, "startTime": "2026-12-07T07:00:00Z"}))
    assert env.runtime.status(handle).state is JobState.RUNNING
    logs = {
        JOB_CONTAINER: ["2026-12-07T07:00:01.5Z epoch 1", "2026-12-07T07:00:02.000000001Z done"],
        SIDECAR_CONTAINER: ['2026-12-07T07:00:03Z {"event": "sidecar_summary", "ok": true}'],
        INIT_CONTAINER: ['2026-12-07T07:00:00.1Z {"event": "workspace_ready", "inputs": 1}'],
    }
    order: list[str] = []

    def read_log(pod: str, ns: str, *, container: str, **kw: Any) -> Resp:
        assert (pod, ns) == ("pod-1", NS)
        assert kw["follow"] is True
        assert kw["timestamps"] is True
        assert kw["_request_timeout"][0] == TIMEOUT
        return Resp(lines=logs[container])

    env.core.read_namespaced_pod_log.side_effect = read_log
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    final_pod = _pod("pod-1", {INIT_CONTAINER: done, SIDECAR_CONTAINER: done, JOB_CONTAINER: done})
    env.core.list_namespaced_pod.return_value = Resp({"items": [final_pod]})
    env.batch.patch_namespaced_job.side_effect = lambda *a, **k: (
        order.append(f"ttl after {len(env.lines)} lines") or Resp()
    )
    complete = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-12-07T07:00:04Z",
                "startTime": "2026-12-07T07:00:00Z"}  # fmt: skip
    env.runtime.on_job_event("MODIFIED", _job(name, complete))
    status = env.runtime.wait(handle, timeout=5)
    assert status.state is JobState.SUCCEEDED
    assert status.exit_code == 0
    env.core.list_namespaced_pod.assert_called_once_with(
        NS, label_selector=SELECTOR, _preload_content=False, _request_timeout=TIMEOUT
    )
    env.batch.patch_namespaced_job.assert_called_once_with(
        name, NS, {"spec": {"ttlSecondsAfterFinished": 600}}, _preload_content=False, _request_timeout=TIMEOUT
    )
    assert order == ["ttl after 4 lines"]  # every line was in the sink before the Job could expire
    by_component = {(line.component, line.text) for line in env.lines}
    assert ("job", "epoch 1") in by_component
    assert ("job", "done") in by_component
    assert ("sidecar", '{"event": "sidecar_summary", "ok": true}') in by_component
    assert ("job", '{"event": "workspace_ready", "inputs": 1}') in by_component
    assert status.finished_at == datetime(2026, 12, 7, 7, 0, 4, tzinfo=UTC).timestamp()


def test_failure_reports_the_stage_exit_code(env: Env) -> None:
    handle, name = env.launch()
    term = {"terminated": {"exitCode": 3, "reason": "Error"}}
    env.core.list_namespaced_pod.return_value = Resp({"items": [_pod("p", {JOB_CONTAINER: term})]})
    env.core.read_namespaced_pod_log.return_value = Resp(lines=[])
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                              "message": "Job has reached the specified backoff limit"}]}  # fmt: skip
    env.runtime.on_job_event("MODIFIED", _job(name, failed))
    status = env.runtime.wait(handle, timeout=5)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert "BackoffLimitExceeded" in (status.reason or "")


def test_deadline_is_a_timeout_and_a_cancel_is_a_cancel(env: Env) -> None:
    deadline = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "x"}]}
    handle, name = env.launch()
    env.runtime.on_job_event("MODIFIED", _job(name, deadline))
    assert env.runtime.wait(handle, timeout=5).state is JobState.TIMED_OUT

    env2 = Env(env.workspace.parent / "second")
    handle2, name2 = env2.launch()
    env2.batch.list_namespaced_job.return_value = Resp({"items": [_job(name2, {"active": 1})]})
    env2.runtime.cancel(handle2)
    env2.batch.list_namespaced_job.assert_called_once_with(
        NS, label_selector=SELECTOR, _preload_content=False, _request_timeout=TIMEOUT
    )
    env2.batch.patch_namespaced_job.assert_called_once_with(
        name2, NS, {"spec": {"activeDeadlineSeconds": 1}}, _preload_content=False, _request_timeout=TIMEOUT
    )  # not deleted: the pods get their grace period and the Job keeps its evidence
    env2.batch.delete_namespaced_job.assert_not_called()
    env2.runtime.on_job_event("MODIFIED", _job(name2, deadline))
    assert env2.runtime.wait(handle2, timeout=5).state is JobState.CANCELLED


def test_a_deleted_job_is_lost_and_a_missing_one_on_resync_too(env: Env) -> None:
    handle, name = env.launch()
    env.runtime.on_job_event("DELETED", _job(name, {"active": 1}))
    status = env.runtime.wait(handle, timeout=5)
    assert status.state is JobState.LOST
    assert "vanished" in (status.reason or "")
    env.batch.patch_namespaced_job.assert_not_called()  # nothing to expire

    env2 = Env(env.workspace.parent / "second")
    handle2, _ = env2.launch()
    env2.runtime.on_job_sync([], listed_at=time.time() - 60)  # a list older than the launch proves nothing
    assert env2.runtime.status(handle2).state is JobState.PENDING
    env2.runtime.on_job_sync([], listed_at=time.time() + 1)
    assert env2.runtime.wait(handle2, timeout=5).state is JobState.LOST


def test_reattach_finds_jobs_by_labels_or_records_them_lost(env: Env) -> None:
    handle, name = env.launch()
    fresh = KubernetesRuntime(batch=env.batch, core=env.core, config=env.config, request_timeout=TIMEOUT,
                              start_watches=False)  # fmt: skip
    env.batch.list_namespaced_job.return_value = Resp(
        {"items": [_job(name, {"active": 1, "startTime": "2026-12-07T07:00:00Z"})]}
    )
    assert fresh.reattach(handle, env.lines.append).state is JobState.RUNNING
    env.batch.list_namespaced_job.assert_called_with(NS, label_selector=SELECTOR, _preload_content=False,
                                                     _request_timeout=TIMEOUT)  # fmt: skip
    env.batch.list_namespaced_job.return_value = Resp({"items": []})
    other = KubernetesRuntime(batch=env.batch, core=env.core, config=env.config, start_watches=False)
    assert other.reattach(handle, env.lines.append).state is JobState.LOST


def test_job_state_reads_conditions() -> None:
    assert job_state({"status": {}})[0] is JobState.PENDING
    assert job_state({"status": {"active": 1}})[0] is JobState.RUNNING
    # pods still terminating (the sidecar draining): not over until Complete
    assert (
        job_state({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}], "active": 1}})[0]
        is JobState.RUNNING
    )
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})[0] is JobState.SUCCEEDED


def test_servers_are_a_deployment_and_a_service(env: Env) -> None:
    env.apps.create_namespaced_deployment.side_effect = lambda ns, body, **_: Resp(
        {**body, "metadata": {**body["metadata"], "uid": "dep-uid"}}
    )
    env.core.create_namespaced_service.return_value = Resp({})
    spec = env.spec(labels={"dag_id": "d", "run_id": "r", "kind": "server"}, port=8000, health_path="/healthz",
                    sidecar_command=None, resources={})  # fmt: skip
    handle = env.runtime.launch(spec, env.lines.append)
    env.apps.create_namespaced_deployment.assert_called_once_with(
        NS, ANY, _preload_content=False, _request_timeout=TIMEOUT
    )
    env.core.create_namespaced_service.assert_called_once_with(
        NS, ANY, _preload_content=False, _request_timeout=TIMEOUT
    )
    deployment = env.apps.create_namespaced_deployment.call_args.args[1]
    service = env.core.create_namespaced_service.call_args.args[1]
    name = deployment["metadata"]["name"]
    assert service["metadata"]["name"] == name
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert env.runtime.server_url(handle) == f"http://{name}.{NS}.svc:8000"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    for body in (deployment, service):
        assert kubernetes_validate.validate(body, "1.33", strict=True) == "1.33"
    env.apps.list_namespaced_deployment.return_value = Resp({"items": [deployment]})
    env.core.list_namespaced_service.return_value = Resp({"items": [service]})
    assert env.runtime.status(handle).state is JobState.RUNNING
    env.runtime.cancel(handle)
    env.apps.delete_namespaced_deployment.assert_called_once_with(
        name, NS, _preload_content=False, _request_timeout=TIMEOUT, propagation_policy="Background"
    )
    env.core.delete_namespaced_service.assert_called_once_with(
        name, NS, _preload_content=False, _request_timeout=TIMEOUT
    )


def test_the_sink_failing_does_not_stop_the_follower(env: Env) -> None:
    handle, _name = env.launch()
    seen: list[str] = []

    def sink(line: OutputLine) -> None:
        seen.append(line.text)
        raise RuntimeError("bus down")

    env.runtime._attempts[handle.ref].sink = sink
    env.core.read_namespaced_pod_log.return_value = Resp(lines=["2026-12-07T07:00:01Z a", "2026-12-07T07:00:02Z b"])
    term = {"terminated": {"exitCode": 0}}
    env.runtime.on_pod_event("MODIFIED", _pod("p", {JOB_CONTAINER: term}))
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["a", "b"]


def test_pins_its_own_images_once_through_the_resolver(env: Env) -> None:
    from controller.services.images import ResolvedImage

    calls: list[str] = []

    def resolve(ref: str) -> ResolvedImage:
        calls.append(ref)
        return ResolvedImage(ref, "reg.example/mlprov@sha256:" + "d" * 64, "sha256:" + "d" * 64)

    tagged = ObjectConfig(namespace=NS, sidecar_image="reg.example/mlprov:1.0", init_image="reg.example/mlprov:1.0")
    env.runtime = KubernetesRuntime(
        batch=env.batch, core=env.core, config=tagged, start_watches=False, resolver=resolve
    )
    env.launch()
    env.launch()
    assert calls == ["reg.example/mlprov:1.0", "reg.example/mlprov:1.0"]  # sidecar and init, once
    pod = env.batch.create_namespaced_job.call_args.args[1]["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["initContainers"]} == {"reg.example/mlprov@sha256:" + "d" * 64}


def test_watches_start_on_first_launch_with_the_managed_selector(env: Env) -> None:
    started = threading.Event()

    def listing(ns: str, **kw: Any) -> Resp:
        assert ns == NS
        assert kw["label_selector"] == MANAGED_SELECTOR
        started.set()
        return Resp({"items": [], "metadata": {"resourceVersion": "5"}})

    env.batch.list_namespaced_job.side_effect = listing
    env.core.list_namespaced_pod.side_effect = listing
    runtime = KubernetesRuntime(batch=env.batch, core=env.core, config=env.config, watch_timeout=10)
    env.runtime = runtime
    try:
        env.launch()
        assert started.wait(5)
    finally:
        runtime.close()
    assert isinstance(env.batch.list_namespaced_job, MagicMock)


def test_a_relist_racing_the_create_call_does_not_call_the_job_vanished(env: Env) -> None:
    def created(ns: str, body: dict[str, Any], **_: Any) -> Resp:
        env.runtime.on_job_sync([], listed_at=time.time() + 1)  # a resync that ran while the create was in flight
        return Resp({**body, "metadata": {**body["metadata"], "uid": "uid-123"}})

    env.batch.create_namespaced_job.side_effect = created
    handle = env.runtime.launch(env.spec(), env.lines.append)
    assert env.runtime.status(handle).state is JobState.PENDING
    env.runtime.on_job_sync([], listed_at=time.time() + 1)  # a later list without it: now it has vanished
    assert env.runtime.wait(handle, timeout=5).state is JobState.LOST
