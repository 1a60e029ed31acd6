"""Shared fixtures of the end-to-end tests: the real controller (uvicorn on a real 127.0.0.1 port, since
every job's provenance sidecar talks to it over HTTP), the real local runtime with the sidecar on, the
stage programs of ``tests/data/stages`` and a one-commit git repository holding them.

``Controller`` is a small synchronous client with the waits the tests need; ``controller_on`` starts
(and, for the restart test, restarts) the app on a given home and port.

``stack`` is ``make up``'s services (controller, Airflow, MLflow) on free loopback ports, started once per
session for the tests that drive Airflow over its REST API (tests/e2e/test_pipeline_test.py and
tests/e2e/test_browser.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from controller.main import create_app
from controller.services.tlog import GroupCommitLog
from controller.settings import Settings
from controller.stack import Stack, StackConfig
from controller.state import AppState
from provenance.tlog.local import LocalTransparencyLog
from tests.job_cleanup import kill_jobs

__all__ = [
    "ADMIN",
    "READ",
    "STAGES",
    "Controller",
    "Pipeline",
    "controller_on",
    "free_port",
    "kill_jobs",
    "make_code_repo",
    "rewrite_log_without",
    "run_pipeline",
    "stage_service",
    "verify",
]

ADMIN = "admin-token-for-e2e-tests"
READ = "read-token-for-e2e-tests"
STAGES = Path(__file__).resolve().parents[1] / "data" / "stages"
REPO = Path(__file__).resolve().parents[2]
_TERMINAL = ("succeeded", "failed", "cancelled", "timed_out", "lost")


def free_port() -> int:
    """A port free on 127.0.0.1 now (the controller binds it; its URL is known before it starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Controller:
    """A running controller app and an admin client of it."""

    def __init__(self, app: FastAPI, url: str, home: Path) -> None:
        self.app = app
        self.url = url
        self.home = home
        self.client = httpx.Client(
            base_url=url, timeout=60, trust_env=False, headers={"Authorization": f"Bearer {ADMIN}"}
        )

    @property
    def state(self) -> AppState:
        state = self.app.state.mlprov
        assert isinstance(state, AppState)
        return state

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params or None)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def register(self, spec: dict[str, Any]) -> None:
        response = self.client.post("/api/v1/services", json=spec)
        assert response.status_code in (200, 201), response.text

    def submit(self, service: str, **body: Any) -> str:
        response = self.client.post("/api/v1/tasks", json={"service": service, **body})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait(self, task_id: str, *states: str, timeout: float = 90) -> dict[str, Any]:
        """The task once it is in one of ``states`` (any terminal state when none is given)."""
        wanted = states or _TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.get(f"/api/v1/tasks/{task_id}")
            if task["state"] in wanted:
                return task
            assert task["state"] not in _TERMINAL, f"task ended {task['state']}: {task}"
            assert time.monotonic() < deadline, f"task stayed {task['state']} for {timeout} s: {task}"
            time.sleep(0.05)

    def job_log(self, task_id: str) -> str:
        """The job's and sidecar's output as the launcher recorded it (for assertion messages)."""
        return "\n".join(p.read_text() for p in sorted((self.home / "work" / task_id).glob(".job-*/output.jsonl")))


@dataclass(frozen=True)
class Pipeline:
    """The two-stage pipeline's finished tasks: ``produce`` (dataset.csv, model/, metrics.json) and
    ``derive`` (derived.csv from produce's dataset.csv)."""

    first: dict[str, Any]
    second: dict[str, Any]

    def output(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(o for o in (*self.first["outputs"], *self.second["outputs"]) if o["name"] == name)
        return found


def run_pipeline(ctl: Controller, code: dict[str, Any], run: dict[str, Any] | None = None) -> Pipeline:
    """Register the two stage services, run ``produce`` then ``derive`` on its dataset; both must succeed."""
    ctl.register(stage_service("produce", "produce", params={"rows": 30}))
    ctl.register(stage_service("derive", "derive"))
    first_id = ctl.submit("produce", code=code, **({"run": {**run, "task_id": "produce"}} if run else {}))
    first = ctl.wait(first_id, timeout=120)
    assert first["state"] == "succeeded", (first, ctl.job_log(first_id))
    dataset = next(o for o in first["outputs"] if o["name"] == "dataset.csv")
    second_id = ctl.submit(
        "derive", inputs=[dataset["digest"]], code=code, **({"run": {**run, "task_id": "derive"}} if run else {})
    )
    second = ctl.wait(second_id, timeout=120)
    assert second["state"] == "succeeded", (second, ctl.job_log(second_id))
    return Pipeline(first, second)


def verify(ctl: Controller, digest: str, **options: Any) -> dict[str, Any]:
    """``POST /api/v1/verify`` for an artifact: ``{ok, manifest, report}``."""
    response = ctl.client.post("/api/v1/verify", json={"artifact": digest, **options})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def rewrite_log_without(state: AppState, entry: bytes) -> None:
    """Whoever holds the transparency log's key rewrites it without ``entry`` and re-signs checkpoints
    (the deleted-entry attack); the app then serves the rewritten log."""
    assert state.tlog is not None
    old = state.tlog.log
    assert isinstance(old, LocalTransparencyLog)
    kept = [old.entry(i).data for i in range(old.size()) if old.entry(i).data != entry]
    assert len(kept) == old.size() - 1, "the entry to delete is not in the log"
    old.close()
    for path in old.root.iterdir():
        if path.name not in ("log.key", "log.vkey"):
            path.unlink()
    rewritten = LocalTransparencyLog(old.root)
    rewritten.append_many(kept)
    state.tlog = GroupCommitLog(rewritten)


@contextmanager
def controller_on(home: Path, port: int, **settings: Any) -> Iterator[Controller]:
    """The real controller app on ``home`` served on ``127.0.0.1:port``, with the provenance sidecar on.

    On exit the server stops the way ``mlprov serve`` does (lifespan shutdown: jobs keep running, a
    later controller on the same home re-attaches to them)."""
    values: dict[str, Any] = {
        "home": home,
        "port": port,
        "admin_token": SecretStr(ADMIN),
        "read_tokens": [SecretStr(READ)],
        "services_file": None,
        "sidecar": True,
        "max_concurrent_jobs": 4,
    }
    values.update(settings)
    app = create_app(Settings(**values))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"controller-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the controller did not start"
        assert time.monotonic() < deadline, "the controller did not start in 60 s"
        time.sleep(0.02)
    running = Controller(app, f"http://127.0.0.1:{port}", home)
    try:
        yield running
    finally:
        running.client.close()
        server.should_exit = True
        thread.join(60)


def stage_service(name: str, stage: str, **extra: Any) -> dict[str, Any]:
    """A ``job`` service running ``tests/data/stages/<stage>.py`` with this interpreter."""
    return {"name": name, "command": [sys.executable, str(STAGES / f"{stage}.py")], **extra}


def make_code_repo(root: Path) -> tuple[Path, str]:
    """A git repository with one commit holding the stage programs; ``(path, commit)``."""
    root.mkdir(parents=True)
    for stage in sorted(STAGES.glob("*.py")):
        (root / stage.name).write_bytes(stage.read_bytes())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.org",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.org",
    }
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."], ["git", "commit", "-q", "-m", "stages"]):
        subprocess.run(argv, cwd=root, env=env, check=True, capture_output=True, timeout=30)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, env=env, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    return root, commit


@pytest.fixture
def e2e_home(mlprov_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``$MLPROV_HOME`` with the sidecar on (tests/conftest.py turns it off by default)."""
    monkeypatch.setenv("MLPROV_SIDECAR", "true")
    yield mlprov_home
    kill_jobs(mlprov_home)


@pytest.fixture
def code_repo(tmp_path: Path) -> tuple[Path, str]:
    return make_code_repo(tmp_path / "code")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``make up``'s stack on free ports with the sidecar on (every output signed), once per session
    (the browser check and the pipeline test share it)."""
    ports = [free_port() for _ in range(3)]
    while len(set(ports)) < 3:
        ports = [free_port() for _ in range(3)]
    config = StackConfig(
        root=REPO,
        home=tmp_path_factory.mktemp("stack-home"),
        ports=dict(zip(("controller", "airflow", "mlflow"), ports, strict=True)),
        extra_env={"MLPROV_SIDECAR": "true"},
        timeout=240.0,
    )
    running = Stack(config, echo=lambda _line: None)
    try:
        running.up()
        yield running
    finally:
        running.stop_started()
