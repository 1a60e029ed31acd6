"""A :class:`~provenance.tlog.base.TransparencyLog` backed by Rekor (v1 API), over :class:`RekorClient`.

What Rekor supports, and how each part of the seam maps onto it:

- ``append(data)``: a ``hashedrekord`` entry over ``SHA-256(data)``, signed by the signing identity
  (the verifier sent is its certificate, or its bare public key). Rekor's Merkle leaf is the
  canonicalized entry *body*, not ``data``: the returned :class:`LogEntry` carries that body, its index
  in the active shard and its leaf hash, and :meth:`entry_binds` tells a verifier whether a body logs
  given data (``provenance.tlog.verification`` asks). Appending the same data again returns the
  recorded entry (an ECDSA signature is randomised, so Rekor would otherwise log a second one).
- ``find(leaf_hash(data))``: through a local index (``index_path``, JSON, written atomically) from the
  data's leaf hash to the entry UUID, recorded at append; the entry is then fetched and verified by
  the client. Data appended elsewhere is not found (Rekor's search API is not used).
- ``checkpoint()``: Rekor's signed tree head (ECDSA note; check it with :meth:`note_verifier`).
- ``inclusion_proof(index, size)``: the proof Rekor serves with the entry, which is always for its
  *current* tree: asking for another size raises ``ProofError``.
- ``consistency_proof``: ``GET /api/v1/log/proof``.
- ``entry(index)``: an entry of the active shard (the shard offset is learnt from recorded entries).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from provenance.errors import ProofError, TransparencyLogError
from provenance.storage.atomic import write_atomic
from provenance.tlog.base import LogEntry
from provenance.tlog.checkpoint import EcdsaNoteVerifier, SignedCheckpoint
from provenance.tlog.merkle import ConsistencyProof, InclusionProof, leaf_hash
from provenance.tlog.rekor import RekorClient, RekorEntry, hashedrekord_proposed_entry

if TYPE_CHECKING:
    from provenance.keys import SigningIdentity

__all__ = ["RekorTransparencyLog"]


class RekorTransparencyLog:
    """Rekor as a transparency log of manifest entries (see the module docstring for what maps how)."""

    def __init__(
        self,
        client: RekorClient,
        *,
        index_path: Path,
        signer: Callable[[], SigningIdentity] | None = None,
        public_key_pem: bytes | None = None,
    ) -> None:
        self.client = client
        self.index_path = Path(index_path)
        self._signer = signer
        self._public_key_pem = public_key_pem

    # -- the local index -------------------------------------------------------------------------

    def _index(self) -> dict[str, dict[str, Any]]:
        try:
            value = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise TransparencyLogError(f"the Rekor entry index {self.index_path} is unreadable") from None
        return {k: v for k, v in value.items() if isinstance(v, dict)} if isinstance(value, dict) else {}

    def _record(self, data_leaf: bytes, entry: RekorEntry) -> None:
        index = self._index()
        index[data_leaf.hex()] = {
            "uuid": entry.uuid,
            "index": entry.inclusion_proof.leaf_index,
            "logIndex": entry.log_index,
        }
        try:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.index_path, json.dumps(index, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise TransparencyLogError(
                f"cannot write the Rekor entry index {self.index_path}: {exc.strerror}"
            ) from None

    @staticmethod
    def _entry(found: RekorEntry) -> LogEntry:
        return LogEntry(found.inclusion_proof.leaf_index, found.body, found.leaf_hash)

    def _fetch(self, index: int) -> RekorEntry:
        records = list(self._index().values())
        for record in records:
            if record.get("index") == index:
                return self.client.get_by_uuid(str(record["uuid"]))
        if not records:
            raise TransparencyLogError(f"no Rekor entry {index} known here: nothing was appended through this index")
        offset = int(records[0]["logIndex"]) - int(records[0]["index"])
        return self.client.get_by_index(offset + index)

    # -- TransparencyLog -------------------------------------------------------------------------

    def append(self, data: bytes) -> LogEntry:
        known = self.find(leaf_hash(data))
        if known is not None:
            return known
        if self._signer is None:
            raise TransparencyLogError("appending to Rekor needs a signing identity (run `mlprov keys init`)")
        identity = self._signer()
        signature = identity.sign(data, "sha256")
        verifier = (
            identity.chain[0].public_bytes(serialization.Encoding.PEM)
            if identity.chain
            else identity.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        found = self.client.submit(hashedrekord_proposed_entry(hashlib.sha256(data).digest(), signature, verifier))
        if not self.entry_binds(self._entry(found), data):
            raise ProofError(f"Rekor logged entry {found.uuid[:24]}… but its body does not bind the data submitted")
        self._record(leaf_hash(data), found)
        return self._entry(found)

    def size(self) -> int:
        return self.client.log_info().tree_size

    def entry(self, index: int) -> LogEntry:
        return self._entry(self._fetch(index))

    def find(self, leaf_hash: bytes) -> LogEntry | None:
        record = self._index().get(bytes(leaf_hash).hex())
        if record is None:
            return None
        return self._entry(self.client.get_by_uuid(str(record["uuid"])))

    def checkpoint(self) -> SignedCheckpoint:
        return self.client.verify_checkpoint_note(self.client.log_info().signed_tree_head)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        proof = self._fetch(index).inclusion_proof
        if tree_size is not None and proof.tree_size != tree_size:
            raise ProofError(
                f"Rekor proves entry {index} in its current tree of size {proof.tree_size} only, "
                f"not in size {tree_size}"
            )
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        info = self.client.log_info()
        return self.client.consistency_proof(old_size, info.tree_size if new_size is None else new_size, info.tree_id)

    # -- binding and keys ------------------------------------------------------------------------

    def entry_binds(self, entry: LogEntry, data: bytes) -> bool:
        """True when ``entry``'s body is a hashedrekord over ``SHA-256(data)``."""
        try:
            body = json.loads(entry.data)
            digest = body["spec"]["data"]["hash"]
            return bool(
                body["kind"] == "hashedrekord"
                and digest["algorithm"] == "sha256"
                and digest["value"] == hashlib.sha256(data).hexdigest()
            )
        except (ValueError, KeyError, TypeError):
            return False

    def note_verifier(self) -> EcdsaNoteVerifier:
        """The verifier of Rekor's checkpoints (needs ``public_key_pem``): key name = the origin's first word."""
        if self._public_key_pem is None:
            raise TransparencyLogError("Rekor's public key is needed to verify its checkpoints (public_key_pem)")
        origin = self.checkpoint().origin
        return EcdsaNoteVerifier.from_pem(origin.split(" ", 1)[0], self._public_key_pem)
