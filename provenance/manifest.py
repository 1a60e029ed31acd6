"""Atlas-format manifests: build, parse, inspect, hash and cross-reference them.

The layout is atlas-cli 0.1.0's (reference/atlas-compat.md section 2): top-level keys in the order
``claim_generator, title, instance_id, ingredients, claim, created_at, cross_references,
c2pa.claim.v2, is_active``; the claim holds the assertions and the ingredients; mlprov's own facts
are ``CustomAssertion``s, never new top-level fields. A manifest is a plain ``dict`` (JSON-ready);
:mod:`provenance.canonical` gives the exact bytes Atlas would hash or sign from it.

Choices written down here:

* Ingredients are sorted by lower-cased title, as atlas-cli sorts them (the OMS resource order), and
  the top-level ``ingredients`` repeat the claim's (atlas-cli 0.1.0 fills both; 0.2 leaves the
  top-level list empty). Only the claim's copy is signed; the verifier insists the two agree.
* An ingredient's ``url`` is ``file://`` + the *absolute* path (atlas-cli keeps the path as typed).
* A directory is a valid ingredient: its hash is the directory digest of :func:`provenance.hashing.hash_path`
  (the OMS root digest) and its ``dc:format`` is ``application/x-directory``.
* Evaluation manifests carry ``model_id``, ``dataset_id`` and ``metrics`` in the action parameters
  as atlas-cli writes them; pass ``parameters={"model_id": ..., "dataset_id": ...}``.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from provenance.canonical import canonical_manifest, manifest_json
from provenance.errors import InvalidInputError
from provenance.hashing import hash_path
from provenance.keys import HashName

__all__ = [
    "CLAIM_GENERATOR",
    "DIGITAL_SOURCE_TYPES",
    "AssetKind",
    "build_manifest",
    "claim_assertions",
    "cross_reference",
    "custom_assertion",
    "data_types_for",
    "find_assertion",
    "format_timestamp",
    "make_ingredient",
    "manifest_hash",
    "manifest_type",
    "media_type_for",
    "new_manifest_id",
    "parse_manifest",
]

AssetKind = Literal["model", "dataset", "software", "evaluation"]


def _version() -> str:
    try:
        return metadata.version("mlprov")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


#: ``claim_generator``, ``claim_generator_info`` and the action's ``software_agent``
#: (atlas-cli writes ``atlas-cli:0.1.0`` there).
CLAIM_GENERATOR = f"mlprov:{_version()}"

_CREATIVE_TYPE: dict[str, str] = {
    "model": "Model",
    "dataset": "Dataset",
    "software": "Software",
    "evaluation": "EvaluationResult",
}
_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
DIGITAL_SOURCE_TYPES: dict[str, str] = {
    "model": _IPTC + "algorithmicMedia",
    "dataset": _IPTC + "dataset",
    "software": _IPTC + "software",
    "evaluation": _IPTC + "evaluationResult",
}

_MODEL_TYPES = {
    "pb": "tensorflow", "savedmodel": "tensorflow", "tf": "tensorflow",
    "pt": "pytorch", "pth": "pytorch", "pytorch": "pytorch",
    "onnx": "onnx", "bin": "openvino", "xml": "openvino",
    "h5": "keras", "keras": "keras", "hdf5": "keras", "jax": "jax",
    "mlnet": "ml_net", "zip": "ml_net", "params": "mxnet", "json": "mxnet", "mxnet": "mxnet",
}  # fmt: skip
_FORMAT_TYPES = {
    "npy": "numpy",
    "npz": "numpy",
    "protobuf": "protobuf",
    "proto": "protobuf",
    "pkl": "pickle",
    "pickle": "pickle",
}
_DATASET_TYPES = {
    "tfrecord": "tensorflow", "tfrec": "tensorflow", "pb": "tensorflow", "proto": "tensorflow", "tf": "tensorflow",
    "pt": "pytorch", "pth": "pytorch", "pytorch": "pytorch", "onnx": "onnx", "bin": "openvino", "xml": "openvino",
    "h5": "keras", "hdf5": "keras", "keras": "keras", "jax": "jax", "mlnet": "ml_net", "zip": "ml_net",
    "rec": "mxnet", "idx": "mxnet", "params": "mxnet", "lst": "mxnet", "mxnet": "mxnet",
}  # fmt: skip
_MEDIA_TYPES = {
    "pb": "application/x-protobuf", "savedmodel": "application/x-tensorflow", "tf": "application/x-tensorflow",
    "pt": "application/x-pytorch", "pth": "application/x-pytorch", "pytorch": "application/x-pytorch",
    "onnx": "application/onnx", "bin": "application/x-openvino", "xml": "application/x-openvino",
    "h5": "application/x-hdf5", "keras": "application/x-hdf5", "hdf5": "application/x-hdf5",
    "jax": "application/x-jax", "mlnet": "application/x-mlnet", "zip": "application/zip",
    "params": "application/x-mxnet", "mxnet": "application/x-mxnet", "json": "application/json",
    "npy": "application/x-numpy", "npz": "application/x-numpy", "protobuf": "application/x-protobuf",
    "proto": "application/x-protobuf", "pkl": "application/x-pickle", "pickle": "application/x-pickle",
}  # fmt: skip
DIRECTORY_MEDIA_TYPE = "application/x-directory"


def _new_uuid() -> str:
    """One UUID4 (a seam: golden tests replace it with a counter)."""
    return str(uuid.uuid4())


def _utcnow() -> dt.datetime:
    """The current time (a seam: golden tests freeze it)."""
    return dt.datetime.now(dt.UTC)


def format_timestamp(when: dt.datetime) -> str:
    """RFC 3339 in UTC with ``Z``, fractional seconds trimmed of trailing zeros (as Atlas writes them)."""
    when = when.astimezone(dt.UTC)
    frac = f"{when.microsecond:06d}".rstrip("0")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def new_manifest_id() -> str:
    """A manifest or claim ``instance_id``: ``urn:c2pa:<uuid4>``."""
    return f"urn:c2pa:{_new_uuid()}"


def _suffix(path: Path) -> str:
    return path.suffix[1:] if path.suffix else ""


def data_types_for(path: Path, kind: AssetKind) -> list[str]:
    """The ``data_types`` atlas-cli gives a file of this kind (by suffix); directories get the plain type."""
    ext = "" if path.is_dir() else _suffix(path)
    if kind == "model":
        if ext in _FORMAT_TYPES:
            return [f"c2pa.types.format.{_FORMAT_TYPES[ext]}"]
        return [f"c2pa.types.model.{_MODEL_TYPES[ext]}"] if ext in _MODEL_TYPES else ["c2pa.types.model"]
    if kind == "dataset":
        return [f"c2pa.types.dataset.{_DATASET_TYPES[ext]}"] if ext in _DATASET_TYPES else ["c2pa.types.dataset"]
    if kind == "software":
        return ["c2pa.types.generator"]
    return ["c2pa.types.dataset"]  # atlas-cli: "Use Dataset type for evaluation results"


def media_type_for(path: Path) -> str:
    if path.is_dir():
        return DIRECTORY_MEDIA_TYPE
    return _MEDIA_TYPES.get(_suffix(path), "application/octet-stream")


def make_ingredient(
    path: Path,
    name: str,
    *,
    kind: AssetKind,
    hash_alg: HashName = "sha384",
    media_type: str | None = None,
    digest_hex: str | None = None,
) -> dict[str, Any]:
    """An ingredient for one file or directory, hashed with ``hash_alg`` unless ``digest_hex`` is given.

    ``digest_hex`` lets a caller that already hashed the content (the sidecar) skip a second read;
    it must be the ``hash_alg`` digest of exactly this path.
    """
    if kind not in _CREATIVE_TYPE:
        raise InvalidInputError(f"unknown asset kind {kind!r}; use model, dataset, software or evaluation")
    if not name.strip():
        raise InvalidInputError(f"ingredient for {path} needs a non-empty name")
    absolute = Path(path).absolute()
    if not absolute.exists():
        raise InvalidInputError(f"ingredient path {absolute} does not exist")
    digest = digest_hex.lower() if digest_hex is not None else hash_path(absolute, hash_alg)
    return {
        "title": name,
        "relationship": "componentOf",
        "dc:format": media_type or media_type_for(absolute),
        "document_id": f"uuid:{_new_uuid()}",
        "instance_id": f"uuid:{_new_uuid()}",
        "data": {
            "url": absolute.as_uri(),
            "alg": hash_alg,
            "hash": digest,
            "data_types": data_types_for(absolute, kind),
            "linked_ingredient_url": None,
            "linked_ingredient_hash": None,
        },
        "linked_ingredient": None,
    }


def _keys_sorted(v: Any) -> Any:
    """``v`` with every object's keys in the order Atlas's canonical form has them (serde_json's sorted map);
    anything else as it is (canonical.py judges it). The canonical form and the signature are the same
    either way; a manifest written in that order is read back without re-sorting (the verifier's fast path)."""
    if type(v) is dict:
        if not all(type(k) is str for k in v):
            return v
        return {k: _keys_sorted(v[k]) for k in sorted(v)}
    if type(v) is list:
        return [_keys_sorted(x) for x in v]
    return v


def custom_assertion(label: str, data: Any) -> dict[str, Any]:
    """``{"CustomAssertion": {"label": label, "data": data}}`` (data must be JSON-ready; object keys are
    written sorted, as the canonical form orders them)."""
    if not label:
        raise InvalidInputError("a custom assertion needs a label")
    return {"CustomAssertion": {"label": label, "data": _keys_sorted(data)}}


def claim_assertions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The claim's assertions (objects only; an empty list when the claim is malformed)."""
    claim = manifest.get("claim")
    found = claim.get("created_assertions") if isinstance(claim, dict) else None
    return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []


def find_assertion(manifest: dict[str, Any], label: str) -> Any | None:
    """The ``data`` of the claim's first CustomAssertion labelled ``label``; for ``CreativeWork``,
    ``Action`` and the other Atlas types given by tag name, the body of the first such assertion."""
    for assertion in claim_assertions(manifest):
        custom = assertion.get("CustomAssertion")
        if isinstance(custom, dict) and custom.get("label") == label:
            return custom.get("data")
        if label in assertion and label != "CustomAssertion":
            return assertion[label]
    return None


def build_manifest(
    *,
    kind: AssetKind,
    title: str,
    ingredients: list[dict[str, Any]],
    author_org: str | None = None,
    author_name: str | None = None,
    description: str | None = None,
    cross_references: Sequence[dict[str, Any]] = (),
    assertions: Sequence[dict[str, Any]] = (),
    parameters: dict[str, Any] | None = None,
    software_type: str | None = None,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An unsigned manifest in the Atlas 0.1.0 layout (``claim.signature`` is ``None``).

    The action's parameters follow atlas-cli: ``{}`` for models and datasets; name, description and
    author (plus ``software_type``/``version``) for software; plus ``model_id``, ``dataset_id`` and
    ``metrics`` for evaluations. ``parameters`` are merged over those.
    """
    if kind not in _CREATIVE_TYPE:
        raise InvalidInputError(f"unknown asset kind {kind!r}; use model, dataset, software or evaluation")
    if not title.strip():
        raise InvalidInputError("a manifest needs a non-empty title (--name)")
    if not ingredients and kind != "evaluation":
        raise InvalidInputError(f"a {kind} manifest needs at least one ingredient")
    described = {
        "name": title,
        "description": description,
        "author": {"organization": author_org, "name": author_name},
    }
    params: dict[str, Any] = {}
    if kind == "software":
        params = dict(described)
        if software_type is not None:
            params["software_type"] = software_type
        if version is not None:
            params["version"] = version
    elif kind == "evaluation":
        params = {**described, "model_id": None, "dataset_id": None, "metrics": metrics}
    if metrics is not None and kind != "evaluation":
        params["metrics"] = metrics
    params.update(parameters or {})
    created: list[dict[str, Any]] = [
        {
            "CreativeWork": {
                "@context": "http://schema.org/",
                "@type": _CREATIVE_TYPE[kind],
                "author": [
                    {"@type": "Organization", "name": author_org or "Organization"},
                    {"@type": "Person", "name": author_name or "Unknown"},
                ],
            }
        },
        {
            "Action": {
                "actions": [
                    {
                        "action": "c2pa.evaluation" if kind == "evaluation" else "c2pa.created",
                        "software_agent": CLAIM_GENERATOR,
                        "parameters": params,
                        "digital_source_type": DIGITAL_SOURCE_TYPES[kind],
                        "instance_id": None,
                    }
                ]
            }
        },
        *copy.deepcopy(list(assertions)),
    ]
    ordered = sorted(copy.deepcopy(ingredients), key=lambda g: str(g.get("title", "")).lower())
    now = format_timestamp(_utcnow())
    claim: dict[str, Any] = {
        "instance_id": new_manifest_id(),
        "created_assertions": created,
        "ingredients": ordered,
        "signature": None,
        "claim_generator_info": CLAIM_GENERATOR,
        "created_at": now,
    }
    manifest: dict[str, Any] = {
        "claim_generator": CLAIM_GENERATOR,
        "title": title,
        "instance_id": new_manifest_id(),
        "ingredients": copy.deepcopy(ordered),
        "claim": claim,
        "created_at": now,
        "cross_references": [dict(x) for x in cross_references],
        "c2pa.claim.v2": copy.deepcopy(claim),
        "is_active": True,
    }
    canonical_manifest(manifest)  # refuse now what could not be signed or hashed later
    return manifest


def manifest_hash(manifest: dict[str, Any], alg: HashName = "sha256") -> str:
    """Hex hash of the manifest as atlas-cli computes a cross-reference's ``manifest_hash``.

    atlas-cli (``manifest/common.rs``) retrieves the linked manifest into its ``Manifest`` struct,
    serialises it with ``serde_json::to_string`` (compact) and hashes that with ``calculate_hash``,
    i.e. SHA-256; its verify picks the algorithm from the hex length (64/96/128). So the hash covers
    the struct's re-serialisation (:func:`provenance.canonical.canonical_manifest`), not the bytes stored.
    """
    text = manifest_json(canonical_manifest(manifest)).encode()
    return hashlib.new(alg, text).hexdigest()


def cross_reference(manifest: dict[str, Any]) -> dict[str, Any]:
    """A cross-reference to ``manifest``: its ID, its SHA-256 manifest hash, ``application/json``."""
    return {
        "manifest_url": manifest["instance_id"],
        "manifest_hash": manifest_hash(manifest),
        "media_type": "application/json",
    }


def parse_manifest(data: bytes | str) -> dict[str, Any]:
    """Parse manifest JSON; :class:`InvalidInputError` with a one-line reason unless it is the Atlas layout."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"manifest is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("manifest is not a JSON object")
    canonical_manifest(value)
    return value


def manifest_type(manifest: dict[str, Any]) -> str:
    """``Model``, ``Dataset``, ``Software``, ``EvaluationResult`` or ``Unknown``, from the CreativeWork type."""
    work = find_assertion(manifest, "CreativeWork")
    kind = work.get("@type") if isinstance(work, dict) else None
    return kind if kind in ("Model", "Dataset", "Software", "EvaluationResult") else "Unknown"
