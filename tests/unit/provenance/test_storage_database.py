"""The database manifest store against a small in-test server that follows the Atlas storage-service API."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from provenance.errors import ManifestNotFoundError, StorageError
from provenance.manifest import build_manifest, make_ingredient
from provenance.storage import open_store
from provenance.storage.base import ManifestStore
from provenance.storage.database import C2PA_FIELD, OMS_BUNDLE_FIELD, DatabaseStore


class AtlasStorageService(ThreadingHTTPServer):
    """atlas-compat.md section 4: POST/GET/DELETE /manifests[/{id}]; entries keep the POST body whole."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.entries: dict[str, dict[str, Any]] = {}
        self.token = token
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: AtlasStorageService

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        self.server.requests.append((method, self.path, dict(self.headers)))
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._send(401, {"detail": "unauthorized"})
        parts = self.path.split("/")
        manifest_id = unquote(parts[2]) if len(parts) > 2 else None
        entries = self.server.entries
        if method == "GET" and manifest_id is None:
            return self._send(200, list(entries.values()))
        if method == "GET":
            return (
                self._send(200, entries[manifest_id]) if manifest_id in entries else self._send(404, {"detail": "nf"})
            )
        if method == "DELETE":
            return self._send(204) if entries.pop(manifest_id or "", None) else self._send(404, {"detail": "nf"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert manifest_id is not None
        entries[manifest_id] = {
            "manifest_id": body["manifest_id"],
            "manifest_type": body["manifest_type"],
            "manifest": body,
            "created_at": body["created_at"],
        }
        return self._send(201, {"manifest_id": manifest_id})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")


@pytest.fixture
def service() -> Iterator[AtlasStorageService]:
    server = AtlasStorageService()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _manifest(tmp_path: Path, kind: str = "dataset", title: str = "data") -> dict[str, Any]:
    asset = tmp_path / f"{title}.bin"
    asset.write_bytes(title.encode())
    return build_manifest(kind=kind, title=title, ingredients=[make_ingredient(asset, title, kind=kind)])  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_post_body_and_stored_entry_follow_the_api(service: AtlasStorageService, tmp_path: Path) -> None:
    store = DatabaseStore(service.url)
    manifest = _manifest(tmp_path, "model", "net")
    store.put(manifest, c2pa=b"\x00c2pa", oms_bundle=b"{}")
    entry = service.entries[manifest["instance_id"]]
    body = entry["manifest"]
    assert set(body) == {"manifest_id", "manifest_type", "manifest", "created_at", C2PA_FIELD, OMS_BUNDLE_FIELD}
    assert body["manifest"] == manifest  # the Atlas manifest, untouched, at entry.manifest.manifest
    assert body["manifest_type"] == "Model"
    assert body["created_at"].endswith("Z")
    assert base64.b64decode(body[C2PA_FIELD]) == b"\x00c2pa"
    got = store.get(manifest["instance_id"])
    assert got.manifest == manifest
    assert got.c2pa == b"\x00c2pa"
    assert got.oms_bundle == b"{}"
    assert got.locations["manifest"] == f"{service.url}/manifests/{manifest['instance_id']}"
    assert C2PA_FIELD in got.locations["c2pa"]


def test_evaluation_is_sent_as_unknown_but_listed_by_content(service: AtlasStorageService, tmp_path: Path) -> None:
    store = DatabaseStore(service.url)
    manifest = _manifest(tmp_path, "evaluation", "eval")
    store.put(manifest)
    assert service.entries[manifest["instance_id"]]["manifest_type"] == "Unknown"
    assert [(s.id, s.kind, s.title) for s in store.list()] == [(manifest["instance_id"], "EvaluationResult", "eval")]


def test_get_missing_is_not_found_and_delete_works(service: AtlasStorageService, tmp_path: Path) -> None:
    store = DatabaseStore(service.url)
    with pytest.raises(ManifestNotFoundError, match="urn:c2pa:missing"):
        store.get("urn:c2pa:missing")
    manifest = _manifest(tmp_path)
    store.put(manifest)
    store.delete(manifest["instance_id"])
    assert service.entries == {}
    with pytest.raises(ManifestNotFoundError):
        store.delete(manifest["instance_id"])


def test_put_is_idempotent_on_id(service: AtlasStorageService, tmp_path: Path) -> None:
    store = DatabaseStore(service.url)
    manifest = _manifest(tmp_path)
    store.put(manifest)
    store.put(manifest)
    assert [m for m, *_ in service.requests].count("POST") == 1
    with pytest.raises(StorageError, match="different manifest"):
        store.put(dict(manifest, title="other"))


def test_bearer_token_is_sent_and_refusal_is_one_clear_error(tmp_path: Path) -> None:
    server = AtlasStorageService(token="s3cret")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        with pytest.raises(StorageError, match="MLPROV_TOKEN"):
            DatabaseStore(server.url).list()
        store = DatabaseStore(server.url, token="s3cret")
        store.put(_manifest(tmp_path))
        assert all(h.get("Authorization") == "Bearer s3cret" for _, _, h in server.requests[1:])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_connection_refused_is_a_one_line_storage_error() -> None:
    store = DatabaseStore(f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(StorageError, match="connection refused") as info:
        store.get("urn:c2pa:x")
    assert "\n" not in str(info.value)


def test_timeout_is_a_storage_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    store = DatabaseStore("http://store.test", transport=httpx.MockTransport(slow))
    with pytest.raises(StorageError, match="did not answer in time"):
        store.list()


def test_server_errors_and_garbage_are_storage_errors() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/manifests":
            return httpx.Response(200, content=b"<html>")
        return httpx.Response(500)

    store = DatabaseStore("http://store.test", transport=httpx.MockTransport(broken))
    with pytest.raises(StorageError, match="HTTP 500"):
        store.get("urn:c2pa:x")
    with pytest.raises(StorageError, match="not JSON"):
        store.list()


def test_reads_a_server_that_keeps_the_bare_manifest(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)

    def bare(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"manifest_id": manifest["instance_id"], "manifest": manifest})

    got = DatabaseStore("http://store.test", transport=httpx.MockTransport(bare)).get(manifest["instance_id"])
    assert got.manifest == manifest


def test_non_http_url_is_refused() -> None:
    with pytest.raises(StorageError, match="not an http"):
        open_store("database", "/tmp/dir")


def test_open_store_database_satisfies_the_protocol(service: AtlasStorageService) -> None:
    store = open_store("database", service.url, token="t")
    assert isinstance(store, ManifestStore)
    assert store.list() == []
