"""Hashing throughput: mlprov vs model_signing's default hashing vs coreutils, against the machine's limit.

One run, page cache warm, best of ``--repeat`` (GB/s = 10^9 bytes/s):

* a single ``--size-mib`` file: ``hash_file`` (must be the plain digest: no splitting) vs
  ``model_signing.hashing.hash`` (default config) vs ``sha256sum``; limit = one core's SHA-256
  (hashlib over an in-memory buffer; ``openssl speed -evp sha256`` printed alongside);
* a directory of ``--files`` files of the same total size: ``hash_directory`` vs model_signing vs
  ``sha256sum`` over the files; limit = every core hashing in-memory buffers at once;
* start-up of ``mlprov hash``: ``python -c "import provenance.hashing"`` (and bare ``python -c pass``)
  and, when the CLI has a ``hash`` command, ``mlprov hash <small file>``; best of 5.

Prints one JSON line with every figure, then a table. ``python -m bench.bench_hashing --size-mib 64``
runs it small. The generated files (random bytes) are deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from provenance.hashing import hash_directory, hash_file

MIB = 1024 * 1024
VENV_BIN = Path(sys.executable).parent


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _gbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e9, 3)


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def _warm(paths: Sequence[Path]) -> None:
    for p in paths:
        with p.open("rb") as f:
            while f.read(8 * MIB):
                pass


def _limit_threads(threads: int, repeat: int) -> float:
    """SHA-256 of in-memory buffers on ``threads`` threads at once (hashlib releases the GIL)."""
    buf = bytes(64 * MIB)
    rounds = 8

    def one() -> None:
        h = hashlib.sha256()
        for _ in range(rounds):
            h.update(buf)

    def run() -> None:
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(one) for _ in range(threads)]:
                f.result()

    return _gbps(len(buf) * rounds * threads, _best(run, repeat))


def _openssl_speed() -> float | None:
    if not shutil.which("openssl"):
        return None
    out = subprocess.run(
        ["openssl", "speed", "-evp", "sha256", "-bytes", str(MIB), "-seconds", "2"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    m = re.search(r"^sha256\s+([\d.]+)k", out, re.MULTILINE)
    return round(float(m.group(1)) * 1000 / 1e9, 3) if m else None


def _sha256sum(paths: Sequence[Path], repeat: int) -> float | None:
    if not shutil.which("sha256sum"):
        return None
    argv = ["sha256sum", *map(str, paths)]
    total = sum(p.stat().st_size for p in paths)
    return _gbps(total, _best(lambda: subprocess.run(argv, check=True, capture_output=True), repeat))


def _startup(argv: Sequence[str], repeat: int = 5) -> float | None:
    try:
        seconds = _best(lambda: subprocess.run(argv, check=True, capture_output=True, timeout=60), repeat)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return round(seconds * 1000, 1)


def _mlprov_hash_argv(small: Path) -> list[str] | None:
    cli = VENV_BIN / "mlprov"
    if not cli.exists():
        return None
    probe = subprocess.run([str(cli), "hash", "--help"], capture_output=True, check=False, timeout=60)
    return [str(cli), "hash", str(small)] if probe.returncode == 0 else None


def run(size: int, files: int, repeat: int, workdir: Path | None) -> dict[str, Any]:
    from model_signing import hashing as ms_hashing

    cores = len(os.sched_getaffinity(0))
    results: dict[str, Any] = {"bench": "hashing", "size_bytes": size, "dir_files": files, "cores": cores}
    results["loadavg_1min_start"] = round(os.getloadavg()[0], 2)  # other work on the machine skews figures
    tmp = Path(tempfile.mkdtemp(prefix="mlprov-bench-hash-", dir=workdir))
    try:
        single = tmp / "single.bin"
        _write_random(single, size)
        model = tmp / "model"
        model.mkdir()
        shard = size // files
        parts = [model / f"part-{i:02d}.bin" for i in range(files)]
        for p in parts:
            _write_random(p, shard)
        dir_bytes = shard * files
        _warm([single, *parts])

        results["limit_1core_gbps"] = _limit_threads(1, repeat)
        results["limit_allcores_gbps"] = _limit_threads(cores, repeat)
        results["openssl_speed_gbps"] = _openssl_speed()

        results["file_mlprov_gbps"] = _gbps(size, _best(lambda: hash_file(single), repeat))
        results["file_model_signing_gbps"] = _gbps(size, _best(lambda: ms_hashing.hash(single), repeat))
        results["file_sha256sum_gbps"] = _sha256sum([single], repeat)
        try:
            import blake3

            def b3() -> None:
                blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(single)

            results["file_blake3_mt_gbps"] = _gbps(size, _best(b3, repeat))
        except ImportError:  # pragma: no cover - blake3 is a pinned dependency
            results["file_blake3_mt_gbps"] = None

        results["dir_mlprov_gbps"] = _gbps(dir_bytes, _best(lambda: hash_directory(model), repeat))
        results["dir_model_signing_gbps"] = _gbps(dir_bytes, _best(lambda: ms_hashing.hash(model), repeat))
        results["dir_sha256sum_gbps"] = _sha256sum(parts, repeat)
        results["file_ratio_to_1core_limit"] = round(results["file_mlprov_gbps"] / results["limit_1core_gbps"], 3)
        results["dir_ratio_to_allcores_limit"] = round(results["dir_mlprov_gbps"] / results["limit_allcores_gbps"], 3)

        small = tmp / "small.txt"
        small.write_bytes(b"hello\n")
        results["startup_python_ms"] = _startup([sys.executable, "-c", "pass"])
        results["startup_import_hashing_ms"] = _startup([sys.executable, "-c", "import provenance.hashing"])
        argv = _mlprov_hash_argv(small)
        results["startup_mlprov_hash_ms"] = _startup(argv) if argv else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    return results


def _table(r: dict[str, Any]) -> str:
    def f(v: object) -> str:
        return "n/a" if v is None else str(v)

    mib = r["size_bytes"] // MIB
    rows = [
        ("", "single file", f"dir of {r['dir_files']}"),
        ("machine limit (hashlib, in memory)", f(r["limit_1core_gbps"]), f(r["limit_allcores_gbps"])),
        ("openssl speed -evp sha256 (1 core)", f(r["openssl_speed_gbps"]), ""),
        ("mlprov hash_file / hash_directory", f(r["file_mlprov_gbps"]), f(r["dir_mlprov_gbps"])),
        (
            "  ratio to the limit (target >= 0.9)",
            f(r["file_ratio_to_1core_limit"]),
            f(r["dir_ratio_to_allcores_limit"]),
        ),
        ("model_signing default hashing", f(r["file_model_signing_gbps"]), f(r["dir_model_signing_gbps"])),
        ("coreutils sha256sum", f(r["file_sha256sum_gbps"]), f(r["dir_sha256sum_gbps"])),
        ("blake3, all threads (not sha256)", f(r["file_blake3_mt_gbps"]), ""),
    ]
    lines = [
        f"hashing {mib} MiB, page cache warm, best of N, GB/s ({r['cores']} cores, "
        f"load average {r['loadavg_1min_start']} -> {r['loadavg_1min_end']})"
    ]
    lines += [f"  {a:<40} {b:>12} {c:>12}" for a, b, c in rows]
    lines.append(
        f"  start-up ms: python {f(r['startup_python_ms'])}, import provenance.hashing "
        f"{f(r['startup_import_hashing_ms'])}, mlprov hash {f(r['startup_mlprov_hash_ms'])}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_hashing", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="single file size and directory total (MiB)")
    parser.add_argument("--files", type=int, default=8, help="number of files in the directory")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate the data (default: $TMPDIR)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.size_mib < 1 or args.files < 1 or args.repeat < 1:
        parser.error("--size-mib, --files and --repeat must be positive")
    results = run(args.size_mib * MIB, args.files, args.repeat, args.workdir)
    print(json.dumps(results, sort_keys=True))
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
