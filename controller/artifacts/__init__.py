"""Artifact stores behind the ``ArtifactStore`` seam; :func:`build_artifact_store` picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.artifacts.base import (
    ArtifactDigestMismatchError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    InvalidDigestError,
    StoredArtifact,
)

if TYPE_CHECKING:
    from controller.settings import Settings

__all__ = [
    "ArtifactDigestMismatchError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "ArtifactStoreError",
    "InvalidDigestError",
    "StoredArtifact",
    "build_artifact_store",
]


def build_artifact_store(settings: Settings) -> ArtifactStore:
    """``MLPROV_ARTIFACT_STORE``: unset or a directory -> local directory; ``s3://bucket[/prefix]`` -> S3.

    The S3 store needs ``MLPROV_S3_ENDPOINT`` (``host:port`` or an ``http(s)://`` URL), and takes
    ``MLPROV_S3_ACCESS_KEY`` / ``MLPROV_S3_SECRET_KEY`` / ``MLPROV_S3_SECURE``. Nothing is contacted
    here: the bucket is checked (and created if missing) on the first write.
    """
    target = settings.artifact_store
    if target is not None and target.startswith("s3://"):
        from controller.artifacts.s3 import S3ArtifactStore, make_minio_client

        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        if not settings.s3_endpoint:
            raise ArtifactStoreError(f"MLPROV_ARTIFACT_STORE={target} needs MLPROV_S3_ENDPOINT (host:port or URL)")
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key is not None else None
        client = make_minio_client(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=secret,
            secure=settings.s3_secure,
        )
        return S3ArtifactStore(client, bucket, prefix)
    from controller.artifacts.local import LocalArtifactStore

    directory = settings.artifact_dir
    assert directory is not None  # None only for s3:// targets, handled above
    return LocalArtifactStore(directory)
