"""Transparency-log inclusion of manifests, as a :data:`~provenance.report.NodeCheck` for ``verify_chain``.

For each manifest: recompute its entry (:mod:`provenance.tlog.entries`), find it in the log, get an
inclusion proof against a signature-verified checkpoint and verify it with
:func:`~provenance.tlog.merkle.verify_inclusion` against the checkpoint's root. The checkpoint is the
log's current one (fetched once per check object), or one given by the caller (e.g. a checkpoint a
witness co-signed). A failed check's detail starts with its cause:

- ``not logged``: no entry for this manifest's exact content, or one appended after the checkpoint;
- ``checkpoint signature invalid``: the checkpoint does not verify under the pinned key(s);
- ``proof for another tree``: the log cannot prove against that checkpoint (another log, another size);
- ``proof does not verify``: the proof does not lead to the checkpoint's root (history rewritten,
  a forged proof or a checkpoint of another log with the same key);
- ``log unavailable``: the log could not be read or reached (nothing is proven either way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, TypeAlias, runtime_checkable

from provenance.errors import InvalidInputError, ProofError, TransparencyLogError
from provenance.report import Check, NodeCheck
from provenance.storage.base import StoredManifest
from provenance.tlog.base import LogEntry, TransparencyLog
from provenance.tlog.checkpoint import NoteVerifier, SignedCheckpoint, verify_checkpoint
from provenance.tlog.entries import manifest_entry
from provenance.tlog.merkle import InclusionProof, leaf_hash, verify_inclusion

__all__ = [
    "CHECK_NAME",
    "EntryBinding",
    "ManifestInclusion",
    "VerifierKeys",
    "prove_manifest",
    "tlog_inclusion_check",
]

CHECK_NAME = "tlog inclusion"
VerifierKeys: TypeAlias = str | NoteVerifier | Sequence[NoteVerifier]


@runtime_checkable
class EntryBinding(Protocol):
    """A log whose Merkle leaves wrap the appended data (Rekor: a hashedrekord body over its digest)."""

    def entry_binds(self, entry: LogEntry, data: bytes) -> bool:
        """True when ``entry`` (as ``find`` returned it) logs exactly ``data``."""
        ...


class ManifestInclusion:
    """The entry of one manifest and the proof that it is in a checkpointed tree (already verified)."""

    def __init__(self, entry: LogEntry, proof: InclusionProof, checkpoint: SignedCheckpoint) -> None:
        self.entry = entry
        self.proof = proof
        self.checkpoint = checkpoint

    def to_dict(self) -> dict[str, object]:
        return {
            "entry": self.entry.to_dict(),
            "inclusionProof": self.proof.to_dict(),
            "checkpoint": self.checkpoint.to_dict(),
        }


class _Failure(Exception):
    """Internal: a check that does not hold, with its cause first."""


def _binds(log: TransparencyLog, entry: LogEntry, data: bytes) -> bool:
    if isinstance(log, EntryBinding):
        return log.entry_binds(entry, data)
    return entry.data == data


def _prove(log: TransparencyLog, data: bytes, checkpoint: SignedCheckpoint, manifest_id: str) -> ManifestInclusion:
    try:
        entry = log.find(leaf_hash(data))
    except ProofError as exc:  # a log that checks its own answers (Rekor's client) found them false
        raise _Failure(f"proof does not verify: the log's answer for {manifest_id}: {exc}") from None
    except TransparencyLogError as exc:
        raise _Failure(f"log unavailable: cannot search it: {exc}") from None
    if entry is None or not _binds(log, entry, data):
        digest = data.rsplit(b"\n", 2)[-2].decode(errors="replace")[:16]
        raise _Failure(f"not logged: no entry for manifest {manifest_id} (hash {digest}…) in {checkpoint.origin}")
    if entry.index >= checkpoint.size:
        raise _Failure(f"not logged: entry {entry.index} was appended after the checkpoint of size {checkpoint.size}")
    try:
        proof = log.inclusion_proof(entry.index, checkpoint.size)
    except TransparencyLogError as exc:
        raise _Failure(f"proof for another tree: {exc}") from None
    if proof.tree_size != checkpoint.size or proof.leaf_index != entry.index:
        raise _Failure(
            f"proof for another tree: the proof is for entry {proof.leaf_index} in size {proof.tree_size}, "
            f"the checkpoint has size {checkpoint.size}"
        )
    try:
        verify_inclusion(leaf_hash(entry.data), proof, checkpoint.root_hash)
    except ProofError as exc:
        raise _Failure(f"proof does not verify against {checkpoint.origin} at size {checkpoint.size}: {exc}") from None
    return ManifestInclusion(entry, proof, checkpoint)


def _checkpoint(log: TransparencyLog, given: SignedCheckpoint | str | None, keys: VerifierKeys) -> SignedCheckpoint:
    try:  # a log that checks its own checkpoint (Rekor's client) raises ProofError itself
        note = given if isinstance(given, str) else (given or log.checkpoint()).note
        return verify_checkpoint(note, keys)
    except ProofError as exc:
        raise _Failure(f"checkpoint signature invalid: {exc}") from None


def prove_manifest(
    log: TransparencyLog,
    manifest: dict[str, object],
    *,
    verifier_keys: VerifierKeys,
    checkpoint: SignedCheckpoint | str | None = None,
) -> ManifestInclusion:
    """Find ``manifest`` in ``log`` and prove it against a verified checkpoint; ``ProofError`` (cause first)
    when it is not logged or does not prove, ``InvalidInputError`` when it is not a manifest."""
    data = manifest_entry(dict(manifest))
    try:
        cp = _checkpoint(log, checkpoint, verifier_keys)
        return _prove(log, data, cp, str(manifest.get("instance_id")))
    except _Failure as exc:
        raise ProofError(str(exc)) from None


def tlog_inclusion_check(
    log: TransparencyLog,
    *,
    verifier_keys: VerifierKeys,
    checkpoint: SignedCheckpoint | str | None = None,
) -> NodeCheck:
    """A ``verify_chain`` check that every manifest is in ``log`` (see the module docstring).

    ``verifier_keys`` pin the log's checkpoint key(s) (a ``vkey`` string or note verifiers);
    ``checkpoint`` (a checkpoint or its note) replaces the log's current one, and is verified the same way.
    """
    cached: list[SignedCheckpoint | _Failure] = []

    def current() -> SignedCheckpoint:
        if not cached:
            try:
                cached.append(_checkpoint(log, checkpoint, verifier_keys))
            except _Failure as exc:
                cached.append(exc)
            except TransparencyLogError as exc:
                cached.append(_Failure(f"log unavailable: no checkpoint from it: {exc}"))
        found = cached[0]
        if isinstance(found, _Failure):
            raise found
        return found

    def check(stored: StoredManifest) -> Check:
        try:
            data = manifest_entry(stored.manifest)
        except InvalidInputError as exc:
            return Check(CHECK_NAME, False, f"not logged: no log entry can be computed: {exc}")
        try:
            inclusion = _prove(log, data, current(), stored.id)
        except _Failure as exc:
            return Check(CHECK_NAME, False, str(exc))
        cp = inclusion.checkpoint
        digest = hashlib.sha256(cp.note.encode()).hexdigest()[:12]
        return Check(
            CHECK_NAME,
            True,
            f"entry {inclusion.entry.index} proven in {cp.origin} at size {cp.size} (checkpoint {digest})",
        )

    check.check_name = CHECK_NAME  # type: ignore[attr-defined]  # read by verify_chain to name a crashed check
    return check
