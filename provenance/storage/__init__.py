"""Manifest stores behind one seam (:class:`ManifestStore`), chosen by atlas-cli's storage flags.

Backends are imported only when opened, so importing this package costs nothing (``mlprov --help``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from provenance.errors import InvalidInputError
from provenance.storage.base import STORAGE_TYPES, ManifestStore, ManifestSummary, StorageType, StoredManifest

if TYPE_CHECKING:
    from provenance.keys import SigningIdentity

__all__ = ["STORAGE_TYPES", "ManifestStore", "ManifestSummary", "StorageType", "StoredManifest", "open_store"]


def open_store(
    storage_type: str,
    storage_url: str,
    *,
    token: str | None = None,
    timeout: float | None = None,
    home: Path | None = None,
    signer: Callable[[], SigningIdentity] | None = None,
) -> ManifestStore:
    """Open the store atlas-cli's ``--storage-type``/``--storage-url`` name.

    ``local-fs``: ``storage_url`` is a directory (or ``file://`` URL), created when missing.
    ``database``: the base URL of an Atlas storage service; ``token`` is sent as a bearer token.
    ``rekor``: the base URL of a Rekor server; manifests are cached under ``home/rekor/<host>`` and
    logged with the identity ``signer`` returns (called only when storing).
    Raises :class:`InvalidInputError` for an unknown type, ``StorageError`` for an unusable URL.
    """
    if storage_type == "local-fs":
        from provenance.storage.local_fs import LocalFsStore

        return LocalFsStore(storage_url)
    if storage_type == "database":
        from provenance.storage.database import DEFAULT_TIMEOUT, DatabaseStore

        return DatabaseStore(storage_url, token=token, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    if storage_type == "rekor":
        from provenance.storage.rekor import RekorStore, default_cache_dir

        cache = default_cache_dir(home if home is not None else Path(".mlprov"), storage_url)
        return RekorStore(storage_url, cache_dir=cache, signer=signer, timeout=timeout)
    raise InvalidInputError(f"unknown storage type {storage_type!r}; use one of {', '.join(STORAGE_TYPES)}")
