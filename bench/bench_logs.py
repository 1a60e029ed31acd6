"""Embedded log path: lines/s from publish to searchable, line-to-searchable latency, FTS search latency.

Two phases on a fresh ``$MLPROV_HOME`` (local bus -> pipeline thread -> SQLite FTS5), the way a
controller runs them:

1. *throughput*: a producer thread publishes ``--lines`` lines in ``--batch``-line ``publish_many``
   calls as fast as it can; lines/s = lines / (first publish -> last line searchable).
2. *latency*: the same at a steady ``--rate`` lines/s (the issue's 50,000/s target); every
   ``--sample``-th line's publish time is compared with the moment the index can see it (a monitor
   thread polls the index for the next outstanding sample; batches commit in bus order, so a visible
   sample means all earlier lines are visible too). Reports p50/p99/max.

Then the FTS search latency: full-text + filter queries over what was indexed.

Run: ``.venv/bin/python -m bench.bench_logs [--lines 200000] [--rate 50000]`` (or ``python -m bench``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from controller.logs.base import LogQuery, LogRecord
from controller.logs.fts_index import FtsLogIndex
from controller.logs.local_bus import LocalLogBus
from controller.logs.pipeline import LogPipeline

WORDS = [
    *("epoch", "loss", "accuracy", "gradient", "checkpoint", "tokenizer", "shard", "dataset", "batch"),
    *("optimizer", "warmup", "learning", "rate", "scheduler", "evaluation", "precision", "recall"),
    *("validation", "download", "upload", "manifest", "signature", "digest", "artifact", "lineage"),
    *("sidecar", "preprocess", "finetune", "ingest"),
]


def _line(i: int, rng: random.Random) -> LogRecord:
    words = " ".join(rng.choices(WORDS, k=8))
    return LogRecord(
        timestamp=time.time(),
        message=f"step {i} probe{i} {words}",
        component="job",
        stream="stdout" if i % 10 else "stderr",
        level="info" if i % 50 else "error",
        run_id=f"run-{i % 4}",
        dag_id="bench",
        task_id=f"task-{i % 16}",
        attempt=1,
    )


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def _phase(home: Path, lines: int, batch: int, rate: float, sample: int) -> dict[str, float]:
    bus = LocalLogBus(home / "bus")
    index = FtsLogIndex(home / "index.db")
    pipeline = LogPipeline(bus.consumer("index"), index)
    pipeline.start()
    base = bus.end_offset
    rng = random.Random(7)
    payload = [_line(i, rng) for i in range(lines)]  # built up front: measure the log path, not the generator
    published: dict[int, float] = {}
    visible: dict[int, float] = {}
    done = threading.Event()

    def produce() -> None:
        start = time.perf_counter()
        for first in range(0, lines, batch):
            if rate:
                due = start + first / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            chunk = payload[first : first + batch]
            now = time.perf_counter()
            for i in range(first - first % sample + (sample if first % sample else 0), first + len(chunk), sample):
                published[i] = now
            bus.publish_many(chunk)
        done.set()

    def monitor() -> None:
        for i in range(0, lines, sample):
            key = f"local:{base + i}"
            while i not in published or not index.contains(key):
                time.sleep(0.001)
            visible[i] = time.perf_counter()
        last = f"local:{base + lines - 1}"
        while not index.contains(last):
            time.sleep(0.001)
        visible[lines - 1] = time.perf_counter()

    producer = threading.Thread(target=produce)
    watcher = threading.Thread(target=monitor)
    t0 = time.perf_counter()
    watcher.start()
    producer.start()
    producer.join()
    watcher.join()
    elapsed = visible[lines - 1] - t0
    latencies = [visible[i] - published[i] for i in published if i in visible]
    pipeline.close()
    bus.close()
    assert index.count() >= lines, "lines lost between bus and index"
    index.close()
    return {
        "lines_per_s": lines / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "samples": len(latencies),
    }


def _search_latency(path: Path, queries: int) -> dict[str, float]:
    index = FtsLogIndex(path)
    rng = random.Random(11)
    total = index.count()
    times: list[float] = []
    hits = 0
    for n in range(queries):
        kind = n % 4
        if kind == 0:
            query = LogQuery(q=f"probe{rng.randrange(total)}")
        elif kind == 1:
            query = LogQuery(q=" ".join(rng.sample(WORDS, 2)), run_id="run-1", limit=100)
        elif kind == 2:
            query = LogQuery(task_id=f"task-{rng.randrange(16)}", order="asc", limit=200)
        else:
            query = LogQuery(q=rng.choice(WORDS), level="error", limit=50)
        start = time.perf_counter()
        page = index.search(query)
        times.append(time.perf_counter() - start)
        hits += len(page.records)
    index.close()
    return {
        "queries": queries,
        "indexed": total,
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": _percentile(times, 99) * 1000,
        "hits": hits,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_logs", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines per phase (default 200000)")
    parser.add_argument("--batch", type=int, default=500, help="lines per publish_many call (default 500)")
    parser.add_argument("--rate", type=float, default=50_000, help="lines/s of the latency phase (default 50000)")
    parser.add_argument("--sample", type=int, default=100, help="measure every n-th line's latency (default 100)")
    parser.add_argument("--queries", type=int, default=400, help="searches timed at the end (default 400)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-logs-") as tmp:
        home = Path(tmp)
        burst = _phase(home / "burst", args.lines, args.batch, 0, args.sample)
        paced = _phase(home / "paced", args.lines, args.batch, args.rate, args.sample)
        search = _search_latency(home / "paced" / "index.db", args.queries)
    print(f"embedded log path, {args.lines} lines, publish_many batches of {args.batch}")
    print(
        f"  unthrottled: {burst['lines_per_s']:,.0f} lines/s publish->searchable; "
        f"latency p50 {burst['p50_ms']:.0f} ms, p99 {burst['p99_ms']:.0f} ms"
    )
    print(
        f"  at {args.rate:,.0f} lines/s: {paced['lines_per_s']:,.0f} lines/s; latency p50 {paced['p50_ms']:.0f} ms, "
        f"p99 {paced['p99_ms']:.0f} ms, max {paced['max_ms']:.0f} ms ({paced['samples']:.0f} samples)"
    )
    print(
        f"  FTS search over {search['indexed']:,.0f} lines: p50 {search['p50_ms']:.2f} ms, "
        f"p99 {search['p99_ms']:.2f} ms ({search['queries']:.0f} queries)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
