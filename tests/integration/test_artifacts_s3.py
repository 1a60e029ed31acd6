"""The S3 artifact store against a real S3 HTTP server (moto's), through the minio client."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from controller.artifacts import build_artifact_store
from controller.artifacts.base import (
    ArtifactDigestMismatchError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
)
from controller.artifacts.s3 import S3ArtifactStore, make_minio_client
from controller.settings import Settings
from provenance.hashing import hash_path

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def _store(endpoint: str, bucket: str, prefix: str = "", part_size: int = 5 * 1024 * 1024) -> S3ArtifactStore:
    client = make_minio_client(endpoint, access_key="testing", secret_key="testing", secure=False)
    return S3ArtifactStore(client, bucket, prefix, part_size=part_size)


def test_file_round_trip_under_a_prefix(s3_endpoint: str, tmp_path: Path) -> None:
    store = _store(s3_endpoint, "mlprov-files", "team/a")
    assert isinstance(store, ArtifactStore)
    source = tmp_path / "data.csv"
    source.write_bytes(b"a,b\n1,2\n")
    hex_digest = hashlib.sha256(source.read_bytes()).hexdigest()
    stored = store.put(source)
    assert stored.digest == f"sha256:{hex_digest}"
    assert stored.uri == f"s3://mlprov-files/team/a/sha256/{hex_digest}"
    assert stored.size == 8
    assert not stored.is_dir
    assert store.exists(stored.digest)
    assert store.open(stored.digest) == source.read_bytes()
    assert store.get(stored.digest, tmp_path / "out" / "copy.csv").read_bytes() == source.read_bytes()
    assert store.put(source, digest=stored.digest) == stored  # idempotent


def test_big_files_go_up_in_parts(s3_endpoint: str, tmp_path: Path) -> None:
    store = _store(s3_endpoint, "mlprov-big", part_size=5 * 1024 * 1024)
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(11 * 1024 * 1024))
    stored = store.put(source)
    info = store._client.stat_object("mlprov-big", f"sha256/{stored.digest[7:]}")
    assert str(info.etag).endswith("-3")  # a multipart upload of three parts
    copy = store.get(stored.digest, tmp_path / "copy.bin")
    assert hash_path(copy) == stored.digest[7:]


def test_directory_artifact_has_an_index_and_round_trips(s3_endpoint: str, tmp_path: Path) -> None:
    store = _store(s3_endpoint, "mlprov-dirs")
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(os.urandom(2048))
    stored = store.put(source)
    assert stored.digest == f"sha256:{hash_path(source)}"
    assert stored.is_dir
    assert stored.size == 2 + 2048
    assert store.exists(stored.digest)
    restored = store.get(stored.digest, tmp_path / "restored")
    assert hash_path(restored) == hash_path(source)
    assert store.stat(stored.digest) == stored
    with pytest.raises(ArtifactNotFoundError):
        store.open(stored.digest)  # a directory has no single byte stream


def test_missing_wrong_and_tampered(s3_endpoint: str, tmp_path: Path) -> None:
    store = _store(s3_endpoint, "mlprov-errors")
    absent = "sha256:" + "0" * 64
    assert not store.exists(absent)
    with pytest.raises(ArtifactNotFoundError):
        store.get(absent, tmp_path / "nothing")
    with pytest.raises(ArtifactNotFoundError):
        store.open(absent)
    source = tmp_path / "f.txt"
    source.write_text("hello")
    with pytest.raises(ArtifactDigestMismatchError):
        store.put(source, digest=absent)
    stored = store.put(source)
    key = f"sha256/{stored.digest[7:]}"
    store._client.put_object("mlprov-errors", key, __import__("io").BytesIO(b"evil!"), 5)  # tamper in the bucket
    with pytest.raises(ArtifactDigestMismatchError):
        store.get(stored.digest, tmp_path / "tampered.txt")
    assert not (tmp_path / "tampered.txt").exists()
    with pytest.raises(ArtifactDigestMismatchError):
        store.open(stored.digest)


def test_unreachable_server_is_a_store_error_quickly(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a closed loopback port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_minio_client(f"http://127.0.0.1:{port}", access_key="a", secret_key="b", secure=True, retries=0)
    store = S3ArtifactStore(client, "mlprov-down")
    source = tmp_path / "f.txt"
    source.write_text("x")
    with pytest.raises(ArtifactStoreError, match="failed"):
        store.put(source)


def test_factory_builds_the_s3_store_from_settings(s3_endpoint: str, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        artifact_store="s3://mlprov-factory/pre",
        s3_endpoint=f"http://{s3_endpoint}",
        s3_access_key="testing",
        s3_secret_key=SecretStr("testing"),
    )
    store = build_artifact_store(settings)
    assert isinstance(store, S3ArtifactStore)
    source = tmp_path / "f.txt"
    source.write_text("factory")
    assert store.put(source).uri.startswith("s3://mlprov-factory/pre/sha256/")
