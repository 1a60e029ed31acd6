"""Small pieces the Kubernetes runtime shares: calls with a timeout and raw JSON, handle refs, Job states.

:class:`ApiCalls` wraps every call the runtime makes with ``_request_timeout`` and
``_preload_content=False`` (objects stay raw API dicts, never client models): ``call`` turns a refusal
into a :class:`~controller.errors.JobLaunchError` naming what failed, ``quietly`` logs and goes on (an
owner reference, a TTL, a clean-up), ``list`` lists by label selector.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import structlog

from controller.errors import JobLaunchError
from controller.runtime.base import JobState
from controller.runtime.k8s_watch import read_json

__all__ = ["ApiCalls", "api_error", "job_state", "log_time", "make_ref", "parse_ref", "parse_time"]

log = structlog.get_logger(__name__)


def job_state(job: dict[str, Any]) -> tuple[JobState, str | None]:
    """A Job's state from its status: ``Complete``/``Failed`` are final (set once its pods, the native
    sidecar included, terminated); ``DeadlineExceeded`` is a time-out; active pods mean running."""
    status = job.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in true:
        return JobState.SUCCEEDED, None
    if "Failed" in true:
        cond = true["Failed"]
        reason = f"{cond.get('reason') or 'Failed'}: {cond.get('message') or 'the job failed'}"
        if cond.get("reason") == "DeadlineExceeded":
            return JobState.TIMED_OUT, reason
        return JobState.FAILED, reason
    if status.get("active") or status.get("startTime"):
        return JobState.RUNNING, None
    return JobState.PENDING, None


def parse_time(text: str | None) -> float | None:
    """An API timestamp (RFC 3339, ``Z``) as epoch seconds; None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def log_time(stamp: str) -> float:
    """A kubelet log timestamp (RFC 3339 with up to nanoseconds) as epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = parse_time(head + "Z") or time.time()
    return base + (float("0." + frac) if frac.isdigit() else 0.0)


def make_ref(namespace: str, kind: str, selector: str) -> str:
    """A job handle's ref: ``k8s:<namespace>:<job|server>:<label selector>``."""
    return f"k8s:{namespace}:{kind}:{selector}"


def parse_ref(ref: str) -> tuple[str, str, str]:
    prefix, namespace, kind, selector = ref.split(":", 3)
    if prefix != "k8s":
        raise ValueError(f"not a kubernetes job ref: {ref!r}")
    return namespace, kind, selector


def api_error(exc: Exception) -> str:
    """One line from an ``ApiException`` (status, reason and the Status message) or any error."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            message = str(body)[:300]
    head = f"HTTP {status} {getattr(exc, 'reason', '')}".strip() if status else type(exc).__name__
    return " ".join(f"{head}: {message or exc}".split())[:500]


class ApiCalls:
    """See the module docstring."""

    def __init__(self, request_timeout: float) -> None:
        self.timeout = request_timeout

    def list(self, list_fn: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
        response = list_fn(namespace, label_selector=selector, _preload_content=False, _request_timeout=self.timeout)
        return list(read_json(response).get("items") or [])

    def call(self, what: str, fn: Any, *args: Any) -> dict[str, Any]:
        try:
            return read_json(fn(*args, _preload_content=False, _request_timeout=self.timeout))
        except Exception as exc:
            raise JobLaunchError(f"cannot {what}: {api_error(exc)}") from exc

    def quietly(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A best-effort call: logged, never raised."""
        try:
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            release = getattr(response, "release_conn", None)
            if callable(release):
                release()
        except Exception as exc:
            log.warning("kubernetes_call_failed", call=getattr(fn, "__name__", "?"), error=api_error(exc))
