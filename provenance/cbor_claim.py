"""A claim's two encodings at once, the signed CBOR and the JSON, with repeated assertions encoded once.

Verifying a chain needs, for every manifest, the CBOR of its claim with ``signature`` null (what the
signature covers) and the compact JSON of the whole manifest (what a link hash covers), which holds
the claim's JSON. Along a chain most assertions repeat: the same ``mlprov.signer`` (a certificate
chain, the largest part of a claim), the same ``CreativeWork``, often the same ``Action``.
:class:`ClaimEncoder` encodes each assertion on its own, keeps the encodings of a few assertions it
has seen, and assembles the claim's bytes around them.

Why a remembered encoding is the right one: an entry is kept only when its canonical form holds
nothing but dicts, lists, strings and ``None`` (no numbers, no booleans, no float markers). Python
``==`` on such a value is exact: a string equals only an equal string, ``None`` only ``None``. Dict
``==`` ignores key order, but in a canonical form the order follows from the keys (struct order for
a given assertion type, sorted keys in free-form values), so equal canonical assertions have equal
encodings. ``1 == 1.0 == True`` is the only looseness of ``==`` here, and values holding numbers or
booleans are never kept.

The bytes are exactly :func:`~provenance.canonical.cbor_bytes` and
:func:`~provenance.canonical.compact_json` of the claim (tests compare them on random claims).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from provenance.canonical_encoding import _json_string, cbor_bytes, compact_json, manifest_json

__all__ = ["ClaimEncoder"]

_CLAIM_KEYS = ("instance_id", "created_assertions", "ingredients", "signature", "claim_generator_info", "created_at")
_MAX_PER_TYPE = 8


def _head(major: int, n: int) -> bytes:
    """A CBOR head (major type and length) in its shortest form, as serde_cbor and cbor2 write it."""
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + struct.pack(">I", n)
    return bytes((major << 5 | 27,)) + struct.pack(">Q", n)


def _text(s: str) -> bytes:
    data = s.encode()
    return _head(3, len(data)) + data


_KEY_CBOR = {k: _text(k) for k in _CLAIM_KEYS}
_NULL = b"\xf6"


def _plain(value: Any) -> bool:
    """Only dicts with string keys, lists, strings and ``None``: values whose ``==`` is exact."""
    t = type(value)
    if t is str or value is None:
        return True
    if t is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if t is list:
        return all(_plain(v) for v in value)
    return False


def _copy_plain(value: Any) -> Any:
    if type(value) is dict:
        return {k: _copy_plain(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy_plain(v) for v in value]
    return value  # str or None: immutable


class ClaimEncoder:
    """Encodes canonical claims (:func:`~provenance.canonical.canonical_claim`), remembering up to
    eight assertions of each type. Assertions whose CustomAssertion label is in ``unique_labels``
    (one per manifest, such as ``mlprov.manifest``) are never kept. Safe to share between threads:
    entries are immutable and a lost update only costs a re-encoding."""

    def __init__(self, unique_labels: Iterable[str] = ()) -> None:
        self._unique = frozenset(unique_labels)
        self._seen: dict[str, list[tuple[dict[str, Any], str, bytes]]] = {}
        self._next: dict[str, int] = {}

    def _assertion(self, assertion: dict[str, Any]) -> tuple[str, bytes]:
        tag = next(iter(assertion))
        entries = self._seen.get(tag)
        if entries:
            for kept, text, data in entries:
                if kept is assertion or kept == assertion:
                    return text, data
        text, data = compact_json(assertion), cbor_bytes(assertion)
        body = assertion[tag]
        if tag == "CustomAssertion" and body.get("label") in self._unique:
            return text, data
        if _plain(assertion):
            # Its own copy: the canonical form may share objects with a manifest that can change.
            entry = (_copy_plain(assertion), text, data)
            if entries is None:
                self._seen[tag] = [entry]
            elif len(entries) < _MAX_PER_TYPE:
                entries.append(entry)
            else:  # full: replace in turn, so a new signer is kept after a while
                i = self._next.get(tag, 0)
                entries[i] = entry
                self._next[tag] = (i + 1) % _MAX_PER_TYPE
        return text, data

    def encode(self, claim: dict[str, Any]) -> tuple[str, bytes]:
        """``(compact_json(claim), cbor_bytes(claim with signature None))`` of a canonical claim."""
        text, _, data = self._encode(claim)
        return text, data

    def encode_manifest(self, canonical: dict[str, Any]) -> tuple[str, bytes]:
        """``(manifest_json(canonical), cbor_bytes(its claim with signature None))`` of a canonical manifest."""
        claim_text, ingredients_text, data = self._encode(canonical["claim"])
        if canonical["ingredients"] is not canonical["claim"]["ingredients"]:
            ingredients_text = None
        return manifest_json(canonical, claim_json=claim_text, ingredients_json=ingredients_text), data

    def _encode(self, claim: dict[str, Any]) -> tuple[str, str | None, bytes]:
        if tuple(claim) != _CLAIM_KEYS or not all(type(a) is dict and len(a) == 1 for a in claim["created_assertions"]):
            unsigned = dict(claim)
            unsigned["signature"] = None
            return compact_json(claim), None, cbor_bytes(unsigned)
        assertions = [self._assertion(a) for a in claim["created_assertions"]]
        ingredients = claim["ingredients"]
        ingredients_text = compact_json(ingredients)
        signature = claim["signature"]
        instance_id, generator, created_at = claim["instance_id"], claim["claim_generator_info"], claim["created_at"]
        text = "".join(
            (
                '{"instance_id":',
                _json_string(instance_id),
                ',"created_assertions":[',
                ",".join(a[0] for a in assertions),
                '],"ingredients":',
                ingredients_text,
                ',"signature":',
                "null" if signature is None else _json_string(signature),
                ',"claim_generator_info":',
                _json_string(generator),
                ',"created_at":',
                _json_string(created_at),
                "}",
            )
        )
        data = b"".join(
            (
                b"\xa6",
                _KEY_CBOR["instance_id"],
                _text(instance_id),
                _KEY_CBOR["created_assertions"],
                _head(4, len(assertions)),
                *(a[1] for a in assertions),
                _KEY_CBOR["ingredients"],
                cbor_bytes(ingredients),
                _KEY_CBOR["signature"],
                _NULL,
                _KEY_CBOR["claim_generator_info"],
                _text(generator),
                _KEY_CBOR["created_at"],
                _text(created_at),
            )
        )
        return text, ingredients_text, data
