"""Full-chain verification speed: a chain of N linked, signed manifests, verified without re-hashing.

Builds ``--length`` manifests (each a model with one ingredient, signed by a fresh local CA identity,
each cross-referencing the previous one) in an in-memory source, then times
:func:`provenance.verify.verify_chain` from the newest manifest down to the first (every node:
structure, signature against the trust store, link hash). Reports the best of ``--repeat`` runs and,
for scale, the time of one ECDSA P-256 verify measured in the same process (the floor per node).

Run: ``.venv/bin/python -m bench.bench_verify [--length 1000] [--repeat 5]`` (or ``python -m bench``).
Target: <= 150 ms for 1,000 manifests on a 2-core machine (ECDSA P-256 verify ~48 us).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from provenance.errors import ManifestNotFoundError
from provenance.keys import TrustStore, init_identity, load_identity, verify_bytes
from provenance.manifest import build_manifest, cross_reference, make_ingredient
from provenance.signing import sign_manifest
from provenance.storage.base import StoredManifest
from provenance.verify import verify_chain


class MemorySource:
    def __init__(self) -> None:
        self.items: dict[str, StoredManifest] = {}

    def get(self, manifest_id: str) -> StoredManifest:
        try:
            return self.items[manifest_id]
        except KeyError:
            raise ManifestNotFoundError(manifest_id) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_verify")
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # keep output to figures
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        paths = init_identity(home / "home")
        identity, trust = load_identity(home / "home"), TrustStore.load(paths.trust_dir)
        asset = home / "model.pt"
        asset.write_bytes(b"weights")
        source = MemorySource()
        previous = None
        t0 = time.perf_counter()
        for i in range(args.length):
            ingredient = make_ingredient(asset, "weights", kind="model")
            refs: list[dict[str, Any]] = [cross_reference(previous)] if previous is not None else []
            manifest = build_manifest(kind="model", title=f"model {i}", ingredients=[ingredient], cross_references=refs)
            previous = sign_manifest(manifest, identity)
            source.items[previous["instance_id"]] = StoredManifest(id=previous["instance_id"], manifest=previous)
        build_s = time.perf_counter() - t0
        assert previous is not None
        times, cpu_times = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            report = verify_chain(previous["instance_id"], source, trust, max_depth=args.length + 1, rehash=False)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            if not report.ok or len(report.nodes) != args.length:
                print(report.to_text())
                return 1
        signature = identity.sign(b"x", "sha384")
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            verify_bytes(identity.public_key, signature, b"x", "sha384")
        ecdsa_us = (time.perf_counter() - t0) / n * 1e6
    best_ms = min(times) * 1000
    figures = {
        "bench": "verify_chain",
        "manifests": args.length,
        "best_ms": round(best_ms, 1),
        "median_ms": round(sorted(times)[len(times) // 2] * 1000, 1),
        "best_cpu_ms": round(min(cpu_times) * 1000, 1),  # process CPU time: less skewed by other load
        "per_manifest_us": round(best_ms * 1000 / args.length, 1),
        "ecdsa_p256_verify_us": round(ecdsa_us, 1),
        "build_and_sign_s": round(build_s, 2),
        "target_ms": 150,
    }
    print(json.dumps(figures))
    print(
        f"verify_chain over {args.length} linked signed manifests: best {best_ms:.0f} ms "
        f"(CPU {figures['best_cpu_ms']:.0f} ms) "
        f"({figures['per_manifest_us']} us/manifest; one ECDSA P-256 verify here: {ecdsa_us:.0f} us); target <= 150 ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
