"""Start-up cost of light ``mlprov`` commands: ``mlprov --help`` and ``mlprov hash <small file>``.

Wall time of a fresh process, best of N (subprocess), through ``.venv/bin/mlprov`` when that console
script works, else ``python -m provenance.cli``; then ``python -X importtime`` of the same command and
its top import offenders (cumulative microseconds). Run: ``python -m bench.bench_cli_startup``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _launcher() -> list[str]:
    script = Path(sys.executable).parent / "mlprov"
    if script.exists():
        done = subprocess.run([str(script), "--help"], capture_output=True, timeout=60, check=False)
        if done.returncode == 0:
            return [str(script)]
    return [sys.executable, "-m", "provenance.cli"]


def _best(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, timeout=60, check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
    return best


def _offenders(entry: str, args: list[str], top: int) -> list[tuple[int, str]]:
    code = (
        f"import sys; sys.argv = ['mlprov', *{args!r}]\n"
        f"from {entry} import main\n"
        "try:\n main()\nexcept SystemExit:\n pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    rows: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if name == name.lstrip():  # top-level imports only (nested ones are indented)
            rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:top]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_cli_startup")
    parser.add_argument("--runs", type=int, default=5, help="processes per command; the best is reported")
    parser.add_argument("--top", type=int, default=8, help="import offenders to list")
    args = parser.parse_args(argv)
    launcher = _launcher()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.bin"
        small.write_bytes(os.urandom(4096))
        commands = {"--help": ["--help"], "hash <4 KiB file>": ["hash", str(small)]}
        print(f"launcher: {' '.join(launcher)}")
        baseline = _best([sys.executable, "-c", "pass"], args.runs)
        print(f"{'python -c pass':<24} {baseline * 1000:7.1f} ms  (interpreter floor)")
        for label, cmd in commands.items():
            print(
                f"{'mlprov ' + label:<24} {_best([*launcher, *cmd], args.runs) * 1000:7.1f} ms  (best of {args.runs})"
            )
        if launcher[0].endswith("mlprov"):
            direct = _best([sys.executable, "-m", "provenance.cli", "--help"], args.runs)
            print(f"{'python -m provenance.cli --help':<24} {direct * 1000:7.1f} ms  (without controller.cli)")
        entry = "controller.cli" if launcher[0].endswith("mlprov") else "provenance.cli"
        for label, cmd in commands.items():
            print(f"top imports of `mlprov {label}` via {entry} (cumulative):")
            for micros, name in _offenders(entry, cmd, args.top):
                print(f"  {micros / 1000:7.1f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
