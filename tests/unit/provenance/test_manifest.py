"""Atlas-format manifests: layout, ingredients, parsing, the Atlas manifest hash and the golden files."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest

from provenance import manifest as manifest_module
from provenance.canonical import _value, canonical_claim, canonical_manifest, cbor_bytes, compact_json, ryu_format
from provenance.errors import InvalidInputError
from provenance.hashing import hash_path
from provenance.keys import TrustStore, init_identity, load_identity
from provenance.manifest import (
    build_manifest,
    cross_reference,
    custom_assertion,
    find_assertion,
    format_timestamp,
    make_ingredient,
    manifest_hash,
    manifest_type,
    new_manifest_id,
    parse_manifest,
)
from provenance.signing import claim_signing_bytes, sign_manifest, verify_manifest_signature


def found(manifest: dict[str, Any], label: str) -> Any:
    """find_assertion, asserting the assertion is there."""
    value = find_assertion(manifest, label)
    assert value is not None, label
    return value


GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden"
URN = re.compile(r"^urn:c2pa:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
UUID = re.compile(r"^uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights" * 100)
    return path


def test_ids_and_timestamps() -> None:
    assert URN.match(new_manifest_id())
    assert format_timestamp(dt.datetime(2025, 6, 1, 12, 0, 0, 120000, tzinfo=dt.UTC)) == "2025-06-01T12:00:00.12Z"
    assert format_timestamp(dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)) == "2025-06-01T12:00:00Z"
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert format_timestamp(dt.datetime(2025, 6, 1, 14, 0, 0, 1, tzinfo=plus_two)) == "2025-06-01T12:00:00.000001Z"


def test_make_ingredient_for_a_file(weights: Path) -> None:
    ingredient = make_ingredient(weights, "weights", kind="model")
    assert list(ingredient) == [
        "title",
        "relationship",
        "dc:format",
        "document_id",
        "instance_id",
        "data",
        "linked_ingredient",
    ]
    assert ingredient["relationship"] == "componentOf"
    assert ingredient["dc:format"] == "application/x-pytorch"
    assert UUID.match(ingredient["document_id"])
    assert UUID.match(ingredient["instance_id"])
    assert ingredient["document_id"] != ingredient["instance_id"]
    data = ingredient["data"]
    assert data["url"] == weights.absolute().as_uri()
    assert data["alg"] == "sha384"
    assert data["hash"] == hashlib.sha384(weights.read_bytes()).hexdigest()
    assert data["data_types"] == ["c2pa.types.model.pytorch"]
    assert ingredient["linked_ingredient"] is None


def test_make_ingredient_for_a_directory_uses_the_directory_digest(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"a")
    (tmp_path / "d" / "b.bin").write_bytes(b"b")
    ingredient = make_ingredient(tmp_path / "d", "shards", kind="dataset", hash_alg="sha256")
    assert ingredient["data"]["hash"] == hash_path(tmp_path / "d", "sha256")
    assert ingredient["dc:format"] == "application/x-directory"
    assert ingredient["data"]["data_types"] == ["c2pa.types.dataset"]


@pytest.mark.parametrize(
    ("name", "kind", "types"),
    [
        ("m.onnx", "model", ["c2pa.types.model.onnx"]),
        ("m.safetensors", "model", ["c2pa.types.model"]),
        ("m.npy", "model", ["c2pa.types.format.numpy"]),
        ("d.csv", "dataset", ["c2pa.types.dataset"]),
        ("d.tfrecord", "dataset", ["c2pa.types.dataset.tensorflow"]),
        ("train.py", "software", ["c2pa.types.generator"]),
        ("eval.json", "evaluation", ["c2pa.types.dataset"]),
    ],
)
def test_data_types_follow_atlas(tmp_path: Path, name: str, kind: Any, types: list[str]) -> None:
    (tmp_path / name).write_bytes(b"x")
    assert make_ingredient(tmp_path / name, "x", kind=kind)["data"]["data_types"] == types


def test_make_ingredient_refuses_missing_paths_and_empty_names(tmp_path: Path, weights: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        make_ingredient(tmp_path / "nope.pt", "x", kind="model")
    with pytest.raises(InvalidInputError, match="non-empty name"):
        make_ingredient(weights, " ", kind="model")


def test_build_manifest_layout(weights: Path) -> None:
    other = weights.with_name("a-config.json")
    other.write_text("{}")
    m = build_manifest(
        kind="model",
        title="classifier",
        ingredients=[
            make_ingredient(weights, "Weights", kind="model"),
            make_ingredient(other, "a config", kind="model"),
        ],
        author_org="Acme",
    )
    assert list(m) == [
        "claim_generator", "title", "instance_id", "ingredients", "claim", "created_at",
        "cross_references", "c2pa.claim.v2", "is_active",
    ]  # fmt: skip
    assert list(m["claim"]) == [
        "instance_id", "created_assertions", "ingredients", "signature", "claim_generator_info", "created_at",
    ]  # fmt: skip
    assert URN.match(m["instance_id"])
    assert URN.match(m["claim"]["instance_id"])
    assert m["instance_id"] != m["claim"]["instance_id"]
    assert TIMESTAMP.match(m["created_at"])
    assert TIMESTAMP.match(m["claim"]["created_at"])
    assert m["claim"]["signature"] is None
    assert m["c2pa.claim.v2"] == m["claim"]
    assert isinstance(m["claim"]["claim_generator_info"], str)
    assert [g["title"] for g in m["claim"]["ingredients"]] == ["a config", "Weights"]  # atlas-cli's order
    assert m["ingredients"] == m["claim"]["ingredients"]
    work = found(m, "CreativeWork")
    assert work == {
        "@context": "http://schema.org/",
        "@type": "Model",
        "author": [{"@type": "Organization", "name": "Acme"}, {"@type": "Person", "name": "Unknown"}],
    }
    action = found(m, "Action")["actions"][0]
    assert action["action"] == "c2pa.created"
    assert action["digital_source_type"] == "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicMedia"
    assert action["parameters"] == {}
    assert action["instance_id"] is None
    assert m["is_active"] is True
    assert m["cross_references"] == []


def test_evaluation_and_software_parameters(weights: Path) -> None:
    evaluation = build_manifest(
        kind="evaluation",
        title="eval",
        ingredients=[],
        metrics={"accuracy": 0.9},
        parameters={"model_id": "urn:c2pa:m", "dataset_id": "urn:c2pa:d"},
    )
    action = found(evaluation, "Action")["actions"][0]
    assert action["action"] == "c2pa.evaluation"
    assert action["parameters"]["metrics"] == {"accuracy": 0.9}
    assert action["parameters"]["model_id"] == "urn:c2pa:m"
    assert manifest_type(evaluation) == "EvaluationResult"
    software = build_manifest(
        kind="software", title="trainer", ingredients=[make_ingredient(weights, "w", kind="software")],
        software_type="script", version="1.2",
    )  # fmt: skip
    params = found(software, "Action")["actions"][0]["parameters"]
    assert params["software_type"] == "script"
    assert params["version"] == "1.2"
    assert manifest_type(software) == "Software"


def test_build_manifest_refuses_bad_input(weights: Path) -> None:
    ingredient = make_ingredient(weights, "w", kind="model")
    with pytest.raises(InvalidInputError, match="at least one ingredient"):
        build_manifest(kind="model", title="x", ingredients=[])
    with pytest.raises(InvalidInputError, match="unknown asset kind"):
        build_manifest(kind="weights", title="x", ingredients=[ingredient])  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(InvalidInputError, match="non-finite"):
        build_manifest(kind="model", title="x", ingredients=[ingredient], metrics={"loss": float("nan")})
    with pytest.raises(InvalidInputError, match="unknown assertion type"):
        build_manifest(kind="model", title="x", ingredients=[ingredient], assertions=[{"Bogus": {}}])


def test_custom_assertions_are_found(weights: Path) -> None:
    m = build_manifest(
        kind="model", title="x", ingredients=[make_ingredient(weights, "w", kind="model")],
        assertions=[custom_assertion("mlprov.task", {"task_id": "t1"})],
    )  # fmt: skip
    assert found(m, "mlprov.task") == {"task_id": "t1"}
    assert find_assertion(m, "mlprov.nothing") is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"title": "x"}', "not an Atlas manifest"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_parse_manifest_refuses_with_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason) as info:
        parse_manifest(data)
    assert "\n" not in str(info.value)


def test_parse_manifest_round_trips(weights: Path) -> None:
    m = build_manifest(kind="dataset", title="d", ingredients=[make_ingredient(weights, "w", kind="dataset")])
    assert parse_manifest(json.dumps(m)) == m
    assert manifest_type(m) == "Dataset"
    assert manifest_type({}) == "Unknown"


def test_manifest_hash_is_sha256_of_atlas_compact_json(weights: Path) -> None:
    m = build_manifest(kind="model", title='ünïcode / "q"', ingredients=[make_ingredient(weights, "w", kind="model")])
    text = json.dumps(m, separators=(",", ":"), ensure_ascii=False)  # already in struct order, no floats
    assert manifest_hash(m) == hashlib.sha256(text.encode()).hexdigest()
    assert manifest_hash(m, "sha384") == hashlib.sha384(text.encode()).hexdigest()
    ref = cross_reference(m)
    assert ref == {
        "manifest_url": m["instance_id"],
        "manifest_hash": manifest_hash(m),
        "media_type": "application/json",
    }


def test_manifest_hash_ignores_what_atlas_drops_and_reorders(weights: Path) -> None:
    m = build_manifest(
        kind="model", title="x", ingredients=[make_ingredient(weights, "w", kind="model")], parameters={"b": 1, "a": 2},
    )  # fmt: skip
    reordered = dict(reversed(list(m.items())))
    reordered["unknown_field"] = "Atlas drops this"
    reordered["created_at"] = m["created_at"].replace("Z", "+00:00")
    assert manifest_hash(reordered) == manifest_hash(m)
    # free-form objects are key-sorted, as serde_json's BTreeMap writes them
    assert '"parameters":{"a":2,"b":1}' in compact_json(canonical_manifest(m))
    changed = json.loads(json.dumps(m))
    changed["title"] = "y"
    assert manifest_hash(changed) != manifest_hash(m)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.5, "0.5"), (1.0, "1.0"), (123.0, "123.0"), (1e-05, "0.00001"), (1e-06, "1e-6"), (1e16, "1e16"),
     (1.5e20, "1.5e20"), (1e15, "1000000000000000.0"), (-2.25e-7, "-2.25e-7"), (0.0, "0.0"), (-0.0, "-0.0")],
)  # fmt: skip
def test_floats_are_written_as_serde_json_writes_them(value: float, text: str) -> None:
    assert ryu_format(value) == text
    assert compact_json(_value({"v": value}, "v")) == f'{{"v":{text}}}'


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0.5, "f93800"), (1.0, "f93c00"), (100000.0, "fa47c35000"), (0.1, "fb3fb999999999999a"), (-2.0, "f9c000")],
)
def test_claim_cbor_floats_are_shortest_exact_as_serde_cbor(value: float, encoded: str) -> None:
    assert cbor_bytes(_value(value, "v")).hex() == encoded


def test_claim_cbor_layout() -> None:
    claim = {
        "instance_id": "urn:c2pa:1",
        "created_assertions": [{"CustomAssertion": {"label": "l", "data": {"b": 1, "a": [True, None]}}}],
        "ingredients": [],
        "signature": "c2lnbmF0dXJl",
        "claim_generator_info": "g",
        "created_at": "2025-01-01T00:00:00.500Z",
    }
    data = claim_signing_bytes(claim)
    decoded = cbor2.loads(data)
    assert list(decoded) == list(claim)
    assert decoded["signature"] is None  # signed with signature null
    assert decoded["created_at"] == "2025-01-01T00:00:00.5Z"  # re-emitted as the time crate does
    assert list(decoded["created_assertions"][0]["CustomAssertion"]["data"]) == ["a", "b"]
    assert data[0] == 0xA6  # a definite-length map of 6 entries
    assert data == claim_signing_bytes({**claim, "signature": None})
    assert cbor_bytes(canonical_claim(claim))[0] == 0xA6


# --- golden manifests -----------------------------------------------------------------------------


def _normalise(value: Any, tmp: Path) -> Any:
    """Replace what changes from run to run: IDs, timestamps, signatures, keys, absolute paths."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in ("signature", "key_id", "manifest_hash") and isinstance(v, str):
                out[k] = f"<{k}>"
            elif k == "chain" and isinstance(v, list):
                out[k] = [f"<certificate {i}>" for i, _ in enumerate(v)]
            else:
                out[k] = _normalise(v, tmp)
        return out
    if isinstance(value, list):
        return [_normalise(v, tmp) for v in value]
    if isinstance(value, str):
        value = value.replace(tmp.as_uri(), "file://<tmp>").replace(str(tmp), "<tmp>")
        value = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", "<uuid>", value)
        return TIMESTAMP.sub("<timestamp>", value)
    return value


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = itertools.count(1)
    monkeypatch.setattr(manifest_module, "_new_uuid", lambda: f"00000000-0000-4000-8000-{next(counter):012d}")
    monkeypatch.setattr(manifest_module, "_utcnow", lambda: dt.datetime(2025, 6, 1, 12, 30, 0, 250000, tzinfo=dt.UTC))


def _golden_manifests(tmp: Path) -> dict[str, dict[str, Any]]:
    identity = load_identity(init_identity(tmp / "home").home)
    (tmp / "train.csv").write_text("x,y\n1,2\n")
    (tmp / "model.pt").write_bytes(b"weights")
    (tmp / "train.py").write_text("print('train')\n")
    (tmp / "eval.json").write_text('{"accuracy": 0.91}\n')
    dataset = sign_manifest(
        build_manifest(kind="dataset", title="train", author_org="Acme", author_name="Ada",
                       ingredients=[make_ingredient(tmp / "train.csv", "train split", kind="dataset")]),
        identity,
    )  # fmt: skip
    software = sign_manifest(
        build_manifest(kind="software", title="trainer", software_type="script", version="1.0",
                       ingredients=[make_ingredient(tmp / "train.py", "trainer", kind="software", hash_alg="sha256")]),
        identity,
    )  # fmt: skip
    model = sign_manifest(
        build_manifest(kind="model", title="classifier", description="a small classifier",
                       ingredients=[make_ingredient(tmp / "model.pt", "weights", kind="model", hash_alg="sha512")],
                       cross_references=[cross_reference(dataset), cross_reference(software)],
                       assertions=[custom_assertion("mlprov.task", {"task_id": "finetune", "try": 1})]),
        identity,
    )  # fmt: skip
    evaluation = sign_manifest(
        build_manifest(kind="evaluation", title="eval", metrics={"accuracy": 0.91, "loss": 1e-5},
                       parameters={"model_id": model["instance_id"], "dataset_id": dataset["instance_id"]},
                       ingredients=[make_ingredient(tmp / "eval.json", "results", kind="evaluation")],
                       cross_references=[cross_reference(model), cross_reference(dataset)]),
        identity,
    )  # fmt: skip
    return {"dataset": dataset, "software": software, "model": model, "evaluation": evaluation}


@pytest.mark.golden
def test_golden_manifests(tmp_path: Path, frozen: None, update_golden: bool) -> None:
    manifests = _golden_manifests(tmp_path)
    trust = TrustStore.load(tmp_path / "home" / "trust")
    for name, m in manifests.items():
        verify_manifest_signature(m, trust)
        path = GOLDEN / f"{name}.json"
        actual = _normalise(m, tmp_path)
        if update_golden:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
        assert path.exists(), f"{path} missing: run pytest --update-golden"
        assert actual == json.loads(path.read_text()), f"{name} differs from {path}; if intended, --update-golden"


@pytest.mark.golden
def test_golden_bytes(frozen: None, update_golden: bool) -> None:
    """Exact claim CBOR and manifest hash of a fully fixed manifest: any drift in encoding shows here."""
    ingredient = {
        "title": "weights", "relationship": "componentOf", "dc:format": "application/x-pytorch",
        "document_id": "uuid:00000000-0000-4000-8000-0000000000aa",
        "instance_id": "uuid:00000000-0000-4000-8000-0000000000bb",
        "data": {"url": "file:///data/model.pt", "alg": "sha384", "hash": "ab" * 48,
                 "data_types": ["c2pa.types.model.pytorch"],
                 "linked_ingredient_url": None, "linked_ingredient_hash": None},
        "linked_ingredient": None,
    }  # fmt: skip
    m = build_manifest(
        kind="evaluation", title="fixed", ingredients=[ingredient], metrics={"accuracy": 0.5, "f1": 0.123, "n": 10},
        assertions=[custom_assertion("mlprov.env", {"python": "3.11", "packages": ["a==1", "b==2"]})],
    )  # fmt: skip
    actual = {
        "manifest": m,
        "claim_cbor_hex": claim_signing_bytes(m["claim"]).hex(),
        "manifest_json": compact_json(canonical_manifest(m)),
        "manifest_hash_sha256": manifest_hash(m),
    }
    path = GOLDEN / "fixed-bytes.json"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    assert actual == json.loads(path.read_text())
