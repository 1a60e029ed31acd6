"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and proof verification.

Hashing (RFC 9162 section 2.1.1), SHA-256 throughout::

    MTH({})      = SHA-256()
    leaf hash    = SHA-256(0x00 || data)
    node hash    = SHA-256(0x01 || left || right)
    MTH(D[n])    = node(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n

Proofs are generated from *complete subtrees*: the hash of the aligned range
``[index * 2**level, (index + 1) * 2**level)``, which never changes once the log has grown past it.
A :class:`NodeSource` answers those lookups (the local log reads them from its level files, the
in-memory :class:`MerkleTree` from lists), so a proof costs O(log n) lookups, never a rehash of the log.

Verification follows the RFC 9162 algorithms (sections 2.1.3.2 and 2.1.4.2) step by step and raises
:class:`~provenance.errors.ProofError` with a one-line reason; it never returns False.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from provenance.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ConsistencyProof",
    "InclusionProof",
    "MerkleTree",
    "NodeSource",
    "consistency_path",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string."""

NodeSource = Callable[[int, int], bytes]
"""``source(level, index)`` -> hash of the complete subtree of ``2**level`` leaves starting at ``index * 2**level``."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaves: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes, by the RFC definition (O(n); the reference for tests)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_from_leaf_hashes(leaves[:k]), root_from_leaf_hashes(leaves[k:]))


def subtree_root(source: NodeSource, lo: int, hi: int) -> bytes:
    """MTH of the leaves ``[lo, hi)`` from complete-subtree lookups (O(log n) lookups).

    ``lo`` must be aligned as the RFC recursion aligns it (a multiple of the largest power of two
    not above ``hi - lo``), which holds for every range the proof algorithms ask for.
    """
    n = hi - lo
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and lo % n == 0:
        level = n.bit_length() - 1
        return source(level, lo >> level)
    k = _split(n)
    return node_hash(subtree_root(source, lo, lo + k), subtree_root(source, lo + k, hi))


def inclusion_path(source: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1, leaf-side first."""
    if not 0 <= index < size:
        raise ProofError(f"no inclusion proof for index {index} in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree_root(source, lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree_root(source, lo, lo + k))
            lo = lo + k
    path.reverse()
    return path


def consistency_path(source: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1 (empty when old is 0 or equal to new)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    lo, hi, complete = 0, new_size, True  # SUBPROOF(m, D[lo:hi], b), m = old_size - lo
    while True:
        n = hi - lo
        m = old_size - lo
        if m == n:
            if not complete:
                path.append(subtree_root(source, lo, hi))
            break
        k = _split(n)
        if m <= k:
            path.append(subtree_root(source, lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree_root(source, lo, lo + k))
            lo, complete = lo + k, False
    path.reverse()
    return path


@dataclass(frozen=True)
class InclusionProof:
    """That the leaf at ``leaf_index`` is in the tree of ``tree_size`` leaves (hashes leaf-side first)."""

    leaf_index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (hex hashes, as Rekor writes them)."""
        return {"logIndex": self.leaf_index, "treeSize": self.tree_size, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InclusionProof:
        try:
            return cls(int(data["logIndex"]), int(data["treeSize"]), tuple(bytes.fromhex(h) for h in data["hashes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofError(f"malformed inclusion proof: {exc!r}") from None


@dataclass(frozen=True)
class ConsistencyProof:
    """That the tree of ``old_size`` leaves is a prefix of the tree of ``new_size`` leaves."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"oldSize": self.old_size, "newSize": self.new_size, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsistencyProof:
        try:
            return cls(int(data["oldSize"]), int(data["newSize"]), tuple(bytes.fromhex(h) for h in data["hashes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofError(f"malformed consistency proof: {exc!r}") from None


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected a {HASH_SIZE}-byte SHA-256 hash")


def _short(h: bytes) -> str:
    return h.hex()[:16]


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> None:
    """Verify an inclusion proof (RFC 9162 section 2.1.3.2); raise ``ProofError`` saying why it fails.

    ``leaf`` is the leaf *hash* (``leaf_hash(data)``), ``root`` the root hash of a tree of ``proof.tree_size``.
    """
    index, size = proof.leaf_index, proof.tree_size
    _check_hash("leaf hash", leaf)
    _check_hash("root hash", root)
    for i, h in enumerate(proof.hashes):
        _check_hash(f"proof hash {i}", h)
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof: leaf index {index} is outside a tree of size {size}")
    fn, sn, n = index, size - 1, len(proof.hashes)
    r = leaf
    for p in proof.hashes:
        if sn == 0:
            raise ProofError(f"inclusion proof for index {index} in size {size} has too many hashes ({n} given)")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof for index {index} in size {size} has too few hashes ({n} given)")
    if r != root:
        raise ProofError(
            f"inclusion proof for index {index} in size {size} leads to root {_short(r)}…, "
            f"not the expected root {_short(root)}… (another tree, another leaf or an altered proof)"
        )


def verify_consistency(old_root: bytes, new_root: bytes, proof: ConsistencyProof) -> None:
    """Verify a consistency proof (RFC 9162 section 2.1.4.2); raise ``ProofError`` saying why it fails."""
    first, second = proof.old_size, proof.new_size
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    for i, h in enumerate(proof.hashes):
        _check_hash(f"proof hash {i}", h)
    if first < 0 or first > second:
        raise ProofError(f"consistency proof: old size {first} is not between 0 and new size {second}")
    if first == second:
        if proof.hashes:
            raise ProofError(f"consistency proof between equal sizes {first} must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {first}: the log forked")
        return
    if first == 0:
        if proof.hashes:
            raise ProofError("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("the root of an empty tree must be SHA-256 of the empty string")
        return
    if not proof.hashes:
        raise ProofError(f"consistency proof from size {first} to {second} is empty")
    path = list(proof.hashes)
    if first & (first - 1) == 0:
        path.insert(0, old_root)
    fn, sn, n = first - 1, second - 1, len(proof.hashes)
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from size {first} to {second} has too many hashes ({n} given)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from size {first} to {second} has too few hashes ({n} given)")
    if fr != old_root:
        raise ProofError(
            f"consistency proof from size {first} to {second} rebuilds old root {_short(fr)}…, "
            f"not {_short(old_root)}…: the older tree is not a prefix of the newer one (history rewritten?)"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof from size {first} to {second} rebuilds new root {_short(sr)}…, "
            f"not {_short(new_root)}…: another tree, an altered proof or a history rewritten"
        )


class MerkleTree:
    """An in-memory Merkle tree over leaf hashes, keeping every complete subtree (tests, fakes, small logs)."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    def __len__(self) -> int:
        return len(self._levels[0])

    def append_leaf_hash(self, h: bytes) -> int:
        """Append a leaf hash; return its index."""
        index = len(self._levels[0])
        level = 0
        while True:
            if level == len(self._levels):
                self._levels.append([])
            nodes = self._levels[level]
            nodes.append(h)
            if len(nodes) % 2:
                break
            h = node_hash(nodes[-2], nodes[-1])
            level += 1
        return index

    def append(self, data: bytes) -> int:
        return self.append_leaf_hash(leaf_hash(data))

    def node(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return subtree_root(self.node, 0, len(self) if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        size = len(self) if size is None else size
        if size > len(self):
            raise ProofError(f"tree size {size} is beyond the tree's {len(self)} leaves")
        return InclusionProof(index, size, tuple(inclusion_path(self.node, index, size)))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        new_size = len(self) if new_size is None else new_size
        if new_size > len(self):
            raise ProofError(f"tree size {new_size} is beyond the tree's {len(self)} leaves")
        return ConsistencyProof(old_size, new_size, tuple(consistency_path(self.node, old_size, new_size)))
