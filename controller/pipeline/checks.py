"""``mlprov pipeline test``: deploy, trigger a DAG run through Airflow's REST API, wait, then check it.

The checks, in order (the first that fails names the run's problem; the ones after it are skipped):

``reachable``            Airflow's health endpoint and the controller's ``/readyz`` answer (else exit 5)
``deploy``               (with ``--deploy``) ``mlprov deploy``'s steps, recorded by the controller
``dag loaded``           Airflow has parsed the DAG without import errors; it is unpaused
``dag run``              the triggered run reached a final state within ``--timeout``
``tasks succeeded``      every task instance of the run is ``success``
``provenance verified``  every artifact the run produced verifies (``POST /api/v1/verify``: signatures,
                         hashes, links and transparency-log inclusion of its whole upstream chain)
``mlflow runs``          the controller recorded a parent MLflow run for the DAG run and a nested run per
                         task; with an MLflow URL, MLflow itself has them, nested under that parent
``logs searchable``      ``/api/v1/logs/search`` finds the run's log lines and every task's
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from controller.pipeline.airflow_client import TERMINAL_RUN_STATES, AirflowClient
from controller.pipeline.controller_client import ControllerClient
from controller.pipeline.errors import CheckFailedError, PipelineError, UnreachableError
from controller.pipeline.junit import CheckResult

__all__ = ["CHECKS", "PipelineTest", "PipelineTestOptions", "PipelineTestOutcome"]

CHECKS = (
    "reachable",
    "deploy",
    "dag loaded",
    "dag run",
    "tasks succeeded",
    "provenance verified",
    "mlflow runs",
    "logs searchable",
)


@dataclass(frozen=True)
class PipelineTestOptions:
    dag_id: str
    conf: dict[str, Any] = field(default_factory=dict)
    timeout: float = 900.0
    """Seconds for the DAG to appear and for its run to finish (each)."""
    poll: float = 2.0
    mlflow_url: str | None = None


@dataclass
class PipelineTestOutcome:
    results: list[CheckResult]
    run_id: str | None
    exit_code: int
    """0 every check passed; else the exit code of the first failure (4 check, 5 unreachable, 2 input)."""

    @property
    def first_failure(self) -> CheckResult | None:
        return next((r for r in self.results if r.ok is False), None)


class PipelineTest:
    """One pipeline test; ``deployer`` (None: ``--no-deploy``) returns a one-line summary of the deploy."""

    def __init__(
        self,
        options: PipelineTestOptions,
        airflow: AirflowClient,
        controller: ControllerClient,
        *,
        deployer: Callable[[], str] | None = None,
        mlflow: httpx.Client | None = None,
        progress: Callable[[str], None] = lambda _line: None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.airflow = airflow
        self.controller = controller
        self.deployer = deployer
        self.mlflow = mlflow
        self.progress = progress
        self.sleep = sleep
        self.clock = clock
        self.run_id: str | None = None
        self.run_state: str | None = None
        self.controller_run: dict[str, Any] | None = None

    def run(self) -> PipelineTestOutcome:
        steps: list[tuple[str, Callable[[], tuple[str, list[str]]]]] = [
            ("reachable", self._reachable),
            ("deploy", self._deploy),
            ("dag loaded", self._dag_loaded),
            ("dag run", self._dag_run),
            ("tasks succeeded", self._tasks_succeeded),
            ("provenance verified", self._provenance_verified),
            ("mlflow runs", self._mlflow_runs),
            ("logs searchable", self._logs_searchable),
        ]
        results: list[CheckResult] = []
        exit_code = 0
        for name, step in steps:
            if exit_code:
                results.append(CheckResult(name, None, "not run: an earlier check failed"))
                continue
            if name == "deploy" and self.deployer is None:
                results.append(CheckResult(name, None, "not run: --no-deploy"))
                continue
            self.progress(f"check {name} ...")
            started = self.clock()
            try:
                message, details = step()
            except PipelineError as exc:
                exit_code = exc.exit_code if exc.exit_code != 1 else CheckFailedError.exit_code
                results.append(CheckResult(name, False, str(exc), self.clock() - started))
                self.progress(f"check {name}: FAILED: {exc}")
                continue
            results.append(CheckResult(name, True, message, self.clock() - started, details))
            self.progress(f"check {name}: ok: {message}")
        return PipelineTestOutcome(results, self.run_id, exit_code)

    # -- the checks: each returns (one line, detail lines) or raises ---------------------------------

    def _reachable(self) -> tuple[str, list[str]]:
        health = self.airflow.health()
        self.controller.ready()
        unhealthy = [
            part
            for part in ("metadatabase", "scheduler")
            if isinstance(health.get(part), dict) and health[part].get("status") != "healthy"
        ]
        if unhealthy:
            raise UnreachableError(f"Airflow at {self.airflow.base_url} is up but unhealthy: {', '.join(unhealthy)}")
        return f"Airflow {self.airflow.base_url} and controller {self.controller.base_url} answer", []

    def _deploy(self) -> tuple[str, list[str]]:
        assert self.deployer is not None
        return self.deployer(), []

    def _dag_loaded(self) -> tuple[str, list[str]]:
        dag_id = self.options.dag_id
        deadline = self.clock() + self.options.timeout
        while True:
            dag = self.airflow.get_dag(dag_id)
            if dag is not None:
                break
            errors = self.airflow.import_errors()
            if self.clock() > deadline:
                first = next(iter(errors), None)
                trace = " ".join(str(first.get("stack_trace")).split())[-200:] if first else ""
                hint = f"; import error in {first.get('filename')}: {trace}" if first else ""
                raise CheckFailedError(
                    f"Airflow has no DAG {dag_id!r} after {self.options.timeout:.0f} s{hint}: deploy it or fix the id"
                )
            self.sleep(self.options.poll)
        fileloc = str(dag.get("fileloc") or "")
        broken = [e for e in self.airflow.import_errors() if fileloc and str(e.get("filename")) == fileloc]
        if broken:
            trace = " ".join(str(broken[0].get("stack_trace")).split())[-200:]
            raise CheckFailedError(f"DAG file {fileloc} has an import error in Airflow: {trace}")
        if dag.get("is_paused"):
            self.airflow.unpause(dag_id)
        return f"{dag_id} parsed from {fileloc or '?'}", []

    def _dag_run(self) -> tuple[str, list[str]]:
        dag_id = self.options.dag_id
        started = self.clock()
        self.run_id = self.airflow.trigger(dag_id, self.options.conf)
        self.progress(f"triggered {dag_id} run {self.run_id}")
        last = ""
        while True:
            try:
                run = self.airflow.get_run(dag_id, self.run_id)
                instances = self.airflow.task_instances(dag_id, self.run_id)
            except httpx.TimeoutException:  # one API worker on a busy machine: ask again
                run, instances = {"state": self.run_state or "running"}, []
            self.run_state = str(run.get("state"))
            counts: dict[str, int] = {}
            for ti in instances:
                counts[str(ti.get("state") or "none")] = counts.get(str(ti.get("state") or "none"), 0) + 1
            line = f"{self.run_state}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            if line != last:
                self.progress(f"[{self.clock() - started:6.1f} s] run {self.run_id} {line}")
                last = line
            if self.run_state in TERMINAL_RUN_STATES:
                return f"run {self.run_id} ended {self.run_state} in {self.clock() - started:.1f} s", []
            if self.clock() - started > self.options.timeout:
                raise CheckFailedError(
                    f"run {self.run_id} still {self.run_state} after {self.options.timeout:.0f} s: "
                    "raise --timeout or look at the scheduler"
                )
            self.sleep(self.options.poll)

    def _tasks_succeeded(self) -> tuple[str, list[str]]:
        assert self.run_id is not None
        instances = self.airflow.task_instances(self.options.dag_id, self.run_id)
        if not instances:
            raise CheckFailedError(f"run {self.run_id} has no task instances")
        details = [f"{ti.get('task_id')}: {ti.get('state')} (try {ti.get('try_number')})" for ti in instances]
        bad = [ti for ti in instances if ti.get("state") != "success"]
        if bad:
            first = bad[0]
            raise CheckFailedError(
                f"task {first.get('task_id')} of run {self.run_id} is {first.get('state')} "
                f"({len(bad)} of {len(instances)} not successful): see its log in Airflow"
            )
        return f"{len(instances)} tasks succeeded", details

    def _provenance_verified(self) -> tuple[str, list[str]]:
        assert self.run_id is not None
        provenance = self.controller.run_provenance(self.options.dag_id, self.run_id)
        produced: list[str] = provenance.get("produced", [])
        if not produced:
            raise CheckFailedError(f"the controller has no outputs of run {self.run_id}: were the tasks run by it?")
        names = {a["digest"]: a.get("name") or "?" for a in provenance.get("artifacts", [])}
        details: list[str] = []
        for digest in produced:
            result = self.controller.verify(digest)
            report = result.get("report") or {}
            if not result.get("ok"):
                broken = report.get("first_broken") or {}
                raise CheckFailedError(
                    f"output {names.get(digest, '?')} ({digest}) does not verify: "
                    f"{broken.get('error') or 'no manifest'} (at {broken.get('title') or broken.get('id') or '?'})"
                )
            nodes = (report.get("summary") or {}).get("nodes", 0)
            details.append(f"{names.get(digest, '?')} {digest}: verified, {nodes} manifest(s) in its chain")
        return f"{len(produced)} outputs verified with their whole chains", details

    def _mlflow_runs(self) -> tuple[str, list[str]]:
        assert self.run_id is not None
        run = self.controller.run(self.options.dag_id, self.run_id)
        self.controller_run = run
        parent = run.get("mlflow_run_id")
        if not parent:
            raise CheckFailedError(f"the controller recorded no MLflow parent run for {self.run_id}")
        tasks: list[dict[str, Any]] = run.get("tasks", [])
        missing = [t.get("service") for t in tasks if not t.get("mlflow_run_id")]
        if not tasks or missing:
            raise CheckFailedError(f"tasks without an MLflow run: {missing or 'no tasks at all'}")
        details = [f"parent {parent}"] + [f"{t.get('service')}: {t['mlflow_run_id']}" for t in tasks]
        if self.mlflow is not None:
            self._mlflow_has(parent, None)
            for t in tasks:
                self._mlflow_has(str(t["mlflow_run_id"]), str(parent))
            return f"MLflow has the parent run {parent} and {len(tasks)} nested task runs", details
        return f"parent run {parent} and {len(tasks)} task runs recorded (MLflow not queried: no URL)", details

    def _mlflow_has(self, run_id: str, parent: str | None) -> None:
        assert self.mlflow is not None
        try:
            answer = self.mlflow.get("/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        except httpx.TransportError as exc:
            raise UnreachableError(f"MLflow at {self.mlflow.base_url} is unreachable: {type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise CheckFailedError(f"MLflow has no run {run_id} ({answer.status_code})")
        data = answer.json()["run"]["data"]
        tags = {t["key"]: t["value"] for t in data.get("tags", [])}
        if parent is not None and tags.get("mlflow.parentRunId") != parent:
            raise CheckFailedError(f"MLflow run {run_id} is not nested under the DAG run's parent run {parent}")

    def _logs_searchable(self) -> tuple[str, list[str]]:
        assert self.run_id is not None
        dag_id = self.options.dag_id
        if not self.controller.search_logs(dag_id=dag_id, run_id=self.run_id, limit=1):
            raise CheckFailedError(f"the log search finds nothing for run {self.run_id}")
        tasks = (self.controller_run or self.controller.run(dag_id, self.run_id)).get("tasks", [])
        details: list[str] = []
        for task in tasks:
            found = self.controller.search_logs(task_id=task["id"], limit=1)
            if not found:
                raise CheckFailedError(f"the log search finds no line of task {task.get('service')} ({task['id']})")
            details.append(f"{task.get('service')}: searchable (/api/v1/logs/search?task_id={quote(task['id'])})")
        return f"log lines of the run and its {len(tasks)} tasks are searchable", details
