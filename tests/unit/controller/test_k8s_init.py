"""The pod's init step: the workspace laid out from the attempt's Secret, inputs downloaded with the pod's
credential and re-hashed (files and directories), a tampered input refused, URLs never printed."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.runtime import k8s_init
from provenance.hashing import format_digest, hash_path
from provenance.sidecar.delivery import tar_directory

SECRET_URL = "https://s3.example/bucket/obj?X-Amz-Signature=very-secret"


def _attempt(tmp: Path, inputs: list[dict[str, Any]]) -> Path:
    folder = tmp / "attempt"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"task_id": "t1", "attempt": 1}))
    (folder / "params.json").write_text('{"lr": 0.1}')
    (folder / "inputs.json").write_text(json.dumps(inputs))
    return folder


def test_files_and_directories_are_fetched_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"a,b\n1,2\n"
    model = tmp_path / "src-model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 100)
    (model / "config.json").write_text("{}")
    tar = io.BytesIO()
    tar_directory(model, tar)
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.pod.token\n")
    monkeypatch.setenv("MLPROV_TASK_TOKEN_FILE", str(token_file))
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path.endswith("/model/content"):
            return httpx.Response(200, content=tar.getvalue(), headers={"content-type": "application/x-tar"})
        return httpx.Response(200, content=data)

    inputs = [
        {"name": "train.csv", "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "path": "inputs/train.csv",
         "url": "http://controller/api/v1/artifacts/csv/content", "auth": "bearer"},
        {"name": "model", "digest": format_digest(hash_path(model)), "path": "inputs/model",
         "url": "http://controller/api/v1/artifacts/model/content", "auth": "bearer"},
    ]  # fmt: skip
    ws = tmp_path / "ws"
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        names = k8s_init.materialise(_attempt(tmp_path, inputs), ws, client=client)
    assert names == ["train.csv", "model"]
    assert (ws / "inputs" / "train.csv").read_bytes() == data
    assert (ws / "inputs" / "model" / "weights.bin").read_bytes() == b"w" * 100
    assert json.loads((ws / ".mlprov" / "task.json").read_text())["task_id"] == "t1"
    assert (ws / "params.json").read_text() == '{"lr": 0.1}'
    assert (ws / "outputs").is_dir()
    assert {auth for _, auth in seen} == {"Bearer eyJ.pod.token"}


def test_a_tampered_input_stops_the_pod_without_printing_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = [{"name": "x", "digest": "sha256:" + "0" * 64, "path": "inputs/x", "url": SECRET_URL, "auth": "none"}]
    attempt = _attempt(tmp_path, inputs)
    monkeypatch.setenv("MLPROV_ATTEMPT_DIR", str(attempt))
    monkeypatch.setenv("MLPROV_WORKSPACE", str(tmp_path / "ws"))
    real = httpx.Client

    def client(**kw: Any) -> httpx.Client:
        return real(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"evil")))

    monkeypatch.setattr(k8s_init.httpx, "Client", client)
    assert k8s_init.main() == 3
    err = capsys.readouterr().err
    assert err.startswith("error: input x: content hashes to sha256:")
    assert "refusing" in err
    assert "very-secret" not in err
    assert not (tmp_path / "ws" / "inputs" / "x").exists()


def test_paths_outside_inputs_and_a_missing_attempt_are_refused(tmp_path: Path) -> None:
    bad = [{"name": "x", "digest": "sha256:" + "0" * 64, "path": "../../etc/passwd", "url": "http://x", "auth": "none"}]
    with pytest.raises(k8s_init.InitError) as info:
        k8s_init.materialise(_attempt(tmp_path, bad), tmp_path / "ws")
    assert info.value.code == 2
    with pytest.raises(k8s_init.InitError, match="incomplete or malformed"):
        k8s_init.materialise(tmp_path / "nowhere", tmp_path / "ws2")
