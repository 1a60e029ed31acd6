"""The Kubernetes runtime against a real cluster (``KUBECONFIG``; skipped otherwise).

Needs a namespace the kubeconfig may create Jobs, Pods, Secrets in (``MLPROV_KUBERNETES_NAMESPACE``,
default ``mlprov-test``, created if missing) and the mlprov image for the init step
(``MLPROV_KUBERNETES_SIDECAR_IMAGE``; pinned or tagged). The stage image is ``MLPROV_TEST_STAGE_IMAGE``
(default ``busybox:1.36``). The jobs run without the provenance sidecar (that is the e2e suite's), so
what is checked is the runtime: a real Job succeeds and its log reaches the sink, a failing one reports
its exit code, the TTL is patched only after collection, a cancel ends it ``cancelled``, a Job deleted
behind the runtime's back is ``lost``, and a ``server`` is a Deployment + Service that lives until it is
stopped.

Run: ``KUBECONFIG=~/.kube/config .venv/bin/pytest -q -m cluster tests/cluster``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from controller.runtime import JobState, OutputLine
from controller.runtime.k8s_client import KubernetesApis, load_apis
from controller.runtime.k8s_objects import K8sJobSpec, ObjectConfig
from controller.runtime.kubernetes import KubernetesRuntime
from controller.settings import Settings

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a Kubernetes cluster at KUBECONFIG"),
]

NAMESPACE = os.environ.get("MLPROV_KUBERNETES_NAMESPACE", "mlprov-test")
STAGE_IMAGE = os.environ.get("MLPROV_TEST_STAGE_IMAGE", "busybox:1.36")


@pytest.fixture(scope="module")
def apis() -> KubernetesApis:
    settings = Settings(
        kubernetes_kubeconfig=Path(os.environ["KUBECONFIG"]), admin_token=SecretStr("cluster-test-admin")
    )
    return load_apis(settings)


@pytest.fixture(scope="module")
def runtime(apis: KubernetesApis) -> Iterator[KubernetesRuntime]:
    init_image = os.environ.get("MLPROV_KUBERNETES_SIDECAR_IMAGE")
    if not init_image:
        pytest.skip("set MLPROV_KUBERNETES_SIDECAR_IMAGE to the mlprov image (its init step runs in every pod)")
    try:
        apis.core.create_namespace({"metadata": {"name": NAMESPACE}}, _request_timeout=10)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:
            raise
    config = ObjectConfig(
        namespace=NAMESPACE, sidecar_image=init_image, init_image=init_image, service_account="default"
    )
    rt = KubernetesRuntime(
        batch=apis.batch, core=apis.core, apps=apis.apps, config=config, request_timeout=10, watch_timeout=30,
        ttl_after_collection=120,
    )  # fmt: skip
    yield rt
    rt.close()


def _spec(tmp_path: Path, script: str, timeout: float = 120, **extra: Any) -> K8sJobSpec:
    (tmp_path / ".mlprov").mkdir(parents=True, exist_ok=True)
    task_id = str(uuid.uuid4())
    (tmp_path / ".mlprov" / "task.json").write_text(json.dumps({"task_id": task_id, "attempt": 1}))
    (tmp_path / "params.json").write_text("{}")
    return K8sJobSpec(
        task_id=task_id, attempt=1, workspace=tmp_path, image=STAGE_IMAGE, command=["sh", "-c", script],
        timeout=timeout, labels={"dag_id": "cluster-test", "run_id": "r1"}, service="cluster-test", **extra,
    )  # fmt: skip


def test_a_job_succeeds_its_log_arrives_and_the_ttl_comes_after(
    runtime: KubernetesRuntime, apis: KubernetesApis, tmp_path: Path
) -> None:
    lines: list[OutputLine] = []
    handle = runtime.launch(_spec(tmp_path, "echo hello-from-the-cluster"), lines.append)
    status = runtime.wait(handle, timeout=300)
    assert status.state is JobState.SUCCEEDED, status.reason
    assert any(line.component == "job" and line.text == "hello-from-the-cluster" for line in lines)
    jobs = apis.batch.list_namespaced_job(NAMESPACE, label_selector=handle.ref.split(":", 3)[3], _request_timeout=10)
    assert jobs.items[0].spec.ttl_seconds_after_finished == 120


def test_a_failing_job_reports_its_exit_code(runtime: KubernetesRuntime, tmp_path: Path) -> None:
    handle = runtime.launch(_spec(tmp_path, "echo failing; exit 3"), lambda line: None)
    status = runtime.wait(handle, timeout=300)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)


def test_cancel_and_vanish(runtime: KubernetesRuntime, apis: KubernetesApis, tmp_path: Path) -> None:
    handle = runtime.launch(_spec(tmp_path / "a", "sleep 300"), lambda line: None)
    time.sleep(5)
    runtime.cancel(handle)
    assert runtime.wait(handle, timeout=300).state is JobState.CANCELLED

    gone = runtime.launch(_spec(tmp_path / "b", "sleep 300"), lambda line: None)
    time.sleep(5)
    batch = apis.batch
    for job in batch.list_namespaced_job(
        NAMESPACE, label_selector=gone.ref.split(":", 3)[3], _request_timeout=10
    ).items:
        batch.delete_namespaced_job(job.metadata.name, NAMESPACE, propagation_policy="Background", _request_timeout=10)
    assert runtime.wait(gone, timeout=120).state is JobState.LOST


def test_a_server_is_a_deployment_and_service_until_stopped(
    runtime: KubernetesRuntime, apis: KubernetesApis, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, "echo ok > /workspace/index.html; exec httpd -f -p 8080 -h /workspace", port=8080,
                 health_path="/index.html")  # fmt: skip
    spec = K8sJobSpec(**{**spec.__dict__, "labels": {**spec.labels, "kind": "server"}})
    handle = runtime.launch(spec, lambda line: None)
    url = runtime.server_url(handle)
    assert url is not None
    selector = handle.ref.split(":", 3)[3]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # the readiness probe on health_path passes
        deployment = apis.apps.list_namespaced_deployment(NAMESPACE, label_selector=selector, _request_timeout=10)
        if deployment.items and (deployment.items[0].status.ready_replicas or 0) >= 1:
            break
        time.sleep(2)
    else:
        raise AssertionError("the server's Deployment never became ready")
    services = apis.core.list_namespaced_service(NAMESPACE, label_selector=selector, _request_timeout=10).items
    assert url == f"http://{services[0].metadata.name}.{NAMESPACE}.svc:8080"
    assert runtime.status(handle).state is JobState.RUNNING
    runtime.cancel(handle)
    deadline = time.monotonic() + 60
    while apis.core.list_namespaced_service(NAMESPACE, label_selector=selector, _request_timeout=10).items:
        assert time.monotonic() < deadline, "the server's Service outlived its stop"
        time.sleep(2)
    assert apis.apps.list_namespaced_deployment(NAMESPACE, label_selector=selector, _request_timeout=10).items == []
