"""Artifact uploads: ``PUT /api/v1/tasks/{task_id}/artifacts/{digest}`` (docs/sidecar-protocol.md section 2.1).

The route streams the body into a temporary file under ``$MLPROV_HOME/uploads`` (counting bytes against
``Settings.max_artifact_bytes``: 413 past it); :func:`ingest_upload` then

1. for ``application/x-tar``, extracts the directory safely (:func:`extract_tar`: regular files and
   directories only, no absolute paths, no ``..``, no links, devices or FIFOs, no duplicates);
2. re-hashes what it received (a file's sha256 while it streamed in; a directory with
   :func:`provenance.hashing.hash_directory`, the OMS root digest) and refuses a mismatch (400);
3. stores it in the ``ArtifactStore`` (which hashes its own copy again) and records the ``Artifact`` row.

201 when it was stored now, 200 when the controller already held it. The row's ``kind`` is
``unclassified`` until a manifest registration names it (``POST /manifests`` fills name, kind and
media type from the registration's ``artifact``).
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore, split_digest
from controller.errors import InvalidInputError
from controller.store.models import Artifact
from provenance.hashing import hash_directory

__all__ = [
    "TAR_MEDIA_TYPE",
    "UNCLASSIFIED",
    "DigestMismatchError",
    "UnsafeArchiveError",
    "UploadResult",
    "extract_tar",
    "ingest_upload",
]

log = structlog.get_logger(__name__)

TAR_MEDIA_TYPE = "application/x-tar"
UNCLASSIFIED = "unclassified"


class DigestMismatchError(InvalidInputError):
    """What was uploaded hashes to another digest than the URL names."""

    code = "digest_mismatch"


class UnsafeArchiveError(InvalidInputError):
    """A tar member that could escape the directory or is not a plain file."""

    code = "unsafe_archive"


@dataclass(frozen=True)
class UploadResult:
    digest: str
    size: int
    created: bool
    is_dir: bool

    def to_dict(self) -> dict[str, object]:
        return {"digest": self.digest, "size": self.size, "created": self.created, "is_dir": self.is_dir}


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith("/") or "\\" in name:
        raise UnsafeArchiveError(f"tar member {name!r}: absolute or non-POSIX path refused")
    parts = [p for p in path.parts if p != "."]
    if not parts or ".." in parts:
        raise UnsafeArchiveError(f"tar member {name!r}: '..' or empty path refused")
    return PurePosixPath(*parts)


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract an uncompressed tar of a directory's files into ``dest`` (created); see the module docstring."""
    dest.mkdir(parents=True)
    seen: set[PurePosixPath] = set()
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                rel = _member_path(member.name)
                if member.isdir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "device or special file"
                    raise UnsafeArchiveError(f"tar member {member.name!r}: a {kind} is refused (regular files only)")
                if rel in seen:
                    raise UnsafeArchiveError(f"tar member {member.name!r} appears twice")
                seen.add(rel)
                target = dest / rel
                if not target.resolve().is_relative_to(dest.resolve()):
                    raise UnsafeArchiveError(f"tar member {member.name!r} resolves outside the directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has a file object
                with source, open(target, "xb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
    except tarfile.TarError as exc:
        raise InvalidInputError(f"the body is not a valid uncompressed tar: {exc}") from None


def ingest_upload(
    *,
    spool: Path,
    digest: str,
    media_type: str,
    streamed_sha256: str,
    store: ArtifactStore,
    session_factory: sessionmaker[Session],
) -> UploadResult:
    """Verify, store and record an upload spooled at ``spool`` (removed afterwards, whatever happens)."""
    expected_hex = split_digest(digest)
    workdir = spool.with_name(spool.name + ".d")
    try:
        is_dir = media_type == TAR_MEDIA_TYPE
        if is_dir:
            content = workdir / "artifact"
            extract_tar(spool, content)
            actual = hash_directory(content).root
        else:
            content, actual = spool, streamed_sha256
        if actual != expected_hex:
            raise DigestMismatchError(
                f"the uploaded {'directory' if is_dir else 'file'} hashes to sha256:{actual}, not {digest}: "
                "the artifact changed after hashing or the digest is wrong"
            )
        with session_factory() as session:
            row = session.get(Artifact, digest)
            if row is not None and store.exists(digest):
                return UploadResult(digest, row.size, False, is_dir)
            stored = store.put(content, digest)
            if row is None:
                row = Artifact(digest=digest, kind=UNCLASSIFIED, size=stored.size, uris=[stored.uri])
                session.add(row)
            elif stored.uri not in (row.uris or []):
                row.uris = [*(row.uris or []), stored.uri]
            try:
                session.commit()
            except IntegrityError:  # another upload of the same digest won the race
                session.rollback()
                return UploadResult(digest, stored.size, False, stored.is_dir)
        log.info("artifact_uploaded", digest=digest, size=stored.size, is_dir=stored.is_dir)
        return UploadResult(digest, stored.size, True, stored.is_dir)
    finally:
        spool.unlink(missing_ok=True)
        if workdir.exists():
            shutil.rmtree(workdir, ignore_errors=True)
