"""Helpers for the ingestion, Atlas and log API tests (not a test module).

The controller app runs for real (``create_app`` + lifespan through ``TestClient``) on a temporary
``$MLPROV_HOME`` holding a signing identity made by ``provenance.keys.init_identity``, whose CA is the
controller's trust store; manifests are built and signed with ``provenance``'s own functions, the way
the sidecar builds them.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select

from controller.auth import issue_task_token
from controller.main import create_app
from controller.settings import Settings
from controller.state import AppState
from controller.store.db import session_scope
from controller.store.models import Artifact, LineageEdge, Manifest, Task
from provenance.keys import SigningIdentity, init_identity, load_identity
from provenance.manifest import build_manifest, custom_assertion, make_ingredient
from provenance.signing import sign_manifest

__all__ = [
    "ADMIN",
    "READ",
    "App",
    "counts",
    "new_task",
    "running_app",
    "signed_manifest",
]

ADMIN = "admin-token-for-ingest-tests"
READ = "read-token-for-ingest-tests"


class App:
    """The app served by uvicorn on 127.0.0.1 (a real port), and a client of it."""

    def __init__(self, app: FastAPI, url: str, home: Path, identity: SigningIdentity) -> None:
        self.app = app
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=30, trust_env=False)
        self.home = home
        self.identity = identity

    @property
    def state(self) -> AppState:
        state = self.app.state.mlprov
        assert isinstance(state, AppState)
        return state

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN}"}

    def reader(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {READ}"}


@contextmanager
def running_app(home: Path, mlflow_uri: str | None = None, **settings: Any) -> Iterator[App]:
    """The real controller app on ``home`` (identity created when missing), its lifespan running."""
    if not (home / "keys" / "signer.key").exists():
        init_identity(home)
    values: dict[str, Any] = {
        "home": home,
        "admin_token": SecretStr(ADMIN),
        "read_tokens": [SecretStr(READ)],
        "mlflow_tracking_uri": mlflow_uri or f"sqlite:///{home / 'mlflow.db'}",
        "services_file": None,
    }
    values.update(settings)
    app = create_app(Settings(**values))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the controller did not start"
        assert time.monotonic() < deadline, "the controller did not start in 30 s"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = App(app, f"http://127.0.0.1:{port}", home, load_identity(home))
    try:
        yield running
    finally:
        running.client.close()
        server.should_exit = True
        thread.join(30)


def new_task(
    state: AppState, *, inputs: Sequence[dict[str, Any]] = (), code: dict[str, Any] | None = None
) -> tuple[str, str]:
    """A task row and its token, without the dispatcher (unit tests of the provenance APIs)."""
    with session_scope(state.session_factory) as session:
        task = Task(service="train", state="running", inputs=list(inputs), code=code)
        session.add(task)
        session.flush()
        token = issue_task_token(session, task.id)
        return task.id, token


def signed_manifest(
    identity: SigningIdentity,
    path: Path,
    *,
    task_id: str | None,
    name: str | None = None,
    kind: str = "dataset",
    cross_references: Sequence[dict[str, Any]] = (),
    code: dict[str, Any] | None = None,
    hash_alg: str = "sha256",
) -> dict[str, Any]:
    """A signed Atlas manifest for one file (ingredient hashed with sha256, the artifact digest)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ingredient = make_ingredient(path, name or path.name, kind=kind, hash_alg="sha256", digest_hex=digest)  # type: ignore[arg-type]  # a literal kind
    assertions = []
    if task_id is not None:
        assertions.append(custom_assertion("mlprov.task", {"task_id": task_id, "attempt": 1, "service": "train"}))
    if code is not None:
        assertions.append(custom_assertion("mlprov.code", code))
    manifest = build_manifest(
        kind=kind,  # type: ignore[arg-type]  # a literal kind
        title=name or path.name,
        ingredients=[ingredient],
        cross_references=cross_references,
        assertions=assertions,
    )
    return sign_manifest(manifest, identity, hash_alg=hash_alg)  # type: ignore[arg-type]  # a literal alg


def counts(state: AppState) -> dict[str, int]:
    """Rows of the provenance tables and entries of the log (to assert nothing was half-recorded)."""
    with session_scope(state.session_factory) as session:
        found = {
            table.__tablename__: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Artifact, Manifest, LineageEdge)
        }
    assert state.tlog is not None
    found["tlog"] = state.tlog.log.size()
    return found
