"""The byte encodings of canonical forms (:mod:`provenance.canonical` builds the forms): the CBOR that
Atlas signs (serde_cbor 0.11: floats shrunk to f32/f16 when exact) and the compact JSON whose hash
links manifests (serde_json: keys as built, floats in Ryu's shortest form).
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Callable
from typing import Any

import cbor2

__all__ = ["CanonicalFloat", "cbor_bytes", "compact_json", "manifest_json", "ryu_format", "to_plain"]


class CanonicalFloat:
    """A float inside a canonical form: encoded as serde would, not as Python's encoders would."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CanonicalFloat) and (self.value == other.value) and (str(self.value) == str(other.value))
        )

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"CanonicalFloat({self.value!r})"


# --- encoders -------------------------------------------------------------------------------------


def _cbor_float(x: float) -> bytes:
    """serde_cbor 0.11: f64 -> f32 when exact, f32 -> f16 when exact."""
    try:
        single = struct.pack(">f", x)
    except OverflowError:
        return b"\xfb" + struct.pack(">d", x)
    if struct.unpack(">f", single)[0] != x:
        return b"\xfb" + struct.pack(">d", x)
    try:
        half = struct.pack(">e", x)
    except OverflowError:
        return b"\xfa" + single
    if struct.unpack(">e", half)[0] == x:
        return b"\xf9" + half
    return b"\xfa" + single


def _cbor_default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if isinstance(value, CanonicalFloat):
        encoder.write(_cbor_float(value.value))
        return
    raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__}")


def cbor_bytes(canonical: Any) -> bytes:
    """CBOR of a canonical form (dict order kept, definite lengths, serde_cbor's floats)."""
    try:  # floats are rare (metrics); without a ``default`` hook cbor2 stays in C and is ~40 % faster
        return cbor2.dumps(canonical)
    except cbor2.CBOREncodeError:  # a float marker (cbor2 raises the base class here)
        return cbor2.dumps(canonical, default=_cbor_default)


def ryu_format(x: float) -> str:
    """Format a finite float as serde_json (ryu) does: shortest digits, ``e`` without ``+``."""
    if x == 0.0:
        return "-0.0" if str(x).startswith("-") else "0.0"
    r = repr(x)
    sign = ""
    if r[0] == "-":
        sign, r = "-", r[1:]
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    k = exp - len(frac)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    n = len(digits)
    kk = n + k
    if k >= 0 and kk <= 16:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        out = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * (-kk) + digits
    elif n == 1:
        out = f"{digits}e{kk - 1}"
    else:
        out = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + out


# check_circular off: canonical forms are trees built by this module (a cycle cannot reach here:
# the builders would recurse without end first), and the C encoder skips a dict operation per container.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False)
_MANIFEST_KEYS = (
    "claim_generator",
    "title",
    "instance_id",
    "ingredients",
    "claim",
    "created_at",
    "cross_references",
    "c2pa.claim.v2",
    "is_active",
)
_MANIFEST_STRINGS = ("claim_generator", "title", "instance_id", "created_at")
#: The string encoder ``_JSON`` itself uses (``ensure_ascii=False``), in C when available.
_json_string: Callable[[str], str] = json.encoder.encode_basestring
_STR_ONLY: frozenset[type] = frozenset({str})


def _no_default(value: Any) -> Any:
    raise TypeError(f"cannot encode {type(value).__name__}")


#: ``_JSON``'s C encoder, made once: ``JSONEncoder.encode`` builds a new one on every call, which
#: costs more than encoding a small assertion. Same settings, so the same text.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode: Callable[[Any, int], Any] | None = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(None, _no_default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
)


def compact_json(canonical: Any) -> str:
    """``serde_json::to_string`` of a canonical form."""
    try:
        if _c_encode is not None and type(canonical) in (dict, list):
            return "".join(_c_encode(canonical, 0))
        return _JSON.encode(canonical)
    except TypeError:  # a float marker: format it as ryu does
        return _compact_json_with_floats(canonical)


def manifest_json(
    canonical: dict[str, Any], *, claim_json: str | None = None, ingredients_json: str | None = None
) -> str:
    """:func:`compact_json` of a canonical manifest, encoding the claim once when its copy is the same.

    ``claim_json`` / ``ingredients_json``: :func:`compact_json` of the claim / of the top-level
    ingredients when the caller has them already (:class:`provenance.cbor_claim.ClaimEncoder`).
    """
    claim = canonical.get("claim")
    if claim is None or canonical.get("c2pa.claim.v2") is not claim or tuple(canonical) != _MANIFEST_KEYS:
        return compact_json(canonical)
    strings = [canonical[k] for k in _MANIFEST_STRINGS]
    is_active = canonical["is_active"]
    if not (_STR_ONLY.issuperset(map(type, strings)) and type(is_active) is bool):
        return compact_json(canonical)
    # The key order is fixed, so the text is assembled around the claim's JSON (encoded once, used
    # twice); strings go through the encoder's own string function, so every byte is the same.
    generator, title, instance_id, created_at = map(_json_string, strings)
    if claim_json is None:
        claim_json = compact_json(claim)
    return "".join(
        (
            '{"claim_generator":',
            generator,
            ',"title":',
            title,
            ',"instance_id":',
            instance_id,
            ',"ingredients":',
            compact_json(canonical["ingredients"]) if ingredients_json is None else ingredients_json,
            ',"claim":',
            claim_json,
            ',"created_at":',
            created_at,
            ',"cross_references":',
            compact_json(canonical["cross_references"]),
            ',"c2pa.claim.v2":',
            claim_json,
            ',"is_active":',
            "true" if is_active else "false",
            "}",
        )
    )


def _compact_json_with_floats(canonical: Any) -> str:
    floats: list[str] = []
    nonce = ""

    def default(value: Any) -> str:
        nonlocal nonce
        if isinstance(value, CanonicalFloat):
            if not nonce:
                nonce = secrets.token_hex(8)
            floats.append(ryu_format(value.value))
            return f"\x00{nonce}:{len(floats) - 1}\x00"
        raise TypeError(f"cannot encode {type(value).__name__}")

    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=default)
    for i, f in enumerate(floats):
        text = text.replace(f'"\\u0000{nonce}:{i}\\u0000"', f, 1)
    return text


def to_plain(canonical: Any) -> Any:
    """A canonical form with its float markers turned back into floats (for JSON output and comparison)."""
    t = type(canonical)
    if t is dict:
        return {k: to_plain(v) for k, v in canonical.items()}
    if t is list:
        return [to_plain(v) for v in canonical]
    if t is CanonicalFloat:
        return canonical.value
    return canonical
