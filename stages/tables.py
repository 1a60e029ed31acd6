"""The demo's tables on disk: the raw CSV ingest writes and the Parquet splits preprocess writes.

Every table has feature columns and a binary ``label`` column (0/1). A malformed file is an
:class:`InputError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from stages.workspace import InputError

__all__ = ["LABEL", "RawTable", "Table", "check_raw_csv_header", "read_parquet", "read_raw_csv", "write_parquet"]

LABEL = "label"


@dataclass(frozen=True)
class RawTable:
    features: list[str]
    x: np.ndarray
    """float64, NaN where a cell was empty or not a number."""
    y: np.ndarray
    """float64 labels, NaN where missing or not a number."""
    malformed_rows: int
    """Rows with the wrong number of cells (dropped while reading)."""


@dataclass(frozen=True)
class Table:
    features: list[str]
    x: np.ndarray
    y: np.ndarray
    """int labels, 0 or 1."""


def _header(row: list[str], where: str) -> list[str]:
    names = [name.strip() for name in row]
    if LABEL not in names:
        raise InputError(f"{where}: no {LABEL!r} column in the header {names[:10]}")
    if len(set(names)) != len(names) or any(not n for n in names):
        raise InputError(f"{where}: the header has empty or repeated column names")
    if len(names) < 2:
        raise InputError(f"{where}: needs at least one feature column besides {LABEL!r}")
    return names


def check_raw_csv_header(path: Path, where: str) -> None:
    """Refuse a file that is not a CSV with a ``label`` column (before it is published)."""
    try:
        with path.open(newline="", encoding="utf-8") as source:
            first = next(csv.reader(source), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{where}: not a UTF-8 CSV file ({exc})") from exc
    if first is None:
        raise InputError(f"{where}: the file is empty")
    _header(first, where)


def _number(cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def read_raw_csv(path: Path) -> RawTable:
    where = f"inputs/{path.name}"
    try:
        with path.open(newline="", encoding="utf-8") as source:
            reader = csv.reader(source)
            header = _header(next(reader, []), where)
            rows: list[list[float]] = []
            malformed = 0
            for row in reader:
                if len(row) != len(header):
                    malformed += 1
                    continue
                rows.append([_number(cell) for cell in row])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{where}: not a readable UTF-8 CSV file ({exc})") from exc
    if not rows:
        raise InputError(f"{where}: no data rows")
    data = np.asarray(rows, dtype=np.float64)
    label_at = header.index(LABEL)
    feature_at = [i for i, name in enumerate(header) if name != LABEL]
    return RawTable([header[i] for i in feature_at], data[:, feature_at], data[:, label_at], malformed)


def write_parquet(out: IO[bytes], table: Table) -> None:
    columns: dict[str, Any] = {name: pa.array(table.x[:, i], pa.float64()) for i, name in enumerate(table.features)}
    columns[LABEL] = pa.array(table.y.astype(np.int8), pa.int8())
    pq.write_table(pa.table(columns), out, compression="zstd")


def read_parquet(path: Path) -> Table:
    where = f"inputs/{path.name}"
    try:
        data = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{where}: not a readable Parquet file ({exc})") from exc
    names = list(data.column_names)
    if LABEL not in names:
        raise InputError(f"{where}: no {LABEL!r} column")
    features = [n for n in names if n != LABEL]
    if not features or data.num_rows == 0:
        raise InputError(f"{where}: needs at least one feature column and one row")
    try:
        x = np.column_stack([data.column(n).to_numpy().astype(np.float64) for n in features])
        y = data.column(LABEL).to_numpy().astype(np.int64)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise InputError(f"{where}: columns must be numbers without nulls ({exc})") from exc
    if not np.isfinite(x).all():
        raise InputError(f"{where}: features hold NaN or infinite values; run preprocess first")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"{where}: {LABEL!r} must be 0 or 1")
    return Table(features, x, y)
