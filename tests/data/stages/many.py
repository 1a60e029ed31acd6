"""Writes ``count`` artifacts into ``outputs/``, each renamed into place, ``gap`` seconds apart.

Parameters (``params.json``): ``count`` (default 50), ``size`` bytes per artifact (default 4096),
``gap`` seconds between artifacts (default 0.05), ``busy`` seconds of CPU work before each artifact
(default 0), ``go``: a file to wait for before writing the second half (optional), and ``times``: a
file to which each artifact's completion (``name epoch-seconds``) is appended (optional).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    block = b"x" * 4096
    while time.perf_counter() < end:
        for _ in range(200):
            block = hashlib.sha256(block).digest() * 128


def main() -> None:
    params = json.loads(Path("params.json").read_text())
    count, size = int(params.get("count", 50)), int(params.get("size", 4096))
    gap, busy = float(params.get("gap", 0.05)), float(params.get("busy", 0))
    go, times = params.get("go"), params.get("times")
    out = Path("outputs")
    for i in range(count):
        if go and i == count // 2:
            print("half written; waiting for", go, flush=True)
            while not os.path.exists(go):
                time.sleep(0.02)
        _busy(busy)
        name = f"part-{i:03d}.bin"
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(i.to_bytes(4, "big") * (size // 4) + bytes(size % 4))
        os.replace(tmp, out / name)
        if times:
            with open(times, "a") as fh:
                fh.write(f"{name} {time.time():.6f}\n")
        time.sleep(gap)
    print(f"wrote {count} artifacts", flush=True)


if __name__ == "__main__":
    main()
