"""Every route of the real app refuses a missing or wrong token; scopes of read and task tokens.

The routes are enumerated from ``create_app().routes``, so routes other modules add later are
covered without touching this file.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr
from sqlalchemy import select
from starlette.routing import Route

from controller.auth import TASK_TOKEN_PREFIX, hash_token, issue_task_token, revoke_task_tokens
from controller.main import create_app
from controller.settings import Settings
from controller.state import AppState
from controller.store.db import session_scope
from controller.store.models import ApiToken, Task

ADMIN = "admin-token-for-auth-tests"
READ = "read-token-for-auth-tests"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

# Open without a token, on purpose:
# - /healthz, /readyz: liveness and readiness probes (kubelet, load balancers) carry no credentials;
#   they answer "ok"/"ready" and nothing about tasks.
# - /metrics: Prometheus scrapes without credentials; counts and latencies only, no names or data.
# - /docs, /docs/oauth2-redirect, /redoc, /openapi.json: the API's description (the issue asks for
#   OpenAPI docs at /docs); no data, and every operation they describe still needs a token.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
# The Atlas storage API, at the root where atlas-cli's --storage-url points: the same tokens (checked
# below like every route), anonymous only when the operator enables it (tests/integration/test_atlas_api.py).
ATLAS = {"/manifests", "/manifests/{manifest_id}"}
# Routes without {task_id} that any task token may call; the route checks the task itself (a registered
# manifest's mlprov.task must name the token's task: tests/integration/test_ingest.py). Listed here on
# purpose: a route opened to task tokens must be added deliberately.
TASK_TOKEN_ROUTES = {("POST", "/api/v1/manifests"), ("GET", "/api/v1/software-manifests")}
# POST routes that only read (a query with a body) and so take a read-only token: verification writes nothing.
READ_ONLY_POSTS = {("POST", "/api/v1/verify")}


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str

    def url(self, task_id: str = "some-task") -> str:
        path = self.template.replace("{task_id}", task_id)
        return re.sub(r"\{[^}]+\}", "x", path)


def endpoints(app: FastAPI) -> list[Endpoint]:
    found = []
    for route in app.routes:
        assert isinstance(route, Route), f"unexpected route type {type(route).__name__}: extend this test"
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append(Endpoint(method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)))
    return found


@pytest.fixture
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the whole session: creating one costs seconds (its own migrations)."""
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'shared-mlflow.db'}"


@pytest.fixture
async def app(mlprov_home: Path, mlflow_uri: str) -> AsyncIterator[FastAPI]:
    application = create_app(
        Settings(admin_token=SecretStr(ADMIN), read_tokens=[SecretStr(READ)], mlflow_tracking_uri=mlflow_uri)
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


def _state(app: FastAPI) -> AppState:
    state = app.state.mlprov
    assert isinstance(state, AppState)
    return state


def _new_task(app: FastAPI) -> tuple[str, str]:
    with session_scope(_state(app).session_factory) as session:
        task = Task(service="train", state="queued")
        session.add(task)
        session.flush()
        token = issue_task_token(session, task.id)
    return task.id, token


async def _call(client: httpx.AsyncClient, endpoint: Endpoint, token: str | None, task_id: str = "x") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body: dict[str, object] | None = {} if endpoint.method in MUTATING and endpoint.method != "DELETE" else None
    return await asyncio.wait_for(
        client.request(endpoint.method, endpoint.url(task_id), json=body, headers=headers), 10
    )


def test_the_enumeration_sees_the_api(app: FastAPI) -> None:
    templates = {e.template for e in endpoints(app)}
    assert {"/api/v1/services", "/api/v1/services/{name}", "/healthz"} <= templates
    assert all(t.startswith("/api/v1/") or t in PUBLIC | ATLAS for t in templates), templates - PUBLIC - ATLAS
    marked = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and (route.openapi_extra or {}).get("x-mlprov-task-token")
        for method in route.methods
    }
    assert marked == TASK_TOKEN_ROUTES


async def test_every_route_refuses_missing_and_wrong_tokens(app: FastAPI, client: httpx.AsyncClient) -> None:
    checked = 0
    for endpoint in endpoints(app):
        if endpoint.template in PUBLIC:
            continue
        for token, why in [(None, "missing"), ("wrong-token", "wrong"), (TASK_TOKEN_PREFIX + "forged", "forged")]:
            response = await _call(client, endpoint, token)
            assert response.status_code == 401, f"{endpoint} with a {why} token: {response.status_code}"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"] == "unauthorized"
        basic = await client.request(endpoint.method, endpoint.url(), headers={"Authorization": f"Basic {ADMIN}"})
        assert basic.status_code == 401, f"{endpoint} accepted a non-Bearer scheme"
        checked += 1
    assert checked >= 5


async def test_public_routes_need_no_token(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert (await client.get(path)).status_code == 200, path


async def test_read_token_cannot_mutate(app: FastAPI, client: httpx.AsyncClient) -> None:
    for endpoint in endpoints(app):
        if endpoint.template in PUBLIC:
            continue
        response = await _call(client, endpoint, READ)
        if endpoint.method in MUTATING and (endpoint.method, endpoint.template) not in READ_ONLY_POSTS:
            assert response.status_code == 403, f"{endpoint}: {response.status_code}"
            assert "read-only" in response.json()["detail"]
        else:
            assert response.status_code not in (401, 403), f"{endpoint}: {response.status_code}"


async def test_task_token_reaches_only_its_own_task(app: FastAPI, client: httpx.AsyncClient) -> None:
    own, token = _new_task(app)
    other, _ = _new_task(app)
    for endpoint in endpoints(app):
        if endpoint.template in PUBLIC:
            continue
        foreign = await _call(client, endpoint, token, task_id=other)
        if (endpoint.method, endpoint.template) in TASK_TOKEN_ROUTES:
            assert foreign.status_code not in (401, 403), f"{endpoint} refused a task token: {foreign.status_code}"
            continue
        assert foreign.status_code == 403, f"{endpoint} for another task: {foreign.status_code}"
        if "{task_id}" in endpoint.template:
            mine = await _call(client, endpoint, token, task_id=own)
            assert mine.status_code != 401, f"{endpoint} refused a valid task token"
            if endpoint.method == "GET":  # reading its own task is the point; a route may reserve writes to admin
                assert mine.status_code != 403, f"{endpoint} for its own task: {mine.status_code}"


async def test_admin_reaches_the_catalog(client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    assert (await client.get("/api/v1/services", headers=headers)).status_code == 200
    created = await client.post("/api/v1/services", json={"name": "a", "command": ["x"]}, headers=headers)
    assert created.status_code == 201


async def test_task_tokens_are_stored_hashed_and_revocable(app: FastAPI, client: httpx.AsyncClient) -> None:
    task_id, token = _new_task(app)
    assert token.startswith(TASK_TOKEN_PREFIX)
    with session_scope(_state(app).session_factory) as session:
        stored = session.scalars(select(ApiToken.token_hash).where(ApiToken.task_id == task_id)).all()
        assert stored == [hash_token(token)]
        assert token not in stored
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/services", headers=headers)).status_code == 403  # valid, out of scope
    with session_scope(_state(app).session_factory) as session:
        assert revoke_task_tokens(session, task_id) == 1
    assert (await client.get("/api/v1/services", headers=headers)).status_code == 401
