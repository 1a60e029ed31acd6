"""Tasks name the DAG version that ran them: deployment -> task -> task.json -> signed manifest -> lineage.

The real controller runs on a real port with the local runtime and the real sidecar, so the deployment a
task recorded reaches the sidecar through task.json and comes back inside the signed ``mlprov.task``
assertion of the artifact's manifest; the lineage graph, its tree rendering and run provenance name it.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from controller.main import create_app
from controller.settings import Settings
from provenance.cli.lineagecmd import render_tree
from provenance.manifest import find_assertion
from tests.job_cleanup import kill_jobs

ADMIN = "admin-token-for-deployment-lineage-tests"
PY = sys.executable
PRODUCE = {
    "name": "produce",
    "command": [PY, "-c", "import os; open('outputs/result.txt','w').write(os.environ.get('MLPROV_TASK_ID',''))"],
}


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def deployment(commit: str, job: str) -> dict[str, Any]:
    return {
        "pipeline": "mlprov",
        "environment": "local",
        "commit": commit,
        "files": [
            {"path": "dags/demo.py", "digest": sha("dag@" + commit), "size": 10, "role": "dag", "dag_ids": ["demo"]},
            {"path": "services.yaml", "digest": sha("services@" + commit), "size": 5, "role": "services"},
        ],
        "services": ["produce"],
        "ci": {"provider": "gitlab", "pipeline_id": "1", "job_id": job, "triggered_by": "alice"},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def controller(mlprov_home: Path) -> Iterator[httpx.Client]:
    port = _free_port()
    app = create_app(
        Settings(
            home=mlprov_home,
            admin_token=SecretStr(ADMIN),
            services_file=None,
            sidecar=True,  # the conftest turns it off for speed; here it is the point
            port=port,
            controller_url=f"http://127.0.0.1:{port}",
            mlflow_tracking_uri=f"sqlite:///{mlprov_home / 'mlflow.db'}",
        )
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the controller stopped while starting"
            assert time.monotonic() < deadline, "the controller did not start in 30 s"
            time.sleep(0.02)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30, trust_env=False) as c:
            assert c.post("/api/v1/services", json=PRODUCE).status_code == 201
            yield c
    finally:
        kill_jobs(mlprov_home)
        server.should_exit = True
        thread.join(30)


def _run(client: httpx.Client, dag_id: str, run_id: str) -> dict[str, Any]:
    run = {"dag_id": dag_id, "run_id": run_id, "task_id": "produce", "try_number": 1}
    submitted = client.post("/api/v1/tasks", json={"service": "produce", "run": run})
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + 60
    while True:
        task: dict[str, Any] = client.get(f"/api/v1/tasks/{submitted.json()['id']}").json()
        if task["state"] in ("succeeded", "failed", "lost", "cancelled"):
            assert task["state"] == "succeeded", task
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.1)


def _task_assertion(client: httpx.Client, digest: str) -> dict[str, Any]:
    artifact = client.get(f"/api/v1/artifacts/{digest}").json()
    outputs = [m for m in artifact["manifests"] if m["role"] == "output"]
    assert len(outputs) == 1, artifact
    manifest = client.get(f"/api/v1/manifests/{outputs[0]['id']}").json()["manifest"]
    found = find_assertion(manifest, "mlprov.task")
    assert isinstance(found, dict)
    return found


@pytest.mark.slow
def test_a_task_names_the_deployed_dag_version_from_submission_to_lineage(controller: httpx.Client) -> None:
    first = controller.post("/api/v1/deployments", json=deployment("a" * 40, "1")).json()
    task = _run(controller, "demo", "manual__1")
    digest = task["outputs"][0]["digest"]

    named = _task_assertion(controller, digest)["deployment"]
    assert named["id"] == first["id"]
    assert named["manifest_id"] == first["manifest_id"]
    assert named["commit"] == "a" * 40
    assert (named["dag_id"], named["dag_file"], named["dag_file_digest"]) == (
        "demo",
        "dags/demo.py",
        sha("dag@" + "a" * 40),
    )

    graph = controller.get(f"/api/v1/lineage/{digest}").json()
    task_node = next(n for n in graph["nodes"] if n["type"] == "task")
    assert task_node["deployment"]["id"] == first["id"]
    assert task_node["deployment"]["dag_file_digest"] == sha("dag@" + "a" * 40)
    assert f"· DAG demo @ {'a' * 12} (deployment {first['id'][:8]})" in render_tree(graph)

    provenance = controller.get("/api/v1/runs/demo/manual__1/provenance").json()
    assert provenance["tasks"][0]["deployment"]["id"] == first["id"]
    assert [d["id"] for d in provenance["deployments"]] == [first["id"]]

    # A new deployment: later runs name it; the earlier run keeps naming the version it ran.
    second = controller.post("/api/v1/deployments", json=deployment("b" * 40, "2")).json()
    later = _run(controller, "demo", "manual__2")
    assert _task_assertion(controller, later["outputs"][0]["digest"])["deployment"]["id"] == second["id"]
    assert controller.get("/api/v1/runs/demo/manual__1/provenance").json()["deployments"][0]["id"] == first["id"]

    # A DAG no deployment carries: no deployment anywhere, and the signed assertion keeps its old shape.
    loose = _run(controller, "undeployed", "manual__1")
    assert "deployment" not in _task_assertion(controller, loose["outputs"][0]["digest"])
    loose_graph = controller.get(f"/api/v1/lineage/{loose['outputs'][0]['digest']}").json()
    assert next(n for n in loose_graph["nodes"] if n["type"] == "task")["deployment"] is None
    assert "· DAG" not in render_tree(loose_graph)
