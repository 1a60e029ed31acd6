"""ingest: pull the training data from a source URI into ``outputs/raw.csv``.

Parameters (``params.json``):

- ``source``: ``builtin://synthetic`` (default; generated from ``seed``, ``rows``, ``features``),
  ``file:///path/data.csv``, ``http(s)://host/data.csv`` or ``s3://bucket/key.csv``
  (see :mod:`stages.sources` for S3 endpoint, region and credentials);
- ``sha256``: optional hex digest the fetched bytes must have (pins a mutable URL to content);
- ``seed`` (42), ``rows`` (2000), ``features`` (8): the built-in generator's;
- ``timeout`` (30 s): for network sources; ``s3_endpoint``, ``s3_region``: for ``s3://``.

The data must be a UTF-8 CSV with a header holding a ``label`` column. Writes ``outputs/raw.csv``
and ``outputs/metrics.json`` (``bytes``, ``rows``).

Run: ``python -m stages.ingest`` in the workspace. Exit 2: bad parameters or not a CSV; 3: the source
could not be read.
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import IO

from stages import sources
from stages.synthetic import BUILTIN_DATASETS, write_synthetic_csv
from stages.tables import check_raw_csv_header
from stages.workspace import InputError, Params, SourceError, Workspace, run_stage

__all__ = ["main", "run"]

OUTPUT = "raw.csv"


class _Hashing:
    """A binary writer that hashes and counts what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._out.write(data)

    def write_text(self, text: str, /) -> int:
        """The text half, for the CSV writer: UTF-8, ``\\n`` line ends (the writer's own)."""
        return self.write(text.encode("utf-8"))


class _Text:
    def __init__(self, out: _Hashing) -> None:
        self.write = out.write_text


def _fetch(ws: Workspace, params: Params, uri: str, out: _Hashing) -> None:
    parts = sources.split_uri(uri)
    seed = params.integer("seed", 42, low=0, high=2**32 - 1)
    rows = params.integer("rows", 2000, low=100, high=1_000_000)
    features = params.integer("features", 8, low=3, high=64)
    timeout = params.number("timeout", 30.0, low=0.1, high=3600.0)
    settings = sources.S3Settings(
        endpoint=params.optional_text("s3_endpoint"), region=params.optional_text("s3_region"), timeout=timeout
    )
    params.finish()
    if parts.scheme == "builtin":
        if parts.netloc not in BUILTIN_DATASETS:
            raise InputError(f"source {uri!r}: no built-in data set {parts.netloc!r}; have {list(BUILTIN_DATASETS)}")
        ws.log(f"generating {parts.netloc} data: seed={seed} rows={rows} features={features}")
        stats = write_synthetic_csv(_Text(out), seed=seed, rows=rows, features=features)
        ws.log(
            f"generated {stats.rows} rows with {stats.missing_cells} missing cells, "
            f"{stats.outlier_cells} outliers, {stats.duplicate_rows} duplicated rows"
        )
    elif parts.scheme == "file":
        ws.log(f"copying {uri}")
        sources.copy_file(parts, out)
    elif parts.scheme in ("http", "https"):
        ws.log(f"downloading {uri} (timeout {timeout:g} s)")
        sources.copy_http(parts, out, timeout=timeout)
    else:
        ws.log(f"downloading {uri} from {settings.endpoint or 'the default S3 endpoint'}")
        sources.copy_s3(parts, out, settings)


def run(ws: Workspace) -> None:
    params = ws.params()
    uri = params.text("source", "builtin://synthetic")
    expected = params.optional_text("sha256")
    if expected is not None:
        expected = expected.removeprefix("sha256:").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise InputError(f"params.json: sha256 must be 64 hex digits, got {expected!r}")
    with ws.publish_file(OUTPUT) as raw:
        out = _Hashing(raw)
        _fetch(ws, params, uri, out)
        raw.flush()
        digest = out.sha256.hexdigest()
        if expected is not None and digest != expected:
            raise SourceError(f"source {uri!r}: content sha256 {digest} is not the expected {expected}")
        check_raw_csv_header(ws.outputs / f".{OUTPUT}.tmp", f"source {uri!r}")
        ws.log(f"fetched {out.size} bytes, sha256 {digest}")
    with (ws.outputs / OUTPUT).open("rb") as published:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: published.read(1 << 20), b""))
    ws.publish_json("metrics.json", {"bytes": out.size, "rows": max(0, lines - 1)})


def main(argv: list[str] | None = None) -> int:
    return run_stage("ingest", run, argv)


if __name__ == "__main__":
    sys.exit(main())
