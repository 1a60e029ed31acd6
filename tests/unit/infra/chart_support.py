"""Rendering infra/helm/mlprov offline with helm-python-sdk (Helm's Go SDK in a wheel; no cluster, no helm
binary), and the objects the chart tests look for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "infra" / "helm" / "mlprov"
VALUES = {"default": None, "dev": CHART / "values-dev.yaml", "prod": CHART / "values-prod.yaml"}
RELEASE, NAMESPACE = "mlprov", "mlprov"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def values_of(name: str) -> dict[str, Any]:
    path = VALUES[name]
    data: dict[str, Any] = yaml.safe_load(path.read_text()) if path is not None else {}
    return data


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """{template path: rendered YAML}, as `helm template mlprov infra/helm/mlprov -n mlprov` would give."""
    helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev extra (pip install -e '.[dev]')")
    chart = helm_python.Chart.load(str(CHART))
    rendered: dict[str, str] = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return rendered


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every manifest, with the release namespace set on namespaced objects (as `helm install -n` does)."""
    objs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                if doc["kind"] not in CLUSTER_SCOPED:
                    doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                objs.append(doc)
    return objs


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = find(objs, kind, name)
    return found


PINNED = "registry.example.com/mlprov/sidecar@sha256:" + "a" * 64
STAGES = "registry.example.com/mlprov/stages@sha256:" + "b" * 64


def runtime_objects(workspace: Path) -> list[dict[str, Any]]:
    """A Job and a `server` Deployment exactly as the Kubernetes runtime builds them
    (controller/runtime/k8s_objects.py), configured as the chart configures the controller, so the
    chart's NetworkPolicies and AuthorizationPolicies are checked against the pods they are for."""
    from controller.runtime.k8s_objects import K8sJobSpec, ObjectConfig, job_body
    from controller.runtime.k8s_server_objects import deployment_body

    config = ObjectConfig(
        namespace=NAMESPACE,
        service_account="mlprov-job",
        sidecar_image=PINNED,
        init_image=PINNED,
        signing_secret="mlprov-signing-identity",
        controller_url="http://mlprov-controller.mlprov.svc.cluster.local:8080",
    )
    labels = {"dag_id": "demo_lifecycle", "run_id": "manual__2026-12-07T00:00:00+00:00"}
    job = K8sJobSpec(
        task_id="t-1", attempt=1, workspace=workspace, image=STAGES, env={"STAGE_MODULE": "stages.ingest"},
        labels=labels, sidecar_command=["mlprov", "sidecar"], service="ingest",
    )  # fmt: skip
    server = K8sJobSpec(
        task_id="t-2", attempt=1, workspace=workspace, image=STAGES, labels=labels, service="serve",
        port=8080, health_path="/healthz",
    )  # fmt: skip
    return [job_body(config, job, "mlprov-ingest-1-abc123"), deployment_body(config, server, "mlprov-serve-1-abc123")]
