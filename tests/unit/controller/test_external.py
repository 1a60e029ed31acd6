"""``external`` services through the real app: a loopback HTTP server in a thread plays the legacy tool.

Success (params as the JSON body, response stored as the task's output artifact with its digest and
lineage), HTTP 500 (failed, with the reason), connection refused (failed after the retries, one-line
reason), GET with params as the query, and secrets never reaching a record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from controller.main import create_app
from controller.services.external import REDACTED, ExternalCaller, redact_headers, redact_url
from controller.settings import Settings

ADMIN = "admin-token-for-external-tests"
H = {"Authorization": f"Bearer {ADMIN}"}
SECRET, TOKEN, KEY = "s3cr3t-bearer-value", "t0ken-value-xyz", "k3y-in-the-query"


class Tool:
    """The 'legacy tool': records each request; answers by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        tool = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                tool.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": body})  # fmt: skip
                if self.path.startswith("/fail"):
                    code, data, ctype = 500, b"boom: the tool crashed\nsecond line", "text/plain"
                else:
                    code, ctype = 200, "application/json"
                    data = json.dumps({"result": "done", "got": body.decode()}).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Session-Token", TOKEN)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, fmt: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tool() -> Iterator[Tool]:
    t = Tool()
    yield t
    t.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def app(mlprov_home: Path) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(admin_token=SecretStr(ADMIN), max_concurrent_jobs=2))
    async with application.router.lifespan_context(application):
        caller = application.state.mlprov.dispatcher.external
        assert isinstance(caller, ExternalCaller)
        caller.retry_backoff = 0.05
        yield application


@pytest.fixture
async def client(app: FastAPI, tool: Tool) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Token": TOKEN, "X-Plain": "visible"}
    services = [
        {"name": "legacy", "kind": "external", "method": "POST", "url": f"{tool.url}/run?api_key={KEY}&mode=x",
         "headers": headers, "params": {"mode": "fast"}, "locks": ["legacy-tool"]},
        {"name": "legacy-broken", "kind": "external", "method": "POST", "url": f"{tool.url}/fail"},
        {"name": "legacy-down", "kind": "external", "method": "POST", "url": f"http://127.0.0.1:{_closed_port()}/run"},
        {"name": "legacy-get", "kind": "external", "method": "GET", "url": f"{tool.url}/status"},
    ]  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=H) as c:
        for spec in services:
            assert (await c.post("/api/v1/services", json=spec)).status_code == 201, spec
        yield c


async def _until(client: httpx.AsyncClient, task_id: str, *states: str, timeout: float = 15) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        if body["state"] in states:
            return body
        assert loop.time() < deadline, f"task stayed {body['state']}: {body}"
        await asyncio.sleep(0.05)


async def _records(client: httpx.AsyncClient, task_id: str, last_event: str) -> list[dict[str, Any]]:
    """The task's log records once ``last_event`` reached the index."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        records: list[dict[str, Any]] = (await client.get(f"/api/v1/tasks/{task_id}/logs")).json()["records"]
        if any(r.get("event") == last_event for r in records) or loop.time() > deadline:
            return records
        await asyncio.sleep(0.1)


async def _submit(client: httpx.AsyncClient, service: str, params: dict[str, Any] | None = None) -> str:
    r = await client.post("/api/v1/tasks", json={"service": service, "params": params or {}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def test_a_2xx_call_succeeds_and_its_response_is_the_tasks_artifact(
    client: httpx.AsyncClient, tool: Tool
) -> None:
    tid = await _submit(client, "legacy", {"n": 2})
    task = await _until(client, tid, "succeeded", "failed")
    assert (task["state"], task["exit_code"], task["reason"]) == ("succeeded", 0, None), task

    [sent] = tool.requests
    assert (sent["method"], sent["path"]) == ("POST", f"/run?api_key={KEY}&mode=x")
    assert json.loads(sent["body"]) == {"mode": "fast", "n": 2}  # service defaults overlaid by the task's
    assert sent["headers"]["Authorization"] == f"Bearer {SECRET}"  # the tool gets the real header
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["X-Mlprov-Task-Id"] == tid

    answer = json.dumps({"result": "done", "got": sent["body"].decode()}).encode()
    digest = "sha256:" + hashlib.sha256(answer).hexdigest()
    assert task["outputs"] == [
        {"name": "legacy-response.json", "digest": digest, "size": len(answer), "kind": "dataset", "manifest_id": None}
    ]
    assert task["details"]["external"]["http_status"] == 200
    assert task["details"]["external"]["response_digest"] == digest
    content = await client.get(f"/api/v1/artifacts/{digest}/content")
    assert content.content == answer
    graph = (await client.get(f"/api/v1/lineage/{digest}")).json()  # joins lineage as the task's output
    assert tid in json.dumps(graph["nodes"])
    assert "produced" in json.dumps(graph["edges"])

    records = await _records(client, tid, "finished")
    [call] = [r for r in records if r.get("event") == "external_call"]
    assert call["component"] == "external"
    request, response = call["fields"]["request"], call["fields"]["response"]
    assert request["headers"]["Authorization"] == REDACTED
    assert request["headers"]["X-Api-Token"] == REDACTED
    assert request["headers"]["X-Plain"] == "visible"
    assert f"api_key={REDACTED}" in request["url"].replace("%5B", "[").replace("%5D", "]")
    assert request["body_sha256"] == hashlib.sha256(sent["body"]).hexdigest()
    assert (response["status"], response["digest"], response["size"]) == (200, digest, len(answer))
    assert response["headers"]["x-session-token"] == REDACTED
    assert call["fields"]["timing"]["attempts"] == 1
    assert call["fields"]["timing"]["elapsed_ms"] >= 0
    everything = json.dumps(records) + json.dumps(task)
    for secret in (SECRET, TOKEN, KEY):
        assert secret not in everything
    assert [r["event"] for r in records if r.get("event")][-1] == "finished"
    assert "lock_acquired" in [r.get("event") for r in records]  # under the same locks as jobs


async def test_an_http_500_fails_the_task_with_the_reason(client: httpx.AsyncClient) -> None:
    tid = await _submit(client, "legacy-broken")
    task = await _until(client, tid, "succeeded", "failed")
    assert (task["state"], task["exit_code"], task["outputs"]) == ("failed", 1, [])
    assert task["reason"].startswith("POST http://127.0.0.1:")
    assert "answered HTTP 500 Internal Server Error: boom: the tool crashed second line" in task["reason"]
    assert task["details"]["external"]["http_status"] == 500
    records = await _records(client, tid, "finished")
    [call] = [r for r in records if r.get("event") == "external_call"]
    assert call["fields"]["response"]["status"] == 500
    assert call["fields"]["response"]["body_preview"].startswith("boom")


async def test_connection_refused_fails_after_the_retries_with_a_one_line_reason(client: httpx.AsyncClient) -> None:
    tid = await _submit(client, "legacy-down")
    task = await _until(client, tid, "succeeded", "failed")
    assert (task["state"], task["exit_code"]) == ("failed", 1)
    assert "\n" not in task["reason"]
    assert task["reason"].startswith("cannot connect to POST http://127.0.0.1:")
    assert "after 3 attempt(s)" in task["reason"]
    assert "refused" in task["reason"].lower()
    records = await _records(client, tid, "finished")
    [call] = [r for r in records if r.get("event") == "external_call"]
    assert call["fields"]["timing"]["attempts"] == 3
    assert call["fields"]["response"] is None


async def test_get_sends_params_as_the_query(client: httpx.AsyncClient, tool: Tool) -> None:
    tid = await _submit(client, "legacy-get", {"q": "a b", "flag": True, "opts": {"k": 1}})
    task = await _until(client, tid, "succeeded", "failed")
    assert task["state"] == "succeeded", task
    [sent] = tool.requests
    assert sent["method"] == "GET"
    assert sent["body"] == b""
    assert httpx.URL(sent["path"]).params == httpx.QueryParams({"q": "a b", "flag": "true", "opts": '{"k": 1}'})


async def test_external_submissions_take_params_only(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tasks", json={"service": "legacy", "inputs": ["something"]})
    assert r.status_code == 400
    assert "params only" in r.json()["detail"]


def test_redaction_rules() -> None:
    shown = redact_headers({"Authorization": "x", "Proxy-Authorization": "x", "Cookie": "x", "X-API-KEY": "x",
                            "client_secret": "x", "X-Auth-Token": "x", "Accept": "application/json"})  # fmt: skip
    assert shown == {k: REDACTED for k in shown} | {"Accept": "application/json"}
    assert redact_url("https://u:pw@h/p?token=abc&x=1") == f"https://u:{REDACTED}@h/p?token={REDACTED}&x=1"
