"""ingest: every source scheme against a real server or file, and one clear line on bad input.

Sources: ``builtin://`` (generated from a seed), ``file://``, ``http://`` from a loopback
``http.server`` (the same code path as ``https://``: urllib), ``s3://`` from moto's S3 server with the
minio client. Most cases call the stage's ``main`` in-process (the exit code and stderr line are
what a subprocess shows, see ``test_bad_params_exit_non_zero_with_one_line``).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stages import ingest

CSV = b"a,b,label\n1.0,2.0,0\n3.0,,1\n"


def _workspace(tmp_path: Path, params: dict[str, Any]) -> Path:
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    (ws / "outputs").mkdir()
    (ws / "params.json").write_text(json.dumps(params))
    return ws


def _ingest(tmp_path: Path, params: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, Path, str]:
    ws = _workspace(tmp_path, params)
    code = ingest.main(["--workspace", str(ws)])
    return code, ws, capsys.readouterr().err


def _outputs(ws: Path) -> set[str]:
    return {p.name for p in (ws / "outputs").iterdir()}


def test_builtin_source_is_deterministic_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digests = []
    for run, seed in enumerate((7, 7, 8)):
        code, ws, err = _ingest(tmp_path / str(run), {"seed": seed, "rows": 300, "features": 4}, capsys)
        assert (code, err) == (0, "")
        digests.append(hashlib.sha256((ws / "outputs" / "raw.csv").read_bytes()).hexdigest())
        assert json.loads((ws / "outputs" / "metrics.json").read_text())["rows"] > 300  # duplicates added
    assert digests[0] == digests[1] != digests[2]


def test_file_source_is_copied_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    digest = hashlib.sha256(CSV).hexdigest()
    code, ws, err = _ingest(tmp_path, {"source": source.as_uri(), "sha256": f"sha256:{digest}"}, capsys)
    assert (code, err) == (0, "")
    assert (ws / "outputs" / "raw.csv").read_bytes() == CSV
    assert json.loads((ws / "outputs" / "metrics.json").read_text()) == {"bytes": len(CSV), "rows": 2}


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_source_is_downloaded(
    http_root: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, root = http_root
    (root / "data.csv").write_bytes(CSV)
    code, ws, err = _ingest(tmp_path, {"source": f"{url}/data.csv", "timeout": 5}, capsys)
    assert (code, err) == (0, "")
    assert (ws / "outputs" / "raw.csv").read_bytes() == CSV


def test_http_not_found_fails_with_the_status(
    http_root: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = http_root
    code, ws, err = _ingest(tmp_path, {"source": f"{url}/missing.csv", "timeout": 5}, capsys)
    assert code == 3
    assert err.count("\n") == 1
    assert err.startswith("error: ingest: source ")
    assert "HTTP 404" in err
    assert _outputs(ws) == set()  # nothing half-written is left for the sidecar


def test_unreachable_server_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, ws, err = _ingest(tmp_path, {"source": f"http://127.0.0.1:{port}/x.csv", "timeout": 2}, capsys)
    assert code == 3
    assert err.count("\n") == 1
    assert "cannot connect" in err
    assert _outputs(ws) == set()


@pytest.mark.parametrize(
    ("params", "exit_code", "needle"),
    [
        ({"source": "ftp://host/x.csv"}, 2, "unsupported scheme"),
        ({"source": "builtin://nope"}, 2, "no built-in data set"),
        ({"rows": "many"}, 2, "rows must be an integer"),
        ({"rows": 5}, 2, "rows must be between"),
        ({"seed": True}, 2, "seed must be an integer"),
        ({"epochs": 3}, 2, "unknown parameter(s) ['epochs']"),
        ({"sha256": "abc"}, 2, "sha256 must be 64 hex digits"),
        ({"source": "file:///nonexistent/data.csv"}, 3, "no such file"),
        ({"rows": 100, "features": 3, "sha256": "0" * 64}, 3, "is not the expected"),
    ],
)
def test_bad_params_fail_with_one_line(
    params: dict[str, Any], exit_code: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, ws, err = _ingest(tmp_path, params, capsys)
    assert code == exit_code
    assert err.startswith("error: ingest: ")
    assert err.count("\n") == 1
    assert needle in err
    assert _outputs(ws) == set()


def test_not_a_csv_with_a_label_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(b"a,b\n1,2\n")
    code, ws, err = _ingest(tmp_path, {"source": source.as_uri()}, capsys)
    assert code == 2
    assert "no 'label' column" in err
    assert _outputs(ws) == set()


def test_bad_params_exit_non_zero_with_one_line(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, {"source": "gopher://x/y"})
    (ws / "params.json").write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=ws, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ingest: params.json is not readable JSON")
    assert done.stderr.count("\n") == 1


@pytest.mark.integration
@pytest.mark.s3
def test_s3_source_is_downloaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    import io

    from minio import Minio

    # credentials from the environment only: params are signed into manifests
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = Minio(s3_endpoint, access_key="testing", secret_key="testing", secure=False, region="us-east-1")
    client.make_bucket("demo-data")
    client.put_object("demo-data", "sets/data.csv", io.BytesIO(CSV), len(CSV))
    endpoint = f"http://{s3_endpoint}"
    params = {"source": "s3://demo-data/sets/data.csv", "s3_endpoint": endpoint, "s3_region": "us-east-1"}
    code, ws, err = _ingest(tmp_path / "ok", params, capsys)
    assert (code, err) == (0, "")
    assert (ws / "outputs" / "raw.csv").read_bytes() == CSV

    code, ws, err = _ingest(tmp_path / "missing", {**params, "source": "s3://demo-data/nope.csv"}, capsys)
    assert code == 3
    assert err.count("\n") == 1
    assert "NoSuchKey" in err
    assert _outputs(ws) == set()
