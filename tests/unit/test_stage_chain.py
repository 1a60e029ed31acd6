"""The demo stages chained as the DAG chains them: ingest -> preprocess -> pretrain -> finetune -> evaluate.

Each stage runs as a real program (``python -m stages.<name>`` in its own workspace, the project's
interpreter) with the parameter defaults of the repository's ``services.yaml``, exactly what the
controller gives it; the outputs of one are copied into the next one's ``inputs/``, as the controller
materialises them. A second chain in other processes shows the bytes depend on the seed alone (a
per-process hash seed once made the safetensors header order vary).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.catalog import load_services_file
from provenance.hashing import hash_path

ROOT = Path(__file__).resolve().parents[2]
CHAIN: list[tuple[str, list[str]]] = [
    ("ingest", []),
    ("preprocess", ["raw.csv"]),
    ("pretrain", ["train.parquet"]),
    ("finetune", ["base_model", "train.parquet"]),
    ("evaluate", ["base_model", "model", "val.parquet"]),
]
OUTPUTS = {
    "ingest": {"raw.csv", "metrics.json"},
    "preprocess": {"train.parquet", "val.parquet", "normalizer.json", "metrics.json"},
    "pretrain": {"base_model", "metrics.json"},
    "finetune": {"model", "metrics.json"},
    "evaluate": {"evaluation.json", "metrics.json"},
}


def _defaults() -> dict[str, dict[str, Any]]:
    return {spec.name: dict(spec.params) for spec in load_services_file(ROOT / "services.yaml")}


def _workspace(root: Path, stage: str, params: dict[str, Any], inputs: dict[str, Path]) -> Path:
    ws = root / stage
    (ws / "inputs").mkdir(parents=True)
    (ws / "outputs").mkdir()
    (ws / "params.json").write_text(json.dumps(params))
    for name, source in inputs.items():
        if source.is_dir():
            shutil.copytree(source, ws / "inputs" / name)
        else:
            shutil.copy(source, ws / "inputs" / name)
    return ws


def _chain(root: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """Run the five stages; the produced artifacts by name and each stage's wall time."""
    produced: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    defaults = _defaults()
    for stage, needs in CHAIN:
        ws = _workspace(root, stage, defaults[stage], {n: produced[n] for n in needs})
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=ws, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{stage} failed: {done.stderr}"
        assert done.stderr == ""
        assert done.stdout.startswith(f"[{stage}] "), done.stdout  # progress lines for the controller
        seconds[stage] = time.perf_counter() - started
        names = {p.name for p in (ws / "outputs").iterdir()}
        assert names == OUTPUTS[stage], f"{stage}: no temporary or partial files are left behind"
        produced.update({p.name: p for p in (ws / "outputs").iterdir() if p.name != "metrics.json"})
        produced[f"{stage}:metrics.json"] = ws / "outputs" / "metrics.json"
    return produced, seconds


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, float]]:
    return _chain(tmp_path_factory.mktemp("chain"))


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_every_stage_writes_its_artifacts(chain: tuple[dict[str, Path], dict[str, float]]) -> None:
    produced, _ = chain
    assert {p.name for p in produced["base_model"].iterdir()} == {"model.safetensors", "config.json"}
    assert {p.name for p in produced["model"].iterdir()} == {"model.safetensors", "config.json"}
    header = produced["raw.csv"].read_text().splitlines()[0].split(",")
    assert header[-1] == "label"
    assert len(header) == 1 + _defaults()["ingest"]["features"]


def test_preprocess_cleans_what_ingest_dirtied(chain: tuple[dict[str, Path], dict[str, float]]) -> None:
    import numpy as np
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # no type information

    produced, _ = chain
    metrics = _json(produced["preprocess:metrics.json"])
    assert metrics["dropped_incomplete"] > 0
    assert metrics["dropped_duplicates"] > 0
    assert metrics["clipped_cells"] > 0
    train = pq.read_table(produced["train.parquet"])
    val = pq.read_table(produced["val.parquet"])
    assert train.num_rows == metrics["rows_train"]
    assert val.num_rows == metrics["rows_val"]
    x = np.column_stack([train.column(n).to_numpy() for n in train.column_names if n != "label"])
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-9)
    normalizer = _json(produced["normalizer.json"])
    assert normalizer["features"] == [n for n in train.column_names if n != "label"]
    assert len(normalizer["mean"]) == len(normalizer["std"]) == x.shape[1]


def test_training_lowers_the_loss(chain: tuple[dict[str, Path], dict[str, float]]) -> None:
    produced, _ = chain
    for stage, epochs in (
        ("pretrain", _defaults()["pretrain"]["epochs"]),
        ("finetune", _defaults()["finetune"]["epochs"]),
    ):
        metrics = _json(produced[f"{stage}:metrics.json"])
        assert len(metrics["loss"]) == epochs  # one value per epoch: MLflow steps
        assert metrics["loss"][-1] < metrics["loss"][0] < metrics["initial_loss"]
    base_config = _json(produced["base_model"] / "config.json")
    tuned_config = _json(produced["model"] / "config.json")
    assert tuned_config["hidden_units"] == base_config["hidden_units"] == _defaults()["pretrain"]["hidden_units"]
    assert tuned_config["training"]["epochs"] == _defaults()["finetune"]["epochs"]


def test_the_tuned_model_beats_the_base_model(chain: tuple[dict[str, Path], dict[str, float]]) -> None:
    produced, _ = chain
    evaluation = _json(produced["evaluation.json"])
    assert evaluation["tuned_accuracy"] >= evaluation["base_accuracy"]
    assert evaluation["tuned_loss"] < evaluation["base_loss"]
    assert evaluation["tuned_accuracy"] > 0.8  # the problem is learnable; a constant guess scores ~0.5
    assert _json(produced["evaluate:metrics.json"]) == {
        k: v for k, v in evaluation.items() if isinstance(v, int | float)
    }


def test_the_weights_are_safetensors(chain: tuple[dict[str, Path], dict[str, float]]) -> None:
    from safetensors.numpy import load_file

    produced, _ = chain
    tensors = load_file(str(produced["model"] / "model.safetensors"))
    hidden = _defaults()["pretrain"]["hidden_units"]
    assert tensors["hidden.weight"].shape == (_defaults()["ingest"]["features"], hidden)
    assert tensors["output.weight"].shape == (hidden, 1)
    base = load_file(str(produced["base_model"] / "model.safetensors"))
    assert (base["hidden.weight"] != tensors["hidden.weight"]).any()  # fine-tuning changed the weights


def test_stages_are_fast(chain: tuple[dict[str, Path], dict[str, float]]) -> None:
    _, seconds = chain
    assert seconds["finetune"] < 10.0, seconds
    assert sum(seconds.values()) < 30.0, seconds


def test_same_seed_same_digests(chain: tuple[dict[str, Path], dict[str, float]], tmp_path: Path) -> None:
    produced, _ = chain
    again, _ = _chain(tmp_path)
    artifacts = sorted(produced)  # metrics.json too: no timings in them
    assert artifacts == sorted(again)
    first = {name: hash_path(produced[name]) for name in artifacts}
    second = {name: hash_path(again[name]) for name in artifacts}
    assert first == second
    assert len(set(first.values())) == len(first)  # distinct artifacts, not one file copied around


def test_stages_import_neither_provenance_nor_controller() -> None:
    import ast

    found = []
    for path in sorted((ROOT / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path.name, node.module))
    assert any(module == "numpy" for _, module in found)  # the scan sees imports
    assert [(f, m) for f, m in found if m.split(".")[0] in ("provenance", "controller", "plugins")] == []
