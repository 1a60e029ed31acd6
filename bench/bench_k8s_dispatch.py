"""Kubernetes dispatch overhead: task submission -> Job-creation request, and API calls per task attempt.

The real dispatcher and ``KubernetesRuntime`` on an embedded SQLite store, with stub API clients that
answer at once and record when each call arrived (the API server round-trip is excluded by design; no
cluster can run here). A stub "cluster" thread then plays the pod: it reports the containers terminated
(the runtime follows their logs) and the Job complete (the runtime lists the pods, drains the logs,
patches the TTL), so every call of one attempt's whole lifecycle is counted. The image resolver is a stub
too (a registry round-trip is not the dispatcher's cost).

Reported: ``submit -> Job create request`` p50 / p90 / max over ``--tasks`` serial tasks (target p50
<= 20 ms), ``submit -> succeeded``, and the API calls per attempt by verb.

Run: ``.venv/bin/python -m bench.bench_k8s_dispatch [--tasks 40]``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

TARGET_MS = 20.0
NS = "bench"


class _Resp:
    def __init__(self, body: Any = None, lines: list[str] | None = None) -> None:
        self.data = json.dumps(body or {}).encode()
        self._lines = lines or []

    def stream(self, amt: int) -> Any:
        for line in self._lines:
            yield (line + "\n").encode()

    def release_conn(self) -> None:
        pass


class _Cluster:
    """Stub BatchV1Api + CoreV1Api: records (verb, time) and plays each Job's pod to completion."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.created: dict[str, float] = {}
        self.runtime: Any = None
        self._lock = threading.Lock()

    def _record(self, verb: str) -> None:
        with self._lock:
            self.calls.append((verb, time.perf_counter()))

    def create_namespaced_job(self, ns: str, body: dict[str, Any], **kw: Any) -> _Resp:
        self._record("create_namespaced_job")
        task = body["metadata"]["labels"]["mlprov.io/task-id"]
        self.created[task] = time.perf_counter()
        job = {**body, "metadata": {**body["metadata"], "uid": "uid-" + task}}
        threading.Thread(target=self._play, args=(job,), daemon=True).start()
        return _Resp(job)

    def _play(self, job: dict[str, Any]) -> None:
        labels = job["metadata"]["labels"]
        done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        pod = {
            "metadata": {"name": job["metadata"]["name"] + "-pod", "labels": labels},
            "status": {
                "initContainerStatuses": [
                    {"name": "mlprov-init", "state": done},
                    {"name": "mlprov-sidecar", "state": done},
                ],
                "containerStatuses": [{"name": "job", "state": done}],
            },
        }  # fmt: skip
        self._pod = pod
        self.runtime.on_pod_event("MODIFIED", pod)
        self.runtime.on_job_event(
            "MODIFIED", {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
        )

    def list_namespaced_pod(self, ns: str, **kw: Any) -> _Resp:
        self._record("list_namespaced_pod")
        return _Resp({"items": [self._pod]})

    def read_namespaced_pod_log(self, name: str, ns: str, **kw: Any) -> _Resp:
        self._record("read_namespaced_pod_log")
        return _Resp(lines=[f"2026-12-07T07:00:00Z {kw.get('container')} says hello"])

    def __getattr__(self, verb: str) -> Any:
        if verb.startswith("_"):
            raise AttributeError(verb)

        def call(*args: Any, **kw: Any) -> _Resp:
            self._record(verb)
            return _Resp({})

        return call


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=40)
    args = parser.parse_args(argv)

    from controller.catalog import ServiceSpec
    from controller.logs.local_bus import LocalLogBus
    from controller.runtime.k8s_objects import ObjectConfig
    from controller.runtime.kubernetes import KubernetesRuntime
    from controller.services.dispatch import Dispatcher
    from controller.services.images import ResolvedImage
    from controller.services.tasks import TaskService, TaskSubmission
    from controller.store.db import make_engine, make_session_factory, migrate, session_scope
    from controller.store.models import Task
    from controller.store.services_repo import upsert_services

    def resolve(ref: str) -> ResolvedImage:
        digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        return ResolvedImage(ref, ref.rsplit(":", 1)[0] + "@" + digest, digest)

    with tempfile.TemporaryDirectory(prefix="mlprov-bench-k8s-") as tmp:
        root = Path(tmp)
        engine = make_engine(f"sqlite:///{root / 'controller.db'}")
        migrate(engine)
        factory = make_session_factory(engine)
        cluster = _Cluster()
        pinned = "reg.example/mlprov@sha256:" + "b" * 64
        runtime = KubernetesRuntime(
            batch=cluster, core=cluster, config=ObjectConfig(namespace=NS, sidecar_image=pinned, init_image=pinned),
            start_watches=False, resolver=resolve,
        )  # fmt: skip
        cluster.runtime = runtime
        bus = LocalLogBus(root / "logs")
        from controller.artifacts.local import LocalArtifactStore

        dispatcher = Dispatcher(
            session_factory=factory, runtime=runtime, artifact_store=LocalArtifactStore(root / "artifacts"),
            log_bus=bus, work_dir=root / "work", runtime_name="kubernetes", sidecar_command=["mlprov", "sidecar"],
        )  # fmt: skip
        with session_scope(factory) as s:
            upsert_services(s, [ServiceSpec.model_validate({"name": "train", "image": "reg.example/ml/train:1.0"})])
        dispatcher.start()
        to_create: list[float] = []
        to_end: list[float] = []
        try:
            for i in range(args.tasks + 3):
                before = len(cluster.calls)
                t0 = time.perf_counter()
                with factory() as s:
                    tid = TaskService(s, dispatcher).submit(TaskSubmission(service="train")).id
                while True:
                    with factory() as s:
                        task = s.get(Task, tid)
                        assert task is not None
                        if task.state in ("succeeded", "failed", "lost", "cancelled"):
                            break
                    time.sleep(0.002)
                if task.state != "succeeded":
                    raise RuntimeError(f"task {tid} ended {task.state}: {task.reason}")
                if i >= 3:  # warm-up
                    to_create.append((cluster.created[tid] - t0) * 1000)
                    to_end.append((time.perf_counter() - t0) * 1000)
                    per_attempt = collections.Counter(verb for verb, _ in cluster.calls[before:])
        finally:
            dispatcher.stop()
            bus.close()
    p50 = statistics.median(to_create)
    verdict = "OK" if p50 <= TARGET_MS else "ABOVE TARGET"
    print(
        f"submit -> Job create request: p50 {p50:.1f} ms, p90 {_pct(to_create, 0.9):.1f} ms, "
        f"max {max(to_create):.1f} ms ({len(to_create)} tasks)  [target p50 <= {TARGET_MS:.0f} ms: {verdict}]"
    )
    print(f"submit -> succeeded (stub cluster, logs drained, TTL patched): p50 {statistics.median(to_end):.1f} ms")
    verbs = ", ".join(f"{count} {verb}" for verb, count in sorted(per_attempt.items()))
    print(f"API calls per task attempt: {sum(per_attempt.values())} ({verbs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
