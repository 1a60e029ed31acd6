"""/healthz, /readyz and /metrics; JSON logs with bound identity; the error body shape."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import structlog
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from controller.logging import bind_context, configure_logging, get_logger
from controller.main import create_app
from controller.settings import Settings
from controller.state import AppState
from controller.store.db import make_engine, session_scope
from controller.store.models import Task

ADMIN = "admin-token-for-health-tests"


@pytest.fixture
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the whole session: creating one costs seconds (its own migrations)."""
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'shared-mlflow.db'}"


@pytest.fixture
async def app(mlprov_home: Path, mlflow_uri: str) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(admin_token=SecretStr(ADMIN), mlflow_tracking_uri=mlflow_uri))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_checks_the_database(app: FastAPI, client: httpx.AsyncClient) -> None:
    body = (await client.get("/readyz")).json()
    assert (body["status"], body["database"]) == ("ready", "ok")
    assert body["runtime"] in ("warming", "ready")  # serving either way; launches wait for the warm-up
    state_runtime = app.state.mlprov.runtime
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not state_runtime.warmed():
        assert loop.time() < deadline, "the runtime never finished warming up"
        await asyncio.sleep(0.05)
    assert (await client.get("/readyz")).json() == {"status": "ready", "database": "ok", "runtime": "ready"}
    state: AppState = app.state.mlprov
    working = state.engine
    state.engine = make_engine("postgresql://nobody@127.0.0.1:1/nothing")  # a closed port: refused at once
    try:
        response = await client.get("/readyz")
    finally:
        state.engine.dispose()
        state.engine = working
    assert response.status_code == 503
    assert response.json()["database"].startswith("unreachable")


async def test_readyz_before_start(mlprov_home: Path, mlflow_uri: str) -> None:
    app = create_app(Settings(admin_token=SecretStr(ADMIN), mlflow_tracking_uri=mlflow_uri))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/readyz")
    assert response.status_code == 503


async def test_metrics_count_tasks_by_state_from_the_store(app: FastAPI, client: httpx.AsyncClient) -> None:
    state: AppState = app.state.mlprov
    with session_scope(state.session_factory) as session:
        session.add_all([Task(service="s", state="succeeded"), Task(service="s", state="succeeded")])
        session.add(Task(service="s", state="failed"))
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    tasks = _samples(response.text, "mlprov_tasks")
    assert tasks[(("state", "succeeded"),)] == 2
    assert tasks[(("state", "failed"),)] == 1
    assert tasks[(("state", "running"),)] == 0
    for name in ("mlprov_job_duration_seconds", "mlprov_lock_wait_seconds", "mlprov_http_request_duration_seconds"):
        assert f"# TYPE {name} histogram" in response.text


async def test_http_latency_by_route_template(client: httpx.AsyncClient) -> None:
    def count(text: str) -> float:
        key = (("method", "GET"), ("route", "/api/v1/services/{name}"), ("status", "404"))
        return _samples(text, "mlprov_http_request_duration_seconds_count").get(key, 0.0)

    before = count((await client.get("/metrics")).text)
    for name in ("a", "b", "c"):
        await client.get(f"/api/v1/services/{name}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert count((await client.get("/metrics")).text) == before + 3


async def test_unknown_route_has_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert set(response.json()) == {"error", "detail"}


def test_logs_are_json_lines_with_bound_identity() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    try:
        with bind_context(run_id="run-1", task_id="task-1", job_uid="pid:1:2"):
            get_logger("t").info("job started", attempt=1)
        get_logger("t").info("after")
        get_logger("t").debug("hidden")
    finally:
        configure_logging("INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["job started", "after"]
    first = lines[0]
    assert (first["run_id"], first["task_id"], first["job_uid"], first["attempt"]) == ("run-1", "task-1", "pid:1:2", 1)
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert "run_id" not in lines[1]


def test_bound_fields_are_captured() -> None:
    with structlog.testing.capture_logs() as logs, bind_context(task_id="t-9"):
        get_logger("t").warning("lock wait", lock="gpu")
    assert [(entry["event"], entry["lock"], entry["log_level"]) for entry in logs] == [("lock wait", "gpu", "warning")]
