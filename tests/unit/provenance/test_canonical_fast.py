"""The chain verifier's fast paths give exactly the slow paths' bytes.

* ``canonical_manifest(m, share=True)`` (parts already canonical used as they are) equals the
  copying form type for type and key order for key order, and fails with the same message;
* :class:`~provenance.cbor_claim.ClaimEncoder` (assertions encoded once, claim bytes assembled)
  gives :func:`compact_json` / :func:`cbor_bytes` / :func:`manifest_json` byte for byte, including
  for assertions that differ from a remembered one only by ``1`` / ``1.0`` / ``True``.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.canonical import _Float, canonical_manifest, cbor_bytes, compact_json, manifest_json
from provenance.cbor_claim import ClaimEncoder
from provenance.errors import InvalidInputError
from provenance.keys import init_identity, load_identity
from provenance.manifest import AssetKind, build_manifest, cross_reference, custom_assertion, make_ingredient
from provenance.signing import BINDING_LABEL, sign_manifest


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types everywhere and the same dict key order (stricter than ``==``)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _slow(m: Any) -> tuple[str, Any]:
    try:
        return "ok", canonical_manifest(m)
    except InvalidInputError as exc:
        return "error", str(exc)


def _fast(m: Any) -> tuple[str, Any]:
    try:
        return "ok", canonical_manifest(m, share=True)
    except InvalidInputError as exc:
        return "error", str(exc)


def _check_equivalent(m: dict[str, Any]) -> None:
    before = copy.deepcopy(m)
    slow, fast = _slow(m), _fast(m)
    assert slow[0] == fast[0], (slow, fast)
    if slow[0] == "error":
        assert slow[1] == fast[1]
        return
    assert _same(slow[1], fast[1])
    assert manifest_json(slow[1]) == manifest_json(fast[1])
    assert m == before  # sharing never writes into the input
    encoder = ClaimEncoder(unique_labels=(BINDING_LABEL,))
    for _ in range(2):  # the second round is served from the encoder's memory
        text, signed = encoder.encode_manifest(fast[1])
        assert text == manifest_json(slow[1])
        assert signed == cbor_bytes({**slow[1]["claim"], "signature": None})


@pytest.fixture(scope="module")
def signed_manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    home = tmp_path_factory.mktemp("fast")
    init_identity(home / "home")
    identity = load_identity(home / "home")
    asset = home / "model.pt"
    asset.write_bytes(b"weights")
    out: list[dict[str, Any]] = []
    previous = None
    kinds: list[AssetKind] = ["model", "dataset", "software", "evaluation"]
    for i, kind in enumerate(kinds):
        ingredients = [make_ingredient(asset, "weights", kind=kind)] if kind != "evaluation" else []
        refs: list[dict[str, Any]] = [cross_reference(previous)] if previous is not None else []
        extra = [custom_assertion("mlprov.run", {"z": 1, "a": [1.5, True, None, "x"], "m": {"b": 2, "a": 1}})]
        manifest = build_manifest(
            kind=kind,
            title=f"t{i}",
            ingredients=ingredients,
            cross_references=refs,
            assertions=extra,
            metrics={"acc": 0.5} if kind == "evaluation" else None,
        )
        previous = sign_manifest(manifest, identity)
        out.append(previous)
    return out


def test_signed_manifests_fast_equals_slow(signed_manifests: list[dict[str, Any]]) -> None:
    for m in signed_manifests:
        _check_equivalent(m)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


class _Str(str):
    pass


_REPLACEMENTS: list[Any] = [None, 1, 1.0, True, False, 2**70, "x", _Str("x"), [], {}, ("t",), 0.1, {"b": 1, "a": 2}]


def _mutate(m: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    m = copy.deepcopy(m)
    path = rng.choice(_paths(m)[1:])
    parent: Any = m
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = rng.randrange(4)
    if action == 0:
        parent[last] = copy.deepcopy(rng.choice(_REPLACEMENTS))
    elif action == 1 and isinstance(parent, dict):
        del parent[last]
    elif action == 2 and isinstance(parent, dict):
        parent["extra"] = "unknown field"
    elif isinstance(parent, dict):  # move the key to the end: same content, another order
        parent[last] = parent.pop(last)
    return m


def test_random_mutations_fast_equals_slow(signed_manifests: list[dict[str, Any]]) -> None:
    rng = random.Random(20261207)
    for _ in range(1500):
        base = rng.choice(signed_manifests)
        mutated = _mutate(base, rng)
        if rng.random() < 0.3:
            mutated = _mutate(mutated, rng)
        _check_equivalent(mutated)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_values = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(_values, min_size=1, max_size=4), order=st.randoms())
def test_claim_encoder_equals_encoders(
    data: list[Any], order: random.Random, signed_manifests: list[dict[str, Any]]
) -> None:
    """Free-form assertion data of every JSON type, repeated and varied: the memo never mixes them up."""
    base = copy.deepcopy(signed_manifests[0])
    encoder = ClaimEncoder()
    for d in [*data, *data]:
        for claim_key in ("claim", "c2pa.claim.v2"):
            base[claim_key]["created_assertions"][-1] = custom_assertion("mlprov.run", d)
        canonical = canonical_manifest(base, share=order.random() < 0.5)
        claim = canonical["claim"]
        text, signed = encoder.encode(claim)
        assert text == compact_json(claim)
        assert signed == cbor_bytes({**claim, "signature": None})


def test_claim_encoder_memo_is_exact() -> None:
    """``1``, ``1.0`` and ``True`` are ``==`` in Python; their encodings must still differ."""
    encoder = ClaimEncoder()
    claim: dict[str, Any] = {
        "instance_id": "urn:c2pa:1",
        "created_assertions": [],
        "ingredients": [],
        "signature": "c2ln",
        "claim_generator_info": "g",
        "created_at": "2025-01-01T00:00:00Z",
    }
    for data in ("1", 1, True, _Float(1.0), 1, "1", {"a": "b"}, {"a": "b"}, {"a": True}):
        claim["created_assertions"] = [{"CustomAssertion": {"label": "l", "data": data}}]
        assert encoder.encode(claim) == (compact_json(claim), cbor_bytes({**claim, "signature": None}))


def test_claim_encoder_keeps_its_own_copy() -> None:
    """Changing an assertion after it was encoded does not change what the memo answers."""
    encoder = ClaimEncoder()
    data: dict[str, Any] = {"chain": ["a"], "key_id": "k"}
    claim: dict[str, Any] = {
        "instance_id": "urn:c2pa:1",
        "created_assertions": [{"CustomAssertion": {"label": "mlprov.signer", "data": data}}],
        "ingredients": [],
        "signature": None,
        "claim_generator_info": "g",
        "created_at": "2025-01-01T00:00:00Z",
    }
    first = encoder.encode(claim)
    data["chain"].append("b")
    assert encoder.encode(claim) == (compact_json(claim), cbor_bytes(claim)) != first


def test_share_reuses_canonical_parts(signed_manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    """The point of share=True: parts already canonical are not copied (ingredients, references)."""
    m = signed_manifests[1]
    fast = canonical_manifest(m, share=True)
    assert fast["claim"]["ingredients"][0] is m["claim"]["ingredients"][0]
    assert fast["cross_references"][0] is m["cross_references"][0]
    slow = canonical_manifest(m)
    assert slow["claim"]["ingredients"][0] is not m["claim"]["ingredients"][0]
