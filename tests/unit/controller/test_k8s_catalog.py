"""A service that cannot become a valid Job is refused at registration (422 naming the field), and every
accepted one becomes a Job that validates against Kubernetes 1.33 and passes the manifest policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from controller.catalog import ServiceSpec, load_services_file, validate_for_runtime
from controller.errors import CatalogError
from controller.runtime.k8s_objects import K8sJobSpec, ObjectConfig, job_body, pvc_body, secret_body
from controller.runtime.k8s_policy import check_objects

IMAGE = "reg.example/ml/train@sha256:" + "a" * 64
PINNED = "reg.example/mlprov@sha256:" + "b" * 64


def _spec(**kubernetes: Any) -> dict[str, Any]:
    return {"name": "train", "image": IMAGE, "kubernetes": kubernetes}


@pytest.mark.parametrize(
    ("service", "field"),
    [
        ({"name": "t", "image": IMAGE, "resources": {"memory": "12 GB"}}, "resources.memory"),
        ({"name": "t", "image": IMAGE, "resources": {"cpu": "-1"}}, "resources.cpu"),
        ({"name": "t", "image": "Not An Image!"}, "image"),
        (_spec(tolerations=[{"key": "gpu", "operator": "In"}]), "kubernetes.tolerations.0.operator"),
        (_spec(tolerations=[{"key": "gpu", "effect": "Sometimes"}]), "kubernetes.tolerations.0.effect"),
        (_spec(tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}]), "kubernetes.tolerations.0"),
        (
            _spec(tolerations=[{"key": "g", "effect": "NoSchedule", "toleration_seconds": 5}]),
            "kubernetes.tolerations.0",
        ),
        (_spec(node_selector={"bad key!": "x"}), "kubernetes.node_selector"),
        (_spec(node_selector={"zone": "not a value"}), "kubernetes.node_selector"),
        (_spec(volumes=[{"name": "Data", "mount_path": "/d", "pvc": "c"}]), "kubernetes.volumes.0.name"),
        (_spec(volumes=[{"name": "d", "mount_path": "/d"}]), "kubernetes.volumes.0"),
        (_spec(volumes=[{"name": "d", "mount_path": "/workspace/x", "pvc": "c"}]), "kubernetes.volumes.0.mount_path"),
        (_spec(volumes=[{"name": "d", "mount_path": "/d", "pvc": "Bad_Claim"}]), "kubernetes.volumes.0.pvc"),
        (_spec(workspace={"type": "pvc"}), "kubernetes.workspace"),
        (_spec(service_account="Not_Valid"), "kubernetes.service_account"),
        (_spec(labels={"mlprov.io/task-id": "x"}), "kubernetes.labels"),
        (_spec(gpu_resource="gpu"), "kubernetes.gpu_resource"),
        (_spec(unknown=1), "kubernetes.unknown"),
    ],
)
def test_bad_kubernetes_fields_are_refused_naming_the_field(service: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ServiceSpec.model_validate(service)
    assert field in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_on_kubernetes_a_job_needs_an_image() -> None:
    spec = ServiceSpec.model_validate({"name": "local", "command": ["python", "x.py"]})
    with pytest.raises(ValidationError) as info:
        validate_for_runtime(spec, "kubernetes")
    assert [e["loc"] for e in info.value.errors()] == [("image",)]
    assert validate_for_runtime(spec, "local") == spec
    external = ServiceSpec.model_validate({"name": "ext", "kind": "external", "url": "http://x", "method": "GET"})
    assert validate_for_runtime(external, "kubernetes") == external


def test_services_file_checks_the_runtime(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("- name: a\n  command: [python, a.py]\n")
    assert load_services_file(path)[0].name == "a"
    with pytest.raises(CatalogError, match="image: the kubernetes runtime runs a job service from an image"):
        load_services_file(path, runtime="kubernetes")


def test_existing_keys_keep_working() -> None:
    spec = ServiceSpec.model_validate({"name": "t", "command": ["x"], "resources": {"cpu": 2, "memory": "1Gi"}})
    assert spec.kubernetes is None


ACCEPTED: list[dict[str, Any]] = [
    {},
    {"node_selector": {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "A100"},
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                     {"key": "spot", "value": "true", "effect": "NoExecute", "toleration_seconds": 60},
                     {"operator": "Exists"}],
     "volumes": [{"name": "data", "mount_path": "/data", "pvc": "datasets", "read_only": True},
                 {"name": "cfg", "mount_path": "/etc/cfg", "config_map": "train-config"},
                 {"name": "creds", "mount_path": "/etc/creds", "secret": "train-creds", "read_only": True},
                 {"name": "scratch", "mount_path": "/scratch", "empty_dir": True, "size_limit": "10Gi"}],
     "workspace": {"type": "emptyDir", "size": "50Gi"}, "service_account": "trainer",
     "image_pull_secrets": ["regcred"], "labels": {"team": "ml"}, "annotations": {"example.com/owner": "ml"},
     "priority_class_name": "batch-high", "gpu_resource": "amd.com/gpu"},
    {"workspace": {"type": "pvc", "size": "20Gi", "storage_class": "fast-ssd", "access_mode": "ReadWriteMany"}},
]  # fmt: skip


@pytest.mark.parametrize("kubernetes", ACCEPTED)
def test_accepted_services_become_valid_jobs(kubernetes: dict[str, Any], tmp_path: Path) -> None:
    service = ServiceSpec.model_validate(
        {
            "name": "train",
            "image": IMAGE,
            "resources": {"cpu": 1.5, "memory": "3G", "gpus": 2},
            "kubernetes": kubernetes,
        }
    )
    spec = K8sJobSpec(
        task_id="0f8e2c1a-1111-2222-3333-444455556666", attempt=2, workspace=tmp_path, image=service.image,
        labels={"dag_id": "demo", "run_id": "scheduled__2026-12-07T00:00:00+00:00"},
        sidecar_command=["mlprov", "sidecar"], resources=service.resources.model_dump(exclude_none=True),
        service=service.name, kubernetes=service.kubernetes,
    )  # fmt: skip
    config = ObjectConfig(sidecar_image=PINNED, init_image=PINNED, image_pull_secrets=("global-pull",))
    pvc = "mlprov-ws-x" if kubernetes.get("workspace", {}).get("type") == "pvc" else None
    objs = [job_body(config, spec, "mlprov-train-a2-abc123", pvc=pvc),
            secret_body(config, spec, "mlprov-train-a2-abc123", task_json="{}", params_json="{}")]  # fmt: skip
    if pvc:
        objs.append(pvc_body(config, spec, pvc))
    for obj in objs:
        assert kubernetes_validate.validate(obj, "1.33", strict=True) == "1.33"
    assert check_objects(objs) == []
    main = objs[0]["spec"]["template"]["spec"]["containers"][0]
    assert main["resources"]["limits"][service.kubernetes.gpu_resource if service.kubernetes else ""] == "2"
    assert main["resources"]["requests"]["cpu"] == "1500m"
