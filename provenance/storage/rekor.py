"""``--storage-type rekor``: manifests logged in a Rekor transparency log as DSSE entries.

Rekor keeps hashes and signatures, not content (atlas-cli's rekor backend can therefore store but not
retrieve or list). mlprov logs the manifest in Rekor *and* keeps its bytes, with its C2PA sidecar and
OMS bundle, in a local cache laid out as the local-fs store (``cache_dir``, by default
``$MLPROV_HOME/rekor/<host>``), so ``get``/``list`` work, and every ``get`` re-checks the log:

* ``put``: the manifest's JSON (compact, as ``serde_json::to_vec`` writes it) becomes the payload of a
  DSSE envelope of type ``application/vnd.atlas-cli.manifest+json`` (atlas-cli's), signed with the
  signing identity over the DSSE PAE; the verifier sent to Rekor is the signing certificate (or the
  bare public key). The entry is submitted, its inclusion proof verified by
  :class:`~provenance.tlog.rekor.RekorClient`, then the manifest is cached and the entry's UUID is
  recorded in ``rekor_index.json`` beside it. The ID printed is the manifest's own ``instance_id``
  (atlas-cli prints the Rekor UUID; the manifest ID is what every other command takes).
* ``get``: the cached manifest, after fetching its Rekor entry (proofs verified again) and checking
  the entry's payload hash equals the SHA-256 of the cached manifest's bytes.
* ``delete``: refused; a transparency log is append-only.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization

from provenance.errors import StorageError, TransparencyLogError
from provenance.storage.atomic import write_atomic
from provenance.storage.base import ManifestSummary, StoredManifest
from provenance.storage.local_fs import LocalFsStore
from provenance.tlog.rekor import RekorClient, dsse_proposed_entry

if TYPE_CHECKING:
    from provenance.keys import SigningIdentity

__all__ = ["MANIFEST_PAYLOAD_TYPE", "REKOR_INDEX_FILE", "RekorStore", "dsse_pae"]

MANIFEST_PAYLOAD_TYPE: Final = "application/vnd.atlas-cli.manifest+json"
REKOR_INDEX_FILE: Final = "rekor_index.json"


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _payload(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode()


def default_cache_dir(home: Path, url: str) -> Path:
    host = urlsplit(url).netloc or "rekor"
    return home / "rekor" / host.replace(":", "_")


class RekorStore:
    """A :class:`~provenance.storage.base.ManifestStore` over Rekor, with a local content cache."""

    def __init__(
        self,
        url: str,
        *,
        cache_dir: Path | None = None,
        signer: Callable[[], SigningIdentity] | None = None,
        timeout: float | None = None,
        public_key_pem: bytes | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise StorageError(f"Rekor URL {url!r} is not an http(s) URL; pass --storage-url https://HOST")
        self.url = url.rstrip("/")
        self.cache = LocalFsStore(cache_dir if cache_dir is not None else default_cache_dir(Path(".mlprov"), url))
        self._signer = signer
        self._client = RekorClient(
            self.url, timeout=timeout or 10.0, public_key_pem=public_key_pem, transport=transport
        )

    def __repr__(self) -> str:
        return f"RekorStore({self.url!r}, cache={self.cache.root!s})"

    def close(self) -> None:
        self._client.close()

    # -- index --------------------------------------------------------------------------------------

    def _index(self) -> dict[str, str]:
        path = self.cache.root / REKOR_INDEX_FILE
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise StorageError(f"{path} is unreadable; the Rekor cache is damaged") from None
        return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}

    def _record(self, manifest_id: str, uuid: str) -> None:
        index = self._index()
        index[manifest_id] = uuid
        try:
            write_atomic(self.cache.root / REKOR_INDEX_FILE, json.dumps(index, indent=2).encode())
        except OSError as exc:
            raise StorageError(f"cannot write the Rekor index in {self.cache.root}: {exc.strerror}") from None

    # -- ManifestStore ------------------------------------------------------------------------------

    def put(
        self,
        manifest: dict[str, Any],
        *,
        c2pa: bytes | None = None,
        oms_bundle: bytes | None = None,
    ) -> StoredManifest:
        manifest_id = manifest.get("instance_id")
        if not isinstance(manifest_id, str) or not manifest_id:
            raise StorageError("refusing to store a manifest without an instance_id")
        if manifest_id in self._index():
            return self.get(manifest_id)
        if self._signer is None:
            raise StorageError("storing in Rekor needs a signing identity (run `mlprov keys init`)")
        identity = self._signer()
        payload = _payload(manifest)
        signature = identity.sign(dsse_pae(MANIFEST_PAYLOAD_TYPE, payload), "sha256")
        envelope = {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": MANIFEST_PAYLOAD_TYPE,
            "signatures": [{"keyid": identity.key_id, "sig": base64.b64encode(signature).decode()}],
        }
        verifier = (
            identity.chain[0].public_bytes(serialization.Encoding.PEM)
            if identity.chain
            else identity.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        try:
            entry = self._client.submit(dsse_proposed_entry(envelope, [verifier]))
        except TransparencyLogError as exc:
            raise StorageError(f"Rekor at {self.url} did not log the manifest: {exc}") from None
        stored = self.cache.put(manifest, c2pa=c2pa, oms_bundle=oms_bundle)
        self._record(manifest_id, entry.uuid)
        return self._with_location(stored, entry.uuid)

    def _with_location(self, stored: StoredManifest, uuid: str) -> StoredManifest:
        locations = {**stored.locations, "rekor": f"{self.url}/api/v1/log/entries/{uuid}"}
        return StoredManifest(stored.id, stored.manifest, stored.c2pa, stored.oms_bundle, locations)

    def get(self, manifest_id: str) -> StoredManifest:
        stored = self.cache.get(manifest_id)
        uuid = self._index().get(manifest_id)
        if uuid is None:
            raise StorageError(f"manifest {manifest_id} is cached but has no Rekor entry recorded")
        try:
            entry = self._client.get_by_uuid(uuid)
        except TransparencyLogError as exc:
            raise StorageError(f"cannot confirm manifest {manifest_id} in Rekor at {self.url}: {exc}") from None
        spec = entry.body_json().get("spec", {})
        logged = (spec.get("payloadHash") or {}).get("value")
        if logged != hashlib.sha256(_payload(stored.manifest)).hexdigest():
            raise StorageError(f"the cached manifest {manifest_id} differs from what Rekor logged (entry {uuid})")
        return self._with_location(stored, uuid)

    def list(self) -> builtins.list[ManifestSummary]:
        logged = self._index()
        return [s for s in self.cache.list() if s.id in logged]

    def delete(self, manifest_id: str) -> None:
        raise StorageError("Rekor is an append-only transparency log; its entries cannot be deleted")
