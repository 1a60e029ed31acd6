"""The transparency log: an append-only RFC 6962 Merkle log of manifest hashes with C2SP checkpoints.

``LocalTransparencyLog`` is the embedded implementation of the ``TransparencyLog`` seam;
``RekorTransparencyLog`` implements it over ``RekorClient`` (a Rekor instance). Proof verification is
free functions that raise ``ProofError`` (never return False).

What is logged for a manifest is fixed in :mod:`provenance.tlog.entries` (``mlprov-manifest:v1``: the
manifest ID and the SHA-256 of its canonical JSON, which covers its signature); checking a manifest's
inclusion is :func:`provenance.tlog.verification.tlog_inclusion_check`.
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
from provenance.tlog.entries import MANIFEST_ENTRY_PREFIX, manifest_entry, manifest_entry_leaf, parse_manifest_entry
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
from provenance.tlog.rekor_log import RekorTransparencyLog
from provenance.tlog.verification import prove_manifest, tlog_inclusion_check

__all__ = [
    "EMPTY_ROOT",
    "MANIFEST_ENTRY_PREFIX",
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
    "RekorTransparencyLog",
    "SignedCheckpoint",
    "TransparencyLog",
    "audit_checkpoint",
    "dsse_proposed_entry",
    "hashedrekord_proposed_entry",
    "leaf_hash",
    "manifest_entry",
    "manifest_entry_leaf",
    "node_hash",
    "parse_manifest_entry",
    "prove_manifest",
    "tlog_inclusion_check",
    "verify_checkpoint",
    "verify_checkpoint_consistency",
    "verify_consistency",
    "verify_inclusion",
]
