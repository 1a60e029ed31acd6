"""``/api/v1/deployments`` through the real app: signed, logged, chained records; idempotency; validation.

The app runs with its lifespan on a fresh ``$MLPROV_HOME`` (development: the controller creates its own
signing identity and trusts its CA). Manifests are checked with ``provenance``'s own verifier and the
transparency log's own entries, not with values copied from the implementation.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select

from controller.main import create_app
from controller.settings import Settings
from controller.state import AppState
from controller.store.models import Deployment, DeploymentDag, Manifest
from provenance.errors import ManifestNotFoundError
from provenance.keys import TrustStore
from provenance.manifest import find_assertion, manifest_hash
from provenance.storage.base import StoredManifest
from provenance.tlog.entries import manifest_entry
from provenance.verify import verify_chain

ADMIN = "admin-token-for-deployment-tests"
READ = "read-token-for-deployment-tests"
H = {"Authorization": f"Bearer {ADMIN}"}
R = {"Authorization": f"Bearer {READ}"}


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def record(commit: str = "a" * 40, job: str = "456", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pipeline": "mlprov",
        "environment": "local",
        "commit": commit,
        "ref": "main",
        "files": [
            {"path": "dags/demo_lifecycle.py", "digest": sha("dag" + commit), "size": 1234, "role": "dag",
             "dag_ids": ["demo_lifecycle"]},
            {"path": "plugins/mlprov_plugin/operators.py", "digest": sha("plugin"), "size": 99, "role": "plugin"},
            {"path": "services.yaml", "digest": sha("services"), "size": 10, "role": "services"},
        ],
        "services": ["ingest", "finetune"],
        "ci": {"provider": "gitlab", "pipeline_id": "123", "job_id": job, "project": "group/repo",
               "pipeline_url": "https://gitlab.example/group/repo/-/pipelines/123", "triggered_by": "alice"},
        "target": {"airflow": "http://airflow:8080", "dags_destination": "/opt/airflow/dags"},
    }  # fmt: skip
    body.update(over)
    return body


@pytest.fixture
async def app(mlprov_home: Path) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(admin_token=SecretStr(ADMIN), read_tokens=[SecretStr(READ)], services_file=None))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=H) as c:
        yield c


def state_of(app: FastAPI) -> AppState:
    state = app.state.mlprov
    assert isinstance(state, AppState)
    return state


class ApiSource:
    """The verifier's ManifestSource over ``GET /api/v1/manifests/{id}`` (what any client can read)."""

    def __init__(self, manifests: dict[str, dict[str, Any]]) -> None:
        self.manifests = manifests

    def get(self, manifest_id: str) -> StoredManifest:
        if manifest_id not in self.manifests:
            raise ManifestNotFoundError(manifest_id)
        return StoredManifest(id=manifest_id, manifest=self.manifests[manifest_id])


async def fetch_manifests(client: httpx.AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for mid in ids:
        r = await client.get(f"/api/v1/manifests/{mid}")
        assert r.status_code == 200, r.text
        found[mid] = r.json()["manifest"]
    return found


async def test_deployments_are_signed_logged_and_chained(app: FastAPI, client: httpx.AsyncClient) -> None:
    first = await client.post("/api/v1/deployments", json=record("a" * 40, job="1"))
    assert first.status_code == 201, first.text
    second = await client.post("/api/v1/deployments", json=record("b" * 40, job="2"))
    assert second.status_code == 201, second.text
    one, two = first.json(), second.json()
    assert (one["sequence"], two["sequence"]) == (1, 2)
    assert (one["previous_id"], one["previous_manifest_id"]) == (None, None)
    assert (two["previous_id"], two["previous_manifest_id"]) == (one["id"], one["manifest_id"])
    assert two["dag_ids"] == ["demo_lifecycle"]
    assert two["ci"]["triggered_by"] == "alice"
    assert two["commit"] == "b" * 40
    assert [f["path"] for f in two["files"]] == sorted(f["path"] for f in record()["files"])

    manifest = (await client.get(f"/api/v1/deployments/{two['id']}/manifest")).json()
    assert manifest["instance_id"] == two["manifest_id"]
    assert two["manifest_hash"] == "sha256:" + manifest_hash(manifest)
    # Ingredients: every deployed file with its digest.
    ingredients = {i["title"]: f"{i['data']['alg']}:{i['data']['hash']}" for i in manifest["claim"]["ingredients"]}
    assert ingredients == {f["path"]: f["digest"] for f in record("b" * 40)["files"]}
    facts = find_assertion(manifest, "mlprov.deployment")
    assert isinstance(facts, dict)
    assert facts["commit"] == "b" * 40
    assert facts["ci"]["job_id"] == "2"
    assert facts["services"] == ["finetune", "ingest"]
    assert facts["target"]["dags_destination"] == "/opt/airflow/dags"
    assert facts["previous"] == {
        "id": one["id"],
        "manifest_id": one["manifest_id"],
        "manifest_hash": one["manifest_hash"].removeprefix("sha256:"),
    }
    # The cross-reference carries the previous manifest's hash, so verification walks the history.
    previous = (await client.get(f"/api/v1/deployments/{one['id']}/manifest")).json()
    assert manifest["cross_references"] == [
        {"manifest_url": one["manifest_id"], "manifest_hash": manifest_hash(previous), "media_type": "application/json"}
    ]
    state = state_of(app)
    assert state.trust is not None
    report = verify_chain(
        two["manifest_id"],
        ApiSource(await fetch_manifests(client, [one["manifest_id"], two["manifest_id"]])),
        state.trust,
    )
    assert report.ok, report.to_text()
    assert [n.id for n in report.nodes] == [two["manifest_id"], one["manifest_id"]]
    # A trust store without the controller's CA refuses it: the signature is real.
    assert not verify_chain(
        two["manifest_id"], ApiSource({two["manifest_id"]: manifest, one["manifest_id"]: previous}), TrustStore()
    ).ok
    # The transparency log holds each manifest's entry at the recorded index.
    assert state.tlog is not None
    for answer, m in ((one, previous), (two, manifest)):
        assert answer["log_index"] is not None
        assert state.tlog.log.entry(answer["log_index"]).data == manifest_entry(m)
    # The controller's own verification endpoint agrees and walks both.
    verified = await client.post("/api/v1/verify", json={"manifest": two["manifest_id"]})
    assert verified.status_code == 200, verified.text
    assert verified.json()["report"]["ok"], verified.json()
    assert len(verified.json()["report"]["nodes"]) == 2


async def test_a_changed_previous_manifest_breaks_the_chain(app: FastAPI, client: httpx.AsyncClient) -> None:
    one = (await client.post("/api/v1/deployments", json=record("a" * 40, job="1"))).json()
    two = (await client.post("/api/v1/deployments", json=record("b" * 40, job="2"))).json()
    manifests = await fetch_manifests(client, [one["manifest_id"], two["manifest_id"]])
    tampered = copy.deepcopy(manifests)
    tampered[one["manifest_id"]]["claim"]["ingredients"][0]["data"]["hash"] = "0" * 64
    trust = state_of(app).trust
    assert trust is not None
    report = verify_chain(two["manifest_id"], ApiSource(tampered), trust)
    assert not report.ok
    assert report.nodes[0].id == two["manifest_id"]
    assert any(c.name.startswith("link") and not c.ok for c in report.nodes[0].checks)


async def test_the_same_record_is_answered_again_and_a_changed_one_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    first = await client.post("/api/v1/deployments", json=record())
    assert first.status_code == 201
    again = await client.post("/api/v1/deployments", json=record())
    assert again.status_code == 200
    assert again.json() == first.json()
    changed = record()
    changed["files"][0]["digest"] = sha("edited")
    conflict = await client.post("/api/v1/deployments", json=changed)
    assert conflict.status_code == 409, conflict.text
    assert first.json()["id"] in conflict.json()["detail"]
    # Another CI job of the same commit is another deployment.
    other_job = await client.post("/api/v1/deployments", json=record(job="457"))
    assert other_job.status_code == 201
    assert other_job.json()["sequence"] == 2
    with state_of(app).session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Deployment)) == 2
        assert session.scalar(select(func.count()).select_from(Manifest).where(Manifest.role == "deployment")) == 2


def _bad(mutate: Any) -> dict[str, Any]:
    body = record()
    mutate(body)
    return body


BAD = [
    ("files.0.digest", lambda b: b["files"][0].update(digest="sha256:XYZ")),
    ("files.0.digest", lambda b: b["files"][0].update(digest="md5:" + "0" * 32)),
    ("files", lambda b: b.update(files=[])),
    ("files[1].path", lambda b: b["files"][1].update(path=b["files"][0]["path"])),
    ("files.0.role", lambda b: b["files"][0].update(role="secret")),
    ("files.1.path", lambda b: b["files"][1].update(path="../etc/passwd")),
    ("files.1.path", lambda b: b["files"][1].update(path="/abs/x.py")),
    ("commit", lambda b: b.update(commit="main")),
    ("commit", lambda b: b.update(commit="A" * 40)),
    ("dag_ids", lambda b: b["files"][1].update(dag_ids=["x"])),
    ("files[1].dag_ids", lambda b: b["files"][1].update(role="dag", dag_ids=["demo_lifecycle"])),
    ("services", lambda b: b.update(services=["Bad Name"])),
    ("pipeline", lambda b: b.update(pipeline="")),
    ("surprise", lambda b: b.update(surprise=1)),
    ("ci.pipeline_id", lambda b: b["ci"].update(pipeline_id=["a", "list"])),
]


@pytest.mark.parametrize(("field", "mutate"), BAD, ids=[f"{i}-{f}" for i, (f, _) in enumerate(BAD)])
async def test_bad_records_are_refused_naming_the_field_and_nothing_is_written(
    app: FastAPI, client: httpx.AsyncClient, field: str, mutate: Any
) -> None:
    state = state_of(app)
    assert state.tlog is not None
    size = state.tlog.log.size()
    r = await client.post("/api/v1/deployments", json=_bad(mutate))
    assert r.status_code in (400, 422), r.text
    assert field in r.json()["detail"], r.json()
    assert state.tlog.log.size() == size
    with state.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Deployment)) == 0
        assert session.scalar(select(func.count()).select_from(DeploymentDag)) == 0


async def test_numbers_in_ci_are_taken_as_text(client: httpx.AsyncClient) -> None:
    body = record()
    body["ci"].update(pipeline_id=123, job_id=456)
    r = await client.post("/api/v1/deployments", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["ci"]["pipeline_id"], r.json()["ci"]["job_id"]) == ("123", "456")
    assert (await client.post("/api/v1/deployments", json=record())).status_code == 200  # the same key


async def test_listing_is_newest_first_filtered_and_paginated(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        env = "local" if i % 2 == 0 else "staging"
        r = await client.post("/api/v1/deployments", json=record(f"{i:x}" * 40, job=str(i), environment=env))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    other = record("f" * 40, job="9", pipeline="other")
    other["files"] = [{"path": "dags/other.py", "digest": sha("o"), "size": 1, "role": "dag", "dag_ids": ["other_dag"]}]
    other_id = (await client.post("/api/v1/deployments", json=other)).json()["id"]

    everything = (await client.get("/api/v1/deployments", headers=R)).json()
    assert [d["id"] for d in everything["deployments"]] == [other_id, *reversed(ids)]
    assert everything["next_cursor"] is None
    local = (await client.get("/api/v1/deployments", params={"pipeline": "mlprov", "environment": "local"})).json()
    assert [d["id"] for d in local["deployments"]] == [ids[4], ids[2], ids[0]]
    assert [d["sequence"] for d in local["deployments"]] == [3, 2, 1]
    by_dag = (await client.get("/api/v1/deployments", params={"dag_id": "other_dag"})).json()
    assert [d["id"] for d in by_dag["deployments"]] == [other_id]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"pipeline": "mlprov", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/deployments", params=params)).json()
        seen += [d["id"] for d in page["deployments"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert (await client.get("/api/v1/deployments", params={"cursor": "nonsense!"})).status_code == 400
    one = (await client.get(f"/api/v1/deployments/{ids[0]}", headers=R)).json()
    assert one["id"] == ids[0]
    assert one["sequence"] == 1
    missing = await client.get("/api/v1/deployments/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "deployment_not_found"
    assert (await client.get("/api/v1/deployments/nope/manifest")).status_code == 404


async def test_reading_needs_a_reader_and_recording_the_admin(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/deployments", json=record(), headers=R)).status_code == 403
    assert (await client.get("/api/v1/deployments", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.get("/api/v1/deployments", headers=R)).status_code == 200


async def test_concurrent_deployments_on_sqlite_form_one_chain(app: FastAPI) -> None:
    import threading

    from controller.api.routes.deployments import get_recorder
    from controller.services.deployments import DeploymentRequest

    recorder = get_recorder(state_of(app))
    results: list[Any] = [None] * 4
    barrier = threading.Barrier(4)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = recorder.record(DeploymentRequest.model_validate(record(job=f"job-{i}")))
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, tuple) and r[0] for r in results), results
    answers = sorted((r[1] for r in results), key=lambda a: a["sequence"])
    assert [a["sequence"] for a in answers] == [1, 2, 3, 4]
    assert [a["previous_id"] for a in answers] == [None, *(a["id"] for a in answers[:-1])]
