"""End to end: ``demo_lifecycle`` run by Airflow against a real controller with the provenance sidecar on.

One module-scoped run, the way ``make demo`` does it (``controller.demo``): ``mlprov keys init``,
``mlprov serve`` on a free 127.0.0.1 port (``MLPROV_SIDECAR=true``: tests/conftest.py turns it off
by default), ``airflow db migrate``, then ``dag.test()`` of the repository's ``dags/demo_lifecycle.py``
in a child process with the ``mlprov_controller`` connection from the environment. Small dataset and
few epochs keep it to well under a minute. The tests then ask the controller (lineage, verification,
the pipeline run) and read the MLflow store the controller wrote.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.demo import (
    DAG_ID,
    ControllerProcess,
    airflow_env,
    ensure_keys,
    migrate_airflow,
    print_report,
    run_dag,
)

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.mlflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TASKS = ["ingest", "preprocess", "pretrain", "finetune", "evaluate"]
# Small and fast, but enough for the fine-tune's loss to go down over several steps.
CONF: dict[str, Any] = {
    "seed": 7,
    "rows": 400,
    "features": 5,
    "hidden_units": 8,
    "pretrain_epochs": 2,
    "epochs": 6,
    "batch_size": 64,
}


@dataclass
class DemoRun:
    controller: ControllerProcess
    run_id: str
    state: str
    run: dict[str, Any]
    """The controller's view of the pipeline run (``GET /api/v1/runs/{dag}/{run}``)."""

    def task(self, airflow_task_id: str) -> dict[str, Any]:
        (task,) = [t for t in self.run["tasks"] if (t.get("run") or {}).get("task_id") == airflow_task_id]
        return dict(task)

    def output(self, airflow_task_id: str, name: str) -> str:
        (digest,) = [o["digest"] for o in self.task(airflow_task_id)["outputs"] if o["name"] == name]
        return str(digest)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    home = tmp_path_factory.mktemp("demo-home")
    out = io.StringIO()
    ensure_keys(home, out)
    with ControllerProcess(home=home, env={"MLPROV_SIDECAR": "true"}, cwd=REPO) as controller:
        env = airflow_env(REPO, home, controller)
        migrate_airflow(env, out)
        dag = run_dag(env, CONF, home / "dag-run.json")
        with controller.client() as client:
            answer = client.get(f"/api/v1/runs/{DAG_ID}/{dag.run_id}")
        assert answer.status_code == 200, answer.text
        yield DemoRun(controller=controller, run_id=dag.run_id, state=dag.state, run=answer.json())


def test_every_task_succeeds_through_the_controller(demo: DemoRun) -> None:
    assert demo.state == "success"
    assert [(t["run"]["task_id"], t["state"]) for t in demo.run["tasks"]] == [(t, "succeeded") for t in TASKS]
    assert demo.task("finetune")["params"]["epochs"] == CONF["epochs"]  # the run's conf reached the stage
    assert {o["name"] for o in demo.task("finetune")["outputs"]} >= {"model", "metrics.json"}


def test_the_tuned_models_lineage_reaches_the_data_the_base_model_and_the_code(demo: DemoRun) -> None:
    tuned = demo.output("finetune", "model")
    with demo.controller.client() as client:
        graph = client.get(f"/api/v1/lineage/{tuned}", params={"direction": "upstream"}).json()
    assert not graph["truncated"]
    nodes = {n["id"]: n for n in graph["nodes"]}
    by_digest = {n["digest"]: n for n in graph["nodes"] if n["type"] == "artifact"}
    edges = {(e["src"], e["role"], e["dst"]) for e in graph["edges"]}
    produced_by = {e["dst"]: e["src"] for e in graph["edges"] if e["role"] == "produced"}
    if not produced_by:  # edges may point from the consumer to what it came from
        produced_by = {e["src"]: e["dst"] for e in graph["edges"] if e["role"] == "produced"}

    # every artifact upstream is signed and was produced by one of the run's tasks
    for name, task in [("model", "finetune"), ("base_model", "pretrain"), ("train.parquet", "preprocess")]:
        node = by_digest[demo.output(task, name)]
        assert node["state"] == "signed", node
        assert node["manifest"]
        producer = nodes[produced_by[node["id"]]]
        assert (producer["type"], producer["airflow_task_id"], producer["run_id"]) == ("task", task, demo.run_id)
    raw = by_digest[demo.output("ingest", "raw.csv")]  # the ingested dataset
    assert raw["state"] == "signed"
    assert nodes[produced_by[raw["id"]]]["airflow_task_id"] == "ingest"
    assert demo.output("preprocess", "val.parquet") not in by_digest  # fine-tuning never read it

    # the code commit of every task upstream
    tasks = {n["airflow_task_id"]: n["id"] for n in graph["nodes"] if n["type"] == "task"}
    assert set(tasks) == {"ingest", "preprocess", "pretrain", "finetune"}
    commits = {demo.task(t)["code"]["commit"] for t in tasks}
    (commit,) = commits
    assert len(commit) == 40
    code_nodes = [n for n in graph["nodes"] if n["type"] == "code"]
    assert code_nodes
    assert all(commit in (n["id"] + (n["name"] or "")) for n in code_nodes), code_nodes
    for task_node in tasks.values():
        assert any(role == "code" and task_node in (src, dst) for src, role, dst in edges), task_node


def test_the_verification_report_holds_for_every_node(demo: DemoRun) -> None:
    tuned = demo.output("finetune", "model")
    with demo.controller.client() as client:
        answer = client.post("/api/v1/verify", json={"artifact": tuned, "rehash_all": True})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    report = result["report"]
    assert result["ok"] is True, report["first_broken"]
    assert report["first_broken"] is None
    assert report["summary"]["failed"] == 0
    kinds = sorted(n["kind"] for n in report["nodes"])
    assert kinds.count("Model") == 2  # tuned and base
    assert kinds.count("Dataset") == 2  # train.parquet and raw.csv
    assert "Software" in kinds  # the code commit
    for node in report["nodes"]:
        checks = {c["name"]: c for c in node["checks"]}
        assert node["ok"], node
        for name in ("signature", "tlog inclusion"):
            assert checks[name]["ok"], node
            assert not checks[name]["skipped"], node


def _mlflow_client(home: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def _provenance_artifacts(client: Any, run_id: str, timeout: float = 15.0) -> set[str]:
    """The run's ``provenance/`` artifacts; the controller copies them off the request path, so wait a little."""
    deadline = time.monotonic() + timeout
    while True:
        paths = {a.path for a in client.list_artifacts(run_id, "provenance")}
        if paths or time.monotonic() > deadline:
            return paths
        time.sleep(0.2)


def test_mlflow_has_one_parent_run_with_a_nested_run_per_task(demo: DemoRun) -> None:
    client = _mlflow_client(demo.controller.home)
    (experiment,) = [e for e in client.search_experiments() if e.name == DAG_ID]
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlprov.run_id` = '{demo.run_id}'")
    parents = [r for r in runs if r.data.tags.get("mlprov.kind") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0].info.run_id
    assert demo.run["mlflow_run_id"] == parent  # the controller's run view names it
    nested = {r.data.tags["mlprov.task_id"]: r for r in runs if r.data.tags.get("mlprov.kind") == "task"}
    assert sorted(nested) == sorted(TASKS)
    for task_id, run in nested.items():
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.run_id == demo.task(task_id)["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlprov.code_commit"] == demo.task(task_id)["code"]["commit"]
        artifacts = _provenance_artifacts(client, run.info.run_id)
        assert any(p.endswith(".manifest.json") for p in artifacts), (task_id, artifacts)

    tuned = nested["finetune"]
    assert tuned.data.params["epochs"] == str(CONF["epochs"])
    assert float(tuned.data.params["learning_rate"]) > 0
    losses = [m.value for m in sorted(client.get_metric_history(tuned.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == CONF["epochs"]  # one step per epoch
    assert losses[-1] < losses[0]  # it learned
    tuned_files = {p.rsplit("/", 1)[-1] for p in _provenance_artifacts(client, tuned.info.run_id)}
    assert any(f.startswith("model.") and f.endswith(".oms-bundle.json") for f in tuned_files), tuned_files
    assert any(f.startswith("model.") and f.endswith(".c2pa") for f in tuned_files), tuned_files
    evaluation = nested["evaluate"].data.metrics
    assert evaluation, "the evaluation's metrics reach MLflow"
    json.dumps(evaluation)  # plain numbers


def test_the_demo_report_prints_the_lineage_tree_the_verification_and_the_mlflow_runs(demo: DemoRun) -> None:
    out = io.StringIO()
    assert print_report(demo.controller, demo.run, out) is True
    text = out.getvalue()
    tuned = demo.output("finetune", "model")
    assert f"== Lineage of the tuned model {tuned}" in text
    assert "<- produced: task ingest" in text  # the tree reaches the ingest task
    assert "✓ Manifest verification successful" in text
    assert f"pipeline    {demo.run['mlflow_run_id']}" in text
    for task in demo.run["tasks"]:
        assert task["mlflow_run_id"] in text
