"""preprocess: clean ``inputs/raw.csv``, split it by seed, normalise, write Parquet splits.

Steps, in order (each counted in ``metrics.json``):

1. drop rows with a missing or non-numeric cell, or a label other than 0/1;
2. drop exact duplicate rows (the first one stays);
3. split train/validation with a seeded permutation (``val_fraction``);
4. clip every feature to the ``clip_quantile`` / ``1 - clip_quantile`` quantiles of the **training**
   split (outliers), then standardise with the training split's mean and standard deviation.

Parameters: ``seed`` (42), ``val_fraction`` (0.2), ``clip_quantile`` (0.01).
Writes ``train.parquet``, ``val.parquet`` (feature columns float64, ``label`` int8),
``normalizer.json`` (the clip bounds and statistics, to apply to new data) and ``metrics.json``.

Run: ``python -m stages.preprocess`` in the workspace. Exit 2: bad parameters, missing or bad input.
"""

from __future__ import annotations

import sys

import numpy as np

from stages.tables import LABEL, Table, read_raw_csv, write_parquet
from stages.workspace import InputError, Workspace, run_stage

__all__ = ["main", "run"]

INPUT = "raw.csv"


def run(ws: Workspace) -> None:
    params = ws.params()
    seed = params.integer("seed", 42, low=0, high=2**32 - 1)
    val_fraction = params.number("val_fraction", 0.2, low=0.05, high=0.5)
    clip_quantile = params.number("clip_quantile", 0.01, low=0.0, high=0.2)
    params.finish()
    raw = read_raw_csv(ws.input_file(INPUT))
    rows_in = len(raw.x) + raw.malformed_rows
    ws.log(f"read {rows_in} rows x {len(raw.features)} features from inputs/{INPUT}")

    complete = np.isfinite(raw.x).all(axis=1) & np.isin(raw.y, (0.0, 1.0))
    x, y = raw.x[complete], raw.y[complete].astype(np.int64)
    dropped_incomplete = int((~complete).sum())
    _, first = np.unique(np.column_stack([x, y]), axis=0, return_index=True)
    keep = np.sort(first)
    dropped_duplicates = len(x) - len(keep)
    x, y = x[keep], y[keep]
    ws.log(
        f"dropped {raw.malformed_rows} malformed, {dropped_incomplete} incomplete and "
        f"{dropped_duplicates} duplicate rows; {len(x)} left"
    )
    if len(x) < 20:
        raise InputError(f"inputs/{INPUT}: only {len(x)} usable rows after cleaning; need at least 20")
    if len(np.unique(y)) < 2:
        raise InputError(f"inputs/{INPUT}: every usable row has the same {LABEL!r}; nothing to learn")

    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    x_train, x_val = x[train_idx], x[val_idx]

    low = np.quantile(x_train, clip_quantile, axis=0)
    high = np.quantile(x_train, 1.0 - clip_quantile, axis=0)
    clipped = int(((x_train < low) | (x_train > high)).sum() + ((x_val < low) | (x_val > high)).sum())
    x_train, x_val = np.clip(x_train, low, high), np.clip(x_val, low, high)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant column stays constant (0) instead of dividing by zero
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    ws.log(f"clipped {clipped} cells to the [{clip_quantile:g}, {1 - clip_quantile:g}] quantiles; standardised")

    with ws.publish_file("train.parquet") as out:
        write_parquet(out, Table(raw.features, x_train, y[train_idx]))
    with ws.publish_file("val.parquet") as out:
        write_parquet(out, Table(raw.features, x_val, y[val_idx]))
    ws.publish_json(
        "normalizer.json",
        {
            "features": raw.features,
            "label": LABEL,
            "clip_low": low.tolist(),
            "clip_high": high.tolist(),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "apply": "x = (clip(x, clip_low, clip_high) - mean) / std, per feature",
            "fitted_on": "train split",
            "params": params.used,
        },
    )
    ws.publish_json(
        "metrics.json",
        {
            "rows_in": rows_in,
            "dropped_malformed": raw.malformed_rows,
            "dropped_incomplete": dropped_incomplete,
            "dropped_duplicates": dropped_duplicates,
            "clipped_cells": clipped,
            "rows_train": len(train_idx),
            "rows_val": len(val_idx),
            "positive_rate_train": float(y[train_idx].mean()),
        },
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("preprocess", run, argv)


if __name__ == "__main__":
    sys.exit(main())
