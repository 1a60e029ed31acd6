"""The byte-exact forms Atlas computes from a manifest: the claim's CBOR and the manifest's JSON.

Atlas (atlas-cli with atlas-c2pa-lib) never hashes or signs the JSON it was given: it deserialises a
manifest into its Rust structs and serialises those again (serde). So the bytes depend only on what
the structs keep, in the order they declare, which this module reproduces:

* **Struct order.** Manifest, ClaimV2, Ingredient, IngredientData, LinkedIngredient, CrossReference
  and every assertion variant are written with their fields in declaration order. Fields the structs
  do not know are dropped (serde ignores unknown fields); a missing ``Option`` field becomes ``null``;
  ``CrossReference.media_type`` is omitted when absent (``skip_serializing_if``).
* **Free-form values** (``Action.parameters``, ``CustomAssertion.data``, ``Metadata.fields``) are
  ``serde_json::Value``: objects are ``BTreeMap``s, so their keys come out sorted (byte order, which
  for UTF-8 is Python's code-point order). atlas-cli does not enable serde_json's ``preserve_order``.
* **Enums** are externally tagged: an assertion is ``{"Action": {...}}``; an asset type is its string.
* **Timestamps** (``OffsetDateTimeWrapper``, ``time::serde::rfc3339``) are re-emitted: UTC as ``Z``,
  fractional seconds trimmed of trailing zeros.
* **CBOR** (``serde_cbor`` 0.11 ``to_vec``): definite-length maps and arrays, struct fields as text
  keys, ``None`` as ``null``, integers in their shortest form, floats in the shortest of
  half/single/double that holds the value exactly (serde_cbor's ``serialize_f64``).
* **JSON** (``serde_json::to_string``): compact, UTF-8 unescaped, floats formatted as ``ryu`` does
  (``1e-7``, ``1e16``, ``0.00001``), which differs from Python's ``repr`` in a few ranges.

Shortcut, and its limit: when ``c2pa.claim.v2`` (or the top-level ``ingredients``) equals the claim's
under Python ``==`` it shares the claim's canonical form (half the work per node). ``==`` treats
``1``, ``1.0`` and ``True`` alike, so a copy differing only that way is not reported as different.

Choices (not confirmable from the source, written down here): integers outside the 64-bit range and
non-finite floats are refused (serde_json would turn them into floats or ``null``; mlprov refuses to
sign what it cannot reproduce); timestamps with a non-UTC offset keep the offset as given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from provenance.canonical_encoding import (
    CanonicalFloat as _Float,
)
from provenance.canonical_encoding import (
    cbor_bytes,
    compact_json,
    manifest_json,
    ryu_format,
    to_plain,
)
from provenance.errors import InvalidInputError

__all__ = [
    "ASSET_TYPES",
    "canonical_claim",
    "canonical_manifest",
    "cbor_bytes",
    "compact_json",
    "manifest_json",
    "normalise_timestamp",
    "ryu_format",
    "to_plain",
]

#: Every ``AssetType`` atlas-c2pa-lib 0.1 knows (the ``data_types`` of an ingredient).
ASSET_TYPES: frozenset[str] = frozenset(
    {
        "c2pa.types.dataset",
        "c2pa.types.dataset.jax",
        "c2pa.types.dataset.keras",
        "c2pa.types.dataset.ml_net",
        "c2pa.types.dataset.mxnet",
        "c2pa.types.dataset.onnx",
        "c2pa.types.dataset.openvino",
        "c2pa.types.dataset.pytorch",
        "c2pa.types.dataset.tensorflow",
        "c2pa.types.model",
        "c2pa.types.model.jax",
        "c2pa.types.model.keras",
        "c2pa.types.model.ml_net",
        "c2pa.types.model.mxnet",
        "c2pa.types.model.onnx",
        "c2pa.types.model.openvino",
        "c2pa.types.model.pytorch",
        "c2pa.types.model.tensorflow",
        "c2pa.types.format.numpy",
        "c2pa.types.format.protobuf",
        "c2pa.types.format.pickle",
        "c2pa.types.generator",
        "c2pa.types.generator.prompt",
        "c2pa.types.generator.seed",
        "c2pa.types.classifier",
        "c2pa.types.cluster",
        "c2pa.types.regressor",
    }
)

#: A timestamp exactly as :func:`normalise_timestamp` re-emits it (fraction without trailing zeros, UTC
#: as ``Z``): returned as is, without taking it apart.
_CANONICAL_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{0,8}[1-9])?(?:Z|(?![+-]00:00)[+-]\d{2}:\d{2})"
)
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def _fail(path: str, what: str, key: str = "") -> InvalidInputError:
    where = f"{path}.{key}" if key else path
    return InvalidInputError(f"not an Atlas manifest: {where}: {what}")


# The checkers take the parent path and the key separately: the path is only built on failure,
# which keeps canonicalisation cheap (it runs for every node of a verified chain).
def _str(v: Any, path: str, key: str = "") -> str:
    if type(v) is not str:
        raise _fail(path, "missing or not a string", key)
    return v


def _opt_str(v: Any, path: str, key: str = "") -> str | None:
    if v is None or type(v) is str:
        return v
    raise _fail(path, "not a string or null", key)


def _dict(v: Any, path: str, key: str = "") -> dict[str, Any]:
    if type(v) is not dict:
        raise _fail(path, "missing or not an object", key)
    return v


def _list(v: Any, path: str, key: str = "") -> list[Any]:
    if type(v) is not list:
        raise _fail(path, "missing or not a list", key)
    return v


def normalise_timestamp(value: Any, path: str = "timestamp", key: str = "") -> str:
    """Re-emit an RFC 3339 timestamp as Atlas does (``Z`` for UTC, trailing fraction zeros trimmed)."""
    if type(value) is str and _CANONICAL_TIMESTAMP.fullmatch(value):
        return value
    m = _TIMESTAMP.match(_str(value, path, key))
    if m is None:
        raise _fail(path, f"{value!r} is not an RFC 3339 timestamp", key)
    date, time_, frac, offset = m.groups()
    frac = (frac or "").rstrip("0")
    offset = "Z" if offset in ("Z", "z", "+00:00", "-00:00") else offset
    return f"{date}T{time_}{'.' + frac if frac else ''}{offset}"


def _value(v: Any, path: str, key: str = "") -> Any:
    """A ``serde_json::Value``: objects key-sorted, numbers checked."""
    # Leaves (strings, null, booleans: nearly every value) are taken inline, without a recursive call.
    t = type(v)
    if t is str or v is None or t is bool:
        return v
    if t is dict:
        out = {}
        try:
            keys = sorted(v)
        except TypeError:  # keys of mixed types cannot even be ordered
            raise _fail(path, "object keys must be strings", key) from None
        for k in keys:
            if type(k) is not str:
                raise _fail(path, "object keys must be strings", key)
            x = v[k]
            tx = type(x)
            out[k] = x if tx is str or x is None or tx is bool else _value(x, path, key)
        return out
    if t is list:
        return [x if type(x) is str or x is None or type(x) is bool else _value(x, path, key) for x in v]
    if t is int:
        if not _INT_MIN <= v <= _INT_MAX:
            raise _fail(path, f"integer {v} outside the 64-bit range", key)
        return v
    if t is float:
        if v != v or v in (float("inf"), float("-inf")):
            raise _fail(path, "non-finite number", key)
        return _Float(v)
    if isinstance(v, _Float):
        return v
    raise _fail(path, f"{t.__name__} is not a JSON value", key)


def _linked_ingredient(v: Any, path: str) -> dict[str, Any] | None:
    if v is None:
        return None
    d = _dict(v, path)
    return {
        "url": _str(d.get("url"), path, "url"),
        "hash": _str(d.get("hash"), path, "hash"),
        "media_type": _str(d.get("media_type"), path, "media_type"),
    }


def _ingredient(v: Any, path: str) -> dict[str, Any]:
    d = _dict(v, path)
    data = _dict(d.get("data"), path, "data")
    types = _list(data.get("data_types"), path, "data.data_types")
    for t in types:
        if not isinstance(t, str) or t not in ASSET_TYPES:  # (an unhashable entry must not raise TypeError)
            raise _fail(path + ".data.data_types", f"unknown asset type {t!r}")
    return {
        "title": _str(d.get("title"), path, "title"),
        "relationship": _str(d.get("relationship"), path, "relationship"),
        "dc:format": _str(d.get("dc:format"), path, "dc:format"),
        "document_id": _str(d.get("document_id"), path, "document_id"),
        "instance_id": _str(d.get("instance_id"), path, "instance_id"),
        "data": {
            "url": _str(data.get("url"), path, "data.url"),
            "alg": _str(data.get("alg"), path, "data.alg"),
            "hash": _str(data.get("hash"), path, "data.hash"),
            "data_types": list(types),
            "linked_ingredient_url": _opt_str(data.get("linked_ingredient_url"), path, "data.linked_ingredient_url"),
            "linked_ingredient_hash": _opt_str(data.get("linked_ingredient_hash"), path, "data.linked_ingredient_hash"),
        },
        "linked_ingredient": _linked_ingredient(d.get("linked_ingredient"), path),
    }


def _action(v: Any, path: str) -> dict[str, Any]:
    d = _dict(v, path)
    params = d.get("parameters")
    return {
        "action": _str(d.get("action"), path, "action"),
        "software_agent": _opt_str(d.get("software_agent"), path, "software_agent"),
        "parameters": None if params is None else _value(params, path, "parameters"),
        "digital_source_type": _opt_str(d.get("digital_source_type"), path, "digital_source_type"),
        "instance_id": _opt_str(d.get("instance_id"), path, "instance_id"),
    }


def _a_action(d: dict[str, Any], path: str) -> dict[str, Any]:
    actions = _list(d.get("actions"), path, "actions")
    return {"actions": [_action(a, f"{path}.actions[{i}]") for i, a in enumerate(actions)]}


def _a_ingredient(d: dict[str, Any], path: str) -> dict[str, Any]:
    data = _dict(d.get("data"), path, "data")
    return {
        "title": _str(d.get("title"), path, "title"),
        "relationship": _str(d.get("relationship"), path, "relationship"),
        "dc:format": _str(d.get("dc:format"), path, "dc:format"),
        "document_id": _str(d.get("document_id"), path, "document_id"),
        "instance_id": _str(d.get("instance_id"), path, "instance_id"),
        "data": {
            "url": _str(data.get("url"), path, "data.url"),
            "alg": _str(data.get("alg"), path, "data.alg"),
            "hash": _str(data.get("hash"), path, "data.hash"),
            "data_types": [_str(t, path, "data.data_types") for t in _list(data.get("data_types"), path)],
        },
    }


def _a_hash(d: dict[str, Any], path: str) -> dict[str, Any]:
    raw = _list(d.get("hash_value"), path, "hash_value")
    if not all(type(b) is int and 0 <= b <= 255 for b in raw):
        raise _fail(path + ".hash_value", "not a list of bytes")
    return {"algorithm": _str(d.get("algorithm"), path, "algorithm"), "hash_value": list(raw)}


def _a_metadata(d: dict[str, Any], path: str) -> dict[str, Any]:
    if "fields" not in d:
        raise _fail(path + ".fields", "missing")
    return {"@type": _str(d.get("@type"), path, "@type"), "fields": _value(d["fields"], path, "fields")}


def _a_creative_work(d: dict[str, Any], path: str) -> dict[str, Any]:
    authors = []
    for i, a in enumerate(_list(d.get("author"), path, "author")):
        if type(a) is dict:
            kind, name = a.get("@type"), a.get("name")
            if type(kind) is str and type(name) is str:  # the usual case, without building error paths
                authors.append({"@type": kind, "name": name})
                continue
        ad = _dict(a, f"{path}.author[{i}]")
        authors.append(
            {"@type": _str(ad.get("@type"), f"{path}.author[{i}].@type"), "name": _str(ad.get("name"), path)}
        )
    return {
        "@context": _str(d.get("@context"), path, "@context"),
        "@type": _str(d.get("@type"), path, "@type"),
        "author": authors,
    }


def _a_custom(d: dict[str, Any], path: str) -> dict[str, Any]:
    if "data" not in d:
        raise _fail(path + ".data", "missing")
    return {"label": _str(d.get("label"), path, "label"), "data": _value(d["data"], path, "data")}


def _a_do_not_train(d: dict[str, Any], path: str) -> dict[str, Any]:
    enforced = d.get("enforced")
    if type(enforced) is not bool:
        raise _fail(path + ".enforced", "missing or not a boolean")
    return {"reason": _str(d.get("reason"), path, "reason"), "enforced": enforced}


_ASSERTIONS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "Action": _a_action,
    "Ingredient": _a_ingredient,
    "Hash": _a_hash,
    "Metadata": _a_metadata,
    "CreativeWork": _a_creative_work,
    "CustomAssertion": _a_custom,
    "DoNotTrain": _a_do_not_train,
}


def _assertion(v: Any, path: str) -> dict[str, Any]:
    d = _dict(v, path)
    if len(d) != 1:
        raise _fail(path, "an assertion is an object with exactly one key (its type)")
    ((tag, body),) = d.items()
    fn = _ASSERTIONS.get(tag)
    if fn is None:
        raise _fail(path, f"unknown assertion type {tag!r}")
    where = f"{path}.{tag}"
    return {tag: fn(_dict(body, where), where)}


# --- shared mode: parts already in canonical form are used as they are ------------------------------
# A manifest written by mlprov or by serde is already in struct order with the right types almost
# everywhere, so ``share=True`` checks each part and, when it is exactly what its builder would
# return (same keys in the same order, the same exact types), uses the part itself instead of
# building an equal copy. The result is equal to the copying form, type for type and key order for
# key order (tests/unit/provenance/test_canonical_fast.py), but shares objects with the input.

_INGREDIENT_KEYS = ("title", "relationship", "dc:format", "document_id", "instance_id", "data", "linked_ingredient")
_INGREDIENT_DATA_KEYS = ("url", "alg", "hash", "data_types", "linked_ingredient_url", "linked_ingredient_hash")
_LINKED_KEYS = ("url", "hash", "media_type")
_AUTHOR_KEYS = ("@type", "name")
_CREATIVE_KEYS = ("@context", "@type", "author")
_ACTION_KEYS = ("action", "software_agent", "parameters", "digital_source_type", "instance_id")
_CUSTOM_KEYS = ("label", "data")
_XREF_KEYS = ("manifest_url", "manifest_hash")
_XREF_KEYS_MEDIA = ("manifest_url", "manifest_hash", "media_type")


def _value_as_is(v: Any) -> bool:
    """True when :func:`_value` would return a value equal to ``v`` (keys already sorted, no floats)."""
    t = type(v)
    if t is str or v is None or t is bool:
        return True
    if t is dict:
        prev: str | None = None
        for k, x in v.items():
            if type(k) is not str or (prev is not None and k <= prev):
                return False
            prev = k
            tx = type(x)
            if not (tx is str or x is None or tx is bool or _value_as_is(x)):
                return False
        return True
    if t is list:
        return all(type(x) is str or x is None or type(x) is bool or _value_as_is(x) for x in v)
    if t is int:
        return bool(_INT_MIN <= v <= _INT_MAX)
    return False  # floats become markers; anything else is refused by _value


def _ingredient_as_is(d: Any) -> bool:
    if type(d) is not dict or tuple(d) != _INGREDIENT_KEYS:
        return False
    data, linked = d["data"], d["linked_ingredient"]
    if type(data) is not dict or tuple(data) != _INGREDIENT_DATA_KEYS:
        return False
    types, lurl, lhash = data["data_types"], data["linked_ingredient_url"], data["linked_ingredient_hash"]
    return (
        type(d["title"]) is str
        and type(d["relationship"]) is str
        and type(d["dc:format"]) is str
        and type(d["document_id"]) is str
        and type(d["instance_id"]) is str
        and type(data["url"]) is str
        and type(data["alg"]) is str
        and type(data["hash"]) is str
        and type(types) is list
        and all(type(t) is str and t in ASSET_TYPES for t in types)
        and (lurl is None or type(lurl) is str)
        and (lhash is None or type(lhash) is str)
        and (
            linked is None
            or (
                type(linked) is dict
                and tuple(linked) == _LINKED_KEYS
                and type(linked["url"]) is str
                and type(linked["hash"]) is str
                and type(linked["media_type"]) is str
            )
        )
    )


def _creative_as_is(d: dict[str, Any]) -> bool:
    authors = d.get("author")
    return (
        tuple(d) == _CREATIVE_KEYS
        and type(d["@context"]) is str
        and type(d["@type"]) is str
        and type(authors) is list
        and all(
            type(a) is dict and tuple(a) == _AUTHOR_KEYS and type(a["@type"]) is str and type(a["name"]) is str
            for a in authors
        )
    )


def _action_item_as_is(a: Any) -> bool:
    if type(a) is not dict or tuple(a) != _ACTION_KEYS:
        return False
    agent, params, source, iid = a["software_agent"], a["parameters"], a["digital_source_type"], a["instance_id"]
    return (
        type(a["action"]) is str
        and (agent is None or type(agent) is str)
        and (params is None or _value_as_is(params))
        and (source is None or type(source) is str)
        and (iid is None or type(iid) is str)
    )


def _action_as_is(d: dict[str, Any]) -> bool:
    actions = d.get("actions")
    return len(d) == 1 and type(actions) is list and all(_action_item_as_is(a) for a in actions)


def _custom_as_is(d: dict[str, Any]) -> bool:
    return tuple(d) == _CUSTOM_KEYS and type(d["label"]) is str and _value_as_is(d["data"])


_AS_IS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "Action": _action_as_is,
    "CreativeWork": _creative_as_is,
    "CustomAssertion": _custom_as_is,
}


def _assertion_shared(v: Any, path: str) -> dict[str, Any]:
    if type(v) is dict and len(v) == 1:
        ((tag, body),) = v.items()
        check = _AS_IS.get(tag)
        if check is not None and type(body) is dict and check(body):
            return v
    return _assertion(v, path)


def _ingredient_shared(v: Any, path: str) -> dict[str, Any]:
    return v if _ingredient_as_is(v) else _ingredient(v, path)


def _cross_reference_shared(v: Any, path: str) -> dict[str, Any]:
    if type(v) is dict and type(v.get("manifest_url")) is str and type(v.get("manifest_hash")) is str:
        keys = tuple(v)
        if keys == _XREF_KEYS or (keys == _XREF_KEYS_MEDIA and type(v["media_type"]) is str):
            return v
    return _cross_reference(v, path)


def canonical_claim(v: Any, path: str = "claim", *, share: bool = False) -> dict[str, Any]:
    """The claim as ClaimV2 serialises it (see the module docstring); ``share``: see :func:`canonical_manifest`."""
    d = _dict(v, path)
    assertions = _list(d.get("created_assertions"), path, "created_assertions")
    ingredients = _list(d.get("ingredients"), path, "ingredients")
    assertion, ingredient = (_assertion_shared, _ingredient_shared) if share else (_assertion, _ingredient)
    return {
        "instance_id": _str(d.get("instance_id"), path, "instance_id"),
        "created_assertions": [assertion(a, f"{path}.created_assertions[{i}]") for i, a in enumerate(assertions)],
        "ingredients": [ingredient(g, f"{path}.ingredients[{i}]") for i, g in enumerate(ingredients)],
        "signature": _opt_str(d.get("signature"), path, "signature"),
        "claim_generator_info": _str(d.get("claim_generator_info"), path, "claim_generator_info"),
        "created_at": normalise_timestamp(d.get("created_at"), path, "created_at"),
    }


def _cross_reference(v: Any, path: str) -> dict[str, Any]:
    d = _dict(v, path)
    out = {
        "manifest_url": _str(d.get("manifest_url"), path, "manifest_url"),
        "manifest_hash": _str(d.get("manifest_hash"), path, "manifest_hash"),
    }
    media_type = _opt_str(d.get("media_type"), path, "media_type")
    if media_type is not None:
        out["media_type"] = media_type
    return out


def canonical_cross_references(v: Any, path: str = "cross_references", *, share: bool = False) -> list[dict[str, Any]]:
    make = _cross_reference_shared if share else _cross_reference
    return [make(x, f"{path}[{i}]") for i, x in enumerate(_list(v, path))]


def canonical_manifest(v: Any, *, share: bool = False) -> dict[str, Any]:
    """The manifest as Atlas's ``Manifest`` struct serialises it; :class:`InvalidInputError` if it cannot.

    ``share=True`` (for readers such as the chain verifier) gives an equal form that uses the parts of
    ``v`` already in canonical form as they are: cheaper, but neither may be changed while the
    other is in use. The default builds a form that shares nothing with ``v``.
    """
    d = _dict(v, "manifest")
    is_active = d.get("is_active")
    if type(is_active) is not bool:
        raise _fail("is_active", "missing or not a boolean")
    claim_v2 = d.get("c2pa.claim.v2")
    claim = canonical_claim(d.get("claim"), share=share)
    if claim_v2 is None:
        claim_v2_canonical = None
    elif claim_v2 == d.get("claim"):  # the usual case: an identical copy (compared in C)
        claim_v2_canonical = claim
    else:
        claim_v2_canonical = canonical_claim(claim_v2, "c2pa.claim.v2", share=share)
    raw_ingredients = _list(d.get("ingredients"), "ingredients")
    if raw_ingredients and raw_ingredients == d["claim"]["ingredients"]:  # the usual copy (compared in C)
        top_ingredients = claim["ingredients"]
    else:
        ingredient = _ingredient_shared if share else _ingredient
        top_ingredients = [ingredient(g, f"ingredients[{i}]") for i, g in enumerate(raw_ingredients)]
    return {
        "claim_generator": _str(d.get("claim_generator"), "claim_generator"),
        "title": _str(d.get("title"), "title"),
        "instance_id": _str(d.get("instance_id"), "instance_id"),
        "ingredients": top_ingredients,
        "claim": claim,
        "created_at": normalise_timestamp(d.get("created_at"), "created_at"),
        "cross_references": canonical_cross_references(d.get("cross_references"), share=share),
        "c2pa.claim.v2": claim_v2_canonical,
        "is_active": is_active,
    }
