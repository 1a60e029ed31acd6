"""End-to-end verification of a 200-node upstream chain through the verification service, no re-hashing.

Target: <= 1 s.

Builds, in a fresh controller store (SQLite by default, or ``--database-url``): ``--nodes`` signed
manifests, each produced by its own task from the previous artifact (``artifact -consumed-> task
-produced-> artifact`` edges, a code edge, ``mlprov.code`` and ``mlprov.inputs`` assertions) and linked
to the previous manifest, every one appended to a local transparency log. Then times
``VerificationService.verify(VerifyRequest(artifact=<last>, rehash=False))``, the function behind
``POST /api/v1/verify``: every signature against the trust store, every link hash, transparency-log
inclusion of every manifest against a verified checkpoint, the policies, the report.

Run: ``.venv/bin/python -m bench.bench_verify_service [--nodes 200] [--repeat 5] [--database-url URL]``
(``--database-url``: an empty, throwaway database; the schema is migrated into it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.logging import configure_logging
from controller.services.verification import VerificationService, VerifyRequest
from controller.store.db import make_engine, make_session_factory, migrate, session_scope
from controller.store.models import Artifact, LineageEdge, Manifest, Task
from provenance.hashing import hash_file
from provenance.keys import TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, cross_reference, custom_assertion, make_ingredient, manifest_hash
from provenance.signing import sign_manifest
from provenance.tlog.entries import manifest_entry
from provenance.tlog.local import LocalTransparencyLog

__all__ = ["main"]

TARGET_S = 1.0
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_chain(root: Path, url: str, nodes: int) -> tuple[str, TrustStore, LocalTransparencyLog]:
    init_identity(root / "home")
    identity = load_identity(root / "home")
    trust = TrustStore.load(root / "home" / "trust")
    tlog = LocalTransparencyLog(root / "tlog", durability="interval")
    engine = make_engine(url)
    migrate(engine)
    previous: tuple[str, dict[str, Any]] | None = None
    rows: list[Any] = []
    entries: list[bytes] = []
    for i in range(nodes):
        path = root / "files" / f"a{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"artifact {i}\n".encode())
        digest = f"sha256:{hash_file(path, 'sha256')}"
        task = f"task-{i:04d}"
        inputs = [] if previous is None else [previous]
        manifest = sign_manifest(
            build_manifest(
                kind="dataset",
                title=f"a{i}.bin",
                ingredients=[make_ingredient(path, f"a{i}.bin", kind="dataset", hash_alg="sha256")],
                cross_references=[cross_reference(m) for _, m in inputs],
                assertions=[
                    custom_assertion("mlprov.task", {"task_id": task, "attempt": 1, "service": "stage"}),
                    custom_assertion("mlprov.code", {"repo": "/repo", "ref": "main", "commit": COMMIT}),
                    custom_assertion(
                        "mlprov.inputs",
                        [
                            {"name": "in", "digest": d, "kind": "dataset", "manifest_id": m["instance_id"]}
                            for d, m in inputs
                        ],
                    ),
                ],
            ),
            identity,
            hash_alg="sha256",
        )
        entries.append(manifest_entry(manifest))
        rows.append(Task(id=task, service="stage", state="succeeded"))
        rows.append(Artifact(digest=digest, kind="dataset", name=f"a{i}.bin", size=path.stat().st_size, uris=[]))
        rows.append(
            Manifest(
                id=manifest["instance_id"],
                artifact_digest=digest,
                task_id=task,
                manifest=manifest,
                manifest_hash=manifest_hash(manifest),
                log_index=i,
            )
        )
        rows.append(LineageEdge(src_type="task", src_id=task, dst_type="artifact", dst_id=digest, role="produced"))
        rows.append(LineageEdge(src_type="code", src_id=f"/repo@{COMMIT}", dst_type="task", dst_id=task, role="code"))
        for d, _ in inputs:
            rows.append(LineageEdge(src_type="artifact", src_id=d, dst_type="task", dst_id=task, role="consumed"))
        previous = (digest, manifest)
    tlog.append_many(entries)
    with session_scope(make_session_factory(engine)) as s:
        for row in rows:  # in order: tasks and artifacts before the manifests naming them
            s.add(row)
            s.flush()
    engine.dispose()
    assert previous is not None
    return previous[0], trust, tlog


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-verify-") as tmp:
        root = Path(tmp)
        url = args.database_url or f"sqlite:///{root / 'controller.db'}"
        started = time.perf_counter()
        target, trust, tlog = build_chain(root, url, args.nodes)
        print(f"chain of {args.nodes} manifests built in {time.perf_counter() - started:.1f} s", flush=True)
        engine = make_engine(url)
        times: list[float] = []
        try:
            for _ in range(args.repeat):
                with make_session_factory(engine)() as session:
                    service = VerificationService(
                        session, trust=trust, tlog=tlog, tlog_verifier_key=tlog.verifier_key, artifact_store=None
                    )
                    began = time.perf_counter()
                    result = service.verify(VerifyRequest(artifact=target, rehash=False, max_depth=args.nodes + 8))
                    times.append(time.perf_counter() - began)
                summary = result.report["summary"]
                if not result.ok or summary["nodes"] != args.nodes:
                    print(f"unexpected result: ok={result.ok} {summary}", file=sys.stderr)
                    return 1
        finally:
            engine.dispose()
            tlog.close()
    median, worst = statistics.median(times), max(times)
    passed = worst <= TARGET_S
    print(
        f"verify {args.nodes}-node chain (no re-hash, signatures + links + tlog inclusion + policies, "
        f"{summary['checks']} checks): median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms over {len(times)} runs "
        f"[target <= {TARGET_S:.0f} s: {'PASS' if passed else 'FAIL'}]"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
