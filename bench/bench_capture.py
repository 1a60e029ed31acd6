"""Capture latency and provenance overhead on the real controller, local runtime and provenance sidecar.

(a) Capture latency: a job writes ``--artifacts`` artifacts of ``--size-mib`` MiB, each renamed into
``outputs/`` ``--gap`` seconds apart, and appends each one's completion time (the moment after the
rename) to a file; a poller reads ``GET /api/v1/artifacts/{digest}`` until the artifact is there with a
manifest. Latency = first time it is queryable - completion time. Targets: p50 <= 150 ms, p95 <= 400 ms.

(b) Provenance overhead: a CPU-bound stage of ``--stage-seconds`` that writes ``--stage-artifacts``
1 MiB artifacts, run with the sidecar and without (``MLPROV_SIDECAR=false``: outputs hashed and stored
by the controller, unsigned); wall time from submit to ``succeeded``, on a controller whose runtime is
warm (``/readyz``: ``runtime: ready``). Target: ratio <= 1.05. ``--cold`` also times the first task
submitted right after start-up, which waits for the fork server's one-time warm-up (~1 s).

The controller runs in this process (uvicorn on a free 127.0.0.1 port, a temporary ``$MLPROV_HOME``);
jobs and sidecars are real processes. Figures for the README, not timed assertions.

Run: ``.venv/bin/python -m bench.bench_capture [--artifacts 40] [--size-mib 1] [--gap 0.25]
[--stage-seconds 20] [--stage-artifacts 20] [--skip-latency] [--skip-overhead] [--cold]``
(quick: ``--artifacts 10 --stage-seconds 5``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from controller.main import create_app
from controller.settings import Settings

__all__ = ["main"]

P50_TARGET_MS, P95_TARGET_MS, OVERHEAD_TARGET = 150.0, 400.0, 1.05
ADMIN = "admin-token-for-bench-capture"

# The stage: a plain program (no provenance code). Parameters from params.json.
STAGE = """\
import hashlib, json, os, sys, time
p = json.load(open("params.json"))
count, size, gap, busy = p["count"], p["size"], p["gap"], p["busy"]
block = b"x" * 4096
for i in range(count):
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        for _ in range(200):
            block = hashlib.sha256(block).digest() * 128
    name = f"part-{i:03d}.bin"
    tmp = os.path.join("outputs", "." + name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(i.to_bytes(4, "big") * (size // 4))
    os.replace(tmp, os.path.join("outputs", name))
    if p.get("times"):
        with open(p["times"], "a") as fh:
            fh.write(f"{name} {time.time():.6f}\\n")
    time.sleep(gap)
"""


def _digest(i: int, size: int) -> str:
    return "sha256:" + hashlib.sha256(i.to_bytes(4, "big") * (size // 4)).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def controller(home: Path, *, sidecar: bool, warm: bool = True) -> Iterator[httpx.Client]:
    """The real controller app on ``home``, served on a free port; an admin client of it. ``warm``: first
    wait until ``/readyz`` says the runtime is warm (the fork server's one-time warm-up, ~1 s, is done),
    as a controller that has been running is; ``False`` hands the client over at once (a cold start)."""
    port = _free_port()
    settings = Settings(
        home=home, port=port, admin_token=SecretStr(ADMIN), services_file=None, sidecar=sidecar, log_level="WARNING"
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the controller did not start")
        time.sleep(0.02)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60, trust_env=False) as client:
        try:
            while warm and client.get("/readyz").json().get("runtime") != "ready":
                if time.monotonic() > deadline:
                    raise RuntimeError("the controller's runtime did not warm up")
                time.sleep(0.02)
            yield client
        finally:
            server.should_exit = True
            thread.join(60)


def _register(client: httpx.Client, stage: Path, params: dict[str, Any]) -> None:
    spec = {"name": "stage", "command": [sys.executable, str(stage)], "params": params}
    response = client.post("/api/v1/services", json=spec)
    response.raise_for_status()


def _wait(client: httpx.Client, task_id: str, timeout: float, interval: float = 0.02) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] in ("succeeded", "failed", "cancelled", "timed_out", "lost"):
            return task
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} still {task['state']} after {timeout} s")
        time.sleep(interval)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def capture_latency(root: Path, *, artifacts: int, size: int, gap: float) -> tuple[list[float], list[float]]:
    """Milliseconds from each artifact's completion to its manifest being queryable: for every artifact,
    and for those completed once the sidecar was ready (start-up excluded: interpreter, signing-library
    imports, environment capture, software manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    stage = root / "stage.py"
    stage.write_text(STAGE)
    times = root / "completed.txt"
    with controller(root / "home-latency", sidecar=True) as client:
        _register(client, stage, {"count": artifacts, "size": size, "gap": gap, "busy": 0, "times": str(times)})
        task_id = client.post("/api/v1/tasks", json={"service": "stage"}).json()["id"]
        completed: dict[str, float] = {}
        seen: dict[str, float] = {}
        deadline = time.monotonic() + artifacts * gap + 120
        while len(seen) < artifacts:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {artifacts} manifests became queryable")
            if times.exists():
                for line in times.read_text().splitlines():
                    name, stamp = line.split()
                    completed.setdefault(name, float(stamp))
            for name in [n for n in completed if n not in seen]:
                digest = _digest(int(name[5:8]), size)
                response = client.get(f"/api/v1/artifacts/{digest}")
                if response.status_code == 200 and response.json().get("manifests"):
                    seen[name] = time.time()
            time.sleep(0.005)
        task = _wait(client, task_id, 120)
        if task["state"] != "succeeded":
            raise RuntimeError(f"the latency job ended {task['state']}: {task.get('reason')}")
        ready = _sidecar_ready_at(root / "home-latency" / "work" / task_id / ".job-1" / "output.jsonl")
    return [(seen[n] - completed[n]) * 1000 for n in sorted(seen)], [
        (seen[n] - completed[n]) * 1000 for n in sorted(seen) if completed[n] >= ready
    ]


def _sidecar_ready_at(output: Path) -> float:
    """When the sidecar logged ``sidecar_started`` (launcher's ``output.jsonl``: ``<epoch> <component> ...``)."""
    for line in output.read_text().splitlines():
        if '"sidecar_started"' in line:
            return float(line.split(" ", 1)[0])
    return float("inf")


def wall_time(root: Path, *, sidecar: bool, seconds: float, artifacts: int, size: int, warm: bool = True) -> float:
    """Seconds from submit to ``succeeded`` of a CPU-bound stage writing ``artifacts`` artifacts."""
    root.mkdir(parents=True, exist_ok=True)
    stage = root / "stage.py"
    stage.write_text(STAGE)
    home = root / f"home-{'with' if sidecar else 'without'}-{'warm' if warm else 'cold'}"
    with controller(home, sidecar=sidecar, warm=warm) as client:
        _register(client, stage, {"count": artifacts, "size": size, "gap": 0, "busy": seconds / artifacts})
        started = time.perf_counter()
        task_id = client.post("/api/v1/tasks", json={"service": "stage"}).json()["id"]
        task = _wait(client, task_id, seconds * 3 + 120)
        elapsed = time.perf_counter() - started
        if task["state"] != "succeeded":
            raise RuntimeError(f"the overhead job ended {task['state']}: {task.get('reason')}")
        signed = sum(1 for o in task["outputs"] if o["manifest_id"])
        if len(task["outputs"]) != artifacts or signed != (artifacts if sidecar else 0):
            raise RuntimeError(f"unexpected outputs: {len(task['outputs'])} ({signed} signed)")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=40, help="artifacts for the latency run")
    parser.add_argument("--size-mib", type=float, default=1.0, help="size of each artifact")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between artifacts (latency run)")
    parser.add_argument("--stage-seconds", type=float, default=20.0, help="CPU time of the overhead stage")
    parser.add_argument("--stage-artifacts", type=int, default=20, help="artifacts the overhead stage writes")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--cold", action="store_true", help="also time the first task right after start-up")
    args = parser.parse_args(list(argv) if argv is not None else None)
    size = int(args.size_mib * 1024 * 1024) // 4 * 4
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    status = 0
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-capture-") as tmp:
        root = Path(tmp)
        if not args.skip_latency:
            every, ready = capture_latency(root / "latency", artifacts=args.artifacts, size=size, gap=args.gap)
            for label, latencies in (("every artifact", every), ("after sidecar start-up", ready)):
                if not latencies:
                    continue
                p50, p95 = statistics.median(latencies), _percentile(latencies, 0.95)
                ok = p50 <= P50_TARGET_MS and p95 <= P95_TARGET_MS
                status |= 0 if ok else 1
                print(
                    f"capture latency, {label}, {len(latencies)} x {args.size_mib:g} MiB: p50 {p50:.0f} ms "
                    f"(target <= {P50_TARGET_MS:.0f}), p95 {p95:.0f} ms (target <= {P95_TARGET_MS:.0f}), "
                    f"max {max(latencies):.0f} ms  {'OK' if ok else 'MISSED'}",
                    flush=True,
                )
        if not args.skip_overhead:
            common = {"seconds": args.stage_seconds, "artifacts": args.stage_artifacts, "size": 1024 * 1024}
            # warm: a running controller (the target); cold: the first task right after start-up, which
            # also waits for the fork server's one-time warm-up (reported, not the target)
            for warm in (True, False) if args.cold else (True,):
                without = wall_time(root / "overhead", sidecar=False, warm=warm, **common)
                with_sidecar = wall_time(root / "overhead", sidecar=True, warm=warm, **common)
                ratio = with_sidecar / without
                ok = ratio <= OVERHEAD_TARGET
                status |= 0 if ok or not warm else 1
                print(
                    f"provenance overhead, {args.stage_seconds:g} s CPU-bound stage, {args.stage_artifacts} "
                    f"artifacts, {'running controller' if warm else 'first task after start-up'}: without sidecar "
                    f"{without:.2f} s, with {with_sidecar:.2f} s, ratio {ratio:.3f} "
                    + (f"(target <= {OVERHEAD_TARGET})  {'OK' if ok else 'MISSED'}" if warm else "(reported)"),
                    flush=True,
                )
    return status


if __name__ == "__main__":
    sys.exit(main())
