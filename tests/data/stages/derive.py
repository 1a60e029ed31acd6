"""Stage 2 of the end-to-end tests: reads the dataset in ``inputs/`` and writes a derived dataset.

A plain program with no provenance code: ``outputs/derived.csv`` holds each row of the first ``*.csv``
input with a third column ``x + y``.
"""

from __future__ import annotations

import os
from pathlib import Path


def main() -> None:
    source = sorted(Path("inputs").glob("*.csv"))[0]
    header, *rows = source.read_text().splitlines()
    lines = [header + ",sum"] + [f"{r},{sum(int(v) for v in r.split(','))}" for r in rows]
    tmp = Path("outputs") / "derived.csv.part"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, Path("outputs") / "derived.csv")
    print(f"derived {len(rows)} rows from {source.name}", flush=True)


if __name__ == "__main__":
    main()
