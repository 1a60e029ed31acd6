"""``make demo``: run ``demo_lifecycle`` through Airflow against a controller started here, then report.

Steps, each one failing the demo with one line and a non-zero exit:

1. the signing identity in ``$MLPROV_HOME`` (``mlprov keys init`` when absent; kept across runs);
2. the controller (``mlprov serve`` on 127.0.0.1, a free port, in the background, logging to
   ``$MLPROV_HOME/logs/controller.log``), awaited on ``/readyz``;
3. Airflow's metadata database (``airflow db migrate`` when ``$AIRFLOW_HOME/airflow.db`` is absent);
4. one run of ``demo_lifecycle``: ``dag.test()`` in a child process (what ``airflow dags test`` does,
   but the child reports the DagRun's id), the connection ``mlprov_controller`` from the environment;
5. the report: the tuned model's lineage tree (``mlprov lineage --server``), the controller's
   verification report (``mlprov verify --server``), the MLflow run IDs, how to open the UIs;
6. the controller is stopped; everything stays in ``$MLPROV_HOME`` (default ``./.mlprov``) for later
   queries, and a second run adds a new DAG run beside the first.

Run from the repository root (the Makefile does): ``python -m controller.demo [--conf JSON]``.
:func:`run_demo` and :class:`ControllerProcess` are reused by ``bench/bench_demo.py`` and the e2e test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

__all__ = [
    "DAG_ID",
    "ControllerProcess",
    "DagRunResult",
    "DemoError",
    "DemoResult",
    "airflow_env",
    "ensure_keys",
    "main",
    "migrate_airflow",
    "print_report",
    "run_dag",
    "run_demo",
]

DAG_ID = "demo_lifecycle"
TUNED_TASK = "finetune"
TUNED_OUTPUT = "model"
_READY_TIMEOUT = 60.0
_MLPROV = str(Path(sys.executable).parent / "mlprov")  # the console script of this virtualenv
_STOP_TIMEOUT = 30.0


class DemoError(Exception):
    """A step of the demo failed; the message is the one line printed."""


def _venv_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment with the interpreter's bin first on PATH (jobs and Airflow find `python`,
    `mlprov` and `airflow` there), plus ``extra``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ControllerProcess:
    """``mlprov serve`` in the background on 127.0.0.1:<free port>, home ``home``, logs to ``log_file``."""

    home: Path
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra ``MLPROV_*`` settings (e.g. ``{"MLPROV_SIDECAR": "false"}``)."""
    cwd: Path = field(default_factory=Path.cwd)
    """Where it starts: ``./services.yaml`` there is its catalog."""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "controller.log"

    @property
    def token(self) -> str:
        """The development admin token the controller created in its home (``admin-token``)."""
        return (self.home / "admin-token").read_text().strip()

    def start(self) -> None:
        self.port = _free_port()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = _venv_env({"MLPROV_HOME": str(self.home), **self.env})
        command = [_MLPROV, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise DemoError(f"the controller exited ({self.process.returncode}); see {self.log_file}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise DemoError(f"the controller was not ready in {_READY_TIMEOUT:.0f} s; see {self.log_file}")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after a grace period; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60.0)

    def __enter__(self) -> ControllerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class DagRunResult:
    run_id: str
    state: str
    seconds: float


def airflow_env(repo: Path, home: Path, controller: ControllerProcess) -> dict[str, str]:
    """Airflow's settings for the demo: its home under ``home``, the repository's dags, no examples,
    the ``mlprov_controller`` connection to ``controller``."""
    connection = {"conn_type": "http", "host": "127.0.0.1", "port": controller.port, "password": controller.token}
    return _venv_env(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
            "AIRFLOW_CONN_MLPROV_CONTROLLER": json.dumps(connection),
            "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p),
        }
    )


def migrate_airflow(env: Mapping[str, str], out: TextIO) -> None:
    """``airflow db migrate`` when Airflow's SQLite database does not exist yet."""
    if (Path(env["AIRFLOW_HOME"]) / "airflow.db").is_file():
        return
    print("Initialising Airflow's database (airflow db migrate) ...", file=out, flush=True)
    done = subprocess.run(["airflow", "db", "migrate"], env=dict(env), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DemoError(f"airflow db migrate failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")


def run_dag(
    env: Mapping[str, str], conf: Mapping[str, Any], result_file: Path, *, log_file: Path | None = None
) -> DagRunResult:
    """One run of ``demo_lifecycle`` by ``dag.test()`` in a child process (its task logs go to this
    process's stdout, or to ``log_file``); returns the DagRun's id and state and the wall time."""
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "controller.demo", "--dag-run", json.dumps(dict(conf)), str(result_file)]
    started = time.perf_counter()
    if log_file is None:
        done = subprocess.run(command, env=dict(env), check=False)
    else:
        with log_file.open("ab") as log:
            done = subprocess.run(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if not result_file.is_file():
        where = f"; see {log_file}" if log_file is not None else ""
        raise DemoError(f"the Airflow run of {DAG_ID} ended ({done.returncode}) without a DagRun{where}")
    answer = json.loads(result_file.read_text())
    return DagRunResult(run_id=str(answer["run_id"]), state=str(answer["state"]), seconds=seconds)


def _dag_run_child(conf_json: str, result_file: str) -> int:
    """The child of :func:`run_dag`: parse ``dags/`` (Airflow's settings come from the environment),
    run the DAG once with ``dag.test()``, write ``{"run_id", "state"}`` to ``result_file``."""
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag

    dag_file = Path(airflow_conf.get("core", "dags_folder")) / f"{DAG_ID}.py"
    bag = DagBag(dag_folder=str(dag_file))
    if bag.import_errors or DAG_ID not in bag.dags:
        print(f"cannot load {DAG_ID} from {dag_file}: {bag.import_errors}", file=sys.stderr)
        return 2
    dag_run = bag.dags[DAG_ID].test(run_conf=json.loads(conf_json))
    state = str(getattr(dag_run.state, "value", dag_run.state))
    Path(result_file).write_text(json.dumps({"run_id": dag_run.run_id, "state": state}))
    return 0 if state == "success" else 1


# -- the report ------------------------------------------------------------------------------------


def _tuned_model(run: Mapping[str, Any]) -> str:
    for task in run["tasks"]:
        if (task.get("run") or {}).get("task_id") == TUNED_TASK and task["state"] == "succeeded":
            for output in task["outputs"]:
                if output.get("name") == TUNED_OUTPUT:
                    return str(output["digest"])
    raise DemoError(f"run {run['run_id']}: no succeeded {TUNED_TASK} task with an output named {TUNED_OUTPUT!r}")


def _cli(args: list[str], controller: ControllerProcess, out: TextIO) -> int:
    """``mlprov ARGS`` against the controller, its output copied to ``out``."""
    env = _venv_env({"MLPROV_TOKEN": controller.token, "MLPROV_HOME": str(controller.home)})
    done = subprocess.run([_MLPROV, *args], env=env, capture_output=True, text=True, check=False)
    out.write(done.stdout)
    if done.stderr.strip():
        out.write(done.stderr)
    out.flush()
    return done.returncode


def print_report(controller: ControllerProcess, run: Mapping[str, Any], out: TextIO) -> bool:
    """Print lineage, verification, MLflow runs and UI hints; True when the verification holds."""
    digest = _tuned_model(run)
    print(f"\n== Lineage of the tuned model {digest}", file=out, flush=True)
    if _cli(["lineage", "--server", controller.base_url, digest], controller, out) != 0:
        raise DemoError("mlprov lineage failed")
    print(f"\n== Verification of the tuned model (controller: {controller.base_url})", file=out, flush=True)
    verified = _cli(["verify", "--server", controller.base_url, digest], controller, out) == 0
    print("\n== MLflow runs (tracking store: sqlite:///" + str(controller.home / "mlflow.db") + ")", file=out)
    print(f"  {'pipeline':<11} {run['mlflow_run_id']}  ({DAG_ID} / {run['run_id']})", file=out)
    for task in run["tasks"]:
        name = (task.get("run") or {}).get("task_id", task["service"])
        print(f"  {name:<11} {task['mlflow_run_id']}  (task {task['id']}, {task['state']})", file=out)
    home = controller.home
    print(
        "\n== Next\n"
        f"  The controller is stopped; everything stays in {home} (keys, controller.db, mlflow.db, airflow/).\n"
        "  `make up` serves it on 127.0.0.1 and prints the URLs and the Airflow login (default ports:\n"
        "  controller http://127.0.0.1:8080, Airflow UI http://127.0.0.1:8081, MLflow UI http://127.0.0.1:5000);\n"
        "  `make down` stops them. With the controller up, query this run again:\n"
        f"    MLPROV_TOKEN=$(cat {home / 'admin-token'}) .venv/bin/mlprov lineage --server http://127.0.0.1:8080 \\\n"
        f"      {digest}",
        file=out,
        flush=True,
    )
    return verified


@dataclass(frozen=True)
class DemoResult:
    run_id: str
    state: str
    dag_seconds: float
    verified: bool


def ensure_keys(home: Path, out: TextIO) -> None:
    """``mlprov keys init`` into ``home`` unless an identity is there already (then it is reused)."""
    from provenance.keys import identity_paths

    if identity_paths(home).signer_key.is_file():
        print(f"Signing identity: {identity_paths(home).signer_key.parent} (kept)", file=out, flush=True)
        return
    done = subprocess.run(
        [_MLPROV, "keys", "init", "--dir", str(home)],
        env=_venv_env({"MLPROV_HOME": str(home)}),
        capture_output=True,
        text=True,
        check=False,
    )
    out.write(done.stdout)
    if done.returncode != 0:
        raise DemoError(f"mlprov keys init failed ({done.returncode}): {done.stderr.strip()}")


def run_demo(
    repo: Path,
    home: Path,
    *,
    conf: Mapping[str, Any] | None = None,
    controller_env: Mapping[str, str] | None = None,
    report: bool = True,
    out: TextIO = sys.stdout,
) -> DemoResult:
    """Keys, controller, one DAG run, the report; the controller is stopped before returning."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    ensure_keys(home, out)
    with ControllerProcess(home=home, env=dict(controller_env or {}), cwd=repo) as controller:
        print(f"Controller: {controller.base_url} (log: {controller.log_file})", file=out, flush=True)
        env = airflow_env(repo, home, controller)
        migrate_airflow(env, out)
        print(f"\n== Running {DAG_ID} through Airflow (dag.test) ...", file=out, flush=True)
        dag = run_dag(env, conf or {}, home / "airflow" / "last-demo-run.json")
        with controller.client() as client:
            # The pipeline run ends with the DAG (its MLflow parent run is closed, its servers stopped).
            ended = "succeeded" if dag.state == "success" else "failed"
            client.post(f"/api/v1/runs/{DAG_ID}/{dag.run_id}/end", json={"state": ended})
            answer = client.get(f"/api/v1/runs/{DAG_ID}/{dag.run_id}")
        print(f"\nDAG run {dag.run_id}: {dag.state} in {dag.seconds:.1f} s", file=out, flush=True)
        if dag.state != "success":
            raise DemoError(f"{DAG_ID} run {dag.run_id} ended {dag.state}; see the task logs above")
        if answer.status_code != 200:
            raise DemoError(f"the controller has no run {dag.run_id}: {answer.status_code} {answer.text[:200]}")
        verified = print_report(controller, answer.json(), out) if report else True
    return DemoResult(run_id=dag.run_id, state=dag.state, dag_seconds=dag.seconds, verified=verified)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("MLPROV_HOME", ".mlprov")))
    parser.add_argument("--conf", default="{}", help="DAG run conf (JSON), e.g. '{\"epochs\": 50}'")
    parser.add_argument("--dag-run", nargs=2, metavar=("CONF", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dag_run:
        return _dag_run_child(*args.dag_run)
    started = time.perf_counter()
    try:
        result = run_demo(Path.cwd(), args.home, conf=json.loads(args.conf))
    except DemoError as exc:
        print(f"\nmake demo failed: {exc}", file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    if not result.verified:
        print(f"\nmake demo failed: the verification of run {result.run_id} failed (report above)", file=sys.stderr)
        return 1
    print(f"\nDemo done in {total:.1f} s (DAG run {result.dag_seconds:.1f} s): verified.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
