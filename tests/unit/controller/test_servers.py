"""``server`` services through the real app: a real tiny HTTP server (tests/data/servers/tiny_server.py)
started for a pipeline run, health-checked, listed, proxied by name, reached by jobs through
``MLPROV_SERVER_<NAME>_URL``, stopped on run end / idle / shutdown, re-attached or marked lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from controller.main import create_app
from controller.services.servers import ServerManager
from controller.settings import Settings
from tests.job_cleanup import kill_jobs

ADMIN = "admin-token-for-server-tests"
H = {"Authorization": f"Bearer {ADMIN}"}
PY = sys.executable
TINY = str(Path(__file__).parents[2] / "data" / "servers" / "tiny_server.py")

SERVICES: list[dict[str, Any]] = [
    {"name": "tiny", "kind": "server", "command": [PY, TINY], "port": 8000, "health_path": "/healthz",
     "locks": ["model-gpu"]},
    {"name": "sick", "kind": "server", "command": [PY, TINY], "port": 8000, "health_path": "/healthz",
     "env": {"TINY_FAIL_HEALTH": "1"}, "timeout": 1.5},
    {"name": "uses-tiny", "command": [
        PY, "-c", "import os; open('outputs/url.txt','w').write(os.environ.get('MLPROV_SERVER_TINY_URL', 'none'))"]},
    {"name": "wants-gpu-lock", "command": [PY, "-c", "print('got it')"], "locks": ["model-gpu"]},
]  # fmt: skip


def _run(task_id: str, run_id: str = "r1", try_number: int = 1) -> dict[str, Any]:
    return {"dag_id": "d", "run_id": run_id, "task_id": task_id, "try_number": try_number}


def _kill_all(home: Path) -> None:
    kill_jobs(home)


@pytest.fixture(autouse=True)
def _no_server_outlives_the_test(mlprov_home: Path) -> Iterator[None]:
    yield
    _kill_all(mlprov_home)


def _settings() -> Settings:
    return Settings(admin_token=SecretStr(ADMIN), max_concurrent_jobs=2)


@contextlib.asynccontextmanager
async def _app() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(_settings())
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t", headers=H) as c,
    ):
        yield application, c


@pytest.fixture
async def app_client() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with _app() as (application, c):
        for spec in SERVICES:
            assert (await c.post("/api/v1/services", json=spec)).status_code == 201, spec
        yield application, c


def _servers(application: FastAPI) -> ServerManager:
    manager = application.state.mlprov.dispatcher.servers
    assert isinstance(manager, ServerManager)
    return manager


async def _until(client: httpx.AsyncClient, task_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        if body["state"] in states:
            return body
        assert loop.time() < deadline, f"task stayed {body['state']}: {body}"
        await asyncio.sleep(0.05)


async def _server_state(
    client: httpx.AsyncClient, *states: str, run_id: str = "r1", timeout: float = 15
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        listed = (await client.get(f"/api/v1/runs/d/{run_id}/servers")).json()
        if listed and listed[0]["state"] in states:
            return dict(listed[0])
        assert loop.time() < deadline, f"server stayed {listed}"
        await asyncio.sleep(0.1)


async def _start_tiny(client: httpx.AsyncClient, run_id: str = "r1", task: str = "serve") -> dict[str, Any]:
    r = await client.post("/api/v1/tasks", json={"service": "tiny", "run": _run(task, run_id)})
    assert r.status_code == 202, r.text
    return await _until(client, r.json()["id"], "succeeded", "failed")


async def _direct_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=3) as direct:
        return await direct.get(url)


async def test_a_server_starts_is_routed_to_by_name_and_stops_when_the_run_ends(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = app_client
    task = await _start_tiny(client)
    assert (task["state"], task["exit_code"]) == ("succeeded", 0), task
    server = task["details"]["server"]
    assert server["name"] == "tiny"
    assert server["url"].startswith("http://127.0.0.1:")
    assert server["url"] != "http://127.0.0.1:8000"  # the controller allocated the port
    assert (await _direct_get(server["url"] + "/healthz")).json() == {"ok": True}

    listed = (await client.get("/api/v1/runs/d/r1/servers")).json()
    assert [(s["name"], s["state"], s["url"]) for s in listed] == [("tiny", "healthy", server["url"])]
    assert listed[0]["proxy_path"] == "/api/v1/runs/d/r1/servers/tiny/"

    # proxied by name: path, query and body pass; the controller's token does not
    got = await client.get("/api/v1/runs/d/r1/servers/tiny/hello/there", params={"x": "1"})
    assert got.status_code == 200
    assert got.json() == {"path": "/hello/there?x=1", "auth": None}
    posted = await client.post("/api/v1/runs/d/r1/servers/tiny/echo", content=b'{"q": 42}')
    assert (posted.status_code, posted.json()) == (201, {"path": "/echo", "echo": '{"q": 42}'})
    assert (await client.get("/api/v1/runs/d/r1/servers/ghost/x")).status_code == 404
    assert (await client.get("/api/v1/runs/d/nope/servers/tiny/x")).status_code == 404

    # a second "ensure" in the run finds it up: same URL, no new process
    again = await _start_tiny(client, task="serve-again")
    assert again["state"] == "succeeded"
    assert again["details"]["server"]["url"] == server["url"]

    # job tasks of the run get its URL
    job = (await client.post("/api/v1/tasks", json={"service": "uses-tiny", "run": _run("use")})).json()
    assert (await _until(client, job["id"], "succeeded", "failed"))["state"] == "succeeded"
    logs = (await client.get(f"/api/v1/tasks/{task['id']}/logs")).json()["records"]
    assert any(r["component"] == "server" and r["message"].startswith("tiny server on port") for r in logs), logs
    other_run = (await client.post("/api/v1/tasks", json={"service": "uses-tiny", "run": _run("use", "r9")})).json()
    await _until(client, other_run["id"], "succeeded")

    # the server holds its named lock while it runs: a job needing it waits until the run ends
    waiter = (await client.post("/api/v1/tasks", json={"service": "wants-gpu-lock"})).json()
    await _until(client, waiter["id"], "waiting_for_lock")

    ended = await client.post("/api/v1/runs/d/r1/end", json={"state": "succeeded"})
    assert ended.status_code == 200, ended.text
    body = ended.json()
    assert body["state"] == "succeeded"
    assert [(s["state"], s["reason"]) for s in body["servers"]] == [("stopped", "the pipeline run ended (succeeded)")]
    with pytest.raises(httpx.ConnectError):
        await _direct_get(server["url"] + "/healthz")
    assert (await client.get("/api/v1/runs/d/r1/servers/tiny/hello")).status_code == 503
    assert (await _until(client, waiter["id"], "succeeded"))["state"] == "succeeded"
    assert (await client.get("/api/v1/runs/d/r1")).json()["state"] == "succeeded"
    again_end = await client.post("/api/v1/runs/d/r1/end", json={"state": "failed"})
    assert again_end.json()["state"] == "succeeded"  # idempotent: the first state stays

    # a late server task for the ended run fails with the reason
    late = (await client.post("/api/v1/tasks", json={"service": "tiny", "run": _run("late")})).json()
    assert "has ended" in (await _until(client, late["id"], "failed"))["reason"]


async def test_job_url_env_and_server_events(app_client: tuple[FastAPI, httpx.AsyncClient], mlprov_home: Path) -> None:
    _, client = app_client
    task = await _start_tiny(client, run_id="r2")
    job = (await client.post("/api/v1/tasks", json={"service": "uses-tiny", "run": _run("use", "r2")})).json()
    await _until(client, job["id"], "succeeded")
    url_file = mlprov_home / "work" / job["id"] / "outputs" / "url.txt"
    assert url_file.read_text() == task["details"]["server"]["url"]
    events = [r.get("event") for r in (await client.get(f"/api/v1/tasks/{task['id']}/logs")).json()["records"]]
    assert "server_healthy" in events


async def test_a_server_killed_behind_the_controllers_back_is_marked_lost(
    app_client: tuple[FastAPI, httpx.AsyncClient], mlprov_home: Path
) -> None:
    _, client = app_client
    task = await _start_tiny(client)
    assert task["state"] == "succeeded"
    _kill_all(mlprov_home)  # launcher and server, SIGKILL: no exit record
    lost = await _server_state(client, "lost")
    assert "no exit record" in lost["reason"]
    logs = (await client.get(f"/api/v1/tasks/{task['id']}/logs")).json()["records"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not any(r.get("event") == "server_lost" for r in logs) and loop.time() < deadline:
        await asyncio.sleep(0.1)
        logs = (await client.get(f"/api/v1/tasks/{task['id']}/logs")).json()["records"]
    assert any(r.get("event") == "server_lost" for r in logs)


async def test_a_failing_health_check_after_start_marks_the_server_failed(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    application, client = app_client
    manager = _servers(application)
    manager.health_interval, manager.health_failures = 0.05, 2
    task = await _start_tiny(client)
    url = task["details"]["server"]["url"]
    assert (await client.get("/api/v1/runs/d/r1/servers/tiny/sick")).status_code == 200  # /healthz now 500
    failed = await _server_state(client, "failed")
    assert failed["reason"] == "health check failed 2 times in a row (last: HTTP 500)"
    with pytest.raises(httpx.ConnectError):
        await _direct_get(url + "/healthz")  # stopped


async def test_a_server_that_never_becomes_healthy_fails_its_task(
    app_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = app_client
    r = await client.post("/api/v1/tasks", json={"service": "sick", "run": _run("serve")})
    task = await _until(client, r.json()["id"], "failed")
    assert "no 2xx answer from GET http://127.0.0.1:" in task["reason"]
    assert "within 1.5 s (last: HTTP 500)" in task["reason"]
    listed = (await client.get("/api/v1/runs/d/r1/servers")).json()
    assert [s["state"] for s in listed] == ["failed"]


async def test_an_idle_run_has_its_servers_stopped(app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    application, client = app_client
    _servers(application).idle_timeout = 1.0
    task = await _start_tiny(client)
    stopped = await _server_state(client, "stopped")
    assert stopped["reason"] == "the run had no activity for 1 s"
    with pytest.raises(httpx.ConnectError):
        await _direct_get(task["details"]["server"]["url"] + "/healthz")


async def test_bad_server_submissions(app_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = app_client
    r = await client.post("/api/v1/tasks", json={"service": "tiny"})
    assert r.status_code == 400
    assert "give the task a `run`" in r.json()["detail"]
    r = await client.post("/api/v1/tasks", json={"service": "tiny", "run": _run("x"), "code": {"repo": "."}})
    assert r.status_code == 400
    assert (await client.post("/api/v1/runs/d/ghost/end", json={"state": "succeeded"})).status_code == 404
    assert (await client.post("/api/v1/runs/d/ghost/end", json={"state": "odd"})).status_code == 422


async def test_servers_stop_at_shutdown_or_are_reattached_after_a_restart(mlprov_home: Path) -> None:
    async with _app() as (application, client):
        await client.post("/api/v1/services", json={**SERVICES[0], "locks": []})  # both runs' servers at once
        first = await _start_tiny(client, run_id="a")
        second = await _start_tiny(client, run_id="b")
        assert first["state"] == second["state"] == "succeeded"
        _servers(application).stop_on_shutdown = False  # leave them running: the next controller re-attaches
    assert (await _direct_get(first["details"]["server"]["url"] + "/healthz")).status_code == 200

    pids = json.loads(next((mlprov_home / "work" / second["id"]).glob(".job-*/pids.json")).read_text())
    # b's server dies while no controller runs: the launcher first, so nothing records the job's end
    # (killed the other way round, the launcher may see its job go and exit before its own kill)
    for key in ("launcher", "job"):
        with contextlib.suppress(ProcessLookupError):  # the job's group may have gone with the launcher
            os.killpg(int(pids[key]), signal.SIGKILL)

    async with _app() as (_, client):
        assert (await _server_state(client, "healthy", run_id="a"))["url"] == first["details"]["server"]["url"]
        assert (await client.get("/api/v1/runs/d/a/servers/tiny/x")).json()["path"] == "/x"
        assert (await _server_state(client, "lost", run_id="b"))["state"] == "lost"
    # a default shutdown stops the servers
    with pytest.raises(httpx.ConnectError):
        await _direct_get(first["details"]["server"]["url"] + "/healthz")
