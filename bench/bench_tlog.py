"""Transparency log speed: durable appends/s, and proof latency in a log of ``--entries`` entries.

Appends (fresh log each, 64-byte entries like ``sha384:<hex>`` manifest hashes):

- ``sync x1``: one thread, ``append`` returns after fdatasync (one fsync per entry: the disk's floor);
- ``sync xT``: ``--threads`` threads appending at once; concurrent appenders share one fsync (group commit);
- ``sync batch``: ``append_many`` of ``--batch`` entries, one fsync per batch;
- ``interval``: ``append`` returns once written to the OS (survives a process crash), fsync every 50 ms.

Then builds a log of ``--entries`` entries once in a temp dir and times its reopen (crash recovery
scan), ``inclusion_proof`` at the full size (generation, then RFC 9162 verification), a
``consistency_proof`` from a random older size, and ``checkpoint`` (root + Ed25519 signature).

Run: ``.venv/bin/python -m bench.bench_tlog [--entries 1000000]`` (or ``python -m bench``).
Targets: >= 5,000 durable appends/s; inclusion proof at 1M entries <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from provenance.tlog.local import LocalTransparencyLog
from provenance.tlog.merkle import leaf_hash, verify_consistency, verify_inclusion


def _entry(tag: str, i: int) -> bytes:
    return f"sha384:{tag}{i:058d}".encode()


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def _appends(root: Path, n: int, threads: int, batch: int) -> dict[str, float]:
    out: dict[str, float] = {}
    single = max(1, min(n, 2000))  # one fsync each: bounded so a slow disk does not stall the bench
    with LocalTransparencyLog(root / "single") as log:
        t0 = time.perf_counter()
        for i in range(single):
            log.append(_entry("s", i))
        out["sync_x1"] = _rate(single, time.perf_counter() - t0)
    with LocalTransparencyLog(root / "threads") as log:
        per = max(1, n // threads)

        def work(k: int) -> None:
            for i in range(per):
                log.append(_entry(f"t{k}-", i))

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        out[f"sync_x{threads}"] = _rate(per * threads, time.perf_counter() - t0)
    with LocalTransparencyLog(root / "batch") as log:
        items = [_entry("b", i) for i in range(n)]
        t0 = time.perf_counter()
        for first in range(0, n, batch):
            log.append_many(items[first : first + batch])
        out["sync_batch"] = _rate(n, time.perf_counter() - t0)
    with LocalTransparencyLog(root / "interval", durability="interval") as log:
        t0 = time.perf_counter()
        for i in range(n):
            log.append(_entry("i", i))
        log.sync()
        out["interval"] = _rate(n, time.perf_counter() - t0)
    return out


def _latency_us(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return {
        "mean_us": round(statistics.fmean(samples), 1),
        "p50_us": round(samples[len(samples) // 2], 1),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
    }


def _proofs(root: Path, entries: int, proofs: int) -> dict[str, object]:
    rng = random.Random(7)
    path = root / "big"
    t0 = time.perf_counter()
    with LocalTransparencyLog(path, durability="interval") as log:
        chunk = 50_000
        for first in range(0, entries, chunk):
            log.append_many([_entry("m", i) for i in range(first, min(entries, first + chunk))])
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    log = LocalTransparencyLog(path)
    reopen_s = time.perf_counter() - t0
    try:
        size = log.size()
        root_hash = log.root_hash()
        indices = [rng.randrange(size) for _ in range(proofs)]
        it = iter(indices)
        inclusion = _latency_us(lambda: log.inclusion_proof(next(it), size), proofs)
        sample = [(i, log.inclusion_proof(i, size)) for i in indices[:200]]
        it2 = iter(sample * (proofs // len(sample) + 1))

        def verify_one() -> None:
            i, proof = next(it2)
            verify_inclusion(leaf_hash(_entry("m", i)), proof, root_hash)

        verify = _latency_us(verify_one, proofs)
        olds = iter([rng.randrange(1, size) for _ in range(proofs)])
        consistency = _latency_us(lambda: log.consistency_proof(next(olds), size), proofs)
        old = size // 3
        verify_consistency(log.root_hash(old), root_hash, log.consistency_proof(old, size))

        def fresh_checkpoint() -> None:
            log._checkpoint = None  # time the root and the signature, not the per-size cache
            log.checkpoint()

        checkpoint = _latency_us(fresh_checkpoint, 200)
        lookups = iter(indices)
        find = _latency_us(lambda: log.find(leaf_hash(_entry("m", next(lookups)))), proofs)
        proof_len = len(log.inclusion_proof(indices[0], size).hashes)
    finally:
        log.close()
    return {
        "entries": size,
        "build_s": round(build_s, 2),
        "reopen_s": round(reopen_s, 3),
        "inclusion_proof": inclusion,
        "inclusion_verify": verify,
        "consistency_proof": consistency,
        "checkpoint": checkpoint,
        "find": find,
        "proof_hashes": proof_len,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_tlog")
    parser.add_argument("--entries", type=int, default=1_000_000, help="size of the log the proofs are timed in")
    parser.add_argument("--appends", type=int, default=20_000, help="entries per append mode")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--proofs", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tlog-") as tmp:
        appends = _appends(Path(tmp), args.appends, args.threads, args.batch)
        proofs = _proofs(Path(tmp), args.entries, args.proofs)
    print(json.dumps({"bench": "tlog", "appends_per_s": appends, **proofs}), flush=True)
    rows = [(f"appends/s {mode}", f"{rate:,.0f}") for mode, rate in appends.items()]
    rows += [
        (f"build {proofs['entries']:,} entries (append_many)", f"{proofs['build_s']} s"),
        ("reopen (recovery scan)", f"{proofs['reopen_s']} s"),
    ]
    for key in ("inclusion_proof", "inclusion_verify", "consistency_proof", "checkpoint", "find"):
        stats = proofs[key]
        assert isinstance(stats, dict)
        rows.append((f"{key} (mean / p50 / p99)", f"{stats['mean_us']} / {stats['p50_us']} / {stats['p99_us']} us"))
    width = max(len(r[0]) for r in rows)
    print(f"{'tlog':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
