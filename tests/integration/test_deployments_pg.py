"""Deployments on a real PostgreSQL: concurrent deployments of one pipeline get one unbroken chain, a
repeated record is stored once, and tasks, lineage and run provenance name the deployment (SQL joins)."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select

from controller.api.routes.deployments import get_recorder
from controller.main import create_app
from controller.services.deployments import DeploymentRequest
from controller.services.lineage import lineage, run_provenance
from controller.settings import Settings
from controller.state import AppState
from controller.store.db import session_scope
from controller.store.models import Artifact, Deployment, LineageEdge, Manifest, Task
from provenance.errors import ManifestNotFoundError
from provenance.storage.base import StoredManifest
from provenance.verify import verify_chain

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ADMIN = "admin-token-for-deployment-pg-tests"
H = {"Authorization": f"Bearer {ADMIN}"}


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def record(job: str, commit: str = "c" * 40) -> dict[str, Any]:
    return {
        "pipeline": "mlprov",
        "environment": "prod",
        "commit": commit,
        "files": [{"path": "dags/demo.py", "digest": sha(job), "size": 1, "role": "dag", "dag_ids": ["demo"]}],
        "ci": {"provider": "gitlab", "pipeline_id": "7", "job_id": job},
    }


@pytest.fixture
async def app(mlprov_home: Path, postgres_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(admin_token=SecretStr(ADMIN), database_url=postgres_url, services_file=None))
    async with application.router.lifespan_context(application):
        yield application


def state_of(app: FastAPI) -> AppState:
    state = app.state.mlprov
    assert isinstance(state, AppState)
    return state


class StoreSource:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def get(self, manifest_id: str) -> StoredManifest:
        with self.state.session_factory() as session:
            row = session.get(Manifest, manifest_id)
            if row is None:
                raise ManifestNotFoundError(manifest_id)
            return StoredManifest(id=row.id, manifest=row.manifest)


def _concurrently(n: int, work: Any) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


async def test_concurrent_deployments_form_one_chain(app: FastAPI) -> None:
    state = state_of(app)
    recorder = get_recorder(state)
    results = _concurrently(6, lambda i: recorder.record(DeploymentRequest.model_validate(record(str(i)))))
    assert all(isinstance(r, tuple) and r[0] for r in results), [r for r in results if not isinstance(r, tuple)]
    answers = sorted((r[1] for r in results), key=lambda a: a["sequence"])
    assert [a["sequence"] for a in answers] == [1, 2, 3, 4, 5, 6]
    assert answers[0]["previous_id"] is None
    for before, after in itertools.pairwise(answers):
        assert after["previous_id"] == before["id"]
        assert after["previous_manifest_id"] == before["manifest_id"]
    assert state.trust is not None
    report = verify_chain(answers[-1]["manifest_id"], StoreSource(state), state.trust)
    assert report.ok, report.to_text()
    assert [n.id for n in report.nodes] == [a["manifest_id"] for a in reversed(answers)]
    with state.session_factory() as session:
        linked = session.scalar(select(func.count()).select_from(LineageEdge).where(LineageEdge.role == "linked"))
        assert linked == 5


async def test_a_repeated_record_is_stored_once(app: FastAPI) -> None:
    state = state_of(app)
    recorder = get_recorder(state)
    results = _concurrently(5, lambda i: recorder.record(DeploymentRequest.model_validate(record("same"))))
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(r[0] for r in results) == [False, False, False, False, True]
    assert all(r[1] == results[0][1] for r in results)  # the same body, whether created or replayed
    with state.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Deployment)) == 1
        assert session.scalar(select(func.count()).select_from(Manifest)) == 1


async def test_tasks_lineage_and_run_provenance_name_the_deployment(app: FastAPI) -> None:
    state = state_of(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=H) as client:
        first = (await client.post("/api/v1/deployments", json=record("1", "a" * 40))).json()
        second = (await client.post("/api/v1/deployments", json=record("2", "b" * 40))).json()
        listed = (await client.get("/api/v1/deployments", params={"dag_id": "demo", "limit": 1})).json()
        assert [d["id"] for d in listed["deployments"]] == [second["id"]]
        assert listed["next_cursor"] is not None
        rest = await client.get("/api/v1/deployments", params={"dag_id": "demo", "cursor": listed["next_cursor"]})
        assert [d["id"] for d in rest.json()["deployments"]] == [first["id"]]
    out = sha("output")
    with session_scope(state.session_factory) as session:
        session.add(Artifact(digest=out, kind="dataset", name="out.csv", size=1))
        session.add(
            Task(id="t-old", service="s", state="succeeded", dag_id="demo", run_id="r1", airflow_task_id="produce",
                 try_number=1, deployment_id=first["id"])
        )  # fmt: skip
        session.flush()
        session.add(LineageEdge(src_type="task", src_id="t-old", dst_type="artifact", dst_id=out, role="produced"))
    with state.session_factory() as session:
        graph = lineage(session, out)
        task = next(n for n in graph.nodes if n.type == "task")
        assert task.deployment is not None
        assert (task.deployment.id, task.deployment.commit) == (first["id"], "a" * 40)
        assert task.deployment.dag_file_digest == sha("1")
        provenance = run_provenance(session, "demo", "r1")
        assert [d.id for d in provenance.deployments] == [first["id"]]
        assert provenance.tasks[0].deployment is not None
        assert provenance.tasks[0].deployment.id == first["id"]
