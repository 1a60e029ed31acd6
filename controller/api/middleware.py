"""ASGI middleware: request body size limit (413) and HTTP latency metrics."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.metrics import HTTP_LATENCY

__all__ = ["BodySizeLimitMiddleware", "MetricsMiddleware"]

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps(
        {"error": "payload_too_large", "detail": f"the request body exceeds {limit} bytes: send a smaller body"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 before the route sees them.

    A declared ``Content-Length`` is checked up front; a body without one (chunked) is read up to
    the limit first and replayed to the app, so the route never sees a partial body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = self.max_bytes + 1
            if size > self.max_bytes:
                await _reject(send, self.max_bytes)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method", "GET") in _BODYLESS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client disconnected
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _reject(send, self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Observe every HTTP request's latency under its route template (``/api/v1/tasks/{task_id}``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            HTTP_LATENCY.labels(method=scope.get("method", ""), route=template, status=str(status)).observe(
                time.perf_counter() - start
            )
