"""Lineage walks in the database (recursive CTE) and run provenance, on SQLite and PostgreSQL.

The graph (``->`` is an edge; roles in brackets)::

    raw -[consumed]-> t1 -[produced]-> clean -[consumed]-> t2 -[produced]-> model -[consumed]-> t3 -[produced]-> report
    repo@c1 -[code]-> t1          other -[consumed]-> t2          repo@c2 -[code]-> t2

t1 and t2 belong to run ``lifecycle/manual__1``, t3 to ``lifecycle/manual__2``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from controller.errors import ArtifactNotFoundError, RunNotFoundError
from controller.main import create_app
from controller.services.lineage import Direction, LineageGraph, lineage, run_provenance
from controller.settings import Settings
from controller.store.db import make_engine, make_session_factory, migrate, session_scope
from controller.store.models import Artifact, LineageEdge, Manifest, PipelineRun, Task

pytestmark = pytest.mark.integration

ADMIN = "admin-token-for-lineage-tests"
READ = "read-token-for-lineage-tests"


def d(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


RAW, CLEAN, OTHER, MODEL, REPORT = d("raw"), d("clean"), d("other"), d("model"), d("report")
C1, C2 = "/repo@" + "1" * 40, "/repo@" + "2" * 40
MANIFEST_ID = "urn:c2pa:00000000-0000-4000-8000-00000000000m"
CODE_MANIFEST_ID = "urn:c2pa:00000000-0000-4000-8000-00000000000c"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    _populate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as s:
        yield s


def _edge(src_type: str, src_id: str, role: str, dst_type: str, dst_id: str) -> LineageEdge:
    return LineageEdge(src_type=src_type, src_id=src_id, dst_type=dst_type, dst_id=dst_id, role=role)


def _populate(engine: Engine) -> None:
    with session_scope(make_session_factory(engine)) as s:
        s.add(PipelineRun(dag_id="lifecycle", run_id="manual__1", state="success"))
        for digest, name, kind in [
            (RAW, "raw.csv", "dataset"),
            (CLEAN, "clean.parquet", "dataset"),
            (OTHER, "labels.csv", "dataset"),
            (MODEL, "model", "model"),
            (REPORT, "metrics.json", "evaluation"),
        ]:
            s.add(Artifact(digest=digest, kind=kind, name=name, size=10, uris=[f"file:///store/{name}"]))
        for tid, service, run, try_number, code in [
            ("t1", "preprocess", "manual__1", 1, C1),
            ("t2", "finetune", "manual__1", 1, C2),
            ("t3", "evaluate", "manual__2", 1, None),
        ]:
            repo, _, commit = (code or "@").partition("@")
            s.add(
                Task(
                    id=tid,
                    service=service,
                    state="succeeded",
                    dag_id="lifecycle",
                    run_id=run,
                    airflow_task_id=service,
                    try_number=try_number,
                    code={"repo": repo, "ref": "main", "commit": commit} if code else None,
                )
            )
        s.flush()
        s.add(
            Manifest(
                id=MANIFEST_ID,
                artifact_digest=MODEL,
                task_id="t2",
                manifest={"title": "model"},
                manifest_hash="0" * 64,
                log_index=3,
            )
        )
        s.add(  # t2's code (software) manifest: a manifest of no stored artifact
            Manifest(
                id=CODE_MANIFEST_ID,
                artifact_digest=None,
                role="code",
                task_id="t2",
                manifest={"title": "finetune code"},
                manifest_hash="1" * 64,
                log_index=4,
            )
        )
        s.add_all(
            [
                _edge("artifact", RAW, "consumed", "task", "t1"),
                _edge("code", C1, "code", "task", "t1"),
                _edge("task", "t1", "produced", "artifact", CLEAN),
                _edge("artifact", CLEAN, "consumed", "task", "t2"),
                _edge("artifact", OTHER, "consumed", "task", "t2"),
                _edge("code", C2, "code", "task", "t2"),
                _edge("task", "t2", "produced", "artifact", MODEL),
                _edge("artifact", MODEL, "consumed", "task", "t3"),
                _edge("task", "t3", "produced", "artifact", REPORT),
            ]
        )


def ids(graph: LineageGraph) -> dict[str, int]:
    return {n.id: n.depth for n in graph.nodes}


def edges(graph: LineageGraph) -> set[tuple[str, str, str]]:
    return {(e.src, e.role, e.dst) for e in graph.edges}


def test_upstream_walks_to_the_roots_with_depths(session: Session) -> None:
    graph = lineage(session, MODEL, direction=Direction.UPSTREAM, depth=10)
    assert graph.root == MODEL
    assert ids(graph) == {MODEL: 0, "t2": 1, CLEAN: 2, OTHER: 2, C2: 2, "t1": 3, RAW: 4, C1: 4}
    assert edges(graph) == {
        (CLEAN, "consumed", "t2"),
        (OTHER, "consumed", "t2"),
        (C2, "code", "t2"),
        ("t2", "produced", MODEL),
        (RAW, "consumed", "t1"),
        (C1, "code", "t1"),
        ("t1", "produced", CLEAN),
    }
    assert graph.truncated is False
    nodes = {n.id: n for n in graph.nodes}
    assert nodes[MODEL].type == "artifact"
    assert nodes[MODEL].name == "model"
    assert nodes[MODEL].kind == "model"
    assert nodes[MODEL].manifest == MANIFEST_ID
    assert nodes[MODEL].state == "signed"
    assert nodes[RAW].state == "unsigned"
    assert nodes["t2"].type == "task"
    assert nodes["t2"].kind == "finetune"
    assert nodes["t2"].state == "succeeded"
    assert nodes["t2"].run_id == "manual__1"
    assert nodes[C1].type == "code"


def test_downstream_and_both(session: Session) -> None:
    down = lineage(session, CLEAN, direction=Direction.DOWNSTREAM, depth=10)
    assert ids(down) == {CLEAN: 0, "t2": 1, MODEL: 2, "t3": 3, REPORT: 4}
    assert edges(down) == {
        (CLEAN, "consumed", "t2"),
        ("t2", "produced", MODEL),
        (MODEL, "consumed", "t3"),
        ("t3", "produced", REPORT),
    }
    both = lineage(session, MODEL, direction=Direction.BOTH, depth=2)
    assert ids(both) == {MODEL: 0, "t2": 1, "t3": 1, CLEAN: 2, OTHER: 2, C2: 2, REPORT: 2}
    assert (MODEL, "consumed", "t3") in edges(both)
    assert ("t2", "produced", MODEL) in edges(both)
    assert both.truncated is True  # clean was made by t1, beyond depth 2


def test_depth_bound_and_truncated_flag(session: Session) -> None:
    g0 = lineage(session, MODEL, depth=0)
    assert ids(g0) == {MODEL: 0}
    assert g0.edges == []
    assert g0.truncated is True
    g2 = lineage(session, MODEL, depth=2)
    assert set(ids(g2)) == {MODEL, "t2", CLEAN, OTHER, C2}
    assert g2.truncated is True
    assert all(e.src in ids(g2) and e.dst in ids(g2) for e in g2.edges)
    g3 = lineage(session, MODEL, depth=3)
    assert "t1" in ids(g3)
    assert RAW not in ids(g3)
    assert g3.truncated is True
    g4 = lineage(session, MODEL, depth=4)
    assert g4.truncated is False  # everything upstream is shown: a larger depth adds nothing
    assert ids(g4) == ids(lineage(session, MODEL, depth=50))
    assert lineage(session, RAW, depth=5).truncated is False


def test_cycles_terminate_and_list_each_node_once(session: Session, engine: Engine) -> None:
    with session_scope(make_session_factory(engine)) as s:  # report is fed back into t1: a cycle of 6 edges
        s.add(_edge("artifact", REPORT, "consumed", "task", "t1"))
        s.add(_edge("artifact", CLEAN, "consumed", "task", "t1"))  # and a self-loop through t1
    for direction in Direction:
        graph = lineage(session, MODEL, direction=direction, depth=200)
        assert len(graph.nodes) == len(ids(graph)), "a node is listed twice"
        assert {MODEL, "t1", "t2", "t3", CLEAN, REPORT} <= set(ids(graph))
        assert graph.truncated is False
    up = lineage(session, MODEL, depth=200)
    assert ids(up)[REPORT] == 4  # the shortest walk: model <- t2 <- clean <- t1 <- report (then <- t3 <- model)
    assert (REPORT, "consumed", "t1") in edges(up)


def test_manifest_id_resolves_to_its_artifact_and_unknown_is_404(session: Session) -> None:
    graph = lineage(session, MANIFEST_ID, depth=2)
    assert graph.root == MODEL
    assert ids(graph)[MODEL] == 0
    with pytest.raises(ArtifactNotFoundError):
        lineage(session, d("nothing"))
    with pytest.raises(ArtifactNotFoundError):
        lineage(session, "urn:c2pa:unknown")


def test_run_provenance(session: Session) -> None:
    prov = run_provenance(session, "lifecycle", "manual__1")
    assert prov.state == "success"
    assert [t.id for t in prov.tasks] == ["t1", "t2"]
    t1, t2 = prov.tasks
    assert t1.consumed == [RAW]
    assert t1.produced == [CLEAN]
    assert t1.code_refs == [C1]
    assert sorted(t2.consumed) == sorted([CLEAN, OTHER])
    assert t2.produced == [MODEL]
    assert t2.manifests == [MANIFEST_ID, CODE_MANIFEST_ID]
    assert prov.consumed == sorted([RAW, OTHER])  # clean was made inside the run: not an input
    assert prov.produced == sorted([CLEAN, MODEL])
    assert prov.code == sorted([C1, C2])
    assert {a.digest: a.name for a in prov.artifacts}[OTHER] == "labels.csv"
    assert [(m.id, m.role, m.artifact_digest) for m in prov.manifests] == [
        (MANIFEST_ID, "output", MODEL),
        (CODE_MANIFEST_ID, "code", None),
    ]
    assert {a.digest: a.manifests for a in prov.artifacts}[MODEL] == [MANIFEST_ID]
    other_run = run_provenance(session, "lifecycle", "manual__2")  # no PipelineRun row, tasks only
    assert other_run.state is None
    assert other_run.consumed == [MODEL]
    assert other_run.produced == [REPORT]
    with pytest.raises(RunNotFoundError):
        run_provenance(session, "lifecycle", "manual__404")


# --- through the app ----------------------------------------------------------------------------


@pytest.fixture
async def client(engine: Engine, db_url: str, mlprov_home: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        admin_token=SecretStr(ADMIN),
        read_tokens=[SecretStr(READ)],
        database_url=db_url,
        services_file=None,
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {READ}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers) as c:
            yield c


async def test_lineage_and_run_provenance_api(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/v1/lineage/{MODEL}", params={"direction": "both", "depth": 2})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["root"] == MODEL
    assert body["truncated"] is True
    assert {n["id"] for n in body["nodes"]} == {MODEL, "t2", "t3", CLEAN, OTHER, C2, REPORT}
    assert {"src": "t2", "src_type": "task", "dst": MODEL, "dst_type": "artifact", "role": "produced"} in body["edges"]
    r = await client.get(f"/api/v1/lineage/{MANIFEST_ID}")
    assert r.status_code == 200
    assert r.json()["root"] == MODEL
    r = await client.get(f"/api/v1/lineage/{d('nothing')}")
    assert r.status_code == 404
    assert r.json()["error"] == "artifact_not_found"
    assert (await client.get(f"/api/v1/lineage/{MODEL}", params={"direction": "sideways"})).status_code == 422
    assert (await client.get(f"/api/v1/lineage/{MODEL}", params={"depth": -1})).status_code == 422
    r = await client.get("/api/v1/runs/lifecycle/manual__1/provenance")
    assert r.status_code == 200, r.text
    assert r.json()["produced"] == sorted([CLEAN, MODEL])
    assert (await client.get("/api/v1/runs/lifecycle/nope/provenance")).status_code == 404
    anonymous = await client.get(f"/api/v1/lineage/{MODEL}", headers={"Authorization": ""})
    assert anonymous.status_code == 401
