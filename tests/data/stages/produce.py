"""Stage 1 of the end-to-end tests: a plain program with no provenance code.

Writes ``outputs/dataset.csv`` (renamed into place), ``outputs/model/`` (written under a hidden
temporary name, then renamed) and ``outputs/metrics.json``. Parameters from ``params.json``: ``rows``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def main() -> None:
    params = json.loads(Path("params.json").read_text())
    rows = int(params.get("rows", 20))
    out = Path("outputs")
    tmp = out / ".dataset.csv.tmp"
    tmp.write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(rows)))
    os.replace(tmp, out / "dataset.csv")

    staging = out / ".model.tmp"
    staging.mkdir()
    (staging / "weights.safetensors").write_bytes(bytes(range(256)) * 64)
    (staging / "config.json").write_text(json.dumps({"layers": 2, "rows": rows}))
    os.replace(staging, out / "model")

    metrics = out / ".metrics.json.tmp"
    metrics.write_text(json.dumps({"accuracy": 0.75, "loss": 0.5, "rows": rows}))
    os.replace(metrics, out / "metrics.json")
    print(f"wrote dataset.csv ({rows} rows), model/, metrics.json", flush=True)


if __name__ == "__main__":
    main()
