"""Body-size limits per route: artifact uploads stream under their own limit, everything else 413s early.

``BodySizeLimitMiddleware`` buffers a body without ``Content-Length`` up to ``max_bytes`` in memory,
which is right for JSON and wrong for a multi-gigabyte model. :class:`RouteBodyLimits` sends the
artifact upload (``PUT /api/v1/tasks/{task_id}/artifacts/{digest}``) past it, refusing a declared
``Content-Length`` over ``max_artifact_bytes`` at once; the route counts the bytes it streams to disk
against the same limit (413 when a chunked body runs over). Every other request keeps the JSON limit.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from controller.api.middleware import BodySizeLimitMiddleware

__all__ = ["ARTIFACT_UPLOAD_PATH", "RouteBodyLimits"]

ARTIFACT_UPLOAD_PATH = re.compile(r"/api/v1/tasks/[^/]+/artifacts/[^/]+")


class RouteBodyLimits:
    def __init__(self, app: ASGIApp, *, max_bytes: int, max_artifact_bytes: int) -> None:
        self.app = app
        self.limited = BodySizeLimitMiddleware(app, max_bytes)
        self.uploads = BodySizeLimitMiddleware(app, max_artifact_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "PUT" and ARTIFACT_UPLOAD_PATH.fullmatch(scope["path"]):
            headers = dict(scope.get("headers") or [])
            if b"content-length" in headers:  # declared: checked up front, then streamed, never buffered
                await self.uploads(scope, receive, send)
            else:  # chunked: the route counts while streaming to disk
                await self.app(scope, receive, send)
            return
        await self.limited(scope, receive, send)
