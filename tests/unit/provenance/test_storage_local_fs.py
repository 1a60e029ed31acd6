"""The local-fs manifest store: atlas-cli's directory layout, signatures beside the manifest, atomicity."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from provenance.errors import ManifestNotFoundError, StorageError
from provenance.manifest import build_manifest, make_ingredient
from provenance.storage import open_store
from provenance.storage.base import ManifestStore
from provenance.storage.local_fs import INDEX_FILE, MLPROV_INDEX_FILE, LocalFsStore


def _manifest(tmp_path: Path, kind: str = "dataset", title: str = "data") -> dict[str, Any]:
    asset = tmp_path / f"{title}.csv"
    asset.write_text("a,b\n1,2\n")
    return build_manifest(kind=kind, title=title, ingredients=[make_ingredient(asset, title, kind=kind)])  # type: ignore[arg-type]


def test_layout_is_atlas_cli_s(tmp_path: Path) -> None:
    store = LocalFsStore(tmp_path / "store")
    manifest = _manifest(tmp_path)
    stored = store.put(manifest)
    stem = hashlib.sha256(manifest["instance_id"].encode()).hexdigest()
    path = tmp_path / "store" / f"{stem}.json"
    assert json.loads(path.read_text()) == manifest
    assert path.read_text() == json.dumps(manifest, indent=2, ensure_ascii=False)  # serde_json pretty layout
    index = json.loads((tmp_path / "store" / INDEX_FILE).read_text())
    assert index == {manifest["instance_id"]: f"{stem}.json"}  # a flat map of strings, as atlas-cli reads it
    assert stored.locations == {"manifest": str(path)}
    assert stored.c2pa is None
    assert stored.oms_bundle is None


def test_signatures_are_kept_beside_and_indexed(tmp_path: Path) -> None:
    store = LocalFsStore(tmp_path)
    manifest = _manifest(tmp_path, "model", "net")
    store.put(manifest, c2pa=b"c2pa-bytes", oms_bundle=b'{"bundle": 1}')
    got = store.get(manifest["instance_id"])
    assert got.manifest == manifest
    assert got.c2pa == b"c2pa-bytes"
    assert got.oms_bundle == b'{"bundle": 1}'
    stem = hashlib.sha256(manifest["instance_id"].encode()).hexdigest()
    assert got.locations["c2pa"] == str(tmp_path / f"{stem}.c2pa")
    assert got.locations["oms_bundle"] == str(tmp_path / f"{stem}.sig")
    ours = json.loads((tmp_path / MLPROV_INDEX_FILE).read_text())
    assert ours[manifest["instance_id"]] == {
        "manifest": f"{stem}.json",
        "c2pa": f"{stem}.c2pa",
        "oms_bundle": f"{stem}.sig",
    }


def test_reads_a_directory_atlas_cli_wrote(tmp_path: Path) -> None:
    """No mlprov index: the manifest is found by its hashed name, signatures by convention."""
    manifest = _manifest(tmp_path)
    stem = hashlib.sha256(manifest["instance_id"].encode()).hexdigest()
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / f"{stem}.json").write_text(json.dumps(manifest, indent=2))
    (tmp_path / "atlas" / INDEX_FILE).write_text(json.dumps({manifest["instance_id"]: f"{stem}.json"}))
    store = LocalFsStore(f"file://{tmp_path / 'atlas'}")
    assert store.get(manifest["instance_id"]).manifest == manifest
    assert [s.id for s in store.list()] == [manifest["instance_id"]]


def test_put_is_idempotent_and_refuses_a_different_manifest_under_the_same_id(tmp_path: Path) -> None:
    store = LocalFsStore(tmp_path)
    manifest = _manifest(tmp_path)
    store.put(manifest)
    store.put(manifest)
    other = dict(manifest, title="changed")
    with pytest.raises(StorageError, match="different manifest"):
        store.put(other)
    assert store.get(manifest["instance_id"]).manifest["title"] == "data"


def test_list_is_oldest_first_with_kinds_and_skips_junk(tmp_path: Path) -> None:
    store = LocalFsStore(tmp_path / "s")
    first = _manifest(tmp_path, "dataset", "one")
    second = _manifest(tmp_path, "model", "two")
    second["created_at"] = "2999-01-01T00:00:00Z"
    store.put(second)
    store.put(first)
    (tmp_path / "s" / "junk.json").write_text("{not json")
    summaries = store.list()
    assert [(s.title, s.kind) for s in summaries] == [("one", "Dataset"), ("two", "Model")]


def test_get_unknown_id_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ManifestNotFoundError, match="urn:c2pa:nope"):
        LocalFsStore(tmp_path).get("urn:c2pa:nope")


def test_damaged_manifest_file_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalFsStore(tmp_path)
    store.manifest_path("urn:c2pa:x").write_text("{oops")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.get("urn:c2pa:x")


def test_delete_removes_manifest_signatures_and_index_entries(tmp_path: Path) -> None:
    store = LocalFsStore(tmp_path)
    manifest = _manifest(tmp_path)
    store.put(manifest, c2pa=b"x")
    store.delete(manifest["instance_id"])
    assert not list(tmp_path.glob("*.c2pa"))
    with pytest.raises(ManifestNotFoundError):
        store.get(manifest["instance_id"])
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == {}
    with pytest.raises(ManifestNotFoundError):
        store.delete(manifest["instance_id"])


def test_a_failed_write_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalFsStore(tmp_path)
    manifest = _manifest(tmp_path)
    import provenance.storage.local_fs as local_fs

    def fail(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.suffix == ".json":
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    real = local_fs.write_atomic
    monkeypatch.setattr(local_fs, "write_atomic", fail)
    with pytest.raises(StorageError, match="No space left"):
        store.put(manifest, c2pa=b"sidecar")
    monkeypatch.undo()
    with pytest.raises(ManifestNotFoundError):
        store.get(manifest["instance_id"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _put_many(root: str, manifests: list[dict[str, Any]]) -> None:
    store = LocalFsStore(root)
    for manifest in manifests:
        store.put(manifest)


def test_concurrent_writers_lose_no_index_entries(tmp_path: Path) -> None:
    manifests = [_manifest(tmp_path, "dataset", f"d{i}") for i in range(16)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path / "s"), manifests[i::2])) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    index = json.loads((tmp_path / "s" / INDEX_FILE).read_text())
    assert set(index) == {m["instance_id"] for m in manifests}


def test_open_store_local_fs_satisfies_the_protocol(tmp_path: Path) -> None:
    store = open_store("local-fs", str(tmp_path / "new"))
    assert isinstance(store, ManifestStore)
    assert (tmp_path / "new").is_dir()


def test_a_file_as_storage_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        LocalFsStore(tmp_path / "f")
