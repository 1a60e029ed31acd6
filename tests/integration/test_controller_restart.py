"""A controller restart loses nothing: jobs that ended while it was down, jobs still running, vanished
jobs and waiting tasks are all recorded correctly by the next controller (same DB, same home)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from controller.main import create_app
from controller.settings import Settings
from controller.store.models import Job
from tests.job_cleanup import kill_jobs

pytestmark = pytest.mark.integration

ADMIN = "admin-token-for-restart-tests"
WAIT_FOR = (
    "import json, os, sys, time\n"
    "p = json.load(open('params.json'))\n"
    "print('waiting for', p['go'], flush=True)\n"
    "while not os.path.exists(p['go']): time.sleep(0.02)\n"
    "print('go seen', flush=True)\n"
    "open('outputs/out.txt', 'w').write(p['text'])\n"
    "sys.exit(p.get('code', 0))\n"
)


@pytest.fixture(autouse=True)
def _no_job_outlives_the_test(mlprov_home: Path) -> Iterator[None]:
    """Even when an assertion fails half-way, kill every job this test started (they wait for files)."""
    yield
    kill_jobs(mlprov_home)


@asynccontextmanager
async def controller() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(Settings(admin_token=SecretStr(ADMIN), max_concurrent_jobs=4))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as c,
    ):
        yield app, c


async def _until(client: httpx.AsyncClient, task_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        if body["state"] in states:
            return body
        assert loop.time() < deadline, body
        await asyncio.sleep(0.05)


async def _submit(client: httpx.AsyncClient, service: str, **params: Any) -> str:
    r = await client.post("/api/v1/tasks", json={"service": service, "params": params})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


async def test_jobs_across_a_restart_end_correctly_recorded(mlprov_home: Path, tmp_path: Path) -> None:
    go_a, go_d = tmp_path / "go-a", tmp_path / "go-d"
    async with controller() as (app, c):
        for name, locks in (("locked", ["L"]), ("free", [])):
            spec = {"name": name, "command": [sys.executable, "-c", WAIT_FOR], "locks": locks}
            assert (await c.post("/api/v1/services", json=spec)).status_code == 201
        a = await _submit(c, "locked", go=str(go_a), text="from a", code=0)
        b = await _submit(c, "free", go=str(tmp_path / "never"), text="b")
        d = await _submit(c, "free", go=str(go_d), text="from d", code=3)
        waiting = await _submit(c, "locked", go=str(go_a), text="from c")
        for tid in (a, b, d):
            await _until(c, tid, "running")
        await _until(c, waiting, "waiting_for_lock")
        with app.state.mlprov.session_factory() as s:
            b_ref = s.scalar(select(Job.ref).where(Job.task_id == b))
    # --- no controller ---------------------------------------------------------------------------
    state_dir = Path(b_ref.split(":", 3)[3])
    b_pids = json.loads((state_dir / "pids.json").read_text())
    # b vanishes without an exit record: the launcher first, or it may record its job's death
    os.killpg(int(b_pids["launcher"]), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):  # the job's group may have gone with the launcher
        os.killpg(int(b_pids["job"]), signal.SIGKILL)
    go_a.touch()  # a ends while nobody watches
    a_exit = mlprov_home / "work" / a / ".job-1" / "exit.json"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (not a_exit.exists() or not _gone(int(b_pids["launcher"]))) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    # --- the next controller ---------------------------------------------------------------------
    async with controller() as (_, c):
        task_a = await _until(c, a, "succeeded", "failed")
        assert (task_a["state"], task_a["exit_code"]) == ("succeeded", 0)
        assert task_a["outputs"][0]["digest"] == "sha256:" + hashlib.sha256(b"from a").hexdigest()
        task_b = await _until(c, b, "lost")
        assert "no exit record" in task_b["reason"]
        assert (await c.get(f"/api/v1/tasks/{d}")).json()["state"] == "running"  # re-attached, still running
        go_d.touch()
        task_d = await _until(c, d, "succeeded", "failed")
        assert (task_d["state"], task_d["exit_code"]) == ("failed", 3)
        deadline = loop.time() + 10
        while True:  # d's output before and after the restart, each line once (the index lags a little)
            records = (await c.get(f"/api/v1/tasks/{d}/logs")).json()["records"]
            lines = [r["message"] for r in records if r["component"] == "job"]
            if "go seen" in lines or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert lines == [f"waiting for {go_d}", "go seen"]
        task_c = await _until(c, waiting, "succeeded")  # the lock a held across the restart was handed on
        assert task_c["outputs"][0]["digest"] == "sha256:" + hashlib.sha256(b"from c").hexdigest()
        assert datetime.fromisoformat(task_c["started_at"]) >= datetime.fromisoformat(task_a["finished_at"])
