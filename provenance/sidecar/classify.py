"""What kind of artifact is this? An ordered, configurable rule set (first match wins), and media types.

A rule matches a *file* by its base name (glob, case-insensitive) and a *directory* when any file in it
matches (``applies_to``: ``file``, ``directory`` or ``any``). ``requires_sibling`` adds a condition:
a file named so must sit in the same folder as the matching file (``*.bin`` is a model only with
``config.json`` beside it). Nothing matches: ``other``.

Defaults (:data:`DEFAULT_RULES`, in order): evaluation files (``metrics.json``, ``eval*.json``,
``evaluation*.json``); models (safetensors, onnx, pt, pth, pkl, joblib, gguf, ckpt, h5, keras files and
directories holding them; ``*.bin`` with ``config.json``); datasets (parquet, csv, tsv, npz, npy,
jsonl, arrow, feather files and directories); configs (yaml, yml, toml, ini, cfg, ``*config*.json``
files).

A rules file (YAML or JSON) looks like::

    include_defaults: true          # custom rules first, then the defaults (default: true)
    rules:
      - kind: dataset
        patterns: ["*.bin"]
        applies_to: file            # file | directory | any (default any)
        requires_sibling: null

Media types come from a fixed table (never from the machine's ``/etc/mime.types``: the manifest's
``dc:format`` must not depend on where the sidecar runs), else ``application/octet-stream``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from provenance.errors import InvalidInputError

__all__ = [
    "DEFAULT_RULES",
    "ArtifactKind",
    "Classification",
    "Classifier",
    "ClassifierRule",
    "load_rules",
    "media_type",
]

ArtifactKind = Literal["model", "dataset", "evaluation", "config", "software", "log", "other"]
AppliesTo = Literal["file", "directory", "any"]

DIRECTORY_MEDIA_TYPE = "inode/directory"

_MEDIA_TYPES: dict[str, str] = {
    # models
    ".safetensors": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".pt": "application/zip",  # torch.save writes a ZIP archive
    ".pth": "application/zip",
    ".ckpt": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".pkl": "application/x-python-pickle",
    ".joblib": "application/x-python-pickle",
    ".gguf": "application/octet-stream",
    ".h5": "application/x-hdf5",
    ".hdf5": "application/x-hdf5",
    ".keras": "application/zip",
    # data
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".npy": "application/octet-stream",
    ".npz": "application/zip",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/jsonl",
    ".arrow": "application/vnd.apache.arrow.file",
    ".feather": "application/vnd.apache.arrow.file",
    # configuration and text
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".ini": "text/plain",
    ".cfg": "text/plain",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".md": "text/markdown",
    ".html": "text/html",
    ".py": "text/x-python",
    # archives and images
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".pdf": "application/pdf",
}


def media_type(path: Path | str) -> str:
    """The MIME type for a file's ``dc:format`` (by extension, from a fixed table); directories get
    ``inode/directory``."""
    p = Path(path)
    if p.is_dir():
        return DIRECTORY_MEDIA_TYPE
    return _MEDIA_TYPES.get(p.suffix.lower(), "application/octet-stream")


@dataclass(frozen=True)
class ClassifierRule:
    kind: ArtifactKind
    patterns: tuple[str, ...]
    applies_to: AppliesTo = "any"
    requires_sibling: str | None = None

    def matches_file(self, folder: Path, name: str) -> bool:
        lowered = name.lower()
        if not any(fnmatch.fnmatchcase(lowered, p.lower()) for p in self.patterns):
            return False
        return self.requires_sibling is None or (folder / self.requires_sibling).is_file()


_MODEL = ("*.safetensors", "*.onnx", "*.pt", "*.pth", "*.pkl", "*.joblib", "*.gguf", "*.ckpt", "*.h5", "*.keras")
_DATASET = ("*.parquet", "*.csv", "*.tsv", "*.npz", "*.npy", "*.jsonl", "*.arrow", "*.feather")

DEFAULT_RULES: tuple[ClassifierRule, ...] = (
    ClassifierRule("evaluation", ("metrics.json", "eval*.json", "evaluation*.json"), "file"),
    ClassifierRule("model", _MODEL),
    ClassifierRule("model", ("*.bin",), requires_sibling="config.json"),
    ClassifierRule("dataset", _DATASET),
    ClassifierRule("config", ("*.yaml", "*.yml", "*.toml", "*.ini", "*.cfg", "*config*.json"), "file"),
)


@dataclass(frozen=True)
class Classification:
    kind: ArtifactKind
    media_type: str
    rule: int | None
    """Index of the matching rule in :attr:`Classifier.rules`; ``None`` for ``other``."""


def _files(directory: Path) -> Iterator[tuple[Path, str]]:
    for folder, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder), name


class Classifier:
    """Classifies artifacts with ordered rules; first match wins."""

    def __init__(self, rules: Sequence[ClassifierRule] = DEFAULT_RULES) -> None:
        self.rules = tuple(rules)

    @classmethod
    def from_file(cls, path: Path) -> Classifier:
        return cls(load_rules(path))

    def kind(self, path: Path) -> tuple[ArtifactKind, int | None]:
        path = Path(path)
        is_dir = path.is_dir()
        files = list(_files(path)) if is_dir else [(path.parent, path.name)]
        for index, rule in enumerate(self.rules):
            if rule.applies_to == ("file" if is_dir else "directory"):
                continue
            if any(rule.matches_file(folder, name) for folder, name in files):
                return rule.kind, index
        return "other", None

    def classify(self, path: Path) -> Classification:
        kind, index = self.kind(path)
        return Classification(kind=kind, media_type=media_type(path), rule=index)


def _rule(raw: Any, where: str) -> ClassifierRule:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: a rule must be a mapping with kind and patterns")
    unknown = set(raw) - {"kind", "patterns", "applies_to", "requires_sibling"}
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {sorted(unknown)}")
    kind, patterns = raw.get("kind"), raw.get("patterns")
    applies_to = raw.get("applies_to", "any")
    sibling = raw.get("requires_sibling")
    if kind not in get_args(ArtifactKind):
        raise InvalidInputError(f"{where}: kind must be one of {', '.join(get_args(ArtifactKind))}, not {kind!r}")
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise InvalidInputError(f"{where}: patterns must be a non-empty list of globs")
    if applies_to not in get_args(AppliesTo):
        raise InvalidInputError(f"{where}: applies_to must be file, directory or any, not {applies_to!r}")
    if sibling is not None and not isinstance(sibling, str):
        raise InvalidInputError(f"{where}: requires_sibling must be a file name")
    return ClassifierRule(cast("ArtifactKind", kind), tuple(patterns), cast("AppliesTo", applies_to), sibling)


def load_rules(path: Path) -> tuple[ClassifierRule, ...]:
    """Read a rules file (``.json``, else YAML); custom rules first, then the defaults unless
    ``include_defaults: false``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read classifier rules {path}: {exc}") from exc
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise InvalidInputError(f"{path}: expected a mapping with a 'rules' list")
    rules = tuple(_rule(r, f"{path} rule {i + 1}") for i, r in enumerate(data.get("rules", [])))
    include = data.get("include_defaults", True)
    if not isinstance(include, bool):
        raise InvalidInputError(f"{path}: include_defaults must be true or false")
    return rules + DEFAULT_RULES if include else rules
