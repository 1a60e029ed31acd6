"""What provenance costs a real pipeline: ``demo_lifecycle`` with the sidecar against the same DAG without.

Two controllers (``mlprov serve``, each its own temporary ``MLPROV_HOME`` and Airflow home), one with
the provenance sidecar beside every job (the default) and one started with ``MLPROV_SIDECAR=false``
(outputs hashed and stored, never signed). Runs alternate between the two (off, on, off, on, ...) so
that load from elsewhere on the machine falls on both alike; each run is what ``make demo`` runs:
``dag.test()`` of ``dags/demo_lifecycle.py`` in a child process, default params.

Reported per arm, median of ``--runs`` (default 3): the run's wall time (the Airflow process, start-up
included) and the tasks' span (first task submitted to the last one finished, from the controller).
Target: median wall time with provenance <= 1.05x without.

Also per arm, where the tasks' time went (sum over a run's tasks, median over runs), from the task JSON
and the launcher's ``exit.json`` in each task's workspace: ``dispatch`` (submitted -> launcher started),
``job`` (the stage process), ``after exit`` (job exit -> launcher done: the sidecar's flush of the last
outputs), ``mark`` (launcher done -> the controller's ``finished_at``), ``between`` (a task finished ->
the next one submitted: Airflow and the operator).

Run: ``.venv/bin/python -m bench.bench_demo [--runs 3] [--warmup 0]`` (from the repository root).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.demo import DAG_ID, ControllerProcess, airflow_env, ensure_keys, migrate_airflow, run_dag

__all__ = ["main"]

TARGET_RATIO = 1.05
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Arm:
    label: str
    controller: ControllerProcess
    env: dict[str, str]
    walls: list[float] = field(default_factory=list)
    spans: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)

    def run(self, number: int, record: bool) -> None:
        home = self.controller.home
        result = run_dag(self.env, {}, home / f"run-{number}.json", log_file=home / f"run-{number}.log")
        if result.state != "success":
            raise RuntimeError(f"{self.label}: run {result.run_id} ended {result.state}")
        with self.controller.client() as client:
            tasks = client.get(f"/api/v1/runs/{DAG_ID}/{result.run_id}").json()["tasks"]
        span = max(_ts(t["finished_at"]) for t in tasks) - min(_ts(t["submitted_at"]) for t in tasks)
        tag = "" if record else " (warm-up)"
        print(f"  {self.label:<16} run {number}: wall {result.seconds:6.1f} s, tasks span {span:6.1f} s{tag}")
        sys.stdout.flush()
        if record:
            self.walls.append(result.seconds)
            self.spans.append(span)
            self.phases.append(_phases(home, tasks))


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


PHASES = ("dispatch", "job", "after exit", "mark", "between")


def _phases(home: Path, tasks: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase summed over one run's tasks (see the module docstring)."""
    out = dict.fromkeys(PHASES, 0.0)
    ordered = sorted(tasks, key=lambda t: _ts(t["submitted_at"]))
    for task in ordered:
        exit_file = home / "work" / task["id"] / ".job-1" / "exit.json"
        try:
            ended = json.loads(exit_file.read_text())
        except (OSError, ValueError):
            continue
        out["dispatch"] += ended["started_at"] - _ts(task["submitted_at"])
        out["job"] += ended["job_finished_at"] - ended["started_at"]
        out["after exit"] += ended["finished_at"] - ended["job_finished_at"]
        out["mark"] += _ts(task["finished_at"]) - ended["finished_at"]
    for before, after in itertools.pairwise(ordered):
        out["between"] += _ts(after["submitted_at"]) - _ts(before["finished_at"])
    return out


def _arm(stack: ExitStack, root: Path, label: str, sidecar: bool) -> Arm:
    home = root / label
    home.mkdir()
    ensure_keys(home, io.StringIO())
    controller = ControllerProcess(home=home, env={"MLPROV_SIDECAR": str(sidecar).lower()}, cwd=REPO)
    stack.enter_context(controller)
    env = airflow_env(REPO, home, controller)
    migrate_airflow(env, io.StringIO())
    return Arm(label=label, controller=controller, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per arm")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured runs per arm first")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-demo-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        arms = [_arm(stack, root, "no-sidecar", False), _arm(stack, root, "provenance", True)]
        print(f"{DAG_ID}: {args.warmup} warm-up + {args.runs} measured runs per arm, alternating")
        for number in range(args.warmup + args.runs):
            for arm in arms:
                arm.run(number, record=number >= args.warmup)
    off, on = arms
    for arm in arms:
        print(
            f"{arm.label:<16} median wall {statistics.median(arm.walls):6.1f} s "
            f"(min {min(arm.walls):.1f}, max {max(arm.walls):.1f}); "
            f"median tasks span {statistics.median(arm.spans):6.1f} s"
        )
        parts = ", ".join(f"{p} {statistics.median(r[p] for r in arm.phases):.2f}" for p in PHASES)
        print(f"{'':<16} per run, summed over its tasks (s): {parts}")
    ratio = statistics.median(on.walls) / statistics.median(off.walls)
    span_ratio = statistics.median(on.spans) / statistics.median(off.spans)
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(
        f"provenance / no sidecar: wall {ratio:.3f}x, tasks span {span_ratio:.3f}x  "
        f"[target wall <= {TARGET_RATIO:.2f}x: {verdict}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
