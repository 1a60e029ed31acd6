"""The ``ArtifactStore`` seam: artifacts kept by content digest (``sha256:<hex>``).

Implementations: ``local`` (a directory, the embedded default) and ``s3`` (S3 / MinIO).
A directory artifact is stored as its files under the digest (its OMS root digest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ArtifactStore", "StoredArtifact"]


@dataclass(frozen=True)
class StoredArtifact:
    digest: str  # "sha256:<hex>"
    size: int  # bytes (sum of files for a directory)
    uri: str  # where it is kept: file:///..., s3://bucket/key
    is_dir: bool = False


@runtime_checkable
class ArtifactStore(Protocol):
    def put(self, path: Path, digest: str | None = None) -> StoredArtifact:
        """Store a file or directory under its digest (computed when not given); idempotent."""
        ...

    def get(self, digest: str, dest: Path) -> Path:
        """Materialise the artifact at ``dest`` (file or directory); ``ArtifactNotFoundError`` if absent."""
        ...

    def exists(self, digest: str) -> bool:
        ...

    def open(self, digest: str) -> bytes:
        """The bytes of a file artifact (for re-hashing during verification)."""
        ...
