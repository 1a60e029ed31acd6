"""Tasks sharing a named lock never overlap, measured from the timestamps the job processes write.

Real app, real local runtime (process groups through the launcher), 4 run slots: only the lock can
serialise the jobs, and a job on another lock may run beside them.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from controller.main import create_app
from controller.settings import Settings

pytestmark = pytest.mark.integration

ADMIN = "admin-token-for-mutual-exclusion"
JOB = (
    "import json, time, os\n"
    "p = json.load(open('params.json'))\n"
    "start = time.time()\n"
    "time.sleep(p['sleep'])\n"
    "end = time.time()\n"
    "with open(p['log'], 'a') as f: f.write(f\"{p['name']} {start!r} {end!r}\\n\")\n"
)


@pytest.fixture
async def client(mlprov_home: Path) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(Settings(admin_token=SecretStr(ADMIN), max_concurrent_jobs=4))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as c,
    ):
        for name, locks in (
            ("shared", ["the-lock"]),
            ("shared-too", ["other", "the-lock"]),
            ("elsewhere", ["other-2"]),
        ):
            spec = {"name": name, "command": [sys.executable, "-c", JOB], "locks": locks}
            assert (await c.post("/api/v1/services", json=spec)).status_code == 201
        yield c


async def _wait_all(client: httpx.AsyncClient, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        tasks = [(await client.get(f"/api/v1/tasks/{i}")).json() for i in ids]
        if all(t["state"] in ("succeeded", "failed", "cancelled", "lost") for t in tasks):
            return tasks
        assert loop.time() < deadline, [t["state"] for t in tasks]
        await asyncio.sleep(0.05)


def _intervals(log: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in log.read_text().splitlines():
        name, start, end = line.split()
        out[name] = (float(start), float(end))
    return out


async def test_tasks_sharing_a_lock_never_overlap(client: httpx.AsyncClient, tmp_path: Path) -> None:
    log = tmp_path / "intervals.log"
    ids, names = [], {}
    for i in range(8):
        service = "shared-too" if i % 3 == 2 else "shared"  # several lock sets that all contain the-lock
        body = {"service": service, "params": {"name": f"s{i}", "sleep": 0.15, "log": str(log)}}
        r = await client.post("/api/v1/tasks", json=body)
        assert r.status_code == 202
        ids.append(r.json()["id"])
        names[r.json()["id"]] = f"s{i}"
    free = await client.post(
        "/api/v1/tasks", json={"service": "elsewhere", "params": {"name": "free", "sleep": 0.6, "log": str(log)}}
    )
    tasks = await _wait_all(client, [*ids, free.json()["id"]])
    assert [t["state"] for t in tasks] == ["succeeded"] * 9
    intervals = _intervals(log)
    shared = sorted(intervals[n] for n in names.values())
    assert len(shared) == 8
    overlaps = [(a, b) for a, b in itertools.pairwise(shared) if b[0] < a[1]]
    assert overlaps == []
    # FIFO: they ran in submission order.
    order = sorted(names.values(), key=lambda n: intervals[n][0])
    assert order == [f"s{i}" for i in range(8)]
    # The task on another lock was not serialised behind them: it overlapped at least one of them.
    f0, f1 = intervals["free"]
    assert any(s < f1 and f0 < e for s, e in shared)
