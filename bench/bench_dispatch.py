"""Dispatch overhead and lock throughput against ``mlprov serve`` (local runtime, embedded everything).

1. *Overhead* (``--tasks`` tasks, one at a time): the job is ``/bin/sh`` writing its own start and end
   timestamps (``date +%s.%N``) into its workspace. Reported as p50 / p90 / max:
   ``submit -> process start`` = the job's start stamp - the client's clock just before ``POST /tasks``;
   ``process exit -> succeeded`` = the task's recorded ``finished_at`` - the job's end stamp.
   Targets: p50 <= 50 ms each.
2. *One lock* (``--queued`` tasks, default 200): all submitted at once to a service holding the lock
   ``the-lock`` (each job sleeps ``--sleep`` seconds between its stamps); reports the wall time from the
   first submit to the last task ended and the number of overlapping job intervals (target: 0).

Run: ``.venv/bin/python -m bench.bench_dispatch [--tasks 40] [--queued 200] [--sleep 0.005]``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from bench.bench_status_reads import Server

__all__ = ["main"]

TARGET_MS = 50.0


def _stamp_job(sleep: float) -> list[str]:
    nap = f"sleep {sleep}; " if sleep > 0 else ""
    return ["/bin/sh", "-c", f"date +%s.%N > .started; {nap}echo done > outputs/out.txt; date +%s.%N > .ended"]


def _stamp(path: Path) -> float:
    return float(path.read_text().strip())


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _overhead(server: Server, n: int) -> tuple[list[float], list[float]]:
    to_start, to_final = [], []
    for _ in range(n):
        t0 = time.time()
        task_id = server.client.post("/api/v1/tasks", json={"service": "stamp"}).json()["id"]
        task = server.wait_task(task_id)
        if task["state"] != "succeeded":
            raise RuntimeError(f"task {task_id} ended {task['state']}: {task['reason']}")
        ws = server.home / "work" / task_id
        to_start.append((_stamp(ws / ".started") - t0) * 1000)
        to_final.append((_ts(task["finished_at"]) - _stamp(ws / ".ended")) * 1000)
    return to_start, to_final


def _one_lock(server: Server, n: int) -> tuple[float, int, int]:
    t0 = time.monotonic()
    ids = [server.client.post("/api/v1/tasks", json={"service": "locked"}).json()["id"] for _ in range(n)]
    tasks = [server.wait_task(i, timeout=600) for i in ids]
    wall = time.monotonic() - t0
    failed = sum(t["state"] != "succeeded" for t in tasks)
    spans = sorted(
        (_stamp(server.home / "work" / i / ".started"), _stamp(server.home / "work" / i / ".ended")) for i in ids
    )
    overlaps = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    return wall, overlaps, failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--queued", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.005)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-") as tmp, Server(Path(tmp)) as server:
        server.register({"name": "stamp", "command": _stamp_job(0)})
        server.register({"name": "locked", "command": _stamp_job(args.sleep), "locks": ["the-lock"]})
        _overhead(server, 3)  # warm-up: first MLflow use creates its database
        time.sleep(2)
        to_start, to_final = _overhead(server, args.tasks)
        wall, overlaps, failed = _one_lock(server, args.queued)
    for label, values in (("submit -> process start", to_start), ("process exit -> succeeded", to_final)):
        p50 = statistics.median(values)
        verdict = "OK" if p50 <= TARGET_MS else "ABOVE TARGET"
        print(
            f"{label}: p50 {p50:.1f} ms, p90 {_pct(values, 0.9):.1f} ms, max {max(values):.1f} ms "
            f"({len(values)} tasks)  [target p50 <= {TARGET_MS:.0f} ms: {verdict}]"
        )
    print(
        f"{args.queued} tasks on one lock: {overlaps} overlaps, {failed} not succeeded, wall {wall:.1f} s "
        f"({args.queued / wall:.1f} tasks/s)  [target 0 overlaps: {'OK' if overlaps == 0 else 'FAILED'}]"
    )
    return 0 if overlaps == 0 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
