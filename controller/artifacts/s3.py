"""The ``ArtifactStore`` at scale: an S3 bucket (AWS S3, MinIO, any S3 API), through the ``minio`` client.

Keys, under an optional prefix ``P``::

    P/sha256/<hex>                  a file artifact
    P/sha256/<hex>.d/<relative>     each file of a directory artifact
    P/sha256/<hex>.index.json       a directory artifact's index: its files, their digests and sizes;
                                    written last, so its presence means the directory is complete

Uploads stream through a hashing reader: the digest of the bytes actually sent is checked before the
artifact counts as stored (a file that changed mid-upload is deleted again and refused). Files above
``part_size`` go up as multipart uploads. Downloads land in a temporary file that is hashed before it
is renamed into place. Every HTTP call has connect/read time-outs and bounded retries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import structlog
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from controller.artifacts.base import (
    ArtifactDigestMismatchError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    StoredArtifact,
    split_digest,
)
from provenance.errors import InvalidInputError
from provenance.hashing import hash_directory, hash_file

__all__ = ["S3ArtifactStore", "make_minio_client"]

log = structlog.get_logger(__name__)

# NoSuchBucket too: before the first write creates the bucket, nothing is stored in it
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound", "NoSuchBucket"})
_COPY_CHUNK = 4 * 1024 * 1024


def make_minio_client(
    endpoint: str,
    *,
    access_key: str | None,
    secret_key: str | None,
    secure: bool,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    retries: int = 3,
) -> Minio:
    """A ``Minio`` client with explicit time-outs and retries. ``endpoint`` may carry a scheme."""
    if endpoint.startswith(("http://", "https://")):
        secure = endpoint.startswith("https://")
        endpoint = endpoint.split("://", 1)[1]
    endpoint = endpoint.rstrip("/")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=10,
        retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)


class _HashingReader(io.RawIOBase):
    """Wraps a binary stream; hashes and counts every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self.hasher = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hasher.update(data)
        self.count += len(data)
        return data


class S3ArtifactStore:
    """Content-addressed artifacts in ``bucket`` under ``prefix``."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = 16 * 1024 * 1024,
        create_bucket: bool = True,
    ) -> None:
        if len(bucket) < 3:
            raise ArtifactStoreError(f"S3 bucket name {bucket!r} is too short (3 characters at least)")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._part_size = part_size
        self._create_bucket = create_bucket
        self._bucket_ready = False

    # -- keys ---------------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.prefix}/sha256/{name}" if self.prefix else f"sha256/{name}"

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- helpers ------------------------------------------------------------------------------
    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call; translate its failures into the store's errors."""
        try:
            return func(*args, **kwargs)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                raise ArtifactNotFoundError(f"{what}: not found in s3://{self.bucket}") from None
            raise ArtifactStoreError(f"{what}: S3 refused ({exc.code}: {exc.message})") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise ArtifactStoreError(f"{what}: S3 request to bucket {self.bucket} failed: {exc}") from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready or not self._create_bucket:
            return
        if not self._call("check bucket", self._client.bucket_exists, self.bucket):
            try:
                self._call("create bucket", self._client.make_bucket, self.bucket)
            except ArtifactStoreError:
                if not self._call("check bucket", self._client.bucket_exists, self.bucket):
                    raise
        self._bucket_ready = True

    def _has(self, key: str) -> bool:
        try:
            self._call(f"stat {key}", self._client.stat_object, self.bucket, key)
        except ArtifactNotFoundError:
            return False
        return True

    def _upload_file(self, path: Path, key: str, expected_hex: str) -> int:
        size = path.stat().st_size
        with path.open("rb") as fh:
            reader = _HashingReader(fh)
            self._call(
                f"upload {path}",
                self._client.put_object,
                self.bucket,
                key,
                reader,
                size,
                part_size=self._part_size,
                num_parallel_uploads=1,  # parts are read in order through the hashing reader
            )
        sent = reader.hasher.hexdigest()
        if sent != expected_hex or reader.count != size:
            self._call(f"remove {key}", self._client.remove_object, self.bucket, key)
            raise ArtifactDigestMismatchError(
                f"{path} changed while uploading (sent sha256:{sent}, expected sha256:{expected_hex})"
            )
        return size

    def _download(self, key: str, dest: Path, expected_hex: str) -> None:
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
        try:
            response = self._call(f"download {key}", self._client.get_object, self.bucket, key)
            hasher = hashlib.sha256()
            try:
                with tmp.open("wb") as out:
                    for chunk in response.stream(_COPY_CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ArtifactStoreError(f"download {key}: {exc}") from exc
            finally:
                response.close()
                response.release_conn()
            if hasher.hexdigest() != expected_hex:
                raise ArtifactDigestMismatchError(
                    f"s3://{self.bucket}/{key} holds content with sha256:{hasher.hexdigest()}, not {expected_hex}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def _read_index(self, hex_digest: str) -> dict[str, Any]:
        key = self._key(f"{hex_digest}.index.json")
        response = self._call(f"read index {key}", self._client.get_object, self.bucket, key)
        try:
            index: dict[str, Any] = json.loads(response.read())
        except (urllib3.exceptions.HTTPError, ValueError) as exc:
            raise ArtifactStoreError(f"read index {key}: {exc}") from exc
        finally:
            response.close()
            response.release_conn()
        return index

    # -- the Protocol -------------------------------------------------------------------------
    def put(self, path: Path, digest: str | None = None) -> StoredArtifact:
        source = Path(path)
        expected = split_digest(digest) if digest is not None else None
        if source.is_symlink() or not (source.is_file() or source.is_dir()):
            raise ArtifactStoreError(f"cannot store {source}: not a regular file or directory")
        self._ensure_bucket()
        try:
            if source.is_dir():
                tree = hash_directory(source, alg="sha256")
                actual = tree.root
            else:
                actual = hash_file(source, alg="sha256")
                tree = None
        except InvalidInputError as exc:
            raise ArtifactStoreError(f"cannot store {source}: {exc}") from None
        if expected is not None and actual != expected:
            raise ArtifactDigestMismatchError(f"{source} hashes to sha256:{actual}, not the given {digest}")
        if self.exists(f"sha256:{actual}"):
            return self.stat(f"sha256:{actual}")
        if tree is None:
            size = self._upload_file(source, self._key(actual), actual)
            log.debug("artifact_stored", digest=f"sha256:{actual}", bucket=self.bucket)
            return StoredArtifact(f"sha256:{actual}", size, self._uri(self._key(actual)))
        files: dict[str, dict[str, Any]] = {}
        for rel, file_hex in tree.files.items():
            size = self._upload_file(source / rel, self._key(f"{actual}.d/{rel}"), file_hex)
            files[rel] = {"sha256": file_hex, "size": size}
        total = sum(f["size"] for f in files.values())
        index = json.dumps({"digest": f"sha256:{actual}", "size": total, "files": files}, sort_keys=True).encode()
        self._call(
            "write directory index",
            self._client.put_object,
            self.bucket,
            self._key(f"{actual}.index.json"),
            io.BytesIO(index),
            len(index),
            content_type="application/json",
        )
        log.debug("artifact_stored", digest=f"sha256:{actual}", bucket=self.bucket, files=len(files))
        return StoredArtifact(f"sha256:{actual}", total, self._uri(self._key(f"{actual}.d/")), is_dir=True)

    def exists(self, digest: str) -> bool:
        hex_digest = split_digest(digest)
        return self._has(self._key(hex_digest)) or self._has(self._key(f"{hex_digest}.index.json"))

    def stat(self, digest: str) -> StoredArtifact:
        hex_digest = split_digest(digest)
        try:
            info = self._call(f"stat {digest}", self._client.stat_object, self.bucket, self._key(hex_digest))
            return StoredArtifact(digest, int(info.size), self._uri(self._key(hex_digest)))
        except ArtifactNotFoundError:
            pass
        try:
            index = self._read_index(hex_digest)
        except ArtifactNotFoundError:
            raise ArtifactNotFoundError(f"no artifact {digest} in s3://{self.bucket}/{self.prefix}") from None
        return StoredArtifact(digest, int(index["size"]), self._uri(self._key(f"{hex_digest}.d/")), is_dir=True)

    def get(self, digest: str, dest: Path) -> Path:
        hex_digest = split_digest(digest)
        dest = Path(dest)
        if dest.exists():
            raise ArtifactStoreError(f"cannot materialise {digest} at {dest}: it already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self._has(self._key(hex_digest)):
            self._download(self._key(hex_digest), dest, hex_digest)
            return dest
        try:
            index = self._read_index(hex_digest)
        except ArtifactNotFoundError:
            raise ArtifactNotFoundError(f"no artifact {digest} in s3://{self.bucket}/{self.prefix}") from None
        staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
        try:
            for rel, entry in index["files"].items():
                relative = PurePosixPath(rel)
                if relative.is_absolute() or ".." in relative.parts:
                    raise ArtifactStoreError(f"directory index of {digest} names an unsafe path {rel!r}")
                target = staging.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(self._key(f"{hex_digest}.d/{rel}"), target, str(entry["sha256"]))
            staging.mkdir(exist_ok=True)  # an empty directory artifact
            os.rename(staging, dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return dest

    def open(self, digest: str) -> bytes:
        hex_digest = split_digest(digest)
        key = self._key(hex_digest)
        response = self._call(f"read {digest}", self._client.get_object, self.bucket, key)
        try:
            data: bytes = response.read()
        except urllib3.exceptions.HTTPError as exc:
            raise ArtifactStoreError(f"read {digest}: {exc}") from exc
        finally:
            response.close()
            response.release_conn()
        if hashlib.sha256(data).hexdigest() != hex_digest:
            raise ArtifactDigestMismatchError(f"s3://{self.bucket}/{key} does not hash to {digest}")
        return data
