"""Writes ``outputs/slow.csv`` in place (no rename), one chunk every ``gap`` seconds over ``chunks`` chunks.

Parameters (``params.json``): ``chunks`` (default 10), ``gap`` seconds (default 0.5). The final content
is ``row,<i>`` lines for i in 0..chunks*100-1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def main() -> None:
    params = json.loads(Path("params.json").read_text())
    chunks, gap = int(params.get("chunks", 10)), float(params.get("gap", 0.5))
    with open(Path("outputs") / "slow.csv", "w") as fh:
        for c in range(chunks):
            fh.write("".join(f"row,{c * 100 + i}\n" for i in range(100)))
            fh.flush()
            time.sleep(gap)
    print("slow.csv complete", flush=True)


if __name__ == "__main__":
    main()
