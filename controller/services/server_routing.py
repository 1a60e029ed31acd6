"""Reaching a run's servers by name: views, the job environment, and the streaming HTTP proxy.

``GET /api/v1/runs/{dag_id}/{run_id}/servers`` lists a run's servers (:func:`list_servers`);
``ANY /api/v1/runs/{dag_id}/{run_id}/servers/{name}/{path}`` is forwarded to the healthy server
``name`` of that run (:func:`proxy`): method, path, query, body and headers as sent, except the
caller's ``Authorization`` (the controller's token never reaches a server), ``Host`` and hop-by-hop
headers; the answer is streamed back as it arrives (status, headers, raw body). Connect timeout 5 s,
read timeout ``proxy_timeout``; an unreachable server answers 502, a slow one 504, one that is not
healthy 503, an unknown name 404. Job tasks of the run get ``MLPROV_SERVER_<NAME>_URL`` instead
(:func:`env_for_run`): the direct URL, no token needed.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from controller.errors import (
    RunNotFoundError,
    ServerNotFoundError,
    ServerTimeoutError,
    ServerUnreachableError,
    UnavailableError,
)
from controller.store.db import session_scope
from controller.store.models import PipelineRun, Server, ServerState, utcnow

__all__ = [
    "LIVE",
    "PROXY_METHODS",
    "RunEndResult",
    "ServerNotFoundError",
    "ServerTimeoutError",
    "ServerUnreachableError",
    "ServerView",
    "env_for_run",
    "env_name",
    "is_live",
    "list_servers",
    "proxy",
    "run_row",
    "view",
]

LIVE = (ServerState.STARTING.value, ServerState.HEALTHY.value)
PROXY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade",
    }
)  # fmt: skip
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "authorization", "content-length"}
_TOUCH_EVERY = 5.0


class _ActivityThrottle:
    """At most one activity write per server every ``every`` seconds, in bounded memory.

    Entries older than ``every`` say nothing any more (the next proxied request writes anyway), so they
    are dropped whenever the map outgrows ``limit``: its size stays bounded by the servers proxied within
    one interval, not by every server ever proxied.
    """

    def __init__(self, every: float, limit: int = 1024) -> None:
        self._every, self._limit = every, limit
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, key: str, now: float) -> bool:
        """Whether ``key`` should be written now (and remember that it was)."""
        with self._lock:
            if now - self._last.get(key, float("-inf")) <= self._every:
                return False
            self._last[key] = now
            if len(self._last) > self._limit:
                self._last = {k: t for k, t in self._last.items() if now - t <= self._every}
            return True

    def __len__(self) -> int:
        return len(self._last)


_touched = _ActivityThrottle(_TOUCH_EVERY)


def env_name(service: str) -> str:
    """``MLPROV_SERVER_<NAME>_URL``: the variable job tasks of the run find a server's URL in."""
    return f"MLPROV_SERVER_{re.sub(r'[^A-Z0-9]', '_', service.upper())}_URL"


class ServerView(BaseModel):
    name: str
    state: str
    """starting | healthy | failed | stopped | lost"""
    url: str | None
    """The direct URL (``http://127.0.0.1:<port>``)."""
    proxy_path: str
    """Where the controller forwards to it: ``/api/v1/runs/<dag>/<run>/servers/<name>/``."""
    port: int | None
    task_id: str
    """The task that started it (its events carry the server's history)."""
    reason: str | None
    created_at: datetime
    healthy_at: datetime | None
    stopped_at: datetime | None


class RunEndResult(BaseModel):
    dag_id: str
    run_id: str
    state: str
    servers: list[ServerView]


def view(row: Server) -> ServerView:
    proxy_path = f"/api/v1/runs/{quote(row.dag_id, safe='')}/{quote(row.run_id, safe='')}/servers/{row.service}/"
    return ServerView(
        name=row.service, state=row.state, url=row.url, proxy_path=proxy_path, port=row.port, task_id=row.task_id,
        reason=row.reason, created_at=row.created_at, healthy_at=row.healthy_at, stopped_at=row.stopped_at,
    )  # fmt: skip


def run_row(session: Session, dag_id: str, run_id: str) -> PipelineRun:
    run = session.scalar(select(PipelineRun).where(PipelineRun.dag_id == dag_id, PipelineRun.run_id == run_id))
    if run is None:
        raise RunNotFoundError(f"no pipeline run {dag_id}/{run_id}: tasks submitted with this run create it")
    return run


def is_live(session: Session, dag_id: str, run_id: str, service: str) -> bool:
    """A server of ``service`` is starting or healthy for the run (a new ensure task needs no locks)."""
    found = session.scalar(
        select(Server.id).where(
            Server.dag_id == dag_id, Server.run_id == run_id, Server.service == service, Server.state.in_(LIVE)
        )
    )
    return found is not None


def env_for_run(factory: sessionmaker[Session], dag_id: str | None, run_id: str | None) -> dict[str, str]:
    """``MLPROV_SERVER_<NAME>_URL`` of each healthy server of the run (for its job tasks)."""
    if dag_id is None or run_id is None:
        return {}
    with session_scope(factory) as session:
        rows = session.execute(
            select(Server.service, Server.url).where(
                Server.dag_id == dag_id, Server.run_id == run_id, Server.state == ServerState.HEALTHY.value
            )
        ).all()
    return {env_name(service): url for service, url in rows if url}


def list_servers(factory: sessionmaker[Session], dag_id: str, run_id: str) -> list[ServerView]:
    with session_scope(factory) as session:
        run = run_row(session, dag_id, run_id)
        rows = session.scalars(select(Server).where(Server.pipeline_run_id == run.id).order_by(Server.created_at))
        return [view(row) for row in rows]


def _target(factory: sessionmaker[Session], dag_id: str, run_id: str, name: str) -> str:
    """The URL of a healthy server of the run (404 unknown, 503 not healthy); counts as run activity."""
    with session_scope(factory) as session:
        run = run_row(session, dag_id, run_id)
        row = session.scalar(select(Server).where(Server.pipeline_run_id == run.id, Server.service == name))
        if row is None:
            raise ServerNotFoundError(f"run {dag_id}/{run_id} has no server {name!r}: submit a task of it first")
        if row.state != ServerState.HEALTHY or row.url is None:
            raise UnavailableError(f"server {name!r} of run {dag_id}/{run_id} is {row.state}, not healthy")
        if _touched.due(row.id, time.monotonic()):  # at most one write per server every few seconds
            row.last_activity_at = utcnow()
        return row.url


async def proxy(
    factory: sessionmaker[Session],
    dag_id: str,
    run_id: str,
    name: str,
    path: str,
    request: Request,
    proxy_timeout: float = 300.0,
) -> StreamingResponse:
    """Forward ``request`` to the run's server ``name`` at ``path`` and stream its answer back."""
    base = await run_in_threadpool(_target, factory, dag_id, run_id, name)
    url = f"{base}/{path}" + (f"?{request.url.query}" if request.url.query else "")
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    content = None
    if chunked or (length is not None and length != "0"):
        content = request.stream()
        if length is not None:
            headers.append(("content-length", length))
    client = httpx.AsyncClient(timeout=httpx.Timeout(proxy_timeout, connect=5.0), trust_env=False)
    upstream = client.build_request(request.method, url, headers=headers, content=content)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TimeoutException as exc:
        await client.aclose()
        raise ServerTimeoutError(f"server {name!r} did not answer within {proxy_timeout:g} s") from exc
    except httpx.HTTPError as exc:
        await client.aclose()
        raise ServerUnreachableError(f"server {name!r} cannot be reached: {' '.join(str(exc).split())}") from exc

    async def close() -> None:
        await response.aclose()
        await client.aclose()

    answer = StreamingResponse(response.aiter_raw(), status_code=response.status_code, background=BackgroundTask(close))
    answer.raw_headers = [(k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in _HOP_BY_HOP]
    return answer
