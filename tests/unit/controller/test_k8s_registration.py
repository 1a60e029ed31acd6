"""Through the API: a service that cannot become a valid Job is refused at registration (``POST
/api/v1/services``: 422 naming the field; ``POST /api/v1/services/validate``, the dry run ``mlprov deploy``
prints, one ``field: problem`` line each), and an image with a command is a normal service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from controller.main import create_app
from controller.settings import Settings

ADMIN = "admin-token-for-k8s-registration-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
IMAGE = "reg.example/ml/train:1.0"


def _svc(**extra: Any) -> dict[str, Any]:
    return {"name": "train", "image": IMAGE, **extra}


def _k8s(**options: Any) -> dict[str, Any]:
    return _svc(kubernetes=options)


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("memory quantity", _svc(resources={"memory": "12 GB"}), "body.resources.memory", "not a quantity"),
    ("cpu quantity", _svc(resources={"cpu": "two"}), "body.resources.cpu", "not a quantity"),
    ("zero cpu", _svc(resources={"cpu": "0m"}), "body.resources.cpu", "more than zero"),
    ("negative gpus", _svc(resources={"gpus": -1}), "body.resources.gpus", "greater than or equal to 0"),
    ("fractional gpus", _svc(resources={"gpus": 1.5}), "body.resources.gpus", "integer"),
    ("too many gpus", _svc(resources={"gpus": 65}), "body.resources.gpus", "less than or equal to 64"),
    ("gpu resource", _k8s(gpu_resource="gpu"), "body.kubernetes.gpu_resource", "vendor/name"),
    ("image reference", _svc(image="Not An Image!"), "body.image", "not an image reference"),
    ("no image nor command", {"name": "train"}, "body", "needs command (an argv list) or image"),
    ("volume without source", _k8s(volumes=[{"name": "d", "mount_path": "/d"}]), "body.kubernetes.volumes.0",
     "exactly one of pvc"),
    ("volume name", _k8s(volumes=[{"name": "Data", "mount_path": "/d", "pvc": "c"}]),
     "body.kubernetes.volumes.0.name", "DNS label"),
    ("volume over the workspace", _k8s(volumes=[{"name": "d", "mount_path": "/workspace/x", "pvc": "c"}]),
     "body.kubernetes.volumes.0.mount_path", "must not"),
    ("claim name", _k8s(volumes=[{"name": "d", "mount_path": "/d", "pvc": "Bad_Claim"}]),
     "body.kubernetes.volumes.0.pvc", "DNS subdomain"),
    ("pvc workspace without size", _k8s(workspace={"type": "pvc"}), "body.kubernetes.workspace", "needs size"),
    ("workspace size", _k8s(workspace={"size": "lots"}), "body.kubernetes.workspace.size", "not a quantity"),
    ("toleration operator", _k8s(tolerations=[{"key": "gpu", "operator": "In"}]),
     "body.kubernetes.tolerations.0.operator", "'Equal' or 'Exists'"),
    ("toleration effect", _k8s(tolerations=[{"key": "gpu", "effect": "Sometimes"}]),
     "body.kubernetes.tolerations.0.effect", "NoSchedule"),
    ("toleration seconds", _k8s(tolerations=[{"key": "g", "effect": "NoSchedule", "toleration_seconds": 5}]),
     "body.kubernetes.tolerations.0", "only allowed with effect NoExecute"),
    ("node selector key", _k8s(node_selector={"bad key!": "x"}), "body.kubernetes.node_selector",
     "qualified name"),
    ("node selector value", _k8s(node_selector={"zone": "not a value"}), "body.kubernetes.node_selector",
     "label value"),
    ("unknown option", _k8s(hostNetwork=True), "body.kubernetes.hostNetwork", "Extra inputs are not permitted"),
]  # fmt: skip


@pytest.fixture
async def client(mlprov_home: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(admin_token=SecretStr(ADMIN), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c,
    ):
        yield c


async def test_specs_that_cannot_become_a_job_are_refused_naming_the_field(client: httpx.AsyncClient) -> None:
    for what, body, field, message in REFUSED:
        response = await client.post("/api/v1/services", json=body, headers=AUTH)
        assert response.status_code == 422, (what, response.text)
        data = response.json()
        assert data["error"] == "invalid_request", what
        problems = {e["field"]: e for e in data["errors"]}
        assert field in problems, (what, data["errors"])
        assert message in data["detail"], (what, data["detail"])
        assert "\n" not in data["detail"], what  # one line, as the CLI shows it
    listed = await client.get("/api/v1/services", headers=AUTH)
    assert listed.json() == []  # nothing was registered


async def test_the_dry_run_names_the_same_fields(client: httpx.AsyncClient) -> None:
    bodies = [body for _, body, _, _ in REFUSED]
    response = await client.post("/api/v1/services/validate", json={"services": bodies}, headers=AUTH)
    assert response.status_code == 200, response.text
    checks = response.json()["services"]
    assert response.json()["ok"] is False
    for (what, _, field, message), check in zip(REFUSED, checks, strict=True):
        assert check["action"] == "invalid", what
        line = next((e for e in check["errors"] if e.startswith(field.removeprefix("body").lstrip(".") or "(entry)")),
                    None)  # fmt: skip
        assert line is not None, (what, check["errors"])
        assert message in " ".join(check["errors"]), (what, check["errors"])


async def test_an_image_with_a_command_registers(client: httpx.AsyncClient) -> None:
    body = _k8s(
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        node_selector={"nvidia.com/gpu.present": "true"},
        volumes=[{"name": "data", "mount_path": "/data", "pvc": "datasets", "read_only": True}],
    ) | {"command": ["python", "-m", "train"], "resources": {"cpu": "2", "memory": "8Gi", "gpus": 1}}
    created = await client.post("/api/v1/services", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    stored = (await client.get("/api/v1/services/train", headers=AUTH)).json()
    assert (stored["image"], stored["command"]) == (IMAGE, ["python", "-m", "train"])
    assert stored["kubernetes"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_a_kubernetes_controller_refuses_a_service_without_an_image_at_registration() -> None:
    """The runtime's own rule (a pod runs an image) is checked on POST/PUT, not first at launch."""
    from fastapi.exceptions import RequestValidationError

    from controller.api.routes.services import _for_runtime
    from controller.catalog import ServiceSpec

    command_only = ServiceSpec.model_validate({"name": "train", "command": ["python", "train.py"]})
    assert _for_runtime(command_only, "local") == command_only
    with pytest.raises(RequestValidationError) as caught:
        _for_runtime(command_only, "kubernetes")
    (error,) = caught.value.errors()
    assert error["loc"] == ("body", "image")
    assert "runs a job service from an image" in error["msg"]
    with_image = ServiceSpec.model_validate({"name": "train", "image": IMAGE, "command": ["python", "train.py"]})
    assert _for_runtime(with_image, "kubernetes").image == IMAGE


def test_a_kubernetes_controller_refuses_such_a_services_file_at_start(tmp_path: Path) -> None:
    from controller.catalog import CatalogError, load_services_file

    services = tmp_path / "services.yaml"
    services.write_text("services:\n  - name: train\n    command: [python, train.py]\n")
    assert [s.name for s in load_services_file(services, runtime="local")] == ["train"]
    with pytest.raises(CatalogError, match=r"entry 0 \('train'\): image: the kubernetes runtime runs a job"):
        load_services_file(services, runtime="kubernetes")
