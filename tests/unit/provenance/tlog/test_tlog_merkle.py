"""RFC 6962 / 9162 Merkle hashing and proofs: known answers, then properties over random trees."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.errors import ProofError
from provenance.tlog.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    MerkleTree,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# Test vectors of transparency-dev/merkle (testonly/constants.go, proof/verify_test.go), RFC 6962 hashing.
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, proof) -- the Go vectors' leaf numbers are 1-based.
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]  # fmt: skip
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def vector_tree() -> MerkleTree:
    tree = MerkleTree()
    for data in LEAVES:
        tree.append(data)
    return tree


def test_leaf_and_empty_hashes_follow_rfc6962() -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_match_the_known_answers(vector_tree: MerkleTree, size: int) -> None:
    assert vector_tree.root(size).hex() == ROOTS[size]
    assert root_from_leaf_hashes([leaf_hash(d) for d in LEAVES[:size]]).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION)
def test_inclusion_proofs_match_the_known_answers(
    vector_tree: MerkleTree, index: int, size: int, expected: list[str]
) -> None:
    proof = vector_tree.inclusion_proof(index, size)
    assert [h.hex() for h in proof.hashes] == expected
    verify_inclusion(leaf_hash(LEAVES[index]), proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_consistency_proofs_match_the_known_answers(
    vector_tree: MerkleTree, old: int, new: int, expected: list[str]
) -> None:
    proof = vector_tree.consistency_proof(old, new)
    assert [h.hex() for h in proof.hashes] == expected
    verify_consistency(bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof)


def test_failures_name_the_reason(vector_tree: MerkleTree) -> None:
    root = vector_tree.root(8)
    proof = vector_tree.inclusion_proof(5, 8)
    with pytest.raises(ProofError, match="too few hashes"):
        verify_inclusion(leaf_hash(LEAVES[5]), InclusionProof(5, 8, proof.hashes[:-1]), root)
    with pytest.raises(ProofError, match="too many hashes"):
        verify_inclusion(leaf_hash(LEAVES[5]), InclusionProof(5, 8, (*proof.hashes, root)), root)
    with pytest.raises(ProofError, match="not the expected root"):
        verify_inclusion(leaf_hash(LEAVES[4]), proof, root)
    with pytest.raises(ProofError, match="outside a tree"):
        verify_inclusion(leaf_hash(LEAVES[5]), InclusionProof(8, 8, proof.hashes), root)
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(b"short", proof, root)
    with pytest.raises(ProofError, match="forked"):
        verify_consistency(vector_tree.root(3), vector_tree.root(4), ConsistencyProof(4, 4, ()))
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency(vector_tree.root(3), vector_tree.root(4), ConsistencyProof(3, 4, ()))
    with pytest.raises(ProofError, match="not between"):
        verify_consistency(vector_tree.root(4), vector_tree.root(3), ConsistencyProof(4, 3, ()))
    bad_old = vector_tree.consistency_proof(3, 8)
    with pytest.raises(ProofError, match="rewritten"):
        verify_consistency(vector_tree.root(4), vector_tree.root(8), bad_old)


def test_trivial_consistency_cases(vector_tree: MerkleTree) -> None:
    verify_consistency(EMPTY_ROOT, vector_tree.root(5), ConsistencyProof(0, 5, ()))
    verify_consistency(vector_tree.root(5), vector_tree.root(5), ConsistencyProof(5, 5, ()))
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(vector_tree.root(1), vector_tree.root(5), ConsistencyProof(0, 5, ()))


def test_proof_json_round_trip(vector_tree: MerkleTree) -> None:
    inc = vector_tree.inclusion_proof(3, 7)
    con = vector_tree.consistency_proof(3, 7)
    assert InclusionProof.from_dict(inc.to_dict()) == inc
    assert ConsistencyProof.from_dict(con.to_dict()) == con
    with pytest.raises(ProofError, match="malformed"):
        InclusionProof.from_dict({"logIndex": 1, "hashes": []})


# ---------------------------------------------------------------------------- properties

MAX_SIZE = 300


def _tree(size: int, salt: bytes = b"") -> MerkleTree:
    tree = MerkleTree()
    for i in range(size):
        tree.append(salt + i.to_bytes(4, "big"))
    return tree


BIG = _tree(MAX_SIZE)
OTHER = _tree(MAX_SIZE, b"other")


def _flip(hashes: tuple[bytes, ...], which: int, bit: int) -> tuple[bytes, ...]:
    changed = bytearray(hashes[which])
    changed[bit // 8] ^= 1 << (bit % 8)
    return (*hashes[:which], bytes(changed), *hashes[which + 1 :])


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@settings(max_examples=150, deadline=None)
@given(si=size_and_index(), data=st.data())
def test_inclusion_proofs_verify_and_every_alteration_fails(si: tuple[int, int], data: st.DataObject) -> None:
    size, index = si
    leaf, root = BIG.node(0, index), BIG.root(size)
    proof = BIG.inclusion_proof(index, size)
    assert proof.hashes == BIG.inclusion_proof(index, size).hashes
    assert root == root_from_leaf_hashes([BIG.node(0, i) for i in range(size)])
    verify_inclusion(leaf, proof, root)
    if proof.hashes:
        which = data.draw(st.integers(0, len(proof.hashes) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofError):
            verify_inclusion(leaf, InclusionProof(index, size, _flip(proof.hashes, which, bit)), root)
    if size > 1:
        other_index = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        with pytest.raises(ProofError):
            verify_inclusion(leaf, InclusionProof(other_index, size, proof.hashes), root)
    # A size is only a claim until a root (a signed checkpoint) binds it: the proof must fail against the
    # root of any other size. (Against the same root, sizes whose trees have the same shape along the path
    # give the same hash chain; RFC 9162 cannot tell them apart and does not need to.)
    other_size = data.draw(st.integers(1, MAX_SIZE).filter(lambda s: s != size))
    with pytest.raises(ProofError):
        verify_inclusion(leaf, InclusionProof(index, other_size, proof.hashes), BIG.root(other_size))
    # The same position in another tree: its proof does not lead to this root, nor this proof to its root.
    if size > 1:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, OTHER.inclusion_proof(index, size), root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, proof, OTHER.root(size))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, new)), new


@settings(max_examples=150, deadline=None)
@given(sizes=two_sizes(), data=st.data())
def test_consistency_proofs_verify_and_every_alteration_fails(sizes: tuple[int, int], data: st.DataObject) -> None:
    old, new = sizes
    old_root, new_root = BIG.root(old), BIG.root(new)
    proof = BIG.consistency_proof(old, new)
    verify_consistency(old_root, new_root, proof)
    if old == new:
        return
    which = data.draw(st.integers(0, len(proof.hashes) - 1))
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofError):
        verify_consistency(old_root, new_root, ConsistencyProof(old, new, _flip(proof.hashes, which, bit)))
    # Wrong sizes, each with the root of the size claimed (see the inclusion test for why).
    other_old = data.draw(st.integers(1, new).filter(lambda s: s != old))
    with pytest.raises(ProofError):
        verify_consistency(BIG.root(other_old), new_root, ConsistencyProof(other_old, new, proof.hashes))
    other_new = data.draw(st.integers(old + 1, MAX_SIZE))
    if other_new != new:
        with pytest.raises(ProofError):
            verify_consistency(old_root, BIG.root(other_new), ConsistencyProof(old, other_new, proof.hashes))
    # A rewritten history: the other tree's old root is not a prefix of this tree.
    with pytest.raises(ProofError):
        verify_consistency(OTHER.root(old), new_root, proof)
    with pytest.raises(ProofError):
        verify_consistency(old_root, new_root, OTHER.consistency_proof(old, new))
