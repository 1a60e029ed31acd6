"""The transparency log API of the real app: checkpoint (note and JSON), inclusion and consistency proofs
verified with provenance's verifiers, entries, vkey; and ``mlprov log audit --server`` against it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.services.ingest import ManifestIngest, Registration
from provenance.cli.main import cli
from provenance.errors import ProofError
from provenance.tlog.checkpoint import verify_checkpoint, verify_checkpoint_consistency
from provenance.tlog.entries import manifest_entry_leaf
from provenance.tlog.merkle import ConsistencyProof, InclusionProof, verify_consistency, verify_inclusion
from tests.unit.controller.ingest_support import App, new_task, running_app, signed_manifest


@pytest.fixture
def app(mlprov_home: Path) -> Iterator[App]:
    with running_app(mlprov_home) as running:
        yield running


def _register(app: App, tmp_path: Path, count: int) -> list[str]:
    """Register ``count`` manifests directly through the ingestion service (the API is tested elsewhere)."""
    task_id, _ = new_task(app.state)
    assert app.state.trust is not None
    assert app.state.tlog is not None
    ingest = ManifestIngest(app.state.session_factory, app.state.trust, app.state.tlog)
    ids = []
    for i in range(count):
        path = tmp_path / f"f{i}-{len(list(tmp_path.iterdir()))}.txt"
        path.write_bytes(f"{i} {path.name}".encode())
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        response = app.client.put(
            f"/api/v1/tasks/{task_id}/artifacts/{digest}", content=path.read_bytes(), headers=app.admin()
        )
        assert response.status_code == 201
        manifest = signed_manifest(app.identity, path, task_id=task_id)
        ingest.store(
            Registration(manifest=manifest, role="output", artifact={"digest": digest, "name": path.name}), None
        )
        ids.append(manifest["instance_id"])
    return ids


def test_checkpoint_and_proofs_verify(app: App, tmp_path: Path) -> None:
    ids = _register(app, tmp_path, 5)
    vkey = app.client.get("/api/v1/log/vkey", headers=app.reader()).text.strip()
    note = app.client.get("/api/v1/log/checkpoint", headers=app.reader())
    assert note.headers["content-type"].startswith("text/plain")
    checkpoint = verify_checkpoint(note.text, vkey)
    assert checkpoint.size == 5
    as_json = app.client.get("/api/v1/log/checkpoint", params={"format": "json"}, headers=app.reader()).json()
    assert as_json["treeSize"] == 5
    assert as_json["rootHash"] == checkpoint.root_hash.hex()
    assert as_json["vkey"] == vkey

    manifest = app.client.get(f"/api/v1/manifests/{ids[3]}", headers=app.reader()).json()["manifest"]
    by_id = app.client.get("/api/v1/log/proof/inclusion", params={"hash": ids[3]}, headers=app.reader()).json()
    leaf = manifest_entry_leaf(manifest)
    assert by_id["entry"]["leafHash"] == leaf.hex()
    verify_inclusion(leaf, InclusionProof.from_dict(by_id["inclusionProof"]), checkpoint.root_hash)
    by_hash = app.client.get(
        "/api/v1/log/proof/inclusion", params={"hash": leaf.hex(), "size": 5}, headers=app.reader()
    )
    assert by_hash.json()["inclusionProof"] == by_id["inclusionProof"]

    old = verify_checkpoint(note.text, vkey)
    _register(app, tmp_path, 3)
    new = verify_checkpoint(app.client.get("/api/v1/log/checkpoint", headers=app.reader()).text, vkey)
    proof = app.client.get("/api/v1/log/proof/consistency", params={"from": 5, "to": 8}, headers=app.reader()).json()
    verify_checkpoint_consistency(old, new, ConsistencyProof.from_dict(proof))
    tampered = ConsistencyProof.from_dict(proof)
    with pytest.raises(ProofError):
        verify_consistency(old.root_hash, hashlib.sha256(b"other").digest(), tampered)

    entry = app.client.get("/api/v1/log/entries/3", headers=app.reader()).json()
    assert entry["manifest"]["id"] == ids[3]


def test_bad_queries(app: App, tmp_path: Path) -> None:
    _register(app, tmp_path, 2)
    reader = app.reader()
    assert app.client.get("/api/v1/log/entries/2", headers=reader).status_code == 404
    assert app.client.get("/api/v1/log/proof/inclusion", params={"hash": "0" * 64}, headers=reader).status_code == 404
    assert (
        app.client.get("/api/v1/log/proof/inclusion", params={"hash": "urn:c2pa:nope"}, headers=reader).status_code
        == 404
    )
    assert (
        app.client.get("/api/v1/log/proof/consistency", params={"from": 3, "to": 2}, headers=reader).status_code == 400
    )
    assert (
        app.client.get("/api/v1/log/proof/consistency", params={"from": 1, "to": 9}, headers=reader).status_code == 400
    )
    assert app.client.get("/api/v1/log/checkpoint").status_code == 401


def test_cli_audit_against_the_server(app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(app, tmp_path, 2)
    saved = tmp_path / "checkpoint.note"
    saved.write_text(app.client.get("/api/v1/log/checkpoint", headers=app.reader()).text)
    _register(app, tmp_path, 2)
    monkeypatch.setenv("MLPROV_TOKEN", "read-token-for-ingest-tests")
    monkeypatch.setenv("MLPROV_HOME", str(tmp_path / "cli-home"))
    runner = CliRunner()
    ok = runner.invoke(cli, ["log", "audit", "--checkpoint", str(saved), "--server", app.url])
    assert ok.exit_code == 0, ok.output
    assert "at size 4 extends" in ok.output
    # a checkpoint of a history the server does not have (a forged root at size 2) fails
    vkey = app.client.get("/api/v1/log/vkey", headers=app.reader()).text.strip()
    other_home = tmp_path / "other-log"
    from provenance.tlog.local import LocalTransparencyLog

    with LocalTransparencyLog(other_home) as other:
        other.append(b"x")
        other.append(b"y")
        foreign = other.checkpoint().note
    forged = tmp_path / "forged.note"
    forged.write_text(foreign)
    bad = runner.invoke(cli, ["log", "audit", "--checkpoint", str(forged), "--server", app.url, "--vkey", vkey])
    assert bad.exit_code != 0
    assert "audit failed" in bad.output
