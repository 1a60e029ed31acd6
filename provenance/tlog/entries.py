"""What the transparency log holds for a manifest: one entry per signed manifest, fixed format v1.

The leaf data (the bytes appended; the Merkle leaf is ``SHA-256(0x00 || data)``, RFC 6962) is::

    b"mlprov-manifest:v1\\n" + <manifest ID, UTF-8> + b"\\n" + <manifest hash, 64 lowercase hex> + b"\\n"

- **manifest ID**: the manifest's ``instance_id`` (``urn:c2pa:<uuid>``), so a log monitor reading the
  entries sees which manifests were logged, without the manifests.
- **manifest hash**: SHA-256 of the manifest's canonical Atlas JSON (:func:`provenance.manifest.manifest_hash`
  with ``sha256``), the same value a cross-reference to the manifest carries. It covers everything a
  verifier checks: the claim with its ``signature`` and ``mlprov.signer`` assertion, ``c2pa.claim.v2``
  and the top-level fields. Re-signing, editing any signed field or swapping the signature gives
  another hash, hence another leaf.

A verifier holding only the manifest recomputes the data, its leaf hash, and asks the log for that
leaf (:meth:`TransparencyLog.find`): no index by ID is needed, and an entry can never be found for
different content. The format is versioned by its first line; a new format gets a new prefix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from provenance.errors import InvalidInputError

__all__ = ["MANIFEST_ENTRY_PREFIX", "ManifestEntry", "manifest_entry", "manifest_entry_leaf", "parse_manifest_entry"]

MANIFEST_ENTRY_PREFIX: Final = b"mlprov-manifest:v1\n"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ManifestEntry:
    """A decoded v1 entry: which manifest, and the SHA-256 of its canonical JSON."""

    manifest_id: str
    manifest_hash: str

    def data(self) -> bytes:
        return MANIFEST_ENTRY_PREFIX + f"{self.manifest_id}\n{self.manifest_hash}\n".encode()


def manifest_entry(manifest: dict[str, Any]) -> bytes:
    """The leaf data that logs ``manifest`` (see the module docstring); ``InvalidInputError`` if it is not
    an Atlas manifest with an ID."""
    from provenance.manifest import manifest_hash

    manifest_id = manifest.get("instance_id")
    if not isinstance(manifest_id, str) or not manifest_id or "\n" in manifest_id:
        raise InvalidInputError("a manifest without a one-line instance_id cannot be logged")
    return ManifestEntry(manifest_id, manifest_hash(manifest, "sha256")).data()


def manifest_entry_leaf(manifest: dict[str, Any]) -> bytes:
    """The RFC 6962 leaf hash of :func:`manifest_entry` (what :meth:`TransparencyLog.find` takes)."""
    return hashlib.sha256(b"\x00" + manifest_entry(manifest)).digest()


def parse_manifest_entry(data: bytes) -> ManifestEntry:
    """Decode v1 leaf data; ``InvalidInputError`` when it is not a manifest entry."""
    if not data.startswith(MANIFEST_ENTRY_PREFIX) or not data.endswith(b"\n"):
        raise InvalidInputError("log entry is not an mlprov-manifest:v1 entry")
    lines = data[len(MANIFEST_ENTRY_PREFIX) : -1].split(b"\n")
    if len(lines) != 2:
        raise InvalidInputError("mlprov-manifest:v1 entry must have an ID line and a hash line")
    try:
        manifest_id, digest = lines[0].decode(), lines[1].decode()
    except UnicodeDecodeError:
        raise InvalidInputError("mlprov-manifest:v1 entry is not UTF-8") from None
    if not manifest_id or not _HEX64.fullmatch(digest):
        raise InvalidInputError("mlprov-manifest:v1 entry needs an ID and a 64-digit lowercase hex hash")
    return ManifestEntry(manifest_id, digest)
