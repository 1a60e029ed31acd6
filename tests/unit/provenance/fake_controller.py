"""A small in-test controller honouring docs/sidecar-protocol.md section 2 (helper module, not a test).

It runs a real HTTP server on 127.0.0.1 (``http.server`` in a thread) and implements the three calls
the sidecar makes: artifact upload (re-hashed, 400 on a digest mismatch), manifest registration
(signature checked against the trust store, ``mlprov.task`` checked against the token's task,
idempotent on manifest ID, 409 for other content under a known ID, one software manifest per
(repo, commit)) and the software-manifest lookup. ``stop()`` then ``start()`` again on the same port
simulates a controller that is down for a while. It is also a ``ManifestSource`` and resolves
artifacts by digest, so ``provenance.verify`` can check what it received.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from provenance.errors import ManifestNotFoundError, VerificationError
from provenance.hashing import hash_directory
from provenance.keys import TrustStore
from provenance.manifest import find_assertion, manifest_hash
from provenance.sidecar.agent import Sidecar, Summary
from provenance.sidecar.config import SidecarSettings
from provenance.signing import verify_manifest_signature
from provenance.storage.base import StoredManifest

__all__ = [
    "TASK_ID",
    "TOKEN",
    "FakeController",
    "Registration",
    "Running",
    "assertion",
    "publish",
    "settings_for",
    "write_task",
]

TOKEN = "task-token-4f1c9e"
TASK_ID = "task-0001"


@dataclass
class Registration:
    id: str
    manifest: dict[str, Any]
    hash: str
    c2pa: bytes | None
    oms_bundle: bytes | None
    artifact: dict[str, Any] | None
    role: str
    at: float
    log_index: int


@dataclass
class _State:
    manifests: dict[str, Registration] = field(default_factory=dict)
    posts: list[tuple[float, str, int]] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)
    software: dict[tuple[str, str], str] = field(default_factory=dict)


class FakeController:
    def __init__(self, trust: TrustStore, *, token: str, task_id: str, store_dir: Path) -> None:
        self.trust = trust
        self.token = token
        self.task_id = task_id
        self.store_dir = Path(store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.state = _State()
        self.lock = threading.Lock()
        self.conflict_titles: set[str] = set()
        """Registrations of manifests with these titles answer 409 (as if another manifest held the ID)."""
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeController:
        fake = self

        class Handler(_Handler):
            controller = fake

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- what tests look at --------------------------------------------------------------------------
    def outputs(self) -> list[Registration]:
        with self.lock:
            return [r for r in self.state.manifests.values() if r.role == "output"]

    def code(self) -> list[Registration]:
        with self.lock:
            return [r for r in self.state.manifests.values() if r.role == "code"]

    def preload(self, manifest: dict[str, Any], role: str = "upstream") -> None:
        """A manifest registered earlier (e.g. an input's, by another task)."""
        with self.lock:
            mid = manifest["instance_id"]
            self.state.manifests[mid] = Registration(
                mid, manifest, manifest_hash(manifest), None, None, None, role, time.time(), len(self.state.manifests)
            )

    def get(self, manifest_id: str) -> StoredManifest:
        with self.lock:
            reg = self.state.manifests.get(manifest_id)
        if reg is None:
            raise ManifestNotFoundError(manifest_id)
        return StoredManifest(id=reg.id, manifest=reg.manifest, c2pa=reg.c2pa, oms_bundle=reg.oms_bundle)

    def resolve(self, ingredient: dict[str, Any]) -> Path | None:
        """Asset resolver for provenance.verify: the stored artifact with the ingredient's digest."""
        data = ingredient.get("data") or {}
        with self.lock:
            return self.state.artifacts.get(f"{data.get('alg')}:{data.get('hash')}")

    def artifact_path(self, stored: StoredManifest) -> Path | None:
        return self.resolve(stored.manifest["claim"]["ingredients"][0])

    # -- request handling ----------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes, headers: Any) -> tuple[int, Any]:
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"detail": "bad token"}
        parts = [p for p in path.split("/") if p]
        if method == "PUT" and parts[:3] == ["api", "v1", "tasks"] and len(parts) == 6 and parts[4] == "artifacts":
            if parts[3] != self.task_id:
                return 403, {"detail": "token is for another task"}
            return self._put_artifact(parts[5], body, headers.get("Content-Type", ""))
        if method == "POST" and parts == ["api", "v1", "manifests"]:
            return self._post_manifest(json.loads(body))
        if method == "GET" and parts == ["api", "v1", "software-manifests"]:
            key = (query.get("repo", [""])[0], query.get("commit", [""])[0])
            with self.lock:
                mid = self.state.software.get(key)
                reg = self.state.manifests.get(mid) if mid else None
            if reg is None:
                return 404, {"detail": "no software manifest"}
            return 200, {"id": reg.id, "manifest": reg.manifest}
        return 404, {"detail": f"no route {method} {path}"}

    def _put_artifact(self, digest: str, body: bytes, content_type: str) -> tuple[int, Any]:
        with self.lock:
            if digest in self.state.artifacts:
                return 200, {"digest": digest}
        target = Path(tempfile.mkdtemp(dir=self.store_dir))
        if content_type == "application/x-tar":
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
                tar.extractall(target / "a", filter="data")
            stored = target / "a"
            stored.mkdir(exist_ok=True)
            actual = "sha256:" + hash_directory(stored).root
        else:
            stored = target / "a"
            stored.write_bytes(body)
            actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            return 400, {"detail": f"digest mismatch: received {actual}"}
        with self.lock:
            self.state.artifacts.setdefault(digest, stored)
        return 201, {"digest": digest}

    def _post_manifest(self, body: dict[str, Any]) -> tuple[int, Any]:
        manifest = body["manifest"]
        mid = manifest["instance_id"]
        try:
            verify_manifest_signature(manifest, self.trust)
        except VerificationError as exc:
            return 400, {"detail": f"signature: {exc}"}
        task = find_assertion(manifest, "mlprov.task") or {}
        if task.get("task_id") != self.task_id:
            return 403, {"detail": "mlprov.task names another task"}
        if manifest["title"] in self.conflict_titles:
            return self._record(mid, 409, {"detail": f"{mid} is registered with other content"})
        artifact = body.get("artifact")
        with self.lock:
            if artifact is not None and artifact["digest"] not in self.state.artifacts:
                return 400, {"detail": "artifact not uploaded"}
            existing = self.state.manifests.get(mid)
            digest = manifest_hash(manifest)
            if existing is not None:
                if existing.hash != digest:
                    return self._record(mid, 409, {"detail": f"{mid} is registered with other content"})
                return self._record(mid, 200, self._answer(existing))
            if body["role"] == "code":
                code = find_assertion(manifest, "mlprov.code") or {}
                key = (code.get("repo"), code.get("commit"))
                if key in self.state.software:
                    kept = self.state.manifests[self.state.software[key]]
                    return self._record(mid, 200, self._answer(kept))
                self.state.software[key] = mid  # type: ignore[index]  # repo/commit are strings here
            reg = Registration(
                id=mid,
                manifest=manifest,
                hash=digest,
                c2pa=base64.b64decode(body["c2pa"]) if body.get("c2pa") else None,
                oms_bundle=base64.b64decode(body["oms_bundle"]) if body.get("oms_bundle") else None,
                artifact=artifact,
                role=body["role"],
                at=time.time(),
                log_index=len(self.state.manifests),
            )
            self.state.manifests[mid] = reg
            return self._record(mid, 201, self._answer(reg))

    def _answer(self, reg: Registration) -> dict[str, Any]:
        return {"id": reg.id, "log_index": reg.log_index, "artifact": reg.artifact}

    def _record(self, mid: str, status: int, answer: Any) -> tuple[int, Any]:
        self.state.posts.append((time.time(), mid, status))
        return status, answer


class _Handler(BaseHTTPRequestHandler):
    controller: FakeController
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        try:
            status, answer = self.controller.handle(method, url.path, parse_qs(url.query), body, self.headers)
        except Exception as exc:  # a bug in the fake shows as a 500 the sidecar retries, and in the test output
            status, answer = 500, {"detail": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")


def assertion(manifest: dict[str, Any], label: str) -> Any:
    """The data of a manifest's assertion, which must be there."""
    found = find_assertion(manifest, label)
    assert found is not None, f"{manifest.get('title')}: no {label} assertion"
    return found


def write_task(
    workspace: Path, task_id: str, *, repo: Path | str, inputs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A workspace as the dispatcher prepares it: ``outputs/``, ``inputs/``, ``.mlprov/task.json``."""
    (workspace / "outputs").mkdir(parents=True, exist_ok=True)
    (workspace / "inputs").mkdir(exist_ok=True)
    (workspace / ".mlprov").mkdir(exist_ok=True)
    task = {
        "task_id": task_id,
        "attempt": 1,
        "service": "finetune",
        "run": {"dag_id": "demo_lifecycle", "run_id": "manual__1", "task_id": "finetune", "try_number": 1},
        "params": {"epochs": 3},
        "code": {"repo": str(repo), "ref": "main", "commit": "a" * 40, "path": "stages/finetune.py"},
        "inputs": inputs or [],
        "environment": {},
    }
    (workspace / ".mlprov" / "task.json").write_text(json.dumps(task))
    return task


def settings_for(workspace: Path, url: str, **extra: Any) -> SidecarSettings:
    values: dict[str, Any] = {
        "workspace": workspace,
        "task_id": TASK_ID,
        "task_token": TOKEN,
        "controller_url": url,
        "stable_interval": 0.5,
        "exit_settle_interval": 0.1,
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
        "drain_timeout": 10.0,
        "http_timeout": 5.0,
    }
    values.update(extra)
    return SidecarSettings(**values)


class Running:
    """A Sidecar run in a thread (the CLI runs it in the main thread; tests need to write meanwhile)."""

    def __init__(self, agent: Sidecar) -> None:
        self.agent = agent
        self.summary: Summary | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.summary = self.agent.run()

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.agent.watcher.running and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.agent.watcher.running, "the sidecar did not start watching"
        return self

    def finish(self, timeout: float = 30.0) -> Summary:
        self.agent.request_exit()
        self.thread.join(timeout)
        assert self.summary is not None, "the sidecar did not finish"
        return self.summary

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.finish()


def publish(path: Path, data: bytes) -> None:
    """Write then rename into place (the atomic-publish idiom)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
