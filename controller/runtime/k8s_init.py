"""The init step of a Kubernetes job pod (``python -m controller.runtime.k8s_init``): lay out the workspace.

Reads the attempt's Secret, mounted at ``$MLPROV_ATTEMPT_DIR`` (``task.json``, ``params.json``,
``inputs.json``), and writes into ``$MLPROV_WORKSPACE``: ``.mlprov/task.json``, ``params.json``, an empty
``outputs/``, and each input at its ``path`` (``inputs/<name>``), downloaded from its URL -- a presigned
GET (``auth: none``) or the controller's artifact content endpoint with the pod's credential
(``auth: bearer``: the projected token at ``$MLPROV_TASK_TOKEN_FILE``, else ``$MLPROV_TASK_TOKEN``). A
file must hash to its digest (sha256); a directory arrives as an uncompressed tar and must hash to its
OMS root digest once extracted. Any mismatch or failed download stops the pod before the stage starts:
one ``error: ...`` line on stderr, exit code 3 (2 for a malformed attempt directory). URLs are never
printed (a presigned URL is a credential).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import httpx

__all__ = ["InitError", "main", "materialise"]

_TAR = "application/x-tar"


class InitError(Exception):
    def __init__(self, message: str, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


def _token() -> str | None:
    path = os.environ.get("MLPROV_TASK_TOKEN_FILE")
    if path and Path(path).is_file():
        return Path(path).read_text().strip()
    return os.environ.get("MLPROV_TASK_TOKEN") or None


def _safe_target(workspace: Path, relative: str) -> Path:
    target = (workspace / relative).resolve()
    if not target.is_relative_to((workspace / "inputs").resolve()):
        raise InitError(f"input path {relative!r} is outside inputs/", 2)
    return target


def _download(client: httpx.Client, item: dict[str, Any], target: Path, token: str | None) -> None:
    name, digest = str(item["name"]), str(item["digest"])
    headers = {"Authorization": f"Bearer {token}"} if item.get("auth") == "bearer" and token else {}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    hasher = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, client.stream("GET", str(item["url"]), headers=headers) as response:
            if response.status_code != 200:
                raise InitError(f"input {name} ({digest}): download answered HTTP {response.status_code}")
            media = response.headers.get("content-type", "").split(";")[0].strip()
            for chunk in response.iter_bytes(1024 * 1024):
                hasher.update(chunk)
                out.write(chunk)
        if media == _TAR:
            _extract(tmp, target, digest, name)
            return
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise InitError(f"input {name}: content hashes to {actual}, not {digest}: refusing it")
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise InitError(f"input {name} ({digest}): download failed: {type(exc).__name__}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _extract(archive: Path, target: Path, digest: str, name: str) -> None:
    from provenance.hashing import format_digest, hash_path

    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.d."))
    try:
        with tarfile.open(archive, "r:") as tar:
            tar.extractall(staging, filter="data")  # refuses links out, absolute paths, devices
        actual = format_digest(hash_path(staging))
        if actual != digest:
            raise InitError(f"input {name}: the directory hashes to {actual}, not {digest}: refusing it")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def materialise(attempt_dir: Path, workspace: Path, *, client: httpx.Client | None = None) -> list[str]:
    """Lay out the workspace (see the module docstring); returns the input names written."""
    try:
        task_json = (attempt_dir / "task.json").read_text()
        params_json = (attempt_dir / "params.json").read_text()
        inputs: list[dict[str, Any]] = json.loads((attempt_dir / "inputs.json").read_text())
        json.loads(task_json)
    except (OSError, ValueError) as exc:
        raise InitError(f"the attempt directory {attempt_dir} is incomplete or malformed: {exc}", 2) from None
    (workspace / ".mlprov").mkdir(parents=True, exist_ok=True)
    (workspace / ".mlprov" / "task.json").write_text(task_json)
    (workspace / "params.json").write_text(params_json)
    (workspace / "outputs").mkdir(exist_ok=True)
    (workspace / "inputs").mkdir(exist_ok=True)
    token = _token()
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(30.0, read=300.0), trust_env=False, follow_redirects=True)
    try:
        for item in inputs:
            target = _safe_target(workspace, str(item.get("path") or f"inputs/{item['name']}"))
            _download(http, item, target, token)
            print(json.dumps({"event": "input_ready", "name": item["name"], "digest": item["digest"]}), flush=True)
    finally:
        if own:
            http.close()
    return [str(i["name"]) for i in inputs]


def main() -> int:
    attempt_dir = Path(os.environ.get("MLPROV_ATTEMPT_DIR", "/etc/mlprov/attempt"))
    workspace = Path(os.environ.get("MLPROV_WORKSPACE", "/workspace"))
    try:
        names = materialise(attempt_dir, workspace)
    except InitError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.code
    print(json.dumps({"event": "workspace_ready", "inputs": len(names)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
