"""``external`` services: the controller calls an HTTP endpoint outside the platform and records the call.

A task of an external service (e.g. a legacy tool on a Windows host) is granted its locks and a run
slot like a job, then, on the dispatcher's thread, :meth:`ExternalCaller.run_task`:

* sends ``method url`` with the spec's ``headers`` plus ``X-Mlprov-Task-Id``; the merged params
  (service defaults overlaid by the task's) are the JSON body for POST/PUT/PATCH, the query string
  for GET/DELETE (scalars as they are, lists and objects as JSON);
* times out after the task's (or service's) ``timeout`` (default 30 s) and retries **only** connect
  errors (nothing reached the tool), ``connect_retries`` attempts in all, with a doubling back-off;
* reads the response body up to ``max_response_bytes``;
* records one ``external_call`` event (component ``external``, on the task and the LogBus) with the
  request (method, URL, headers, body size and sha256), the response (status, headers, size, digest,
  a preview of the body) and the timing; header values whose name looks secret (``Authorization``,
  cookies, anything containing ``auth``, ``token``, ``secret``, ``key`` or ``password``) and such
  query parameters and URL passwords are replaced by ``[redacted]`` in every record;
* ends the task: ``succeeded`` on a 2xx answer, its body stored in the ``ArtifactStore`` as the
  task's output ``<service>-response.<json|txt|bin>`` (artifact row, ``produced`` lineage edge,
  digest in ``outputs``); ``failed`` otherwise with a one-line reason (status and body start, connect
  error, time-out, over-size body). ``exit_code`` is 0 on 2xx and 1 on any failure; the HTTP status
  is in ``details.external.http_status``.

A cancel is honoured between attempts; an attempt in flight ends by its own timeout.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore
from controller.catalog import ServiceSpec
from controller.logging import get_logger
from controller.logs.base import LogRecord
from controller.services import outputs as outputs_mod
from controller.services.locks import LockService
from controller.services.task_records import (
    add_event,
    deep_merge,
    next_attempt,
    record_call_end,
    record_call_started,
    record_end_without_job,
)
from controller.store.db import session_scope
from controller.store.models import Task, TaskState

__all__ = ["REDACTED", "ExternalCaller", "is_secret_name", "redact_headers", "redact_url"]

log = get_logger(__name__)

REDACTED = "[redacted]"
_SECRET = re.compile(r"auth|token|secret|key|password|passwd|cookie|credential", re.IGNORECASE)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_TIMEOUT = 30.0


def is_secret_name(name: str) -> bool:
    """True for a header or parameter name whose value must never be logged."""
    return bool(_SECRET.search(name))


def redact_headers(headers: Any) -> dict[str, str]:
    """``headers`` (a mapping or httpx.Headers) with secret-looking values replaced by ``[redacted]``."""
    return {str(k): (REDACTED if is_secret_name(str(k)) else str(v)) for k, v in headers.items()}


def redact_url(url: str) -> str:
    """``url`` without its userinfo password and with secret-looking query values redacted."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="[]")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _extension(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    return "txt" if media.startswith("text/") else "bin"


def _query(params: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        elif value is not None:
            out[key] = json.dumps(value, sort_keys=True)
    return out


@dataclass
class _Call:
    """What one external call produced (for the event, the task's details and its ending)."""

    state: TaskState = TaskState.FAILED
    reason: str | None = None
    status: int | None = None
    body: bytes | None = None
    event: dict[str, Any] = field(default_factory=dict)


class ExternalCaller:
    """Runs ``external`` tasks for the dispatcher (see the module docstring). Thread-safe."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        locks: LockService,
        store: ArtifactStore,
        work_dir: Path,
        publish: Callable[[list[LogRecord]], None],
        max_response_bytes: int = 10 * 1024 * 1024,
        connect_retries: int = 3,
        retry_backoff: float = 0.5,
        preview_bytes: int = 2048,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._sf = session_factory
        self._locks = locks
        self._store = store
        self._work_dir = work_dir
        self._publish = publish
        self.max_response_bytes = max_response_bytes
        self._retries = max(1, connect_retries)
        self.retry_backoff = retry_backoff
        self._preview = preview_bytes
        self._transport = transport

    def run_task(self, task_id: str, cancel: threading.Event) -> int:
        """Call the endpoint for a granted task and record everything; returns the attempt number."""
        with session_scope(self._sf) as session:
            task = session.get(Task, task_id)
            if task is None:
                return 1
            spec = ServiceSpec.model_validate(task.service_spec or {})
            params = deep_merge(spec.params, task.params or {})
            timeout = task.timeout or spec.timeout or _DEFAULT_TIMEOUT
            attempt = next_attempt(session, task_id)
        assert spec.url is not None, "the catalog requires url for external services"
        assert spec.method is not None, "the catalog requires method for external services"
        started = record_call_started(self._sf, task_id, attempt, method=spec.method, url=redact_url(spec.url))
        if started is None or cancel.is_set():
            reason = "cancelled before the call"
            self._publish(record_end_without_job(self._sf, self._locks, task_id, attempt, TaskState.CANCELLED, reason))
            return attempt
        self._publish(started)
        call = self._call(task_id, spec, params, timeout, cancel)
        collected: list[outputs_mod.Output] = []
        if call.state is TaskState.SUCCEEDED and call.body is not None:
            try:
                collected = self._store_body(task_id, spec, params, call)
            except Exception as exc:  # the store failed: the call happened, the evidence could not be kept
                log.exception("external response could not be stored", task_id=task_id)
                call.state, call.reason = TaskState.FAILED, f"the response could not be stored: {_one_line(str(exc))}"
        if collected:
            call.event["response"]["digest"] = collected[0].digest
        pending: list[LogRecord] = []
        with session_scope(self._sf) as session:
            row = session.get(Task, task_id)
            if row is not None:
                add_event(session, row, "external_call", pending, attempt=attempt, component="external", **call.event)
        self._publish(pending)
        details = {
            "external": {
                "method": spec.method,
                "url": redact_url(spec.url),
                "http_status": call.status,
                "elapsed_ms": call.event["timing"]["elapsed_ms"],
                "attempts": call.event["timing"]["attempts"],
                "response_digest": collected[0].digest if collected else None,
            }
        }
        exit_code = 0 if call.state is TaskState.SUCCEEDED else 1
        self._publish(
            record_call_end(
                self._sf, self._locks, task_id, attempt, call.state, exit_code, call.reason, collected, details
            )
        )
        return attempt

    # -- the call ---------------------------------------------------------------------------------

    def _call(
        self, task_id: str, spec: ServiceSpec, params: dict[str, Any], timeout: float, cancel: threading.Event
    ) -> _Call:
        method, url = spec.method or "POST", spec.url or ""
        headers = {**spec.headers, "X-Mlprov-Task-Id": task_id}
        content: bytes | None = None
        query: dict[str, str] | None = None
        if method in _BODY_METHODS:
            content = json.dumps(params, sort_keys=True).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            query = _query(params) or None
        shown_url = redact_url(str(httpx.URL(url, params=query)) if query else url)
        call = _Call()
        call.event["request"] = {
            "method": method,
            "url": shown_url,
            "headers": redact_headers(headers),
            "body_size": len(content) if content is not None else 0,
            "body_sha256": hashlib.sha256(content).hexdigest() if content is not None else None,
        }
        began, attempts = time.time(), 0
        with httpx.Client(timeout=timeout, transport=self._transport, follow_redirects=False) as client:
            while True:
                if cancel.is_set():
                    call.state, call.reason = TaskState.CANCELLED, "cancelled before the call was answered"
                    break
                attempts += 1
                try:
                    self._send(client, method, url, headers, content, query, call)
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached the tool: retry
                    call.reason = (
                        f"cannot connect to {method} {shown_url} after {attempts} attempt(s): {_one_line(str(exc))}"
                    )
                    if attempts >= self._retries or cancel.wait(self.retry_backoff * 2 ** (attempts - 1)):
                        break
                except httpx.TimeoutException:
                    call.reason = f"no answer from {method} {shown_url} within {timeout:g} s"
                    break
                except httpx.HTTPError as exc:
                    call.reason = f"{method} {shown_url} failed: {_one_line(str(exc) or type(exc).__name__)}"
                    break
        call.event["timing"] = {
            "started_at": began,
            "elapsed_ms": round((time.time() - began) * 1000, 1),
            "attempts": attempts,
        }
        if call.reason is not None and "response" not in call.event:
            call.event["error"] = call.reason
            call.event["response"] = None
        return call

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        query: dict[str, str] | None,
        call: _Call,
    ) -> None:
        with client.stream(method, url, headers=headers, content=content, params=query) as response:
            chunks: list[bytes] = []
            size, truncated = 0, False
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    truncated = True
                    break
                chunks.append(chunk)
            body = b"".join(chunks)
        call.status = response.status_code
        call.event["response"] = {
            "status": response.status_code,
            "reason_phrase": response.reason_phrase,
            "headers": redact_headers(response.headers),
            "size": len(body),
            "truncated": truncated,
            "body_preview": body[: self._preview].decode("utf-8", "replace"),
            "content_type": response.headers.get("content-type"),
        }
        if truncated:
            call.reason = (
                f"the response of {method} {redact_url(url)} is over {self.max_response_bytes} bytes "
                "(the controller's limit for external responses)"
            )
        elif 200 <= response.status_code < 300:
            call.state, call.reason, call.body = TaskState.SUCCEEDED, None, body
        else:
            start = _one_line(body[:200].decode("utf-8", "replace"), 200)
            call.reason = (
                f"{method} {redact_url(url)} answered HTTP {response.status_code} {response.reason_phrase}"
                + (f": {start}" if start else "")
            )

    def _store_body(
        self, task_id: str, spec: ServiceSpec, params: dict[str, Any], call: _Call
    ) -> list[outputs_mod.Output]:
        """The response body as the task's output artifact (hashed and stored like a job's outputs/)."""
        workspace = self._work_dir / task_id
        outputs_mod.prepare_workspace(workspace, params)
        content_type = call.event["response"].get("content_type") or ""
        (workspace / "outputs" / f"{spec.name}-response.{_extension(content_type)}").write_bytes(call.body or b"")
        return outputs_mod.collect(workspace / "outputs", self._store)
