"""The ``ArtifactStore`` seam: artifacts kept by content digest (``sha256:<hex>``).

Implementations, one per file: ``local`` (a directory, the embedded default) and ``s3`` (S3 /
MinIO). A file artifact's digest is the sha256 of its bytes; a directory artifact's digest is its
OMS root digest (:func:`provenance.hashing.hash_path`), and the store keeps its files under it.

Every implementation verifies the digest of what it actually stored (not only of the source), so a
source that changes while being copied is refused rather than filed under the wrong digest.

Errors::

    controller.errors.UnavailableError (503)
     └── ArtifactStoreError            the store cannot be reached or refuses a write      503
          ├── ArtifactNotFoundError    no artifact with that digest (also a
          │                            controller.errors.ArtifactNotFoundError)           404
          ├── InvalidDigestError       malformed digest or unsupported algorithm          400
          └── ArtifactDigestMismatchError  content hashes to another digest than given    400
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from controller import errors
from provenance.errors import InvalidInputError
from provenance.hashing import parse_digest

__all__ = [
    "ArtifactDigestMismatchError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "ArtifactStoreError",
    "InvalidDigestError",
    "StoredArtifact",
    "split_digest",
]


class ArtifactStoreError(errors.UnavailableError):
    """The artifact store could not do what was asked (I/O, network, refused write). HTTP 503."""

    code = "artifact_store_error"


class ArtifactNotFoundError(ArtifactStoreError, errors.ArtifactNotFoundError):
    """No artifact with the given digest is stored. HTTP 404 (a ``controller.errors.ArtifactNotFoundError``)."""

    status_code = 404
    code = "artifact_not_found"


class InvalidDigestError(ArtifactStoreError, errors.InvalidInputError):
    """A digest that is not ``sha256:<64 lowercase hex>``. HTTP 400."""

    status_code = 400
    code = "invalid_digest"


class ArtifactDigestMismatchError(ArtifactStoreError, errors.InvalidInputError):
    """What was stored hashes to another digest than the one the caller gave. HTTP 400."""

    status_code = 400
    code = "digest_mismatch"


def split_digest(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest; :class:`InvalidDigestError` otherwise."""
    try:
        alg, hex_digest = parse_digest(digest)
    except InvalidInputError as exc:
        raise InvalidDigestError(str(exc)) from None
    if alg != "sha256":
        raise InvalidDigestError(f"{digest!r}: artifacts are stored by sha256 digest only")
    return hex_digest


@dataclass(frozen=True)
class StoredArtifact:
    digest: str  # "sha256:<hex>"
    size: int  # bytes (sum of files for a directory)
    uri: str  # where it is kept: file:///..., s3://bucket/key
    is_dir: bool = False


@runtime_checkable
class ArtifactStore(Protocol):
    def put(self, path: Path, digest: str | None = None) -> StoredArtifact:
        """Store a file or directory under its digest (computed when not given); idempotent.

        Raises :class:`ArtifactDigestMismatchError` when ``digest`` is given and the stored content
        hashes to something else, :class:`ArtifactStoreError` when ``path`` cannot be read.
        """
        ...

    def get(self, digest: str, dest: Path) -> Path:
        """Materialise the artifact at ``dest`` (file or directory); ``ArtifactNotFoundError`` if absent.

        ``dest`` must not exist yet (its parent is created); the result is writable by the caller.
        """
        ...

    def exists(self, digest: str) -> bool: ...

    def open(self, digest: str) -> bytes:
        """The bytes of a file artifact (for re-hashing during verification)."""
        ...
