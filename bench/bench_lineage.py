"""Upstream lineage at depth 20 in a synthetic graph of 100,000 artifacts and ~300,000 edges.

Target: p95 <= 50 ms on PostgreSQL and on SQLite (Marquez's lineage endpoint is reported at 10-15 s
in production).

The graph (deterministic, ``--seed``): ``--projects`` pipelines share a pool of base datasets (imported
artifacts, consumed with a Zipf-like popularity: a few are read by thousands of tasks). Each pipeline
is a sequence of generations of one or two tasks; a task consumes 1-4 artifacts of the previous three
generations of its pipeline (plus, one time in three, a base dataset), is linked to a code commit,
and produces 1-3 artifacts; every produced artifact has a manifest row. Pipelines are ~100 tasks
deep, so a walk of depth 20 (ten artifact generations) stops well before the roots and ``truncated``
is true for most queries. Rows are bulk-loaded (``COPY`` on PostgreSQL, ``executemany`` on SQLite)
into a database migrated by the controller's own migrations (same tables and indexes), then analysed.

Measured: ``controller.services.lineage.lineage(session, digest, direction=upstream, depth=20)``, the
function behind ``GET /api/v1/lineage/{digest}`` (queries plus building the answer), for ``--queries``
artifacts of the last generations of random pipelines, after ``--warmup`` queries.

Run: ``.venv/bin/python -m bench.bench_lineage [--backend sqlite|postgres|both] [--queries 50]``
(PostgreSQL: a throwaway database on ``MLPROV_TEST_POSTGRES_URL``, default 127.0.0.1:5432, dropped after).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from controller.logging import configure_logging
from controller.services.lineage import Direction, lineage
from controller.store.db import make_engine, make_session_factory, migrate

__all__ = ["Graph", "build_graph", "main"]

TARGET_P95_MS = 50.0
ADMIN_URL = os.environ.get("MLPROV_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2026, 1, 1, tzinfo=UTC).isoformat()


@dataclass
class Graph:
    artifacts: list[tuple[str, str, str]] = field(default_factory=list)  # digest, kind, name
    tasks: list[tuple[str, str]] = field(default_factory=list)  # id, service
    edges: list[tuple[str, str, str, str, str]] = field(
        default_factory=list
    )  # src_type, src_id, dst_type, dst_id, role
    manifests: list[tuple[str, str, str]] = field(default_factory=list)  # id, artifact digest, task id
    deep: list[str] = field(default_factory=list)  # artifacts of the last generations (query roots)


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


def build_graph(n_artifacts: int, projects: int, base_datasets: int, seed: int) -> Graph:
    rng = random.Random(seed)
    g = Graph()
    counter = 0

    def artifact(kind: str, name: str) -> str:
        nonlocal counter
        counter += 1
        digest = _digest(counter)
        g.artifacts.append((digest, kind, name))
        return digest

    base = [artifact("dataset", f"base-{i}.parquet") for i in range(base_datasets)]
    weights = [1.0 / (i + 1) ** 1.1 for i in range(base_datasets)]
    per_project = (n_artifacts - base_datasets) // projects
    for p in range(projects):
        commit = f"{rng.getrandbits(160):040x}"
        code = f"https://git.example/p{p}@{commit}"
        generations: list[list[str]] = [[artifact("dataset", f"p{p}-seed-{i}.csv") for i in range(2)]]
        made = 2
        gen = 0
        while made < per_project:
            gen += 1
            outputs: list[str] = []
            for _ in range(rng.choice((1, 1, 2))):
                if made >= per_project:
                    break
                task_id = str(uuid.UUID(int=rng.getrandbits(128)))
                g.tasks.append((task_id, f"stage-{gen % 7}"))
                pool = [a for generation in generations[-3:] for a in generation]
                inputs = set(rng.sample(pool, min(len(pool), rng.choice((1, 2, 3, 3, 4, 4)))))
                if rng.random() < 1 / 3:
                    inputs.add(rng.choices(base, weights)[0])
                for a in sorted(inputs):
                    g.edges.append(("artifact", a, "task", task_id, "consumed"))
                g.edges.append(("code", code, "task", task_id, "code"))
                for k in range(min(rng.choice((1, 2, 2, 3)), per_project - made)):
                    out = artifact(rng.choice(("dataset", "model", "evaluation")), f"p{p}-g{gen}-{k}")
                    made += 1
                    outputs.append(out)
                    g.edges.append(("task", task_id, "artifact", out, "produced"))
                    g.manifests.append((f"urn:c2pa:{uuid.UUID(int=rng.getrandbits(128))}", out, task_id))
            generations.append(outputs)
        g.deep.extend(a for generation in generations[-3:] for a in generation)
    while counter < n_artifacts:  # rounding left-overs: imported, unused artifacts
        artifact("dataset", f"import-{counter}")
    return g


# --- loading ------------------------------------------------------------------------------------------

_COLUMNS = {
    "artifacts": ("digest", "kind", "name", "size", "uris", "created_at"),
    "tasks": ("id", "service", "state", "params", "inputs", "resources", "outputs", "submitted_at"),
    "manifests": ("id", "artifact_digest", "task_id", "role", "manifest", "manifest_hash", "meta", "created_at"),
    "lineage_edges": ("src_type", "src_id", "dst_type", "dst_id", "role", "created_at"),
}


def _rows(g: Graph) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "artifacts": [(d, k, n, 1024, "[]", NOW) for d, k, n in g.artifacts],
        "tasks": [(t, s, "succeeded", "{}", "[]", "{}", "[]", NOW) for t, s in g.tasks],
        "manifests": [
            (m, a, t, "output", json.dumps({"title": a[-8:]}), "0" * 64, "{}", NOW) for m, a, t in g.manifests
        ],
        "lineage_edges": [(*e, NOW) for e in g.edges],
    }


def _table_columns(engine: Engine, table: str) -> set[str]:
    from sqlalchemy import inspect

    return {c["name"] for c in inspect(engine).get_columns(table)}


def load(engine: Engine, g: Graph) -> float:
    started = time.perf_counter()
    rows = _rows(g)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for table, data in rows.items():
            cols = [c for c in _COLUMNS[table] if c in _table_columns(engine, table)]
            idx = [_COLUMNS[table].index(c) for c in cols]
            data = [tuple(r[i] for i in idx) for r in data]
            if engine.dialect.name == "postgresql":
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for r in data:
                        copy.write_row(r)
            else:
                marks = ", ".join("?" for _ in cols)
                cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", data)  # noqa: S608 - fixed names
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
        if engine.dialect.name == "sqlite":  # steady state: the bulk load moved from the WAL into the database
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return time.perf_counter() - started


# --- measuring ----------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(engine: Engine, roots: list[str], depth: int, warmup: int) -> dict[str, Any]:
    factory = make_session_factory(engine)
    times: list[float] = []
    sizes: list[int] = []
    edges: list[int] = []
    truncated = 0
    with factory() as session:
        for root in roots[:warmup]:
            lineage(session, root, direction=Direction.UPSTREAM, depth=depth)
        for root in roots[warmup:]:
            started = time.perf_counter()
            graph = lineage(session, root, direction=Direction.UPSTREAM, depth=depth)
            times.append((time.perf_counter() - started) * 1000)
            sizes.append(len(graph.nodes))
            edges.append(len(graph.edges))
            truncated += graph.truncated
            session.rollback()
    return {
        "queries": len(times),
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(_percentile(times, 0.95), 2),
        "max_ms": round(max(times), 2),
        "nodes_mean": round(statistics.mean(sizes), 1),
        "nodes_max": max(sizes),
        "edges_mean": round(statistics.mean(edges), 1),
        "truncated": truncated,
    }


@contextmanager
def _database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mlprov-bench-lineage-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'lineage.db'}"
        return
    import psycopg

    name = f"mlprov_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(backend: str, g: Graph, args: argparse.Namespace) -> dict[str, Any]:
    with _database(backend) as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            load_s = load(engine, g)
            rng = random.Random(args.seed + 1)
            roots = [rng.choice(g.deep) for _ in range(args.warmup + args.queries)]
            with engine.connect() as conn:
                counts = {
                    t: conn.scalar(text(f"SELECT count(*) FROM {t}"))  # noqa: S608 - fixed table names
                    for t in ("artifacts", "lineage_edges")
                }
            result = {"backend": backend, "load_s": round(load_s, 1), **counts}
            result.update(measure(engine, roots, args.depth, args.warmup))
            return result
        finally:
            engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--base-datasets", type=int, default=1_000)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    configure_logging("WARNING")  # as a served controller logs: no per-query debug lines
    started = time.perf_counter()
    g = build_graph(args.artifacts, args.projects, args.base_datasets, args.seed)
    print(
        f"graph: {len(g.artifacts):,} artifacts, {len(g.tasks):,} tasks, {len(g.edges):,} edges, "
        f"{len(g.manifests):,} manifests (built in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    ok = True
    for backend in backends:
        r = run(backend, g, args)
        passed = r["p95_ms"] <= TARGET_P95_MS
        ok &= passed
        print(
            f"{backend:9} upstream depth {args.depth}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
            f"max {r['max_ms']} ms "
            f"over {r['queries']} queries; answer {r['nodes_mean']} nodes (max {r['nodes_max']}), "
            f"{r['edges_mean']} edges on average, truncated {r['truncated']}/{r['queries']}; "
            f"load {r['load_s']} s ({r['artifacts']:,} artifacts, {r['lineage_edges']:,} edges) "
            f"[target p95 <= {TARGET_P95_MS:.0f} ms: {'PASS' if passed else 'FAIL'}]",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
