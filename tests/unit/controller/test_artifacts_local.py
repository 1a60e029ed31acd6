"""The local content-addressed artifact directory: layout, digests verified, atomic, idempotent, read-only."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from controller.artifacts import build_artifact_store
from controller.artifacts.base import (
    ArtifactDigestMismatchError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    InvalidDigestError,
)
from controller.artifacts.local import LocalArtifactStore
from controller.errors import status_for
from controller.settings import Settings
from provenance.hashing import hash_path


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _file(tmp_path: Path, name: str = "model.bin", data: bytes = b"weights " * 1000) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    (root / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(4096))
    return root


def test_file_is_stored_under_its_sha256_read_only(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = _file(tmp_path)
    hex_digest = hashlib.sha256(source.read_bytes()).hexdigest()
    stored = store.put(source)
    assert stored.digest == f"sha256:{hex_digest}"
    assert stored.size == source.stat().st_size
    assert not stored.is_dir
    location = store.root / "sha256" / hex_digest[:2] / hex_digest
    assert stored.uri == location.as_uri()
    assert location.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(location.stat().st_mode) & 0o222 == 0
    assert isinstance(store, ArtifactStore)


def test_put_is_idempotent_and_leaves_no_temporaries(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = _file(tmp_path)
    first = store.put(source)
    second = store.put(source, digest=first.digest)
    third = store.put(source)
    assert first == second == third
    assert list((store.root / "tmp").iterdir()) == []
    assert len(list((store.root / "sha256").rglob("*"))) == 2  # <ab>/ and the file


def test_get_open_exists_round_trip(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = _file(tmp_path, data=b"abc")
    digest = store.put(source).digest
    assert store.exists(digest)
    assert store.open(digest) == b"abc"
    dest = store.get(digest, tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == b"abc"
    dest.write_bytes(b"the caller may edit its copy")  # materialised copies are writable
    assert store.open(digest) == b"abc"


def test_directory_artifact_uses_the_oms_root_digest(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = _tree(tmp_path / "model")
    stored = store.put(source)
    assert stored.digest == f"sha256:{hash_path(source)}"
    assert stored.is_dir
    assert stored.size == 5 + 4 + 4096
    copy = store.get(stored.digest, tmp_path / "restored")
    assert hash_path(copy) == hash_path(source)
    assert (copy / "sub" / "b.txt").read_text() == "beta"
    kept = store.path_of(stored.digest) / "a.txt"
    assert stat.S_IMODE(kept.stat().st_mode) & 0o222 == 0
    assert store.put(source).digest == stored.digest
    with pytest.raises(ArtifactStoreError, match="directory artifact"):
        store.open(stored.digest)


def test_wrong_digest_is_refused_and_nothing_is_stored(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = _file(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ArtifactDigestMismatchError, match="hashes to"):
        store.put(source, digest=wrong)
    assert not store.exists(wrong)
    assert list((store.root / "tmp").iterdir()) == []
    assert status_for(ArtifactDigestMismatchError("x"))[0] == 400


def test_missing_and_malformed_digests(store: LocalArtifactStore, tmp_path: Path) -> None:
    absent = "sha256:" + "ab" * 32
    assert not store.exists(absent)
    with pytest.raises(ArtifactNotFoundError):
        store.open(absent)
    with pytest.raises(ArtifactNotFoundError):
        store.get(absent, tmp_path / "x")
    assert status_for(ArtifactNotFoundError("x"))[0] == 404
    for bad in ("sha256:xyz", "md5:" + "0" * 32, "sha512:" + "0" * 128, "../../etc/passwd"):
        with pytest.raises(InvalidDigestError):
            store.exists(bad)


def test_symlinks_and_special_paths_are_refused(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = _tree(tmp_path / "model")
    (source / "link").symlink_to(source / "a.txt")
    with pytest.raises(ArtifactStoreError, match="symbolic link"):
        store.put(source)
    with pytest.raises(ArtifactStoreError, match="not a regular file"):
        store.put(tmp_path / "does-not-exist")
    assert list((store.root / "tmp").iterdir()) == []


def test_get_refuses_to_overwrite(store: LocalArtifactStore, tmp_path: Path) -> None:
    digest = store.put(_file(tmp_path)).digest
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ArtifactStoreError, match="already exists"):
        store.get(digest, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_concurrent_writers_of_one_digest_all_succeed(store: LocalArtifactStore, tmp_path: Path) -> None:
    file_source = _file(tmp_path, data=os.urandom(1 << 20))
    dir_source = _tree(tmp_path / "model")
    results: list[str] = []
    errors: list[BaseException] = []

    def put(path: Path) -> None:
        try:
            results.append(store.put(path).digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(p,)) for p in [file_source, dir_source] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 2
    assert list((store.root / "tmp").iterdir()) == []


def test_factory_builds_the_local_store_under_home(tmp_path: Path) -> None:
    built = build_artifact_store(Settings(home=tmp_path / "home"))
    assert isinstance(built, LocalArtifactStore)
    assert built.root == (tmp_path / "home" / "artifacts").resolve()
