"""The demo end to end on a Kubernetes cluster: Airflow (official chart) -> controller -> Jobs with the
provenance sidecar -> verification of the tuned model. Runs only when ``KUBECONFIG`` is set (skipped
otherwise), against the installation infra/dev/kind.sh makes (or any install of infra/helm/mlprov plus
infra/helm/airflow-values.yaml):

    KUBECONFIG=$HOME/.kube/config MLPROV_CLUSTER_CODE_REPO=https://git.example.com/ml/mlprov.git \\
      .venv/bin/pytest -q -m cluster tests/cluster/test_demo_cluster.py

Settings (environment): ``MLPROV_CLUSTER_NAMESPACE`` (mlprov), ``MLPROV_CLUSTER_AIRFLOW_NAMESPACE``
(airflow), ``MLPROV_CLUSTER_AIRFLOW_SERVICE`` (airflow-api-server), ``MLPROV_CLUSTER_AIRFLOW_USER`` /
``..._PASSWORD`` (admin / admin), ``MLPROV_CLUSTER_CODE_REPO`` (the git URL the controller resolves the
stages' code from; default: this checkout's ``origin``), ``MLPROV_CLUSTER_CODE_REF`` (this checkout's
commit), ``MLPROV_CLUSTER_TIMEOUT`` (seconds for the DAG run, 1800). The test opens its own
``kubectl port-forward`` to the Airflow API server and the controller and closes them at the end.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="no Kubernetes cluster: KUBECONFIG is unset"),
]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID, TUNED_TASK, TUNED_OUTPUT = "demo_lifecycle", "finetune", "model"
NAMESPACE = os.environ.get("MLPROV_CLUSTER_NAMESPACE", "mlprov")
AIRFLOW_NAMESPACE = os.environ.get("MLPROV_CLUSTER_AIRFLOW_NAMESPACE", "airflow")


def _kubectl(*args: str, timeout: float = 60) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    done = subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _port_forward(namespace: str, service: str, port: int) -> Iterator[str]:
    """``kubectl port-forward`` on a free loopback port; yields the base URL, stops the process after."""
    local = _free_port()
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    process = subprocess.Popen(
        [kubectl, "port-forward", "-n", namespace, f"svc/{service}", f"{local}:{port}", "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", local)) == 0:
                    break
            assert process.poll() is None, f"port-forward to {service} ended: {process.stderr}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def controller() -> Iterator[httpx.Client]:
    token = base64.b64decode(
        _kubectl("get", "secret", "mlprov-admin-token", "-n", NAMESPACE, "-o", "jsonpath={.data.token}")
    ).decode()
    with (
        _port_forward(NAMESPACE, "mlprov-controller", 8080) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def airflow() -> Iterator[httpx.Client]:
    service = os.environ.get("MLPROV_CLUSTER_AIRFLOW_SERVICE", "airflow-api-server")
    with _port_forward(AIRFLOW_NAMESPACE, service, 8080) as url, httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post(
            "/auth/token",
            json={
                "username": os.environ.get("MLPROV_CLUSTER_AIRFLOW_USER", "admin"),
                "password": os.environ.get("MLPROV_CLUSTER_AIRFLOW_PASSWORD", "admin"),
            },
        )
        assert answer.status_code in (200, 201), answer.text
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        yield client


def test_namespace_enforces_pod_security_restricted() -> None:
    labels = _kubectl("get", "namespace", NAMESPACE, "-o", "jsonpath={.metadata.labels}")
    assert '"pod-security.kubernetes.io/enforce":"restricted"' in labels


def test_demo_lifecycle_runs_on_jobs_and_the_tuned_model_verifies(
    airflow: httpx.Client, controller: httpx.Client
) -> None:
    repo = os.environ.get("MLPROV_CLUSTER_CODE_REPO") or _git("remote", "get-url", "origin")
    ref = os.environ.get("MLPROV_CLUSTER_CODE_REF") or _git("rev-parse", "HEAD") or "HEAD"
    assert repo, "set MLPROV_CLUSTER_CODE_REPO to the git URL the controller can reach"
    assert airflow.get("/api/v2/monitor/health").status_code == 200
    assert airflow.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
    answer = airflow.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"code_repo": repo, "code_ref": ref}},
    )
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["dag_run_id"]

    deadline = time.monotonic() + float(os.environ.get("MLPROV_CLUSTER_TIMEOUT", "1800"))
    state = "queued"
    while time.monotonic() < deadline:
        state = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(10)
    assert state == "success", f"{DAG_ID} run {run_id} ended {state}"

    run: dict[str, Any] = controller.get(f"/api/v1/runs/{DAG_ID}/{run_id}").json()
    assert run["tasks"], run
    assert all(task["state"] == "succeeded" for task in run["tasks"]), run["tasks"]
    tuned = [
        output["digest"]
        for task in run["tasks"]
        if (task.get("run") or {}).get("task_id") == TUNED_TASK
        for output in task["outputs"]
        if output.get("name") == TUNED_OUTPUT
    ]
    assert len(tuned) == 1, run["tasks"]

    verified = controller.post("/api/v1/verify", json={"artifact": tuned[0], "rehash_all": True})
    assert verified.status_code == 200, verified.text
    result = verified.json()
    assert result["ok"] is True, result["report"]
    assert result["artifact"] == tuned[0]
