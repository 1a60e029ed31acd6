"""pretrain, finetune, evaluate: bad parameters and bad model/data inputs give one line and exit 2.

The happy path (the loss goes down, the tuned model wins) is in ``test_stage_chain.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stages import evaluate, finetune, pretrain
from stages.tables import Table, write_parquet

Main = Callable[[list[str] | None], int]


def _table(path: Path, features: list[str], rows: int = 80, nan: bool = False) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, len(features)))
    y = (x[:, 0] > 0).astype(np.int64)
    if nan:
        x[0, 0] = np.nan
    with path.open("wb") as out:
        write_parquet(out, Table(features, x, y))


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("pretrain")
    (ws / "inputs").mkdir()
    _table(ws / "inputs" / "train.parquet", ["a", "b", "c"])
    (ws / "params.json").write_text(json.dumps({"hidden_units": 4, "epochs": 2}))
    assert pretrain.main(["--workspace", str(ws)]) == 0
    return ws / "outputs" / "base_model"


def _run(
    main: Main,
    tmp_path: Path,
    params: dict[str, Any],
    inputs: Mapping[str, Path | None],
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, Path, str]:
    """Run a stage; ``inputs`` maps a name to a file or directory to copy (None: leave it out)."""
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    (ws / "params.json").write_text(json.dumps(params))
    for name, source in inputs.items():
        if source is None:
            continue
        if source.is_dir():
            shutil.copytree(source, ws / "inputs" / name)
        else:
            shutil.copy(source, ws / "inputs" / name)
    capsys.readouterr()
    code = main(["--workspace", str(ws)])
    return code, ws, capsys.readouterr().err


def _assert_one_line(code: int, ws: Path, err: str, stage: str, needle: str) -> None:
    assert code == 2, err
    assert err.startswith(f"error: {stage}: "), err
    assert err.count("\n") == 1, err
    assert needle in err
    assert not (ws / "outputs").exists() or list((ws / "outputs").iterdir()) == []  # nothing for the sidecar


@pytest.mark.parametrize(
    ("params", "data", "needle"),
    [
        ({}, None, "input 'train.parquet' is missing"),
        ({"hidden_units": 0}, "good", "hidden_units must be between 1 and 1024"),
        ({"learning_rate": "fast"}, "good", "learning_rate must be a number"),
        ({"learning_rate": float("inf")}, "good", "learning_rate must be a number"),
        ({}, "garbage", "not a readable Parquet file"),
        ({}, "nan", "run preprocess first"),
    ],
)
def test_pretrain_refuses(
    params: dict[str, Any], data: str | None, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = None
    if data is not None:
        source = tmp_path / "train.parquet"
        if data == "garbage":
            source.write_bytes(b"PAR1 not really")
        else:
            _table(source, ["a", "b"], nan=data == "nan")
    code, ws, err = _run(pretrain.main, tmp_path, params, {"train.parquet": source}, capsys)
    _assert_one_line(code, ws, err, "pretrain", needle)


def _broken_model(base_model: Path, tmp_path: Path, how: str) -> Path:
    model = tmp_path / "broken_model"
    shutil.copytree(base_model, model)
    config = json.loads((model / "config.json").read_text())
    if how == "no weights":
        (model / "model.safetensors").unlink()
    elif how == "corrupt weights":
        (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    elif how == "other architecture":
        config["architecture"] = "transformer"
    elif how == "wrong shape":
        config["hidden_units"] = 5
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("no weights", "inputs/base_model/model.safetensors is missing"),
        ("corrupt weights", "not a readable safetensors file"),
        ("other architecture", "not a mlp-tanh-sigmoid model config"),
        ("wrong shape", "tensor 'hidden.weight' missing or not of shape"),
    ],
)
def test_finetune_refuses_a_bad_base_model(
    how: str, needle: str, base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.parquet"
    _table(data, ["a", "b", "c"])
    inputs = {"base_model": _broken_model(base_model, tmp_path, how), "train.parquet": data}
    code, ws, err = _run(finetune.main, tmp_path, {}, inputs, capsys)
    _assert_one_line(code, ws, err, "finetune", needle)


def test_finetune_refuses_data_with_other_features(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.parquet"
    _table(data, ["a", "b", "z"])
    code, ws, err = _run(finetune.main, tmp_path, {}, {"base_model": base_model, "train.parquet": data}, capsys)
    _assert_one_line(code, ws, err, "finetune", "are not the base model's")


def test_finetune_needs_its_base_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.parquet"
    _table(data, ["a", "b", "c"])
    code, ws, err = _run(finetune.main, tmp_path, {"epochs": 2}, {"train.parquet": data}, capsys)
    _assert_one_line(code, ws, err, "finetune", "expected the directory inputs/base_model/")


def test_evaluate_takes_no_params_and_needs_both_models(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "val.parquet"
    _table(data, ["a", "b", "c"])
    code, ws, err = _run(evaluate.main, tmp_path / "1", {"seed": 1}, {}, capsys)
    _assert_one_line(code, ws, err, "evaluate", "unknown parameter(s) ['seed']")
    code, ws, err = _run(evaluate.main, tmp_path / "2", {}, {"base_model": base_model, "val.parquet": data}, capsys)
    _assert_one_line(code, ws, err, "evaluate", "input 'model' is missing")


def test_evaluate_scores_the_same_model_equally(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "val.parquet"
    _table(data, ["a", "b", "c"])
    inputs = {"base_model": base_model, "model": base_model, "val.parquet": data}
    code, ws, err = _run(evaluate.main, tmp_path, {}, inputs, capsys)
    assert (code, err) == (0, "")
    result = json.loads((ws / "outputs" / "evaluation.json").read_text())
    assert result["base_loss"] == result["tuned_loss"]
    assert result["accuracy_improvement"] == 0.0
    assert result["rows"] == 80
