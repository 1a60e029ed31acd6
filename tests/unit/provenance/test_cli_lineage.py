"""``mlprov lineage`` and ``mlprov verify --server`` against a small HTTP server answering as the controller.

The answers are built with the controller's own response model (``LineageGraph``) and the provenance
verifier's own report (``verify_chain(...).to_dict()``), so their shape is the real one.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from controller.services.lineage import Direction, GraphEdge, GraphNode, LineageGraph
from provenance.cli.main import cli
from provenance.errors import ManifestNotFoundError
from provenance.keys import TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, cross_reference, make_ingredient
from provenance.signing import sign_manifest
from provenance.storage.base import StoredManifest
from provenance.verify import verify_chain

TOKEN = "read-token-for-cli-tests"
RAW, MODEL = "sha256:" + "a" * 64, "sha256:" + "b" * 64
MID = "urn:c2pa:11111111-1111-4111-8111-111111111111"


def _graph(direction: str = "upstream", truncated: bool = False) -> dict[str, Any]:
    graph = LineageGraph(
        root=MODEL,
        direction=Direction(direction),
        depth=2,
        nodes=[
            GraphNode(id=MODEL, type="artifact", depth=0, name="model", kind="model", digest=MODEL, manifest=MID),
            GraphNode(id="t1", type="task", depth=1, name="finetune", kind="finetune", state="succeeded"),
            GraphNode(id=RAW, type="artifact", depth=2, name='raw "v1".csv', kind="dataset", digest=RAW),
            GraphNode(id="/repo@" + "c" * 40, type="code", depth=2, name="/repo@" + "c" * 40),
        ],
        edges=[
            GraphEdge(src=RAW, src_type="artifact", dst="t1", dst_type="task", role="consumed"),
            GraphEdge(src="/repo@" + "c" * 40, src_type="code", dst="t1", dst_type="task", role="code"),
            GraphEdge(src="t1", src_type="task", dst=MODEL, dst_type="artifact", role="produced"),
        ],
        truncated=truncated,
    )
    return graph.model_dump(mode="json")


class Server:
    """Answers ``GET /api/v1/lineage/...`` and ``POST /api/v1/verify`` from ``answers``; records requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append(
                    {
                        "method": method,
                        "path": url.path,
                        "query": parse_qs(url.query),
                        "body": body,
                        "auth": self.headers.get("authorization"),
                    }
                )
                status, payload = outer.answers.get(
                    f"{method} {url.path}", (404, {"error": "not_found", "detail": "nope"})
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, mlprov_home: Path) -> Iterator[Server]:
    monkeypatch.setenv("MLPROV_TOKEN", TOKEN)
    monkeypatch.delenv("MLPROV_CONTROLLER_URL", raising=False)
    s = Server()
    yield s
    s.close()


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, standalone_mode=True)


def test_lineage_tree_json_and_dot(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server.answers[f"GET /api/v1/lineage/{MODEL}"] = (200, _graph(truncated=True))
    result = run("lineage", MODEL, "--server", server.url, "--depth", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"model [model] {MODEL} (signed {MID})"
    assert lines[1] == "└── <- produced: task finetune (finetune, succeeded) t1"
    assert f"    ├── <- code: code /repo@{'c' * 40}" in lines
    assert f'    └── <- consumed: raw "v1".csv [dataset] {RAW} (UNSIGNED)' in lines
    assert lines[-1] == "… truncated at depth 2: raise --depth to see more"
    req = server.requests[-1]
    assert req["auth"] == f"Bearer {TOKEN}"
    assert req["query"] == {"direction": ["upstream"], "depth": ["2"]}

    monkeypatch.setenv("MLPROV_CONTROLLER_URL", server.url)  # the default server
    as_json = run("lineage", MODEL, "--format", "json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.output) == _graph(truncated=True)
    dot = run("lineage", MODEL, "--format", "dot").output
    assert dot.startswith("digraph lineage {")
    assert f'"{RAW}" -> "t1" [label="consumed"];' in dot
    assert '\\"v1\\"' in dot  # quotes in names are escaped
    assert f'"{MODEL}" [label=' in dot
    assert "style=bold" in dot
    assert dot.rstrip().endswith("}")


def test_lineage_by_manifest_id_both_directions(server: Server) -> None:
    server.answers[f"GET /api/v1/lineage/{MID}"] = (200, _graph("both"))
    result = run("lineage", MID, "--server", server.url, "--direction", "both")
    assert result.exit_code == 0, result.output
    assert server.requests[-1]["path"] == f"/api/v1/lineage/{MID}"
    assert "<- produced" in result.output
    assert "truncated" not in result.output


def test_lineage_errors_map_to_exit_codes(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = run("lineage", RAW, "--server", server.url)
    assert unknown.exit_code == 3
    assert "nope" in unknown.output
    with socket.socket() as sock:  # a closed port: nothing listens
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = run("lineage", RAW, "--server", closed)
    assert down.exit_code == 5
    assert "unreachable" in down.output
    server.answers[f"GET /api/v1/lineage/{RAW}"] = (403, {"error": "forbidden", "detail": "wrong scope"})
    refused = run("lineage", RAW, "--server", server.url)
    assert refused.exit_code == 5
    assert "403" in refused.output
    no_server = run("lineage", RAW)
    assert no_server.exit_code == 2
    assert "MLPROV_CONTROLLER_URL" in no_server.output


# --- verify --server -------------------------------------------------------------------------------------


class _Source:
    def __init__(self, *manifests: dict[str, Any]) -> None:
        self.items = {m["instance_id"]: StoredManifest(id=m["instance_id"], manifest=m) for m in manifests}

    def get(self, manifest_id: str) -> StoredManifest:
        try:
            return self.items[manifest_id]
        except KeyError:
            raise ManifestNotFoundError(manifest_id) from None


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A real report that holds and one that does not (the linked manifest is not trusted)."""
    tmp = tmp_path_factory.mktemp("chain")
    init_identity(tmp / "home")
    identity = load_identity(tmp / "home")
    (tmp / "raw.csv").write_text("raw\n")
    (tmp / "model.bin").write_text("model\n")
    raw = sign_manifest(
        build_manifest(
            kind="dataset", title="raw.csv", ingredients=[make_ingredient(tmp / "raw.csv", "raw.csv", kind="dataset")]
        ),
        identity,
    )
    model = sign_manifest(
        build_manifest(
            kind="model",
            title="model.bin",
            ingredients=[make_ingredient(tmp / "model.bin", "model.bin", kind="model")],
            cross_references=[cross_reference(raw)],
        ),
        identity,
    )
    source = _Source(raw, model)
    good = verify_chain(model["instance_id"], source, TrustStore.load(tmp / "home" / "trust"))
    bad = verify_chain(model["instance_id"], source, TrustStore())
    assert good.ok
    assert not bad.ok
    return good.to_dict(), bad.to_dict(), model["instance_id"]


def test_verify_server_ok_and_failed(server: Server, reports: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    good, bad, mid = reports
    server.answers["POST /api/v1/verify"] = (200, {"ok": True, "artifact": MODEL, "manifest": mid, "report": good})
    ok = run("verify", "--server", server.url, MODEL)
    assert ok.exit_code == 0, ok.output
    assert ok.output.rstrip().endswith("✓ Manifest verification successful")
    assert "✓ Verified 2 manifest(s)" in ok.output
    assert server.requests[-1]["body"] == {"rehash": True, "max_depth": 32, "artifact": MODEL}
    assert server.requests[-1]["auth"] == f"Bearer {TOKEN}"

    as_json = run("verify", "--server", server.url, mid, "--json", "--no-rehash")
    assert as_json.exit_code == 0
    assert json.loads(as_json.output) == good
    assert server.requests[-1]["body"] == {"rehash": False, "max_depth": 32, "manifest": mid}

    server.answers["POST /api/v1/verify"] = (200, {"ok": False, "artifact": MODEL, "manifest": mid, "report": bad})
    failed = run("verify", "--server", server.url, MODEL)
    assert failed.exit_code == 4
    assert f"✗ Verification failed: first broken link at Model 'model.bin' ({mid})" in failed.output
    assert f"first broken at {mid}: signature:" in failed.output


def test_verify_server_unknown_and_unreachable(server: Server) -> None:
    unknown = run("verify", "--server", server.url, MODEL)  # no answer configured: 404
    assert unknown.exit_code == 3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert run("verify", "--server", closed, MODEL).exit_code == 5
