"""Lifecycle rules of the Kubernetes runtime the other runtime tests do not pin (autospec'd clients):
a timeout on every API call, the per-run workspace PVC, a vanished server Deployment recorded ``lost``,
an image run with the service's command, and the bodies of several service shapes against the 1.33
schema (``validate_schema``, kubernetes-validate strict) and the manifest policy (``check_objects``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.catalog import KubernetesOptions
from controller.errors import JobLaunchError
from controller.runtime import JobState
from controller.runtime.k8s_objects import (
    INIT_CONTAINER,
    JOB_CONTAINER,
    MANAGED_SELECTOR,
    SIDECAR_CONTAINER,
    K8sJobSpec,
    ObjectConfig,
    job_body,
    pvc_body,
    run_hash,
    secret_body,
)
from controller.runtime.k8s_policy import check_objects, validate_schema
from controller.runtime.k8s_server_objects import deployment_body, service_body
from controller.runtime.k8s_watch import ResourceWatch
from controller.runtime.kubernetes import KubernetesRuntime
from tests.unit.controller.test_k8s_runtime import NS, SELECTOR, TASK, TIMEOUT, Env, Resp, _job, _pod

PINNED = "reg.example/mlprov@sha256:" + "b" * 64
IMAGE = "reg.example/ml/train@sha256:" + "a" * 64
RUN = {"dag_id": "demo", "run_id": "manual__2026-01-01T00:00:00+00:00"}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _pvc_options() -> KubernetesOptions:
    return KubernetesOptions.model_validate({"workspace": {"type": "pvc", "size": "20Gi", "storage_class": "fast"}})


def _all_calls(env: Env) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """The API methods called (not what was done with their responses, like ``release_conn``)."""
    calls = [(name, args, kwargs) for api in (env.batch, env.core, env.apps) for name, args, kwargs in api.mock_calls]
    return [call for call in calls if "." not in call[0]]


def test_every_api_call_of_a_whole_lifecycle_has_a_timeout(env: Env) -> None:
    """Launch (PVC workspace), logs, collection, TTL, cancel, a server, re-attach and the watches: no
    call without ``_request_timeout`` (a hung API server must never hang the controller)."""
    env.core.create_namespaced_persistent_volume_claim.return_value = Resp({})
    handle, name = env.launch(kubernetes=_pvc_options())
    env.core.read_namespaced_pod_log.return_value = Resp(lines=["2026-12-07T07:00:01Z hello"])
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    pod = _pod("pod-1", {INIT_CONTAINER: done, SIDECAR_CONTAINER: done, JOB_CONTAINER: done})
    env.core.list_namespaced_pod.return_value = Resp({"items": [pod]})
    env.runtime.on_pod_event("MODIFIED", pod)
    env.runtime.on_job_event("MODIFIED", _job(name, {"conditions": [{"type": "Complete", "status": "True"}]}))
    assert env.runtime.wait(handle, timeout=5).state is JobState.SUCCEEDED

    env.batch.list_namespaced_job.return_value = Resp({"items": [_job(name, {"active": 1})]})
    env.runtime.cancel(handle)  # already ended: no call
    KubernetesRuntime(batch=env.batch, core=env.core, config=env.config, request_timeout=TIMEOUT,
                      start_watches=False).reattach(handle, env.lines.append)  # fmt: skip

    env.apps.create_namespaced_deployment.side_effect = lambda ns, body, **_: Resp(
        {**body, "metadata": {**body["metadata"], "uid": "dep-uid"}}
    )
    env.core.create_namespaced_service.return_value = Resp({})
    server = env.runtime.launch(
        env.spec(labels={**RUN, "kind": "server"}, port=8000, health_path="/healthz", sidecar_command=None),
        env.lines.append,
    )
    env.apps.list_namespaced_deployment.return_value = Resp({"items": [{"metadata": {"name": "d"}}]})
    env.core.list_namespaced_service.return_value = Resp({"items": [{"metadata": {"name": "d"}}]})
    env.runtime.cancel(server)

    events = [json.dumps({"type": "ADDED", "object": _job(name)})]
    env.batch.list_namespaced_job.side_effect = [
        Resp({"items": [], "metadata": {"resourceVersion": "7"}}),
        Resp(lines=events),
    ]
    watch = ResourceWatch(name="jobs", list_fn=env.batch.list_namespaced_job, namespace=NS, selector=MANAGED_SELECTOR,
                          on_sync=lambda items, at: None, on_event=lambda kind, obj: None, request_timeout=TIMEOUT,
                          watch_timeout=60)  # fmt: skip
    watch.watch_once(watch.list_once())

    calls = _all_calls(env)
    verbs = {name for name, _, _ in calls}
    assert {"create_namespaced_persistent_volume_claim", "create_namespaced_secret", "create_namespaced_job",
            "patch_namespaced_secret", "read_namespaced_pod_log", "list_namespaced_pod", "patch_namespaced_job",
            "list_namespaced_job", "create_namespaced_deployment", "create_namespaced_service",
            "list_namespaced_deployment", "delete_namespaced_deployment", "list_namespaced_service",
            "delete_namespaced_service"} <= verbs  # fmt: skip
    missing = [name for name, _, kwargs in calls if "_request_timeout" not in kwargs]
    assert missing == []
    for name, _, kwargs in calls:  # a connect timeout of TIMEOUT; streams add a read timeout
        timeout = kwargs["_request_timeout"]
        assert (timeout[0] if isinstance(timeout, tuple) else timeout) == TIMEOUT, name
        assert kwargs.get("_preload_content") is False, name  # raw JSON, never client models
    watch_call = env.batch.list_namespaced_job.call_args
    assert watch_call.kwargs["timeout_seconds"] == 60  # the server ends the watch too
    assert watch_call.kwargs["_request_timeout"] == (TIMEOUT, 60 + TIMEOUT)


def test_a_pvc_workspace_is_created_once_per_run_and_mounted_per_attempt(env: Env) -> None:
    env.core.create_namespaced_persistent_volume_claim.return_value = Resp({})
    _, name = env.launch(kubernetes=_pvc_options())
    claim = f"mlprov-ws-{run_hash(RUN['dag_id'], RUN['run_id'])[:20]}"
    spec = env.spec(kubernetes=_pvc_options())
    env.core.create_namespaced_persistent_volume_claim.assert_called_once_with(
        NS, pvc_body(env.config, spec, claim), _preload_content=False, _request_timeout=TIMEOUT
    )
    body = env.core.create_namespaced_persistent_volume_claim.call_args.args[1]
    assert body["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                            "resources": {"requests": {"storage": str(20 * 2**30)}}}  # fmt: skip
    assert body["metadata"]["labels"]["mlprov.io/run"] == run_hash(RUN["dag_id"], RUN["run_id"])
    pod = env.batch.create_namespaced_job.call_args.args[1]["spec"]["template"]["spec"]
    workspace = next(v for v in pod["volumes"] if v["name"] == "mlprov-workspace")
    assert workspace == {"name": "mlprov-workspace", "persistentVolumeClaim": {"claimName": claim}}
    for container in [*pod["initContainers"], *pod["containers"]]:
        mount = next(m for m in container["volumeMounts"] if m["name"] == "mlprov-workspace")
        assert mount["subPath"] == f"{TASK}/1", container["name"]  # each attempt its own directory
    # the run's next task finds the claim there (409) and goes on
    env.core.create_namespaced_persistent_volume_claim.side_effect = ApiException(status=409, reason="Conflict")
    env.launch(kubernetes=_pvc_options(), task_id="11111111-2222-3333-4444-555555555555")
    assert env.batch.create_namespaced_job.call_count == 2
    assert name


def test_a_refused_pvc_fails_the_launch_before_any_job(env: Env) -> None:
    env.core.create_namespaced_persistent_volume_claim.side_effect = ApiException(status=403, reason="Forbidden")
    with pytest.raises(JobLaunchError, match=r"cannot create the run's workspace PVC .*HTTP 403"):
        env.runtime.launch(env.spec(kubernetes=_pvc_options()), env.lines.append)
    env.batch.create_namespaced_job.assert_not_called()
    env.core.create_namespaced_secret.assert_not_called()


def test_a_vanished_server_deployment_is_lost(env: Env) -> None:
    env.apps.create_namespaced_deployment.side_effect = lambda ns, body, **_: Resp(
        {**body, "metadata": {**body["metadata"], "uid": "dep-uid"}}
    )
    env.core.create_namespaced_service.return_value = Resp({})
    spec = env.spec(labels={**RUN, "kind": "server"}, port=8000, health_path="/healthz", sidecar_command=None)
    handle = env.runtime.launch(spec, env.lines.append)
    env.apps.list_namespaced_deployment.return_value = Resp({"items": []})
    env.runtime._attempts[handle.ref].server_checked = 0.0  # its next status reads the Deployment again
    status = env.runtime.status(handle)
    assert status.state is JobState.LOST
    assert "vanished" in (status.reason or "")
    env.apps.list_namespaced_deployment.assert_called_once_with(
        NS, label_selector=f"{SELECTOR},mlprov.io/kind=server", _preload_content=False, _request_timeout=TIMEOUT
    )


def test_an_image_runs_the_services_command_as_its_entrypoint(env: Env) -> None:
    env.launch(command=["python", "-m", "train", "--epochs", "3"])
    main = env.batch.create_namespaced_job.call_args.args[1]["spec"]["template"]["spec"]["containers"][0]
    assert (main["image"], main["command"]) == (IMAGE, ["python", "-m", "train", "--epochs", "3"])
    assert "args" not in main
    env.launch()  # no command: the image's own entrypoint and CMD
    main = env.batch.create_namespaced_job.call_args.args[1]["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in main
    assert "args" not in main


def _shape(tmp_path: Path, **kw: Any) -> K8sJobSpec:
    base: dict[str, Any] = dict(
        task_id=TASK, attempt=1, workspace=tmp_path, image=IMAGE, labels=dict(RUN),
        sidecar_command=["mlprov", "sidecar"], service="train", image_digest="sha256:" + "a" * 64,
    )  # fmt: skip
    base.update(kw)
    return K8sJobSpec(**base)


SHAPES: dict[str, dict[str, Any]] = {
    "gpu": {"resources": {"cpu": "4", "memory": "16Gi", "gpus": 2}, "command": ["python", "train.py"]},
    "pvc": {"kubernetes": {"workspace": {"type": "pvc", "size": "100Gi", "access_mode": "ReadWriteMany"},
                           "volumes": [{"name": "data", "mount_path": "/data", "pvc": "datasets", "read_only": True},
                                       {"name": "scratch", "mount_path": "/scratch", "empty_dir": True,
                                        "size_limit": "8Gi"}]}},
    "tolerations": {"kubernetes": {"node_selector": {"nvidia.com/gpu.product": "A100"},
                                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"},
                                                   {"key": "spot", "value": "true", "effect": "NoExecute",
                                                    "toleration_seconds": 120}],
                                   "priority_class_name": "batch", "image_pull_secrets": ["regcred"]}},
    "task-token": {},
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_job_bodies_of_each_service_shape_pass_the_133_schema_and_the_policy(shape: str, tmp_path: Path) -> None:
    fields = dict(SHAPES[shape])
    if "kubernetes" in fields:
        fields["kubernetes"] = KubernetesOptions.model_validate(fields["kubernetes"])
    spec = _shape(tmp_path, **fields)
    credential = "task-token" if shape == "task-token" else "service-account"
    config = ObjectConfig(namespace=NS, sidecar_image=PINNED, init_image=PINNED, sidecar_credential=credential)
    pvc = "mlprov-ws-abc" if shape == "pvc" else None
    objs = [job_body(config, spec, "mlprov-train-x-a1-abc123", pvc=pvc),
            secret_body(config, spec, "mlprov-train-x-a1-abc123", task_json="{}", params_json="{}",
                        task_token="mlpt_x")]  # fmt: skip
    if pvc:
        objs.append(pvc_body(config, spec, pvc))
    assert validate_schema(objs, "1.33") == []
    assert check_objects(objs, require_digests=True) == []


def test_a_server_deployment_and_service_pass_the_133_schema_and_select_each_other(tmp_path: Path) -> None:
    config = ObjectConfig(namespace=NS, sidecar_image=PINNED, init_image=PINNED)
    spec = _shape(tmp_path, labels={**RUN, "kind": "server"}, port=8000, health_path="/healthz", sidecar_command=None,
                  kubernetes=KubernetesOptions.model_validate({"node_selector": {"pool": "serving"}}))  # fmt: skip
    name = "mlprov-srv-serve-abc123"
    objs = [deployment_body(config, spec, name), service_body(config, spec, name),
            secret_body(config, spec, name, task_json="{}", params_json="{}", kind="server")]  # fmt: skip
    assert validate_schema(objs, "1.33") == []
    assert check_objects(objs, require_digests=True) == []  # includes: the Service's selector picks the pods
    broken = json.loads(json.dumps(objs[1]))
    broken["spec"]["selector"]["mlprov.io/attempt"] = "2"
    assert any("selector" in p for p in check_objects([objs[0], broken]))
