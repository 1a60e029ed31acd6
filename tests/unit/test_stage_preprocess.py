"""preprocess: what is dropped, clipped and standardised on a small hand-made table; bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq  # type: ignore[import-untyped]  # no type information
import pytest

from stages import preprocess


def _raw(rows: list[str], header: str = "a,b,label") -> str:
    return "\n".join([header, *rows]) + "\n"


def _good_rows(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"{rng.normal():.6f},{100 + 10 * rng.normal():.6f},{i % 2}" for i in range(n)]


def _run(
    tmp_path: Path, raw: str | None, params: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, Path, str]:
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    (ws / "params.json").write_text(json.dumps(params))
    if raw is not None:
        (ws / "inputs" / "raw.csv").write_text(raw)
    code = preprocess.main(["--workspace", str(ws)])
    return code, ws, capsys.readouterr().err


def _matrix(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    x = np.column_stack([table.column(n).to_numpy() for n in table.column_names if n != "label"])
    return x, table.column("label").to_numpy()


def test_dirty_rows_are_dropped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _good_rows(100)
    dirty = [
        "1.0,,0",  # empty cell
        "nan,2.0,1",  # "nan"
        "abc,2.0,1",  # not a number
        "1.0,2.0,7",  # a label other than 0/1
        "1.0,2.0",  # malformed: too few cells
        good[3],  # duplicates of kept rows
        good[4],
    ]
    code, ws, err = _run(tmp_path, _raw(good + dirty), {"seed": 1, "val_fraction": 0.25}, capsys)
    assert (code, err) == (0, "")
    metrics = json.loads((ws / "outputs" / "metrics.json").read_text())
    assert metrics["rows_in"] == 107
    assert metrics["dropped_malformed"] == 1
    assert metrics["dropped_incomplete"] == 4
    assert metrics["dropped_duplicates"] == 2
    assert metrics["rows_train"] + metrics["rows_val"] == 100
    assert metrics["rows_val"] == 25
    x_train, y_train = _matrix(ws / "outputs" / "train.parquet")
    x_val, _ = _matrix(ws / "outputs" / "val.parquet")
    assert np.isfinite(x_train).all()
    assert np.isfinite(x_val).all()
    assert set(y_train.tolist()) <= {0, 1}
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(x_train.std(axis=0), 1.0, atol=1e-9)


def test_outliers_are_clipped_with_training_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [*_good_rows(200), "1e9,100.0,1", "-1e9,100.0,0"]
    code, ws, _ = _run(tmp_path, _raw(rows), {"seed": 3, "clip_quantile": 0.05}, capsys)
    assert code == 0
    normalizer = json.loads((ws / "outputs" / "normalizer.json").read_text())
    assert normalizer["features"] == ["a", "b"]
    assert normalizer["clip_high"][0] < 10  # the 1e9 did not set the bound
    x_train, _ = _matrix(ws / "outputs" / "train.parquet")
    x_val, _ = _matrix(ws / "outputs" / "val.parquet")
    low = (np.array(normalizer["clip_low"]) - normalizer["mean"]) / normalizer["std"]
    high = (np.array(normalizer["clip_high"]) - normalizer["mean"]) / normalizer["std"]
    for x in (x_train, x_val):
        assert (x >= low - 1e-9).all()
        assert (x <= high + 1e-9).all()
    assert json.loads((ws / "outputs" / "metrics.json").read_text())["clipped_cells"] >= 2


def test_the_split_follows_the_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw(_good_rows(120))
    splits = []
    for run, seed in enumerate((5, 5, 6)):
        code, ws, _ = _run(tmp_path / str(run), raw, {"seed": seed}, capsys)
        assert code == 0
        splits.append((ws / "outputs" / "val.parquet").read_bytes())
    assert splits[0] == splits[1] != splits[2]


@pytest.mark.parametrize(
    ("raw", "params", "needle"),
    [
        (None, {}, "input 'raw.csv' is missing"),
        (_raw(["1,2"], header="a,b"), {}, "no 'label' column"),
        (_raw([]), {}, "no data rows"),
        (_raw(["1,,0"] * 30), {}, "only 0 usable rows"),
        (_raw([f"{i},{i},1" for i in range(30)]), {}, "the same 'label'"),
        (_raw(_good_rows(30)), {"val_fraction": 0.9}, "val_fraction must be between"),
        (_raw(_good_rows(30)), {"split": 0.2}, "unknown parameter(s) ['split']"),
    ],
)
def test_bad_input_fails_with_one_line(
    raw: str | None, params: dict[str, Any], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, ws, err = _run(tmp_path, raw, params, capsys)
    assert code == 2
    assert err.startswith("error: preprocess: ")
    assert err.count("\n") == 1
    assert needle in err
    assert not (ws / "outputs").exists() or list((ws / "outputs").iterdir()) == []
