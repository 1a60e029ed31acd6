"""verify_chain beyond the tamper matrix: resolution, skipping, extra checks, diamonds, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from provenance.errors import ManifestNotFoundError, VerificationError
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, cross_reference, make_ingredient
from provenance.signing import sign_manifest
from provenance.storage.base import StoredManifest
from provenance.verify import Check, verify_chain


class MemorySource:
    def __init__(self) -> None:
        self.items: dict[str, StoredManifest] = {}
        self.gets: list[str] = []

    def add(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.items[manifest["instance_id"]] = StoredManifest(id=manifest["instance_id"], manifest=manifest)
        return manifest

    def get(self, manifest_id: str) -> StoredManifest:
        self.gets.append(manifest_id)
        try:
            return self.items[manifest_id]
        except KeyError:
            raise ManifestNotFoundError(manifest_id) from None


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningIdentity, TrustStore]:
    home = tmp_path_factory.mktemp("ca")
    paths = init_identity(home)
    return load_identity(home), TrustStore.load(paths.trust_dir)


def _signed(tmp: Path, name: str, identity: SigningIdentity, refs: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]  # tuple default, never mutated
    (tmp / f"{name}.bin").write_bytes(name.encode())
    ingredient = make_ingredient(tmp / f"{name}.bin", name, kind="dataset", hash_alg="sha256")
    return sign_manifest(
        build_manifest(
            kind="dataset", title=name, ingredients=[ingredient], cross_references=[cross_reference(r) for r in refs]
        ),
        identity,
    )


def test_diamond_checks_each_node_once(tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]) -> None:
    identity, trust = ca
    src = MemorySource()
    base = src.add(_signed(tmp_path, "base", identity))
    left = src.add(_signed(tmp_path, "left", identity, [base]))
    right = src.add(_signed(tmp_path, "right", identity, [base]))
    top = src.add(_signed(tmp_path, "top", identity, [left, right]))
    report = verify_chain(top["instance_id"], src, trust)
    assert report.ok, report.to_text()
    assert [n.title for n in report.nodes] == ["top", "left", "base", "right"]
    assert [n.depth for n in report.nodes] == [0, 1, 2, 1]
    assert src.gets.count(base["instance_id"]) == 1
    right_node = report.nodes[3]
    assert any(c.name == f"link {base['instance_id']}" and c.ok for c in right_node.checks)


def test_unreachable_ingredients_are_skipped_or_resolved(
    tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]
) -> None:
    identity, trust = ca
    src = MemorySource()
    m = src.add(_signed(tmp_path, "data", identity))
    moved = tmp_path / "moved.bin"
    (tmp_path / "data.bin").rename(moved)
    report = verify_chain(m["instance_id"], src, trust)
    assert report.ok
    skipped = [c for c in report.nodes[0].checks if c.skipped]
    assert len(skipped) == 1
    assert "not reachable" in skipped[0].detail
    assert report.to_dict()["summary"]["skipped"] == 1

    seen: list[dict[str, Any]] = []

    def resolver(ingredient: dict[str, Any]) -> Path | None:
        seen.append(ingredient)
        return moved

    report = verify_chain(m["instance_id"], src, trust, asset_resolver=resolver)
    assert report.ok
    assert seen
    assert not any(c.skipped for c in report.nodes[0].checks)
    moved.write_bytes(b"changed")
    report = verify_chain(m["instance_id"], src, trust, asset_resolver=resolver)
    assert not report.ok
    assert report.nodes[0].error is not None
    assert "sha256 of" in report.nodes[0].error
    report = verify_chain(m["instance_id"], src, trust, asset_resolver=resolver, rehash=False)
    assert report.ok  # not re-hashed, and the report says so
    assert any(c.name == "ingredients" and c.skipped for c in report.nodes[0].checks)


def test_extra_checks(tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]) -> None:
    identity, trust = ca
    src = MemorySource()
    m = src.add(_signed(tmp_path, "data", identity))

    def not_applicable(stored: StoredManifest) -> Check | None:
        return None

    def holds(stored: StoredManifest) -> Check | None:
        return Check("tlog inclusion", True, f"entry for {stored.id}")

    def refuses(stored: StoredManifest) -> Check | None:
        raise VerificationError("inclusion proof does not verify")

    def crashes(stored: StoredManifest) -> Check | None:
        raise RuntimeError("boom")

    report = verify_chain(m["instance_id"], src, trust, extra_checks=[not_applicable, holds])
    assert report.ok
    assert [c.name for c in report.nodes[0].checks][-2:] == ["not_applicable", "tlog inclusion"]
    report = verify_chain(m["instance_id"], src, trust, extra_checks=[refuses])
    assert report.nodes[0].error == "refuses: inclusion proof does not verify"
    report = verify_chain(m["instance_id"], src, trust, extra_checks=[crashes])
    assert not report.ok
    assert report.nodes[0].error is not None
    assert "RuntimeError: boom" in report.nodes[0].error


def test_store_returning_another_manifest(tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]) -> None:
    identity, trust = ca
    src = MemorySource()
    a = src.add(_signed(tmp_path, "a", identity))
    b = _signed(tmp_path, "b", identity)
    src.items[a["instance_id"]] = StoredManifest(id=a["instance_id"], manifest=b)
    report = verify_chain(a["instance_id"], src, trust)
    assert not report.ok
    assert report.nodes[0].error is not None
    assert report.nodes[0].error.startswith("structure")


def test_root_given_as_stored_manifest_and_missing_root(tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]) -> None:
    identity, trust = ca
    src = MemorySource()
    m = _signed(tmp_path, "a", identity)
    report = verify_chain(StoredManifest(id=m["instance_id"], manifest=m), src, trust)
    assert report.ok
    assert src.gets == []
    with pytest.raises(ManifestNotFoundError):
        verify_chain("urn:c2pa:missing", src, trust)


def test_report_text_json_and_log(tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]) -> None:
    identity, trust = ca
    src = MemorySource()
    base = src.add(_signed(tmp_path, "base", identity))
    top = src.add(_signed(tmp_path, "top", identity, [base]))
    (tmp_path / "base.bin").write_bytes(b"tampered")
    with capture_logs() as logs:
        report = verify_chain(top["instance_id"], src, trust)
    assert logs == [
        {
            "event": "provenance.verify",
            "log_level": "info",
            "manifest_id": top["instance_id"],
            "ok": False,
            "nodes": 2,
            "first_broken": base["instance_id"],
        }
    ]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["root"] == top["instance_id"]
    assert data["first_broken"]["id"] == base["instance_id"]
    assert data["summary"] == {"nodes": 2, "checks": 7, "failed": 1, "skipped": 0}
    text = report.to_text()
    assert text.splitlines()[-1].startswith("✗ Verification failed: first broken link at Dataset 'base'")
    assert "ingredient 'base'" in text.splitlines()[-1]
    (tmp_path / "base.bin").write_bytes(b"base")
    assert (
        verify_chain(top["instance_id"], src, trust).to_text().splitlines()[-1].startswith("✓ Verified 2 manifest(s)")
    )
