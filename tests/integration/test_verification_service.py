"""``POST /api/v1/verify`` through the real app: a signed chain verifies; tampering anywhere fails, naming the node.

The chain is written straight into the store (no ingestion code): three signed manifests, each artifact
in the ArtifactStore, each manifest appended to the controller's transparency log, and the edges
``raw -consumed-> t1 -produced-> clean -consumed-> t2 -produced-> model`` (plus code edges)::

    model (M2, C2PA sidecar) --link--> clean (M1) --link--> raw (M0)
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import update

from controller.main import create_app
from controller.services.tlog import GroupCommitLog
from controller.settings import Settings
from controller.state import AppState
from controller.store.db import session_scope
from controller.store.models import Artifact, LineageEdge, Manifest, Task
from provenance.c2pa_sidecar import sign_sidecar
from provenance.hashing import hash_file
from provenance.keys import SigningIdentity, init_identity, load_identity
from provenance.manifest import build_manifest, cross_reference, custom_assertion, make_ingredient, manifest_hash
from provenance.signing import sign_manifest
from provenance.tlog.entries import manifest_entry
from provenance.tlog.local import LocalTransparencyLog

pytestmark = pytest.mark.integration

ADMIN = "admin-token-for-verify-tests"
READ = "read-token-for-verify-tests"
COMMIT = "c0ffee" + "0" * 34


@dataclass
class Chain:
    app: FastAPI
    client: httpx.AsyncClient
    identity: SigningIdentity
    tmp: Path
    digests: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.mlprov
        return state

    def add(
        self,
        name: str,
        *,
        kind: str = "dataset",
        task: str | None = None,
        inputs: tuple[str, ...] = (),
        commit: str = COMMIT,
        c2pa: bool = False,
    ) -> str:
        """Write, store, sign, log and record artifact ``name`` made by ``task`` from ``inputs``."""
        path = self.tmp / "work" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"content of {name}\n".encode() * 50)
        digest = f"sha256:{hash_file(path, 'sha256')}"
        stored = self.state.artifact_store.put(path, digest)  # type: ignore[union-attr]  # the app builds one
        assertions = [
            custom_assertion("mlprov.task", {"task_id": task, "attempt": 1, "service": "stage"}),
            custom_assertion("mlprov.code", {"repo": "/repo", "ref": "main", "commit": commit, "path": "s.py"}),
            custom_assertion(
                "mlprov.inputs",
                [
                    {
                        "name": i,
                        "digest": self.digests[i],
                        "kind": "dataset",
                        "manifest_id": self.manifests[i]["instance_id"],
                    }
                    for i in inputs
                ],
            ),
        ]
        manifest = sign_manifest(
            build_manifest(
                kind=kind,  # type: ignore[arg-type]  # a literal of AssetKind
                title=name,
                ingredients=[make_ingredient(path, name, kind=kind, hash_alg="sha256")],  # type: ignore[arg-type]
                cross_references=[cross_reference(self.manifests[i]) for i in inputs],
                assertions=assertions,
            ),
            self.identity,
            hash_alg="sha256",
        )
        sidecar = (
            sign_sidecar(
                path, private_key_pem=self.identity.private_key_pem, chain_pem=self.identity.chain_pem, title=name
            )
            if c2pa
            else None
        )
        entry = self.state.tlog.append(manifest_entry(manifest))  # type: ignore[union-attr]
        with session_scope(self.state.session_factory) as s:
            if task is not None and s.get(Task, task) is None:
                s.add(Task(id=task, service="stage", state="succeeded", code={"repo": "/repo", "commit": commit}))
            s.add(Artifact(digest=digest, kind=kind, name=name, size=path.stat().st_size, uris=[stored.uri]))
            s.flush()
            s.add(
                Manifest(
                    id=manifest["instance_id"],
                    artifact_digest=digest,
                    task_id=task,
                    manifest=manifest,
                    manifest_hash=manifest_hash(manifest),
                    c2pa=sidecar,
                    log_index=entry.index,
                )
            )
            if task is not None:
                s.add(LineageEdge(src_type="code", src_id=f"/repo@{commit}", dst_type="task", dst_id=task, role="code"))
                s.add(LineageEdge(src_type="task", src_id=task, dst_type="artifact", dst_id=digest, role="produced"))
                for i in inputs:
                    s.add(
                        LineageEdge(
                            src_type="artifact", src_id=self.digests[i], dst_type="task", dst_id=task, role="consumed"
                        )
                    )
        path.unlink()  # the workspace is gone: verification must read the artifact store, never file:// URLs
        self.digests[name], self.manifests[name], self.uris[name] = digest, manifest, stored.uri
        return digest

    async def verify(self, **body: Any) -> dict[str, Any]:
        r = await self.client.post("/api/v1/verify", json=body)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


@pytest.fixture
async def chain(mlprov_home: Path, tmp_path: Path) -> AsyncIterator[Chain]:
    init_identity(mlprov_home)  # the controller trusts $MLPROV_HOME/trust
    settings = Settings(admin_token=SecretStr(ADMIN), read_tokens=[SecretStr(READ)], services_file=None)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {READ}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers) as c:
            ch = Chain(app, c, load_identity(mlprov_home), tmp_path)
            ch.add("raw.csv")
            ch.add("clean.csv", task="t1", inputs=("raw.csv",))
            ch.add("model.bin", kind="model", task="t2", inputs=("clean.csv",), c2pa=True)
            yield ch


def node(report: dict[str, Any], ch: Chain, name: str) -> dict[str, Any]:
    wanted = ch.manifests[name]["instance_id"]
    found: dict[str, Any] = next(n for n in report["nodes"] if n["id"] == wanted)
    return found


def check(n: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in n["checks"] if c["name"] == name)
    return found


async def test_a_signed_chain_verifies(chain: Chain) -> None:
    result = await chain.verify(artifact=chain.digests["model.bin"])
    report = result["report"]
    assert result["ok"] is True, report
    assert result["manifest"] == chain.manifests["model.bin"]["instance_id"]
    assert report["first_broken"] is None
    assert [n["title"] for n in report["nodes"]] == ["model.bin", "clean.csv", "raw.csv"]
    model = node(report, chain, "model.bin")
    assert check(model, "artifact")["detail"].startswith("sha256 of the stored bytes matches")
    assert check(model, "c2pa sidecar")["ok"]
    assert not check(model, "c2pa sidecar")["skipped"]
    assert check(model, "signature")["ok"]
    assert check(model, "policy: code commit")["ok"]
    assert check(model, "policy: signed inputs")["ok"]
    clean = node(report, chain, "clean.csv")
    assert "not re-hashed" in check(clean, "artifact")["detail"]  # only the target by default
    for n in report["nodes"]:
        assert check(n, "tlog inclusion")["ok"], n
        assert not check(n, "tlog inclusion")["skipped"], n
    by_id = await chain.verify(manifest=chain.manifests["clean.csv"]["instance_id"], rehash_all=True)
    assert by_id["ok"] is True
    assert [n["title"] for n in by_id["report"]["nodes"]] == ["clean.csv", "raw.csv"]
    raw = node(by_id["report"], chain, "raw.csv")
    assert check(raw, "artifact")["detail"].startswith("sha256 of the stored bytes matches")


async def test_requests_and_errors(chain: Chain) -> None:
    unknown = await chain.client.post("/api/v1/verify", json={"artifact": "sha256:" + "0" * 64})
    assert unknown.status_code == 404
    assert (await chain.client.post("/api/v1/verify", json={"manifest": "urn:c2pa:nope"})).status_code == 404
    assert (await chain.client.post("/api/v1/verify", json={})).status_code == 422
    both = {"artifact": chain.digests["raw.csv"], "manifest": chain.manifests["raw.csv"]["instance_id"]}
    assert (await chain.client.post("/api/v1/verify", json=both)).status_code == 422
    anonymous = await chain.client.post(
        "/api/v1/verify", json={"artifact": chain.digests["raw.csv"]}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401


def _tamper(uri: str) -> None:
    path = Path(unquote(urlparse(uri).path))
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    path.write_bytes(path.read_bytes().replace(b"content", b"CONTENT", 1))


async def test_a_tampered_artifact_in_the_store_fails_naming_it(chain: Chain) -> None:
    _tamper(chain.uris["model.bin"])
    result = await chain.verify(artifact=chain.digests["model.bin"])
    assert result["ok"] is False
    broken = result["report"]["first_broken"]
    assert broken["id"] == chain.manifests["model.bin"]["instance_id"]
    assert broken["error"].startswith("artifact: sha256 of the stored bytes is")


async def test_a_tampered_ancestor_fails_when_every_node_is_rehashed(chain: Chain) -> None:
    _tamper(chain.uris["raw.csv"])
    assert (await chain.verify(artifact=chain.digests["model.bin"]))["ok"] is True  # target only: not read
    result = await chain.verify(artifact=chain.digests["model.bin"], rehash_all=True)
    assert result["ok"] is False
    assert result["report"]["first_broken"]["id"] == chain.manifests["raw.csv"]["instance_id"]
    assert (await chain.verify(artifact=chain.digests["model.bin"], rehash=False, rehash_all=False))["ok"] is True


async def test_a_manifest_edited_in_the_database_fails_naming_it(chain: Chain) -> None:
    edited = dict(chain.manifests["clean.csv"], title="cleaner.csv")
    with session_scope(chain.state.session_factory) as s:
        s.execute(update(Manifest).where(Manifest.id == edited["instance_id"]).values(manifest=edited))
    result = await chain.verify(artifact=chain.digests["model.bin"])
    report = result["report"]
    assert result["ok"] is False
    model, clean = node(report, chain, "model.bin"), node(report, chain, "clean.csv")
    link = check(model, f"link {edited['instance_id']}")
    assert not link["ok"]
    assert "manifest hash is" in link["detail"]
    assert report["first_broken"]["id"] == model["id"]
    assert not clean["ok"]
    assert not check(clean, "signature")["ok"]
    assert not check(clean, "tlog inclusion")["ok"]  # the edited manifest was never logged
    assert node(report, chain, "raw.csv")["ok"]


async def test_an_unsigned_ancestor_fails_the_policy(chain: Chain) -> None:
    path = chain.tmp / "imported.csv"
    path.write_text("imported without provenance\n")
    digest = f"sha256:{hash_file(path, 'sha256')}"
    with session_scope(chain.state.session_factory) as s:
        s.add(Artifact(digest=digest, kind="dataset", name="imported.csv", size=28, uris=[]))
        s.flush()
        s.add(LineageEdge(src_type="artifact", src_id=digest, dst_type="task", dst_id="t1", role="consumed"))
    result = await chain.verify(artifact=chain.digests["model.bin"])
    assert result["ok"] is False
    broken = result["report"]["first_broken"]
    assert broken["id"] == chain.manifests["clean.csv"]["instance_id"]  # t1 made clean.csv from it
    assert "unsigned ancestor" in broken["error"]
    assert digest in broken["error"]
    assert "imported.csv" in broken["error"]
    unsigned = await chain.verify(artifact=digest)  # the unsigned artifact itself
    assert unsigned["ok"] is False
    assert unsigned["manifest"] is None
    assert "no manifest" in unsigned["report"]["first_broken"]["error"]


async def test_an_unresolved_code_reference_fails_the_policy(chain: Chain) -> None:
    chain.add("eval.json", kind="evaluation", task="t3", inputs=("model.bin",), commit="main")
    result = await chain.verify(artifact=chain.digests["eval.json"])
    assert result["ok"] is False
    assert result["report"]["first_broken"]["error"].startswith("policy: code commit: code reference /repo@main")


async def test_a_deleted_log_entry_fails_naming_the_manifest(chain: Chain) -> None:
    """Whoever holds the log's key rewrites it without the entry of clean.csv and re-signs checkpoints."""
    state = chain.state
    assert state.tlog is not None
    old = state.tlog.log
    assert isinstance(old, LocalTransparencyLog)
    dropped = manifest_entry(chain.manifests["clean.csv"])
    kept = [old.entry(i).data for i in range(old.size()) if old.entry(i).data != dropped]
    old.close()
    for f in old.root.iterdir():
        if f.name not in ("log.key", "log.vkey"):
            f.unlink()
    rewritten = LocalTransparencyLog(old.root)
    rewritten.append_many(kept)
    state.tlog = GroupCommitLog(rewritten)
    result = await chain.verify(artifact=chain.digests["model.bin"])
    assert result["ok"] is False
    broken = result["report"]["first_broken"]
    assert broken["id"] == chain.manifests["clean.csv"]["instance_id"]
    assert broken["error"].startswith("tlog inclusion: not logged")
    assert node(result["report"], chain, "model.bin")["ok"]
