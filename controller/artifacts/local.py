"""The embedded ``ArtifactStore``: a content-addressed directory.

Layout under ``root`` (``$MLPROV_HOME/artifacts``)::

    sha256/<ab>/<hex>      a file artifact (mode 0444), or a directory artifact's tree (files 0444)
    tmp/                   copies in progress (same file system, so the final rename is atomic)

``put`` copies into ``tmp/``, hashes the *copy* (what is stored is what is verified), then renames it
into place. Two writers racing on one digest both succeed: the first rename wins, the second finds
the digest present and discards its copy.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path

import structlog

from controller.artifacts.base import (
    ArtifactDigestMismatchError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    StoredArtifact,
    split_digest,
)
from provenance.errors import InvalidInputError
from provenance.hashing import hash_path

__all__ = ["LocalArtifactStore"]

log = structlog.get_logger(__name__)

_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def _tree_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)  # read-only files go too: unlinking needs only the (writable) directory
    else:
        path.unlink(missing_ok=True)


class LocalArtifactStore:
    """Artifacts as files under ``root/sha256/<ab>/<hex>``; safe for concurrent writers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _location(self, hex_digest: str) -> Path:
        return self._objects / hex_digest[:2] / hex_digest

    def path_of(self, digest: str) -> Path:
        """Where a stored artifact lives (read-only); ``ArtifactNotFoundError`` if absent."""
        target = self._location(split_digest(digest))
        if not target.exists():
            raise ArtifactNotFoundError(f"no artifact {digest} in {self.root}")
        return target

    def put(self, path: Path, digest: str | None = None) -> StoredArtifact:
        source = Path(path)
        expected = split_digest(digest) if digest is not None else None
        if expected is not None and self._location(expected).exists():
            return self.stat(f"sha256:{expected}")
        if source.is_symlink() or not (source.is_file() or source.is_dir()):
            raise ArtifactStoreError(f"cannot store {source}: not a regular file or directory")
        staging = self._tmp / f"{uuid.uuid4().hex}.partial"
        try:
            self._copy_in(source, staging)
            try:
                actual = hash_path(staging, alg="sha256")
            except InvalidInputError as exc:
                raise ArtifactStoreError(f"cannot store {source}: {exc}") from None
            if expected is not None and actual != expected:
                raise ArtifactDigestMismatchError(
                    f"{source} hashes to sha256:{actual}, not the given {digest}; it changed or the digest is wrong"
                )
            self._seal(staging)
            target = self._location(actual)
            target.parent.mkdir(exist_ok=True)
            if not target.exists():
                try:
                    os.rename(staging, target)
                    log.debug("artifact_stored", digest=f"sha256:{actual}", path=str(target))
                except OSError:
                    if not target.exists():  # a real failure, not a lost race with another writer
                        raise
        except OSError as exc:
            raise ArtifactStoreError(f"cannot store {source} in {self.root}: {exc}") from exc
        finally:
            if staging.exists():
                _remove(staging)
        return self.stat(f"sha256:{actual}")

    def _copy_in(self, source: Path, staging: Path) -> None:
        if source.is_dir():
            shutil.copytree(source, staging, symlinks=True)
        else:
            shutil.copyfile(source, staging)

    def _seal(self, staging: Path) -> None:
        """Make the stored files read-only (directories stay traversable and removable by the owner)."""
        if staging.is_dir():
            for file in staging.rglob("*"):
                if file.is_file():
                    file.chmod(_READ_ONLY)
        else:
            staging.chmod(_READ_ONLY)

    def stat(self, digest: str) -> StoredArtifact:
        target = self.path_of(digest)
        return StoredArtifact(digest=digest, size=_tree_size(target), uri=target.as_uri(), is_dir=target.is_dir())

    def exists(self, digest: str) -> bool:
        return self._location(split_digest(digest)).exists()

    def get(self, digest: str, dest: Path) -> Path:
        target = self.path_of(digest)
        dest = Path(dest)
        if dest.exists():
            raise ArtifactStoreError(f"cannot materialise {digest} at {dest}: it already exists")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                shutil.copytree(target, dest, copy_function=shutil.copyfile)
            else:
                shutil.copyfile(target, dest)
        except OSError as exc:
            raise ArtifactStoreError(f"cannot materialise {digest} at {dest}: {exc}") from exc
        return dest

    def open(self, digest: str) -> bytes:
        target = self.path_of(digest)
        if target.is_dir():
            raise ArtifactStoreError(f"{digest} is a directory artifact; use get() to materialise it")
        try:
            return target.read_bytes()
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read {digest}: {exc}") from exc
