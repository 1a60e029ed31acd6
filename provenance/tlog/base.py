"""The ``TransparencyLog`` seam: an append-only Merkle log of manifest hashes with signed checkpoints.

Implementations: :class:`provenance.tlog.local.LocalTransparencyLog` (embedded, files beside
``$MLPROV_HOME``); Rekor is reached through :class:`provenance.tlog.rekor.RekorClient`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from provenance.tlog.checkpoint import (
    NoteVerifier,
    SignedCheckpoint,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from provenance.tlog.merkle import ConsistencyProof, InclusionProof, leaf_hash

__all__ = ["LogEntry", "TransparencyLog", "audit_checkpoint"]


@dataclass(frozen=True)
class LogEntry:
    """One leaf of the log: its index, the data appended and its RFC 6962 leaf hash."""

    index: int
    data: bytes
    leaf_hash: bytes

    @classmethod
    def of(cls, index: int, data: bytes) -> LogEntry:
        return cls(index, data, leaf_hash(data))

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "data": self.data.hex(), "leafHash": self.leaf_hash.hex()}


@runtime_checkable
class TransparencyLog(Protocol):
    def append(self, data: bytes) -> LogEntry:
        """Append ``data`` (a manifest hash or canonical entry bytes); idempotent: identical data returns
        the existing entry. Raises ``TransparencyLogError`` when the log cannot append."""
        ...

    def size(self) -> int:
        """The number of entries."""
        ...

    def entry(self, index: int) -> LogEntry:
        """The entry at ``index``; ``TransparencyLogError`` when out of range."""
        ...

    def find(self, leaf_hash: bytes) -> LogEntry | None:
        """The entry whose leaf hash is ``leaf_hash``, or None."""
        ...

    def checkpoint(self) -> SignedCheckpoint:
        """A signed checkpoint of the current tree (only over entries already durable)."""
        ...

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        """Proof that entry ``index`` is in the tree of ``tree_size`` entries (default: current size)."""
        ...

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Proof that the tree of ``old_size`` is a prefix of the tree of ``new_size`` (default: current)."""
        ...


def audit_checkpoint(
    log: TransparencyLog, stored_note: str, keys: str | NoteVerifier | Sequence[NoteVerifier]
) -> SignedCheckpoint:
    """Check a checkpoint kept from earlier against the log's current one; return the current checkpoint.

    Verifies both signatures with the pinned key(s), then a consistency proof from the stored size to
    the current size: a log that rewrote or dropped history fails with ``ProofError`` naming why.
    """
    old = verify_checkpoint(stored_note, keys)
    new = verify_checkpoint(log.checkpoint().note, keys, origin=old.origin)
    shrank = old.size > new.size
    proof = ConsistencyProof(old.size, new.size, ()) if shrank else log.consistency_proof(old.size, new.size)
    verify_checkpoint_consistency(old, new, proof)
    return new
