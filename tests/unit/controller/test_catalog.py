"""The service catalog: spec validation, services.yaml loading, and /api/v1/services over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from controller.catalog import ServiceSpec, load_services_file, memory_bytes, millicores
from controller.errors import CatalogError, InvalidNameError
from controller.main import create_app
from controller.settings import Settings

ADMIN = "admin-token-for-catalog-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
JOB: dict[str, Any] = {"name": "train", "kind": "job", "command": ["python", "train.py"]}


# --- the spec model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a", "command": ["true"]},
        {"name": "ingest.v2_x-1", "image": "ghcr.io/org/ingest@sha256:" + "0" * 64},
        {"name": "both", "command": ["python", "-m", "train"], "image": "ghcr.io/org/train:1.0"},
        {"name": "api", "kind": "server", "command": ["uvicorn", "app:app"], "port": 8000, "health_path": "/healthz"},
        {"name": "legacy", "kind": "external", "url": "http://10.0.0.5:8080/run", "method": "POST"},
        {
            "name": "gpu",
            "command": ["python", "t.py"],
            "resources": {"cpu": "500m", "memory": "2Gi", "gpus": 1},
            "locks": ["gpu-a100", "db:main"],
            "timeout": 3600,
            "env": {"HF_HOME": "/cache"},
            "params": {"lr": 0.1, "layers": [1, 2]},
        },
    ],
)
def test_valid_specs(body: dict[str, Any]) -> None:
    spec = ServiceSpec.model_validate(body)
    dumped = spec.model_dump(mode="json")
    assert {key: dumped[key] for key in body} == body  # every given key kept as given
    assert ServiceSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ({"name": "x"}, "command (an argv list) or image"),
        ({"name": "x", "kind": "server", "command": ["a"]}, "port and health_path"),
        ({"name": "x", "kind": "server", "command": ["a"], "port": 80, "health_path": "healthz"}, "health_path"),
        ({"name": "x", "kind": "external", "url": "http://h/"}, "url (http(s)://...) and method"),
        ({"name": "x", "kind": "external", "url": "ftp://h/", "method": "GET"}, "url"),
        ({"name": "x", "kind": "external", "url": "http://h/", "method": "GET", "command": ["a"]}, "remove command"),
        ({"name": "x", "kind": "batch", "command": ["a"]}, "kind"),
        ({"name": "x", "command": []}, "command"),
        ({"name": "x", "command": ["a"], "timeout": 0}, "timeout"),
        ({"name": "x", "command": ["a"], "resources": {"cpu": "two"}}, "millicores"),
        ({"name": "x", "command": ["a"], "resources": {"memory": "2GB"}}, "unit suffix"),
        ({"name": "x", "command": ["a"], "resources": {"gpus": -1}}, "gpus"),
        ({"name": "x", "command": ["a"], "locks": ["a/b"]}, "locks"),
        ({"name": "x", "command": ["a"], "locks": ["l", "l"]}, "repeat"),
        ({"name": "x", "command": ["a"], "env": {"1BAD": "v"}}, "environment variable names"),
        ({"name": "x", "command": ["a"], "comand": ["typo"]}, "comand"),
    ],
)
def test_invalid_specs_say_what_to_fix(body: dict[str, Any], hint: str) -> None:
    with pytest.raises(ValidationError) as info:
        ServiceSpec.model_validate(body)
    assert hint in str(info.value)


@pytest.mark.parametrize("name", ["..", ".", "../etc", "a/b", "a\\b", "UPPER", "-lead", "", "x" * 64, "a b"])
def test_bad_names_raise_invalid_name(name: str) -> None:
    with pytest.raises(InvalidNameError, match="not allowed"):
        ServiceSpec.model_validate({"name": name, "command": ["a"]})


@pytest.mark.parametrize(("cpu", "milli"), [("2", 2000), (0.5, 500), ("250m", 250), (1, 1000)])
def test_millicores(cpu: str | float, milli: int) -> None:
    assert millicores(cpu) == milli


@pytest.mark.parametrize(
    ("memory", "size"), [("512Mi", 512 * 2**20), ("1G", 10**9), (1024, 1024), ("1.5Gi", 3 * 2**29)]
)
def test_memory_bytes(memory: str | int, size: int) -> None:
    assert memory_bytes(memory) == size


@pytest.mark.parametrize("bad", ["0", "0m", "-1"])
def test_cpu_must_be_positive(bad: str) -> None:
    with pytest.raises(ValueError, match="cpu"):
        millicores(bad)


# --- services.yaml --------------------------------------------------------------------------


def test_loads_a_list_or_a_services_key(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  - name: train\n    command: [python, train.py]\n    resources: {gpus: 1}\n")
    assert [(s.name, s.resources.gpus) for s in load_services_file(path)] == [("train", 1)]
    path.write_text("- name: a\n  command: [x]\n- name: b\n  image: img\n")
    assert [s.name for s in load_services_file(path)] == ["a", "b"]
    path.write_text("")
    assert load_services_file(path) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- name: ok\n  command: [x]\n- name: web\n  kind: server\n  command: [x]\n",
            "entry 1 ('web'): (entry): a server",
        ),
        ("- name: ok\n  command: [x]\n  timeout: -5\n", "entry 0 ('ok'): timeout:"),
        ("- name: ok\n  command: [x]\n  resources: {memory: lots}\n", "entry 0 ('ok'): resources.memory:"),
        ("- name: ../up\n  command: [x]\n", "entry 0 ('../up'): name:"),
        ("- name: a\n  command: [x]\n- name: a\n  command: [y]\n", "entry 1 ('a'): name: 'a' is defined twice"),
        ("- just a string\n", "entry 0: a service must be a mapping"),
        ("services: {name: a}\n", "expected a list of services"),
        ("- name: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_file_names_entry_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_services_file(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_services_file(tmp_path / "nope.yaml")


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the whole session: creating one costs seconds (its own migrations)."""
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'shared-mlflow.db'}"


@pytest.fixture
def make_settings(mlprov_home: Path, mlflow_uri: str) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return Settings(admin_token=SecretStr(ADMIN), mlflow_tracking_uri=mlflow_uri, **extra)

    return make


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(max_body_bytes=64 * 1024))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c,
    ):
        yield c


async def test_crud(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/services", json=JOB, headers=AUTH)
    assert created.status_code == 201, created.text
    assert created.json()["command"] == JOB["command"]
    assert (await client.get("/api/v1/services/train", headers=AUTH)).json()["name"] == "train"
    assert [s["name"] for s in (await client.get("/api/v1/services", headers=AUTH)).json()] == ["train"]

    replaced = await client.put("/api/v1/services/train", json=JOB | {"image": "img", "command": None}, headers=AUTH)
    assert replaced.status_code == 200, replaced.text
    assert (await client.get("/api/v1/services/train", headers=AUTH)).json()["image"] == "img"

    assert (await client.delete("/api/v1/services/train", headers=AUTH)).status_code == 204
    assert (await client.get("/api/v1/services/train", headers=AUTH)).status_code == 404
    assert (await client.get("/api/v1/services", headers=AUTH)).json() == []


async def test_duplicate_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/services", json=JOB, headers=AUTH)).status_code == 201
    again = await client.post("/api/v1/services", json=JOB | {"image": "x", "command": None}, headers=AUTH)
    assert again.status_code == 409
    assert again.json() == {"error": "conflict", "detail": again.json()["detail"]}
    assert "PUT /api/v1/services/train" in again.json()["detail"]
    assert (await client.get("/api/v1/services/train", headers=AUTH)).json()["command"] == JOB["command"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_unknown_is_404(client: httpx.AsyncClient, method: str) -> None:
    body = JOB | {"name": "ghost"} if method == "PUT" else None
    response = await client.request(method, "/api/v1/services/ghost", json=body, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "service_not_found"
    assert "POST /api/v1/services" in response.json()["detail"]


async def test_rename_by_put_is_409(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/services", json=JOB, headers=AUTH)
    response = await client.put("/api/v1/services/train", json=JOB | {"name": "other"}, headers=AUTH)
    assert response.status_code == 409
    assert "cannot be renamed" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "kind": "server", "command": ["a"]}, "body"),
        ({"name": "x", "command": "python train.py"}, "body.command"),
        ({"name": "x", "command": ["a"], "timeout": -1}, "body.timeout"),
        ({"command": ["a"]}, "body.name"),
    ],
)
async def test_malformed_is_422_naming_the_field(client: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    response = await client.post("/api/v1/services", json=body, headers=AUTH)
    assert response.status_code == 422
    data = response.json()
    assert data["error"] == "invalid_request"
    assert field in [e["field"] for e in data["errors"]]
    assert data["detail"].startswith(field)


async def test_non_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/services", content=b"{not json", headers=AUTH | {"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/services/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"),
        ("DELETE", "/api/v1/services/..%2Fcontroller.db"),
        ("GET", "/api/v1/services/a%5Cb"),
        ("GET", "/api/v1/services/%2E%2E"),
    ],
)
async def test_traversal_in_path_is_400(client: httpx.AsyncClient, method: str, url: str) -> None:
    response = await client.request(method, url, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_name"
    assert "a-z 0-9" in response.json()["detail"]


async def test_traversal_in_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/services", json=JOB | {"name": "../../evil"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_name"
    assert (await client.get("/api/v1/services", headers=AUTH)).json() == []


async def test_oversize_is_413(client: httpx.AsyncClient) -> None:
    big = JOB | {"params": {"blob": "x" * (65 * 1024)}}
    response = await client.post("/api/v1/services", json=big, headers=AUTH)
    assert response.status_code == 413
    assert "smaller body" in response.json()["detail"]
    assert (await client.get("/api/v1/services", headers=AUTH)).json() == []


async def test_oversize_without_content_length_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(70):
            yield b" " * 1024

    response = await client.post(
        "/api/v1/services", content=chunks(), headers=AUTH | {"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_chunked_body_under_the_limit_is_served(client: httpx.AsyncClient) -> None:
    payload = httpx.Request("POST", "/", json=JOB).content

    async def chunks() -> AsyncIterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    response = await client.post(
        "/api/v1/services", content=chunks(), headers=AUTH | {"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_services_yaml_is_loaded_at_start(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("- name: ingest\n  command: [python, ingest.py]\n  locks: [dataset]\n")
    app = create_app(make_settings(services_file=path))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        service = (await c.get("/api/v1/services/ingest", headers=AUTH)).json()
    assert service["locks"] == ["dataset"]


async def test_invalid_services_yaml_fails_start(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("- name: web\n  kind: server\n  command: [x]\n")
    app = create_app(make_settings(services_file=path))
    with pytest.raises(CatalogError, match="entry 0 \\('web'\\)"):
        async with app.router.lifespan_context(app):
            pass
