"""The artifact classifier: defaults, rule files, media types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provenance.errors import InvalidInputError
from provenance.sidecar.classify import DEFAULT_RULES, Classifier, load_rules, media_type


def _make(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.safetensors", "model"),
        ("model.ONNX", "model"),
        ("weights.pt", "model"),
        ("weights.pth", "model"),
        ("clf.pkl", "model"),
        ("clf.joblib", "model"),
        ("llm.gguf", "model"),
        ("last.ckpt", "model"),
        ("net.h5", "model"),
        ("net.keras", "model"),
        ("train.parquet", "dataset"),
        ("train.csv", "dataset"),
        ("train.tsv", "dataset"),
        ("arrays.npz", "dataset"),
        ("array.npy", "dataset"),
        ("rows.jsonl", "dataset"),
        ("table.arrow", "dataset"),
        ("table.feather", "dataset"),
        ("metrics.json", "evaluation"),
        ("eval_results.json", "evaluation"),
        ("evaluation-test.json", "evaluation"),
        ("params.yaml", "config"),
        ("params.yml", "config"),
        ("pyproject.toml", "config"),
        ("setup.cfg", "config"),
        ("tox.ini", "config"),
        ("model_config.json", "config"),
        ("notes.json", "other"),
        ("README.md", "other"),
        ("blob.bin", "other"),
    ],
)
def test_default_rules_for_files(tmp_path: Path, name: str, kind: str) -> None:
    assert Classifier().classify(_make(tmp_path, name)).kind == kind


def test_bin_is_a_model_only_with_config_json_beside(tmp_path: Path) -> None:
    c = Classifier()
    alone = _make(tmp_path / "a", "pytorch_model.bin")
    assert c.classify(alone).kind == "other"
    _make(tmp_path / "a", "config.json", b"{}")
    assert c.classify(alone).kind == "model"
    hf = tmp_path / "hf"
    _make(hf, "config.json", b"{}")
    _make(hf, "pytorch_model.bin")
    assert c.classify(hf).kind == "model"


def test_directories_are_classified_by_what_they_hold(tmp_path: Path) -> None:
    c = Classifier()
    model = tmp_path / "model"
    _make(model, "tokenizer.json")
    _make(model, "nested/model.safetensors")
    _make(model, "_SUCCESS", b"")
    data = tmp_path / "data"
    _make(data, "part-0.parquet")
    _make(data, "part-1.parquet")
    mixed = tmp_path / "mixed"
    _make(mixed, "train.csv")
    _make(mixed, "model.onnx")
    cfgs = tmp_path / "cfgs"
    _make(cfgs, "a.yaml")
    assert c.classify(model).kind == "model"
    assert c.classify(data).kind == "dataset"
    assert c.classify(mixed).kind == "model"  # first matching rule wins
    assert c.classify(cfgs).kind == "other"  # config rules apply to files only
    assert c.classify(model).media_type == "inode/directory"


def test_custom_rules_from_yaml_come_first(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - kind: dataset\n"
        "    patterns: ['*.pkl']\n"
        "    applies_to: file\n"
        "  - kind: log\n"
        "    patterns: '*.log'\n"
    )
    c = Classifier.from_file(rules)
    assert c.classify(_make(tmp_path, "frame.pkl")).kind == "dataset"
    assert c.classify(_make(tmp_path, "train.log")).kind == "log"
    assert c.classify(_make(tmp_path, "m.safetensors")).kind == "model"  # defaults still apply after
    assert c.classify(_make(tmp_path, "frame.pkl")).rule == 0


def test_custom_rules_from_json_without_defaults(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"include_defaults": False, "rules": [{"kind": "software", "patterns": ["*.py"]}]}))
    loaded = load_rules(rules)
    assert len(loaded) == 1
    c = Classifier(loaded)
    assert c.classify(_make(tmp_path, "train.py")).kind == "software"
    assert c.classify(_make(tmp_path, "m.safetensors")).kind == "other"
    assert len(load_rules(_rules_file(tmp_path, "[]"))) == len(DEFAULT_RULES)


def _rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{kind: weights, patterns: ['*.x']}]", "kind must be one of"),
        ("rules: [{kind: model}]", "patterns must be"),
        ("rules: [{kind: model, patterns: ['*.x'], applies_to: folder}]", "applies_to"),
        ("rules: [{kind: model, patterns: ['*.x'], colour: red}]", "unknown keys"),
        ("rules: {kind: model}", "expected a mapping"),
        ("rules: [\n  - {", "cannot read"),
    ],
)
def test_bad_rule_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_rules(_rules_file(tmp_path, text))


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.parquet", "application/vnd.apache.parquet"),
        ("a.csv", "text/csv"),
        ("a.JSON", "application/json"),
        ("a.jsonl", "application/jsonl"),
        ("a.yaml", "application/yaml"),
        ("a.safetensors", "application/octet-stream"),
        ("a.pt", "application/zip"),
        ("a.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_media_types(tmp_path: Path, name: str, mime: str) -> None:
    assert media_type(_make(tmp_path, name)) == mime
