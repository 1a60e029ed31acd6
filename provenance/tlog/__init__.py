"""The transparency log: an append-only RFC 6962 Merkle log of manifest hashes with C2SP checkpoints.

``LocalTransparencyLog`` is the embedded implementation of the ``TransparencyLog`` seam;
``RekorClient`` talks to a Rekor instance. Proof verification is free functions that raise
``ProofError`` (never return False).
"""

from __future__ import annotations

from provenance.tlog.base import LogEntry, TransparencyLog, audit_checkpoint
from provenance.tlog.checkpoint import (
    Checkpoint,
    EcdsaNoteVerifier,
    Ed25519NoteVerifier,
    NoteSigner,
    NoteVerifier,
    SignedCheckpoint,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from provenance.tlog.local import LocalTransparencyLog
from provenance.tlog.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from provenance.tlog.rekor import RekorClient, RekorEntry, dsse_proposed_entry, hashedrekord_proposed_entry

__all__ = [
    "EMPTY_ROOT",
    "Checkpoint",
    "ConsistencyProof",
    "EcdsaNoteVerifier",
    "Ed25519NoteVerifier",
    "InclusionProof",
    "LocalTransparencyLog",
    "LogEntry",
    "MerkleTree",
    "NoteSigner",
    "NoteVerifier",
    "RekorClient",
    "RekorEntry",
    "SignedCheckpoint",
    "TransparencyLog",
    "audit_checkpoint",
    "dsse_proposed_entry",
    "hashedrekord_proposed_entry",
    "leaf_hash",
    "node_hash",
    "verify_checkpoint",
    "verify_checkpoint_consistency",
    "verify_consistency",
    "verify_inclusion",
]
