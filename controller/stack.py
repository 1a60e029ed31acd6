"""``make up`` / ``make down``: the controller, the Airflow UI and the MLflow UI on 127.0.0.1.

``python -m controller.stack up`` starts, each in its own process group with its log under
``$MLPROV_HOME/stack-logs/``:

* the controller: ``mlprov serve`` in the repository root (so ``./services.yaml`` is its catalog);
* the MLflow UI: ``mlflow server`` on the controller's MLflow store (``Settings.effective_mlflow_tracking_uri``,
  default ``sqlite:///$MLPROV_HOME/mlflow.db``) with the recorder's artifact root ``$MLPROV_HOME/mlartifacts``;
* Airflow (``AIRFLOW_HOME=$MLPROV_HOME/airflow``): ``airflow db migrate``, then ``api-server``,
  ``scheduler --skip-serve-logs`` and ``dag-processor`` at once. No triggerer: ``ControllerTaskOperator``
  is not deferrable by default (``[operators] default_deferrable`` is forced off here), and the
  triggerer's log server binds every interface.

It waits until each answers (controller ``/readyz``, MLflow ``/health``, Airflow ``/api/v2/monitor/health``
with a healthy scheduler and DAG processor), unpauses ``demo_lifecycle`` through the REST API, writes
pids and ports to ``$MLPROV_HOME/up.json`` and prints the URLs and the Airflow login. A taken port
fails at once with one line naming it. ``down`` stops every process group in ``up.json`` (TERM, then
KILL after a grace period) and is idempotent.

Ports: ``MLPROV_UP_CONTROLLER_PORT`` (8080), ``MLPROV_UP_AIRFLOW_PORT`` (8081), ``MLPROV_UP_MLFLOW_PORT`` (5000).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["DAG_ID", "Stack", "StackConfig", "StackError", "airflow_password", "airflow_token", "down", "main"]

HOST = "127.0.0.1"
DAG_ID = "demo_lifecycle"
STATE_FILE = "up.json"
AIRFLOW_USER = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
DEFAULT_PORTS = {"controller": 8080, "airflow": 8081, "mlflow": 5000}
PORT_ENV = {name: f"MLPROV_UP_{name.upper()}_PORT" for name in DEFAULT_PORTS}


class StackError(Exception):
    """``up`` or ``down`` could not do its job; the message is one line for the user."""


@dataclass(frozen=True)
class StackConfig:
    root: Path
    """The repository: working directory of every process; ``dags/`` and ``services.yaml`` live here."""
    home: Path
    """``$MLPROV_HOME``: the controller's state, ``airflow/``, ``stack-logs/`` and ``up.json``."""
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Added to every process's environment (tests: e.g. ``MLPROV_SIDECAR``)."""
    timeout: float = 180.0
    """Seconds to wait for all services to become healthy and the DAG to be parsed."""

    @classmethod
    def from_env(cls, root: Path | None = None) -> StackConfig:
        root = (root or Path.cwd()).resolve()
        home = Path(os.environ.get("MLPROV_HOME") or root / ".mlprov")
        ports: dict[str, int] = {}
        for name, default in DEFAULT_PORTS.items():
            raw = os.environ.get(PORT_ENV[name], "") or str(default)
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{PORT_ENV[name]}={raw!r} is not a port number")
            ports[name] = int(raw)
        return cls(root=root, home=home if home.is_absolute() else (root / home), ports=ports)

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def state_file(self) -> Path:
        return self.home / STATE_FILE


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int | None
    url: str | None
    log: Path
    process: subprocess.Popen[bytes] | None = None


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def airflow_token(config: StackConfig) -> str:
    """A bearer token for Airflow's REST API: ``POST /auth/token`` with the generated admin password."""
    password = airflow_password(config)
    answer = httpx.post(
        f"{config.url('airflow')}/auth/token", json={"username": AIRFLOW_USER, "password": password}, timeout=10
    )
    if answer.status_code >= 300:
        raise StackError(f"Airflow refused the admin login ({answer.status_code}): {answer.text[:200]}")
    return str(answer.json()["access_token"])


def airflow_password(config: StackConfig) -> str:
    path = config.airflow_home / PASSWORDS_FILE
    try:
        return str(json.loads(path.read_text())[AIRFLOW_USER])
    except (OSError, ValueError, KeyError) as exc:
        raise StackError(f"no Airflow admin password in {path}: {exc}") from exc


class Stack:
    """Starts and stops the local services described by a :class:`StackConfig`."""

    def __init__(self, config: StackConfig, *, echo: Callable[[str], None] = print) -> None:
        self.config = config
        self.echo = echo
        self.services: list[Service] = []

    # -- environment -------------------------------------------------------------------------------

    def _controller_settings(self) -> Any:
        from controller.settings import Settings

        # Creates $MLPROV_HOME/admin-token in development, exactly as `mlprov serve` would.
        return Settings(home=self.config.home)

    def _env(self, settings: Any) -> dict[str, str]:
        c = self.config
        bin_dir = str(Path(sys.executable).parent)
        airflow = c.url("airflow")
        connection = {
            "conn_type": "http",
            "host": HOST,
            "port": c.ports["controller"],
            "password": settings.admin_token_value,
            "extra": {"mlflow_ui_url": c.url("mlflow")},
        }
        env = dict(os.environ)
        env.update(
            {
                "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
                "MLPROV_HOME": str(c.home),
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "AIRFLOW_HOME": str(c.airflow_home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(c.root / "dags"),
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow}/execution/",
                "AIRFLOW__API__BASE_URL": airflow,
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": str(c.ports["airflow"]),
                "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "False",
                "AIRFLOW_CONN_MLPROV_CONTROLLER": json.dumps(connection),
            }
        )
        env.update(c.extra_env)
        return env

    def _plan(self, settings: Any) -> list[Service]:
        c = self.config
        logs = c.home / "stack-logs"
        bin_dir = Path(sys.executable).parent
        mlflow_root = c.home / "mlartifacts"
        return [
            Service(
                "controller",
                [str(bin_dir / "mlprov"), "serve", "--host", HOST, "--port", str(c.ports["controller"])],
                c.ports["controller"],
                c.url("controller"),
                logs / "controller.log",
            ),
            Service(
                "mlflow",
                [
                    str(bin_dir / "mlflow"),
                    "server",
                    "--host",
                    HOST,
                    "--port",
                    str(c.ports["mlflow"]),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    settings.effective_mlflow_tracking_uri,
                    "--default-artifact-root",
                    mlflow_root.as_uri(),
                    "--no-serve-artifacts",
                ],
                c.ports["mlflow"],
                c.url("mlflow"),
                logs / "mlflow.log",
            ),
            Service(
                "airflow-api-server",
                [str(bin_dir / "airflow"), "api-server", "-H", HOST, "-p", str(c.ports["airflow"]), "-w", "1"],
                c.ports["airflow"],
                c.url("airflow"),
                logs / "airflow-api-server.log",
            ),
            Service("airflow-scheduler", [str(bin_dir / "airflow"), "scheduler", "--skip-serve-logs"], None, None,
                    logs / "airflow-scheduler.log"),
            Service("airflow-dag-processor", [str(bin_dir / "airflow"), "dag-processor"], None, None,
                    logs / "airflow-dag-processor.log"),
        ]  # fmt: skip

    def _start(self, service: Service, env: Mapping[str, str]) -> None:
        service.log.parent.mkdir(parents=True, exist_ok=True)
        with service.log.open("ab") as log:
            service.process = subprocess.Popen(
                service.argv,
                cwd=self.config.root,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: `down` stops it with its children
            )
        self.services.append(service)

    # -- up ----------------------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        """Start everything, wait until healthy, unpause the demo DAG; returns what ``up.json`` holds."""
        c = self.config
        running = read_state(c.state_file)
        if running and any(_alive(s["pid"]) for s in running["services"].values()):
            raise StackError(f"already up (see {c.state_file}); run `make down` first")
        for name, port in c.ports.items():
            if _port_taken(port):
                raise StackError(f"port {port} ({name}) on {HOST} is taken; set {PORT_ENV[name]} to a free port")
        c.home.mkdir(parents=True, exist_ok=True)
        c.airflow_home.mkdir(parents=True, exist_ok=True)
        settings = self._controller_settings()
        env = self._env(settings)
        plan = {s.name: s for s in self._plan(settings)}
        started = time.monotonic()
        try:
            self._start(plan["controller"], env)
            self._start(plan["mlflow"], env)
            self._migrate_airflow(env)
            for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
                self._start(plan[name], env)
            state = self._write_state()
            self._wait_healthy(started)
            self._unpause(started)
        except BaseException:
            self.stop_started()
            raise
        self.echo(f"all services healthy in {time.monotonic() - started:.1f} s")
        return state

    def _migrate_airflow(self, env: Mapping[str, str]) -> None:
        log = self.config.home / "stack-logs" / "airflow-db-migrate.log"
        bin_dir = Path(sys.executable).parent
        with log.open("ab") as out:
            code = subprocess.call(
                [str(bin_dir / "airflow"), "db", "migrate"],
                cwd=self.config.root,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=self.config.timeout,
            )
        if code != 0:
            raise StackError(f"`airflow db migrate` failed (exit {code}); see {log}: {_tail(log)}")

    def _write_state(self) -> dict[str, Any]:
        state = {
            "home": str(self.config.home),
            "services": {
                s.name: {
                    "pid": s.process.pid,
                    "pgid": s.process.pid,
                    "port": s.port,
                    "url": s.url,
                    "log": str(s.log),
                    "argv": s.argv,
                }
                for s in self.services
                if s.process is not None
            },
        }
        tmp = self.config.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.config.state_file)
        return state

    def _check_running(self) -> None:
        for s in self.services:
            if s.process is not None and s.process.poll() is not None:
                raise StackError(f"{s.name} exited with {s.process.returncode}; see {s.log}: {_tail(s.log)}")

    def _wait(self, started: float, what: str, check: Callable[[], bool]) -> None:
        while True:
            self._check_running()
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > self.config.timeout:
                raise StackError(
                    f"{what} not ready after {self.config.timeout:.0f} s; logs in {self.config.home / 'stack-logs'}"
                )
            time.sleep(0.5)

    def _wait_healthy(self, started: float) -> None:
        c = self.config
        pending: dict[str, Callable[[], bool]] = {
            "controller": lambda: httpx.get(f"{c.url('controller')}/readyz", timeout=2).status_code == 200,
            "mlflow": lambda: httpx.get(f"{c.url('mlflow')}/health", timeout=2).status_code == 200,
            "airflow": lambda: _airflow_healthy(httpx.get(f"{c.url('airflow')}/api/v2/monitor/health", timeout=2)),
        }

        def all_ready() -> bool:
            for name in list(pending):
                try:
                    ok = pending[name]()
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.echo(f"{name} healthy after {time.monotonic() - started:.1f} s")
                    del pending[name]
            return not pending

        self._wait(started, "services", all_ready)

    def _unpause(self, started: float) -> None:
        c = self.config
        token = airflow_token(c)
        headers = {"Authorization": f"Bearer {token}"}
        dag_url = f"{c.url('airflow')}/api/v2/dags/{DAG_ID}"
        self._wait(started, f"DAG {DAG_ID}", lambda: httpx.get(dag_url, headers=headers, timeout=5).status_code == 200)
        answer = httpx.patch(dag_url, headers=headers, json={"is_paused": False}, timeout=10)
        if answer.status_code >= 300:
            raise StackError(f"could not unpause {DAG_ID} ({answer.status_code}): {answer.text[:200]}")

    def stop_started(self) -> None:
        """Stop the processes this object started (after a failed ``up``, or a test's teardown)."""
        stop_groups([s.process.pid for s in self.services if s.process is not None])
        for s in self.services:
            if s.process is not None:
                s.process.wait(timeout=5)
        self.services.clear()
        self.config.state_file.unlink(missing_ok=True)

    def summary(self) -> str:
        c = self.config
        return "\n".join(
            [
                f"controller   {c.url('controller')}/docs   (admin token: {c.home / 'admin-token'})",
                f"Airflow UI   {c.url('airflow')}/dags/{DAG_ID}   login: {AIRFLOW_USER} / {airflow_password(c)}",
                f"MLflow UI    {c.url('mlflow')}",
                f"logs in {c.home / 'stack-logs'}; pids in {c.state_file}; stop with `make down`",
            ]
        )


def _airflow_healthy(answer: httpx.Response) -> bool:
    if answer.status_code != 200:
        return False
    body = answer.json()
    return all(
        (body.get(part) or {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor")
    )


# -- process groups ------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, process group)`` of ``pid`` from ``/proc``, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def stop_groups(pgids: list[int], grace: float = 15.0) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_group_alive(p) for p in pgids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pgid in pgids:
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("services"), dict) else None


def down(config: StackConfig, echo: Callable[[str], None] = print) -> list[str]:
    """Stop every process group named in ``up.json`` (only groups still led by the pid it recorded)."""
    state = read_state(config.state_file)
    if state is None:
        echo("nothing to stop (no up.json)")
        return []
    groups: dict[str, int] = {}
    for name, entry in state["services"].items():
        pid, pgid = int(entry["pid"]), int(entry["pgid"])
        if _alive(pid):
            # The pid may have been reused since `up`: ours only if it still leads its group and runs our program.
            stat = _proc_stat(pid)
            ours = stat is not None and stat[1] == pgid and Path(entry["argv"][0]).name in _cmdline(pid)
        else:
            ours = _group_alive(pgid)  # the leader is gone; its children may not be
        if ours:
            groups[name] = pgid
    stop_groups(list(groups.values()))
    config.state_file.unlink(missing_ok=True)
    echo(f"stopped: {', '.join(groups) or 'nothing was running'}")
    return list(groups)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["up"], ["down"]):
        print("usage: python -m controller.stack up|down", file=sys.stderr)
        return 2
    try:
        config = StackConfig.from_env()
        if args == ["down"]:
            down(config)
            return 0
        stack = Stack(config)
        stack.up()
        print(stack.summary())
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
