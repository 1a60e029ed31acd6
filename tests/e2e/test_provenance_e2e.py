"""Issue 4 end to end with the real parts: controller on a real port, local runtime, provenance sidecar.

Two plain stage programs (``tests/data/stages/produce.py`` and ``derive.py``, no provenance code) run
as ``job`` tasks with ``code`` pointing at a one-commit git repository. Everything the product promises
is then checked through its public surfaces: the task API, the manifest, lineage, verification and log
APIs, the MLflow store, and the ``mlprov`` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import func, select

from controller.store.models import Manifest
from provenance.manifest import manifest_hash
from tests.e2e.conftest import ADMIN, controller_on, free_port, run_pipeline, verify

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = {"dag_id": "e2e_pipeline", "run_id": "manual__e2e_1", "try_number": 1}


def _checks(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in node["checks"]}


def _mlprov(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provenance.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_two_stage_pipeline_is_captured_signed_linked_logged_and_verifiable(
    e2e_home: Path, code_repo: tuple[Path, str]
) -> None:
    repo, commit = code_repo
    code = {"repo": str(repo), "ref": "HEAD"}
    with controller_on(e2e_home, free_port()) as ctl:
        pipeline = run_pipeline(ctl, code, RUN)
        first, second = pipeline.first, pipeline.second
        first_id, second_id = first["id"], second["id"]
        outputs1 = {o["name"]: o for o in first["outputs"]}
        assert set(outputs1) == {"dataset.csv", "model", "metrics.json"}, first["outputs"]
        assert {n: o["kind"] for n, o in outputs1.items()} == {
            "dataset.csv": "dataset",
            "model": "model",
            "metrics.json": "evaluation",
        }
        dataset = outputs1["dataset.csv"]
        assert [o["name"] for o in second["outputs"]] == ["derived.csv"]
        derived = second["outputs"][0]
        assert first["code"]["commit"] == second["code"]["commit"] == commit
        assert [i["digest"] for i in second["inputs"]] == [dataset["digest"]]

        # --- every output has a signed manifest; the model an OMS bundle; every one a C2PA sidecar ----
        outputs = [*first["outputs"], *second["outputs"]]
        manifests: dict[str, dict[str, Any]] = {}
        for output in outputs:
            assert output["manifest_id"], output
            view = ctl.get(f"/api/v1/manifests/{output['manifest_id']}")
            manifests[output["name"]] = view
            assert view["manifest_hash"] == manifest_hash(view["manifest"])
            ingredient = view["manifest"]["ingredients"][0]["data"]
            assert f"sha256:{ingredient['hash']}" == output["digest"]
            assert view["c2pa"], output
            c2pa = ctl.client.get(view["c2pa"])
            assert c2pa.status_code == 200, output
            assert len(c2pa.content) > 100, output
            if output["name"] == "model":
                assert view["oms_bundle"], view
                bundle = ctl.client.get(f"/api/v1/manifests/{output['manifest_id']}/oms-bundle")
                assert bundle.status_code == 200
                assert "verificationMaterial" in json.loads(bundle.content)
            else:
                assert view["oms_bundle"] is None, output
        dataset_manifest = manifests["dataset.csv"]["manifest"]
        derived_manifest = manifests["derived.csv"]["manifest"]
        linked = {x["manifest_url"] for x in derived_manifest["cross_references"]}
        assert dataset_manifest["instance_id"] in linked, derived_manifest["cross_references"]

        # --- lineage: task 2's output reaches task 1's dataset and the code commit ---------------------
        graph = ctl.get(f"/api/v1/lineage/{derived['digest']}", direction="upstream", depth=10)
        node_ids = {n["id"] for n in graph["nodes"]}
        assert {derived["digest"], second_id, dataset["digest"], first_id} <= node_ids, graph
        assert f"{repo}@{commit}" in node_ids, graph
        edges = {(e["src"], e["role"], e["dst"]) for e in graph["edges"]}
        assert (dataset["digest"], "consumed", second_id) in edges, edges
        assert (first_id, "produced", dataset["digest"]) in edges, edges
        assert (second_id, "produced", derived["digest"]) in edges, edges
        assert (f"{repo}@{commit}", "code", second_id) in edges, edges
        assert all(n["state"] == "signed" for n in graph["nodes"] if n["type"] == "artifact"), graph

        # --- verification of task 2's output: every node and every check passes ----------------------
        result = verify(ctl, derived["digest"])
        report = result["report"]
        assert result["ok"] is True, json.dumps(report, indent=1)
        assert report["first_broken"] is None
        titles = [n["title"] for n in report["nodes"]]
        assert titles[0] == "derived.csv", titles
        assert "dataset.csv" in titles, titles
        for node in report["nodes"]:
            checks = _checks(node)
            assert node["ok"], node
            for name in ("signature", "tlog inclusion"):
                assert checks[name]["ok"], node
                assert not checks[name]["skipped"], node
            assert checks["policy: code commit"]["ok"], node
            assert checks["policy: signed inputs"]["ok"], node
            links = [c for name, c in checks.items() if name.startswith("link ")]
            for link in links:
                assert link["ok"], node
        derived_node = report["nodes"][0]
        assert _checks(derived_node)["artifact"]["detail"].startswith("sha256 of the stored bytes matches")
        assert any(n.startswith(f"link {dataset_manifest['instance_id']}") for n in _checks(derived_node))
        assert _checks(derived_node)["c2pa sidecar"]["ok"]

        # --- transparency log: one entry per manifest --------------------------------------------------
        checkpoint = ctl.get("/api/v1/log/checkpoint", format="json")
        with ctl.state.session_factory() as session:
            manifest_rows = int(session.scalar(select(func.count()).select_from(Manifest)) or 0)
        assert checkpoint["treeSize"] == manifest_rows, (checkpoint, manifest_rows)
        assert manifest_rows == len(outputs) + 1  # the outputs and one software manifest for the commit
        logged = {ctl.get(f"/api/v1/log/entries/{i}")["manifest"]["id"] for i in range(checkpoint["treeSize"])}
        assert {o["manifest_id"] for o in outputs} <= logged, logged
        by_run = ctl.get("/api/v1/artifacts", run_id=RUN["run_id"], limit=100)["artifacts"]
        assert {a["digest"] for a in by_run} == {o["digest"] for o in outputs}, by_run

        # --- MLflow: one run per task, provenance/ artifacts and tags --------------------------------
        # (recorded off the request path: the run's end, with its metrics, is the last write)
        mlflow = MlflowClient(tracking_uri=f"sqlite:///{e2e_home / 'mlflow.db'}")
        for task, names in ((first, ("dataset.csv", "model", "metrics.json")), (second, ("derived.csv",))):
            deadline = time.monotonic() + 60
            while (run_id := ctl.get(f"/api/v1/tasks/{task['id']}")["mlflow_run_id"]) is None or (
                mlflow.get_run(run_id).info.status != "FINISHED"
            ):
                assert time.monotonic() < deadline, f"no finished MLflow run for {task['service']}"
                time.sleep(0.1)
            assert ctl.state.provenance_mlflow is not None
            assert ctl.state.provenance_mlflow.flush(), "the MLflow writer did not catch up in 30 s"
            run = mlflow.get_run(run_id)
            files = {a.path for a in mlflow.list_artifacts(run_id, "provenance")}
            for name in names:
                assert any(f.startswith(f"provenance/{name}") and f.endswith(".manifest.json") for f in files), files
                assert any(f.startswith(f"provenance/{name}") and f.endswith(".c2pa") for f in files), files
                assert f"mlprov.artifact.{name}" in run.data.tags, run.data.tags
            if task is first:
                assert any(f.endswith(".oms-bundle.json") for f in files), files
                assert run.data.metrics["accuracy"] == pytest.approx(0.75)
            else:
                assert run.inputs is not None
                sources = [d.dataset.source for d in run.inputs.dataset_inputs]
                assert sources == [dataset["digest"]], run.inputs

        # --- the CLI against the server --------------------------------------------------------------
        env = {**os.environ, "MLPROV_TOKEN": ADMIN}
        env.pop("MLPROV_HOME", None)
        verified = _mlprov("verify", "--server", ctl.url, derived["digest"], env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        tree = _mlprov("lineage", "--server", ctl.url, derived["digest"], env=env)
        assert tree.returncode == 0, tree.stdout + tree.stderr
        for word in ("derived.csv", "dataset.csv", second_id, first_id, commit[:12]):
            assert word in tree.stdout, (word, tree.stdout)
