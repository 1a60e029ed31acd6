"""``POST /api/v1/manifests`` and friends through the real app on a real port: validation, idempotency,
software manifests, lineage edges, the transparency log, group commit, and nothing half-recorded."""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from controller.store.db import session_scope
from controller.store.models import LineageEdge
from provenance.keys import init_identity, load_identity
from provenance.manifest import cross_reference, manifest_hash
from provenance.tlog.entries import manifest_entry
from tests.unit.controller.ingest_support import App, counts, new_task, running_app, signed_manifest

pytestmark = pytest.mark.integration


@pytest.fixture
def app(mlprov_home: Path) -> Iterator[App]:
    with running_app(mlprov_home) as running:
        yield running


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload(app: App, task_id: str, token: str, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    response = app.client.put(
        f"/api/v1/tasks/{task_id}/artifacts/{digest}", content=path.read_bytes(), headers=_auth(token)
    )
    assert response.status_code in (200, 201), response.text
    return digest


def _body(
    manifest: dict[str, Any], digest: str | None, *, role: str = "output", name: str = "data.csv"
) -> dict[str, Any]:
    artifact = (
        None
        if digest is None
        else {"digest": digest, "name": name, "kind": "dataset", "size": 1, "media_type": "text/csv"}
    )
    return {
        "manifest": manifest,
        "c2pa": base64.b64encode(b"c2pa-bytes").decode(),
        "oms_bundle": None,
        "artifact": artifact,
        "role": role,
    }


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_register_output_is_stored_linked_logged_and_idempotent(app: App, tmp_path: Path) -> None:
    upstream = _file(tmp_path, "raw.csv", b"raw\n")
    up_task, up_token = new_task(app.state)
    up_digest = _upload(app, up_task, up_token, upstream)
    code = {"repo": "/src/repo", "ref": "main", "commit": "c" * 40}
    task_id, token = new_task(app.state, inputs=[{"ref": up_digest, "digest": up_digest, "name": "raw.csv"}], code=code)
    out = _file(tmp_path, "data.csv", b"a,b\n1,2\n")
    digest = _upload(app, task_id, token, out)
    manifest = signed_manifest(app.identity, out, task_id=task_id, code=code)

    first = app.client.post("/api/v1/manifests", json=_body(manifest, digest), headers=_auth(token))
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["id"] == manifest["instance_id"]
    assert answer["artifact"]["digest"] == digest
    assert answer["artifact"]["name"] == "data.csv"
    assert answer["artifact"]["kind"] == "dataset"
    replay = app.client.post("/api/v1/manifests", json=_body(manifest, digest), headers=_auth(token))
    assert replay.status_code == 200
    assert replay.json() == answer

    # the log holds exactly this manifest's entry at the recorded index
    assert app.state.tlog is not None
    entry = app.state.tlog.log.entry(answer["log_index"])
    assert entry.data == manifest_entry(manifest)

    view = app.client.get(f"/api/v1/manifests/{answer['id']}", headers=app.reader()).json()
    assert view["manifest"] == manifest
    assert view["manifest_hash"] == manifest_hash(manifest)
    assert view["log"]["index"] == answer["log_index"]
    assert view["oms_bundle"] is None
    c2pa = app.client.get(view["c2pa"], headers=app.reader())
    assert c2pa.status_code == 200
    assert c2pa.content == b"c2pa-bytes"
    assert app.client.get(f"/api/v1/manifests/{answer['id']}/oms-bundle", headers=app.reader()).status_code == 404

    artifact = app.client.get(f"/api/v1/artifacts/{digest}", headers=app.reader()).json()
    assert [m["id"] for m in artifact["manifests"]] == [answer["id"]]
    assert [t["id"] for t in artifact["produced_by"]] == [task_id]

    with session_scope(app.state.session_factory) as session:
        edges = {(e.src_type, e.src_id, e.role, e.dst_type, e.dst_id) for e in session.scalars(select(LineageEdge))}
    assert ("artifact", up_digest, "consumed", "task", task_id) in edges
    assert ("task", task_id, "produced", "artifact", digest) in edges
    assert ("code", f"/src/repo@{'c' * 40}", "code", "task", task_id) in edges


def test_same_id_other_content_is_409(app: App, tmp_path: Path) -> None:
    task_id, token = new_task(app.state)
    out = _file(tmp_path, "data.csv", b"1\n")
    digest = _upload(app, task_id, token, out)
    manifest = signed_manifest(app.identity, out, task_id=task_id)
    assert app.client.post("/api/v1/manifests", json=_body(manifest, digest), headers=_auth(token)).status_code == 201
    other = signed_manifest(app.identity, out, task_id=task_id, name="renamed.csv")
    other["instance_id"] = manifest["instance_id"]
    other = signed_manifest_like(app, other)
    before = counts(app.state)
    response = app.client.post("/api/v1/manifests", json=_body(other, digest), headers=_auth(token))
    assert response.status_code == 409, response.text
    assert counts(app.state)["manifests"] == before["manifests"]


def signed_manifest_like(app: App, manifest: dict[str, Any]) -> dict[str, Any]:
    from provenance.signing import sign_manifest

    return sign_manifest(manifest, app.identity, hash_alg="sha256")


def test_bad_registrations_record_nothing(app: App, tmp_path: Path) -> None:
    task_id, token = new_task(app.state)
    other_task, _ = new_task(app.state)
    out = _file(tmp_path, "data.csv", b"x,y\n")
    digest = _upload(app, task_id, token, out)
    good = signed_manifest(app.identity, out, task_id=task_id)

    tampered = copy.deepcopy(good)
    tampered["claim"]["signature"] = base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()
    stranger_home = tmp_path / "stranger"
    init_identity(stranger_home)
    untrusted = signed_manifest(load_identity(stranger_home), out, task_id=task_id)
    malformed = copy.deepcopy(good)
    del malformed["claim"]
    wrong_task = signed_manifest(app.identity, out, task_id=other_task)
    unknown = _file(tmp_path, "never-uploaded.csv", b"nope\n")
    unknown_manifest = signed_manifest(app.identity, unknown, task_id=task_id)
    unknown_digest = "sha256:" + hashlib.sha256(b"nope\n").hexdigest()

    cases: list[tuple[dict[str, Any], int, str]] = [
        (_body(malformed, digest), 400, "malformed manifest"),
        (_body(tampered, digest), 400, "bad signature"),
        (_body(untrusted, digest), 400, "untrusted signer"),
        (_body(wrong_task, digest), 403, "not this token's task"),
        (_body(unknown_manifest, unknown_digest), 400, "was not uploaded"),
        (_body(good, unknown_digest), 400, "not the manifest's ingredient"),
        (_body(good, None), 400, "needs `artifact`"),
        ({**_body(good, digest), "c2pa": "***"}, 400, "not valid base64"),
    ]
    before = counts(app.state)
    for body, status, words in cases:
        response = app.client.post("/api/v1/manifests", json=body, headers=_auth(token))
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["detail"], response.json()
        assert counts(app.state) == before, words
    assert app.client.post("/api/v1/manifests", json=_body(good, digest), headers=app.reader()).status_code == 403


def test_one_software_manifest_per_commit(app: App, tmp_path: Path) -> None:
    code = {"repo": "https://example.org/r.git", "ref": "main", "commit": "d" * 40, "path": "stage.py"}
    params = {"repo": code["repo"], "commit": code["commit"]}
    t1, tok1 = new_task(app.state, code=code)
    t2, tok2 = new_task(app.state, code=code)
    assert app.client.get("/api/v1/software-manifests", params=params, headers=_auth(tok1)).status_code == 404
    src = _file(tmp_path, "stage.py", b"print('hi')\n")
    d1 = _upload(app, t1, tok1, src)
    m1 = signed_manifest(app.identity, src, task_id=t1, kind="software", code=code)
    m2 = signed_manifest(app.identity, src, task_id=t2, kind="software", code=code)
    first = app.client.post("/api/v1/manifests", json=_body(m1, d1, role="code", name="stage.py"), headers=_auth(tok1))
    assert first.status_code == 201
    assert first.json()["id"] == m1["instance_id"]
    second = app.client.post("/api/v1/manifests", json=_body(m2, None, role="code"), headers=_auth(tok2))
    assert second.status_code == 201, second.text
    assert second.json()["id"] == m1["instance_id"]  # the kept one is answered ...
    stored = app.client.get(f"/api/v1/manifests/{m2['instance_id']}", headers=app.reader())
    assert stored.status_code == 200  # ... and the submitted one is kept beside it for outputs linking to it
    replay = app.client.post("/api/v1/manifests", json=_body(m2, None, role="code"), headers=_auth(tok2))
    assert replay.status_code == 200
    assert replay.json()["id"] == m1["instance_id"]
    found = app.client.get("/api/v1/software-manifests", params=params, headers=_auth(tok2))
    assert found.status_code == 200
    assert found.json()["id"] == m1["instance_id"]
    assert found.json()["manifest"] == m1


def test_concurrent_registrations_share_fsyncs(app: App, tmp_path: Path) -> None:
    task_id, token = new_task(app.state)
    bodies = []
    for i in range(24):
        out = _file(tmp_path, f"part-{i}.csv", f"{i}\n".encode())
        digest = _upload(app, task_id, token, out)
        bodies.append(_body(signed_manifest(app.identity, out, task_id=task_id), digest, name=out.name))
    assert app.state.tlog is not None
    batches_before = app.state.tlog.stats.batches

    def post(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=app.url, timeout=30, trust_env=False) as client:
            return client.post("/api/v1/manifests", json=body, headers=_auth(token))

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, bodies))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]
    indexes = sorted(a.json()["log_index"] for a in answers)
    assert len(set(indexes)) == 24
    batches = app.state.tlog.stats.batches - batches_before
    assert batches < 24, f"{batches} log batches for 24 concurrent registrations: no grouping happened"
    # a manifest's inclusion proves against the served checkpoint
    proof = app.client.get(
        "/api/v1/log/proof/inclusion", params={"hash": bodies[5]["manifest"]["instance_id"]}, headers=app.reader()
    )
    assert proof.status_code == 200


def test_cross_references_become_manifest_edges(app: App, tmp_path: Path) -> None:
    task_id, token = new_task(app.state)
    a = _file(tmp_path, "a.csv", b"a\n")
    da = _upload(app, task_id, token, a)
    ma = signed_manifest(app.identity, a, task_id=task_id)
    assert (
        app.client.post("/api/v1/manifests", json=_body(ma, da, name="a.csv"), headers=_auth(token)).status_code == 201
    )
    b = _file(tmp_path, "b.csv", b"b\n")
    db = _upload(app, task_id, token, b)
    mb = signed_manifest(app.identity, b, task_id=task_id, cross_references=[cross_reference(ma)])
    assert (
        app.client.post("/api/v1/manifests", json=_body(mb, db, name="b.csv"), headers=_auth(token)).status_code == 201
    )
    with session_scope(app.state.session_factory) as session:
        linked = session.scalars(select(LineageEdge).where(LineageEdge.role == "linked")).all()
        assert [(e.src_id, e.dst_id) for e in linked] == [(ma["instance_id"], mb["instance_id"])]


def test_the_real_sidecar_delivers_to_the_real_controller(app: App, tmp_path: Path) -> None:
    """A task submitted through the API, task.json written with write_task_file, the real Sidecar
    watching a hand-made workspace: every output arrives signed, linked, logged and queryable."""
    import sys

    from controller.services.taskfile import write_task_file
    from controller.store.models import Task
    from provenance.sidecar.agent import Sidecar
    from provenance.sidecar.delivery import ControllerClient
    from provenance.sidecar.taskinfo import load_task_info
    from provenance.tlog.entries import manifest_entry_leaf
    from tests.unit.provenance.fake_controller import Running, publish, settings_for

    # an upstream artifact with a manifest, the task's input
    up_task, up_token = new_task(app.state)
    raw = _file(tmp_path, "raw.csv", b"x,y\n1,2\n")
    raw_digest = _upload(app, up_task, up_token, raw)
    raw_manifest = signed_manifest(app.identity, raw, task_id=up_task)
    assert (
        app.client.post(
            "/api/v1/manifests", json=_body(raw_manifest, raw_digest, name="raw.csv"), headers=_auth(up_token)
        ).status_code
        == 201
    )

    service = {"name": "sleeper", "command": [sys.executable, "-c", "import time; time.sleep(60)"]}
    assert app.client.post("/api/v1/services", json=service, headers=app.admin()).status_code == 201
    submitted = app.client.post(
        "/api/v1/tasks", json={"service": "sleeper", "inputs": [raw_digest]}, headers=app.admin()
    )
    assert submitted.status_code == 202, submitted.text
    task_id, token = submitted.json()["id"], submitted.json()["token"]

    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "stages" / "train.py").write_text("print('train')\n")
    code = {"repo": str(repo), "ref": "main", "commit": "e" * 40, "path": "stages/train.py"}
    workspace = tmp_path / "ws"
    (workspace / "outputs").mkdir(parents=True)
    (workspace / "inputs").mkdir()
    with session_scope(app.state.session_factory) as session:
        task = session.get(Task, task_id)
        assert task is not None
        write_task_file(
            workspace, task=task, inputs=[{"name": "raw.csv", "digest": raw_digest}], code=code, session=session
        )
    info = load_task_info(workspace, expected_task_id=task_id)
    assert info.inputs[0].manifest_id == raw_manifest["instance_id"]

    settings = settings_for(workspace, app.url, task_id=task_id, task_token=token)
    client = ControllerClient(app.url, token, task_id, timeout=10.0)
    try:
        with Running(Sidecar(settings, info, app.identity, client)) as running:
            publish(workspace / "outputs" / "features.parquet", b"PAR1" + b"\x01" * 2000)
            model = workspace / "outputs" / "model"
            model.mkdir()
            (model / "weights.safetensors").write_bytes(b"\x02" * 4000)
            (model / "config.json").write_text('{"layers": 2}')
            (model / "_SUCCESS").write_text("")
            publish(workspace / "outputs" / "metrics.json", b'{"accuracy": 0.9}')
            summary = running.finish(60)
    finally:
        client.close()
    assert summary.ok, summary

    listed = app.client.get("/api/v1/artifacts", params={"limit": 100}, headers=app.reader()).json()["artifacts"]
    by_name = {a["name"]: a for a in listed}
    assert {"features.parquet", "model", "metrics.json"} <= set(by_name), sorted(by_name)
    assert by_name["model"]["kind"] == "model"
    for name in ("features.parquet", "model", "metrics.json"):
        view = app.client.get(f"/api/v1/artifacts/{by_name[name]['digest']}", headers=app.reader()).json()
        assert [t["id"] for t in view["produced_by"]] == [task_id], name
        (manifest_ref,) = view["manifests"]
        manifest = app.client.get(manifest_ref["href"], headers=app.reader()).json()
        refs = {r["manifest_url"] for r in manifest["manifest"]["cross_references"]}
        assert raw_manifest["instance_id"] in refs, name  # linked to its input's manifest
        proof = app.client.get("/api/v1/log/proof/inclusion", params={"hash": manifest_ref["id"]}, headers=app.reader())
        assert proof.json()["entry"]["leafHash"] == manifest_entry_leaf(manifest["manifest"]).hex()
    model_manifest = app.client.get(f"/api/v1/artifacts/{by_name['model']['digest']}", headers=app.reader()).json()
    assert (
        app.client.get(model_manifest["manifests"][0]["href"] + "/oms-bundle", headers=app.reader()).status_code == 200
    )
    software = app.client.get(
        "/api/v1/software-manifests", params={"repo": str(repo), "commit": "e" * 40}, headers=_auth(token)
    )
    assert software.status_code == 200
    with session_scope(app.state.session_factory) as session:
        edges = {(e.src_type, e.src_id, e.role, e.dst_id) for e in session.scalars(select(LineageEdge))}
    assert ("artifact", raw_digest, "consumed", task_id) in edges
    assert ("task", task_id, "produced", by_name["model"]["digest"]) in edges
    app.client.delete(f"/api/v1/tasks/{task_id}", headers=app.admin())
