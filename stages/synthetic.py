"""The demo's built-in data set: a binary classification problem generated from a seed, with dirt.

These machines have no internet, so the default source (``builtin://synthetic``) is generated:
``features`` columns ``x0..`` on very different scales and offsets (normalisation matters), a label
from a non-linear rule plus noise (a linear model is not enough; a small MLP is), and the dirt a
real export has, for preprocess to clean: missing cells (empty or ``nan``), outliers far outside a
column's range, and duplicated rows. The same seed always gives the same bytes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["BUILTIN_DATASETS", "SyntheticStats", "TextSink", "write_synthetic_csv"]

BUILTIN_DATASETS = ("synthetic",)
LABEL = "label"


class TextSink(Protocol):
    def write(self, text: str, /) -> object: ...


@dataclass(frozen=True)
class SyntheticStats:
    rows: int
    """Rows written, duplicates included."""
    missing_cells: int
    outlier_cells: int
    duplicate_rows: int


def write_synthetic_csv(out: TextSink, *, seed: int, rows: int, features: int) -> SyntheticStats:
    """Write the data set as CSV (header ``x0,...,label``) to ``out``; ``features`` >= 3."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, features))
    direction = rng.normal(size=features)
    direction /= np.linalg.norm(direction)
    score = 2.0 * (z @ direction) + 1.5 * z[:, 0] * z[:, 1] - 1.0 * (z[:, 2] ** 2 - 1.0)
    labels = (score + 0.4 * rng.standard_normal(rows) > 0).astype(np.int64)
    scales = np.exp(rng.uniform(-1.0, 3.0, size=features))
    offsets = rng.uniform(-50.0, 50.0, size=features)
    x = z * scales + offsets

    n_missing = max(1, rows // 50)
    missing_rows = rng.choice(rows, size=n_missing, replace=False)
    missing_cols = rng.integers(0, features, size=n_missing)
    x[missing_rows, missing_cols] = np.nan

    n_outliers = max(1, rows // 100)
    outlier_rows = rng.choice(rows, size=n_outliers, replace=False)
    outlier_cols = rng.integers(0, features, size=n_outliers)
    signs = rng.choice(np.array([-1.0, 1.0]), size=n_outliers)
    x[outlier_rows, outlier_cols] += signs * 40.0 * scales[outlier_cols]

    n_duplicates = max(1, rows // 70)
    duplicated = rng.choice(rows, size=n_duplicates, replace=False)
    x = np.concatenate([x, x[duplicated]])
    labels = np.concatenate([labels, labels[duplicated]])
    order = rng.permutation(len(x))
    x, labels = x[order], labels[order]
    empty_style = rng.random(len(x)) < 0.5  # half the missing cells are empty, half say "nan"

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*(f"x{i}" for i in range(features)), LABEL])
    for row, label, empty in zip(x, labels, empty_style, strict=True):
        cells = [("" if empty else "nan") if np.isnan(v) else repr(round(float(v), 6)) for v in row]
        writer.writerow([*cells, int(label)])
    return SyntheticStats(rows=len(x), missing_cells=n_missing, outlier_cells=n_outliers, duplicate_rows=n_duplicates)
