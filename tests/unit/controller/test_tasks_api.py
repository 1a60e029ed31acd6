"""The task and run API through the real app (create_app, temp MLPROV_HOME, local runtime, real jobs)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from controller.main import create_app
from controller.settings import Settings
from tests.job_cleanup import kill_jobs

ADMIN = "admin-token-for-task-api-tests"
H = {"Authorization": f"Bearer {ADMIN}"}
PY = sys.executable

SERVICES = [
    {
        "name": "produce",
        "command": [
            PY, "-c",
            "import json,sys; p=json.load(open('params.json')); print('hello', p['who']); "
            "print('warn', file=sys.stderr); open('outputs/result.txt','w').write('r:'+p['who'])",
        ],
        "params": {"who": "default"},
        "locks": ["db"],
    },
    {"name": "sleeper", "command": [PY, "-c", "import time; print('zz', flush=True); time.sleep(30)"]},
    {"name": "broken", "command": ["definitely-not-a-program-xyz"]},
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_job_outlives_the_test(mlprov_home: Path) -> Iterator[None]:
    """Even when an assertion fails half-way, kill every job this test started (they wait for files)."""
    yield
    kill_jobs(mlprov_home)


@pytest.fixture
async def app(mlprov_home: Path) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(admin_token=SecretStr(ADMIN), max_concurrent_jobs=2))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=H) as c:
        for spec in SERVICES:
            assert (await c.post("/api/v1/services", json=spec)).status_code == 201
        yield c


async def _until(client: httpx.AsyncClient, task_id: str, *states: str, timeout: float = 15) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        if body["state"] in states:
            return body
        assert loop.time() < deadline, f"task stayed {body['state']}: {body}"
        await asyncio.sleep(0.05)


RUN = {"dag_id": "demo", "run_id": "manual__1", "task_id": "produce", "try_number": 1}


async def test_submit_runs_the_job_and_records_outputs(client: httpx.AsyncClient, mlprov_home: Path) -> None:
    r = await client.post("/api/v1/tasks", json={"service": "produce", "params": {"who": "ann"}, "run": RUN})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["state"] in ("queued", "running")
    assert created["token"].startswith("mlpt_")
    task = await _until(client, created["id"], "succeeded", "failed")
    assert (task["state"], task["exit_code"]) == ("succeeded", 0), task
    assert task["outputs"] == [
        {
            "name": "result.txt",
            "digest": "sha256:" + hashlib.sha256(b"r:ann").hexdigest(),
            "size": 5,
            "kind": "dataset",
            "manifest_id": None,
        }
    ]
    assert task["run"] == RUN
    assert task["started_at"]
    assert task["finished_at"]
    assert "token" not in task
    assert json.loads((mlprov_home / "work" / created["id"] / "params.json").read_text()) == {"who": "ann"}

    # the task token reads its own task
    own = await client.get(f"/api/v1/tasks/{created['id']}", headers={"Authorization": f"Bearer {created['token']}"})
    assert own.status_code in (200, 401)  # 401 once the task ended: its tokens are revoked

    listed = (await client.get("/api/v1/tasks", params={"run_id": "manual__1"})).json()
    assert [t["id"] for t in listed] == [created["id"]]
    run = (await client.get("/api/v1/runs/demo/manual__1")).json()
    assert run["state"] == "succeeded"
    assert [t["id"] for t in run["tasks"]] == [created["id"]]

    logs = (await client.get(f"/api/v1/tasks/{created['id']}/logs")).json()["records"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not any(r.get("event") == "finished" for r in logs) and loop.time() < deadline:
        await asyncio.sleep(0.1)
        logs = (await client.get(f"/api/v1/tasks/{created['id']}/logs")).json()["records"]
    lines = [(r["stream"], r["message"]) for r in logs if r["component"] == "job"]
    assert ("stdout", "hello ann") in lines
    assert ("stderr", "warn") in lines
    assert all(isinstance(r["timestamp"], float) for r in logs)
    events = [r["event"] for r in logs if r.get("event")]
    assert events[0] == "submitted"
    assert "started" in events
    assert events[-1] == "finished"


async def test_the_same_run_identity_is_one_task_even_concurrently(client: httpx.AsyncClient) -> None:
    body = {"service": "produce", "params": {"who": "x"}, "run": {**RUN, "run_id": "r2"}}
    answers = await asyncio.gather(*(client.post("/api/v1/tasks", json=body) for _ in range(5)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    await _until(client, answers[0].json()["id"], "succeeded")


async def test_cancel_is_idempotent_and_follow_streams_ndjson_until_the_end(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/api/v1/tasks", json={"service": "sleeper"})).json()["id"]
    await _until(client, tid, "running")
    follow = asyncio.create_task(client.get(f"/api/v1/tasks/{tid}/logs", params={"follow": "true"}, timeout=30))
    await asyncio.sleep(0.5)
    first = await client.delete(f"/api/v1/tasks/{tid}")
    assert first.status_code == 202
    task = await _until(client, tid, "cancelled")
    again = await client.delete(f"/api/v1/tasks/{tid}")
    assert again.status_code == 202
    assert again.json()["state"] == "cancelled"
    assert task["finished_at"] is not None
    streamed = await follow
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in streamed.text.splitlines()]
    assert ("job", "zz") in [(r["component"], r["message"]) for r in records]
    assert records[-1]["event"] == "cancelled"


async def test_a_command_that_cannot_start_is_a_failed_task_not_a_500(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tasks", json={"service": "broken"})
    assert r.status_code == 202
    task = await _until(client, r.json()["id"], "failed")
    assert "definitely-not-a-program-xyz" in task["reason"]


BAD_SUBMISSIONS: list[tuple[dict[str, Any], int, str]] = [
    ({"service": "nope"}, 404, "register it"),
    ({"service": "produce", "inputs": ["ghost-data"]}, 400, "no artifact named 'ghost-data'"),
    ({"service": "produce", "inputs": ["sha256:" + "0" * 64]}, 400, "no artifact with this digest"),
    ({"service": "produce", "inputs": ["../../etc/passwd"]}, 400, "no '/', no '..'"),
    ({"service": "produce", "inputs": ["sha256:xyz"]}, 400, "64 lowercase hex"),
    ({"service": "produce", "resources": {"gpus": 2}}, 400, "this controller has 0"),
    ({"service": "../x"}, 400, "not allowed"),
    ({"params": {}}, 422, "service"),
    ({"service": "produce", "timeout": -1}, 422, "timeout"),
    ({"service": "produce", "surprise": 1}, 422, "surprise"),
]


async def test_bad_submissions_say_what_to_fix_and_record_nothing(client: httpx.AsyncClient) -> None:
    for body, status, needle in BAD_SUBMISSIONS:
        r = await client.post("/api/v1/tasks", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in r.json()["detail"], (body, r.text)
    assert (await client.get("/api/v1/tasks")).json() == []


async def test_unknown_task_and_run_are_404(client: httpx.AsyncClient) -> None:
    for url in ("/api/v1/tasks/nope", "/api/v1/tasks/nope/logs", "/api/v1/runs/d/r"):
        r = await client.get(url)
        assert r.status_code == 404
        assert r.json()["detail"]
    assert (await client.delete("/api/v1/tasks/nope")).status_code == 404


@pytest.mark.parametrize("url", ["sqlite://", "file"])
async def test_the_status_reader_reads_on_the_loop_or_the_thread_pool(url: str, tmp_path: Path) -> None:
    from controller.errors import TaskNotFoundError
    from controller.services.tasks import TaskStatusReader
    from controller.store.db import make_engine, make_session_factory, session_scope
    from controller.store.models import Base, Task

    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}" if url == "file" else url)  # memory: no loop engine
    Base.metadata.create_all(engine)
    with session_scope(make_session_factory(engine)) as session:
        session.add(Task(id="t-1", service="svc", state="running"))
    reader = TaskStatusReader(engine)
    assert (reader._loop_engine is None) == (url == "sqlite://")
    body = json.loads(await reader.get_json("t-1"))
    assert (body["id"], body["state"], body["service"]) == ("t-1", "running", "svc")
    with pytest.raises(TaskNotFoundError):
        await reader.get_json("nope")
    reader.close()
    engine.dispose()


async def test_a_long_poll_answers_when_the_state_changes_and_else_after_its_wait(client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    tid = (await client.post("/api/v1/tasks", json={"service": "sleeper"})).json()["id"]
    running = await _until(client, tid, "running")
    asked = loop.time()
    unchanged = await client.get(f"/api/v1/tasks/{tid}", params={"wait": 0.5, "state": "running"})
    assert unchanged.status_code == 200
    assert unchanged.json()["state"] == "running"
    assert loop.time() - asked >= 0.45  # nothing changed: it waited

    asked = loop.time()
    stale = await client.get(f"/api/v1/tasks/{tid}", params={"wait": 10, "state": "queued"})
    assert stale.json()["state"] == "running"  # the caller's state is already out of date: at once
    assert loop.time() - asked < 5

    waiting = asyncio.create_task(client.get(f"/api/v1/tasks/{tid}", params={"wait": 20}, timeout=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    cancelled_at = loop.time()
    await client.delete(f"/api/v1/tasks/{tid}")
    ended = await waiting
    assert ended.json()["state"] == "cancelled"
    assert loop.time() - cancelled_at < 15  # the change ended the wait, not its 20 s
    assert running["id"] == ended.json()["id"]

    asked = loop.time()
    terminal = await client.get(f"/api/v1/tasks/{tid}", params={"wait": 10})
    assert terminal.json()["state"] == "cancelled"  # nothing follows a terminal state: no waiting
    assert loop.time() - asked < 5
    assert (await client.get("/api/v1/tasks/nope", params={"wait": 1})).status_code == 404
    assert (await client.get(f"/api/v1/tasks/{tid}", params={"wait": 61})).status_code == 422
