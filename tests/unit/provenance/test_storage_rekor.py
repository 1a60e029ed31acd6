"""The rekor manifest store against the in-test Rekor of tests/unit/provenance/tlog/test_tlog_rekor.py."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from provenance.errors import ManifestNotFoundError, StorageError
from provenance.keys import SigningIdentity, init_identity, load_identity
from provenance.manifest import build_manifest, make_ingredient
from provenance.storage.base import ManifestStore
from provenance.storage.rekor import MANIFEST_PAYLOAD_TYPE, RekorStore, dsse_pae

pytest.importorskip("rekor_types")  # the fake checks proposed entries against sigstore's schema


def _fake_rekor_module() -> ModuleType:
    path = Path(__file__).parent / "tlog" / "test_tlog_rekor.py"
    spec = importlib.util.spec_from_file_location("_fake_rekor_for_storage", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake() -> Any:
    return _fake_rekor_module().FakeRekor()


@pytest.fixture
def identity(tmp_path: Path) -> SigningIdentity:
    init_identity(tmp_path / "home")
    return load_identity(tmp_path / "home")


def _store(fake: Any, tmp_path: Path, identity: SigningIdentity | None) -> RekorStore:
    return RekorStore(
        "https://rekor.test",
        cache_dir=tmp_path / "cache",
        signer=(lambda: identity) if identity is not None else None,  # type: ignore[misc]  # narrowed above
        transport=httpx.MockTransport(fake.handle),
    )


def _manifest(tmp_path: Path) -> dict[str, Any]:
    asset = tmp_path / "d.csv"
    asset.write_text("a\n")
    return build_manifest(kind="dataset", title="d", ingredients=[make_ingredient(asset, "d", kind="dataset")])


def test_put_logs_a_signed_dsse_entry_and_get_confirms_it(fake: Any, tmp_path: Path, identity: SigningIdentity) -> None:
    store = _store(fake, tmp_path, identity)
    assert isinstance(store, ManifestStore)
    manifest = _manifest(tmp_path)
    stored = store.put(manifest, c2pa=b"sidecar")
    assert len(fake.bodies) == 1
    body = json.loads(fake.bodies[0])
    payload = json.dumps(manifest, separators=(",", ":")).encode()
    assert body["spec"]["payloadHash"]["value"] == hashlib.sha256(payload).hexdigest()
    signature = base64.b64decode(body["spec"]["signatures"][0]["signature"])
    identity.public_key.verify(signature, dsse_pae(MANIFEST_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg, arg-type]  # P-256 identity
    assert stored.locations["rekor"].startswith("https://rekor.test/api/v1/log/entries/")
    got = store.get(manifest["instance_id"])
    assert got.manifest == manifest
    assert got.c2pa == b"sidecar"
    assert [s.id for s in store.list()] == [manifest["instance_id"]]
    store.put(manifest)  # idempotent: nothing new logged
    assert len(fake.bodies) == 1


def test_a_cache_that_differs_from_the_log_is_refused(fake: Any, tmp_path: Path, identity: SigningIdentity) -> None:
    store = _store(fake, tmp_path, identity)
    manifest = _manifest(tmp_path)
    store.put(manifest)
    path = store.cache.manifest_path(manifest["instance_id"])
    path.write_text(json.dumps(dict(manifest, title="forged"), indent=2))
    with pytest.raises(StorageError, match="differs from what Rekor logged"):
        store.get(manifest["instance_id"])


def test_unknown_id_needs_identity_and_no_delete(fake: Any, tmp_path: Path) -> None:
    store = _store(fake, tmp_path, None)
    with pytest.raises(ManifestNotFoundError):
        store.get("urn:c2pa:nope")
    with pytest.raises(StorageError, match="signing identity"):
        store.put(_manifest(tmp_path))
    with pytest.raises(StorageError, match="append-only"):
        store.delete("urn:c2pa:nope")


def test_rekor_down_is_a_storage_error(tmp_path: Path, identity: SigningIdentity) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    store = RekorStore(
        "https://rekor.test", cache_dir=tmp_path / "c", signer=lambda: identity, transport=httpx.MockTransport(down)
    )
    manifest = _manifest(tmp_path)
    with pytest.raises(StorageError, match="did not log the manifest"):
        store.put(manifest)
    with pytest.raises(ManifestNotFoundError):
        store.cache.get(manifest["instance_id"])  # nothing cached when the log refused
