"""The ``ManifestStore`` seam: where manifests (with their C2PA sidecar and OMS bundle) live.

Implementations, one per file: ``local_fs`` (a directory laid out as atlas-cli does), ``database`` (a
client of the Atlas storage-service HTTP API, which the controller serves), ``rekor`` (Rekor DSSE
entries). :func:`provenance.storage.open_store` picks one from atlas-cli's ``--storage-type`` and
``--storage-url``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

__all__ = ["STORAGE_TYPES", "ManifestStore", "ManifestSummary", "StorageType", "StoredManifest"]

#: atlas-cli's ``--storage-type`` values.
StorageType = Literal["database", "local-fs", "rekor"]
STORAGE_TYPES: Final[tuple[StorageType, ...]] = ("database", "local-fs", "rekor")


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as a store returns it, with the signatures kept beside it."""

    id: str
    manifest: dict[str, Any]
    c2pa: bytes | None = None
    """The C2PA sidecar manifest (``.c2pa`` bytes) of the manifest's asset, when one was stored."""
    oms_bundle: bytes | None = None
    """The OpenSSF Model Signing bundle (Sigstore bundle JSON bytes), for models."""
    locations: dict[str, str] = field(default_factory=dict)
    """Where each piece is kept, e.g. ``{"manifest": "/dir/ab12.json", "c2pa": "/dir/ab12.c2pa"}``."""


@dataclass(frozen=True)
class ManifestSummary:
    id: str
    title: str
    kind: str
    """Atlas manifest type: ``Model``, ``Dataset``, ``Software``, ``EvaluationResult`` or ``Unknown``."""
    created_at: str


@runtime_checkable
class ManifestStore(Protocol):
    def put(
        self,
        manifest: dict[str, Any],
        *,
        c2pa: bytes | None = None,
        oms_bundle: bytes | None = None,
    ) -> StoredManifest:
        """Store a signed manifest (idempotent on its ``instance_id``); return what was stored.

        Storing the identical manifest again is a no-op; a *different* manifest under an ID already
        stored raises ``StorageError`` (a manifest ID names one immutable manifest).
        """
        ...

    def get(self, manifest_id: str) -> StoredManifest:
        """Return the manifest with this ID or raise ``ManifestNotFoundError``."""
        ...

    def list(self) -> list[ManifestSummary]:
        """Every stored manifest, oldest first."""
        ...

    def delete(self, manifest_id: str) -> None:
        """Remove a manifest and what is kept beside it; ``ManifestNotFoundError`` when absent."""
        ...
