"""``mlprov deployments list|show`` against the real controller on a real port, and the lineage tree's
deployment note (built from the controller's own ``LineageGraph`` model)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.services.deployments_query import DeploymentRef
from controller.services.lineage import Direction, GraphEdge, GraphNode, LineageGraph
from provenance.cli.lineagecmd import render_tree
from provenance.cli.main import cli
from tests.unit.controller.ingest_support import ADMIN, READ, App, running_app


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def record(commit: str, job: str, pipeline: str = "mlprov") -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "environment": "local",
        "commit": commit,
        "ref": "main",
        "files": [
            {"path": "dags/demo.py", "digest": sha(job), "size": 3, "role": "dag", "dag_ids": ["demo"]},
            {"path": "services.yaml", "digest": sha("s"), "size": 1, "role": "services"},
        ],
        "services": ["finetune"],
        "ci": {"provider": "gitlab", "pipeline_id": "9", "job_id": job, "triggered_by": "alice"},
    }


@pytest.fixture
def controller(mlprov_home: Path) -> Iterator[App]:
    with running_app(mlprov_home) as app:
        yield app


def mlprov(app: App, *args: str, token: str = READ) -> Any:
    env = {"MLPROV_TOKEN": token, "MLPROV_CONTROLLER_URL": app.url}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_list_and_show(controller: App) -> None:
    first = controller.client.post("/api/v1/deployments", json=record("a" * 40, "1"), headers=controller.admin())
    second = controller.client.post("/api/v1/deployments", json=record("b" * 40, "2"), headers=controller.admin())
    assert (first.status_code, second.status_code) == (201, 201)
    one, two = first.json(), second.json()

    listed = mlprov(controller, "deployments", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("#2")
    assert "b" * 12 in lines[0]
    assert two["id"] in lines[0]
    assert "alice" in lines[0]
    assert lines[1].startswith("#1")
    assert one["id"] in lines[1]

    as_json = mlprov(controller, "deployments", "list", "--json", "--server", controller.url)
    assert [d["id"] for d in json.loads(as_json.output)] == [two["id"], one["id"]]
    assert mlprov(controller, "deployments", "list", "--pipeline", "other").output.strip() == "no deployments recorded"
    assert two["id"] not in mlprov(controller, "deployments", "list", "--limit", "1", "--dag-id", "nope").output

    shown = mlprov(controller, "deployments", "show", two["id"])
    assert shown.exit_code == 0, shown.output
    assert f"previous:  {one['id']}" in shown.output
    assert f"commit:    {'b' * 40} (main)" in shown.output
    assert f"dag      dags/demo.py  {sha('2')} [demo]" in shown.output
    assert "ci.triggered_by: alice" in shown.output

    manifest = json.loads(mlprov(controller, "deployments", "show", two["id"], "--manifest").output)
    assert manifest["instance_id"] == two["manifest_id"]
    assert manifest["cross_references"][0]["manifest_url"] == one["manifest_id"]


def test_errors_map_to_exit_codes(controller: App) -> None:
    missing = mlprov(controller, "deployments", "show", "no-such-deployment")
    assert missing.exit_code == 3, missing.output
    refused = mlprov(controller, "deployments", "list", token="wrong")
    assert refused.exit_code == 5, refused.output
    gone = CliRunner().invoke(
        cli, ["deployments", "list", "--server", "http://127.0.0.1:9"], env={"MLPROV_TOKEN": ADMIN}
    )
    assert gone.exit_code == 5, gone.output


def test_the_lineage_tree_names_the_dag_version() -> None:
    model, dep_id = "sha256:" + "b" * 64, "0123456789ab-cdef"
    ref = DeploymentRef(id=dep_id, pipeline="mlprov", environment="local", sequence=4, commit="c" * 40,
                        manifest_id="urn:c2pa:x", manifest_hash="0" * 64, dag_id="demo_lifecycle",
                        dag_file="dags/demo_lifecycle.py", dag_file_digest=sha("dag"))  # fmt: skip
    graph = LineageGraph(
        root=model,
        direction=Direction.UPSTREAM,
        depth=2,
        nodes=[
            GraphNode(id=model, type="artifact", depth=0, name="model", kind="model", digest=model),
            GraphNode(
                id="t1",
                type="task",
                depth=1,
                name="finetune",
                kind="finetune",
                state="succeeded",
                dag_id="demo_lifecycle",
                deployment=ref,
            ),
            GraphNode(id="t0", type="task", depth=1, name="ingest", kind="ingest", state="succeeded"),
        ],
        edges=[
            GraphEdge(src="t1", src_type="task", dst=model, dst_type="artifact", role="produced"),
            GraphEdge(src="t0", src_type="task", dst=model, dst_type="artifact", role="produced"),
        ],
        truncated=False,
    ).model_dump(mode="json")
    tree = render_tree(graph).splitlines()
    assert tree[2].endswith(
        "task finetune (finetune, succeeded) t1 · DAG demo_lifecycle @ cccccccccccc (deployment 01234567)"
    )
    assert tree[1].endswith("task ingest (ingest, succeeded) t0")
