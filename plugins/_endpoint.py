"""Where the controller is and how its answers become plugin exceptions (private: use ``ControllerHook``).

``ControllerEndpoint.from_connection`` reads an Airflow Connection: ``host`` (a bare host name or a
full ``http(s)://host[:port]`` URL), ``port``, ``schema`` (``http`` or ``https``; default ``http``),
``password`` = the bearer token (or extra ``token``), and the optional extras ``mlflow_ui_url``,
``kibana_url``, ``verify`` (TLS verification, default true) and ``timeout`` (seconds per request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from plugins.exceptions import (
    ControllerAuthError,
    ControllerError,
    ControllerRequestError,
    ControllerTaskLost,
    ControllerUnreachable,
    UnknownServiceError,
    one_line,
)

__all__ = ["TRANSIENT_STATUS", "ControllerEndpoint", "error_for", "path_part", "unreachable"]

TRANSIENT_STATUS = frozenset({502, 503, 504})
"""Answers worth retrying: a proxy or the controller itself is (re)starting or overloaded."""


def path_part(value: str) -> str:
    """One URL path segment (run ids hold ``:`` and ``+``)."""
    return quote(value, safe="")


def _rison_string(value: str) -> str:
    """A Rison string literal (Kibana's URL state format): quoted, ``!`` and ``'`` escaped with ``!``."""
    return "'" + value.replace("!", "!!").replace("'", "!'") + "'"


@dataclass(frozen=True)
class ControllerEndpoint:
    conn_id: str
    base_url: str
    """``scheme://host:port`` without a trailing slash."""
    token: str | None
    mlflow_ui_url: str | None = None
    kibana_url: str | None = None
    verify: bool = True
    timeout: float | None = None

    @classmethod
    def from_connection(cls, conn: Any) -> ControllerEndpoint:
        """The endpoint an Airflow ``Connection`` describes (see the module docstring for the fields)."""
        extra: dict[str, Any] = {}
        if conn.extra:
            try:
                loaded = json.loads(conn.extra)
            except ValueError:
                raise ControllerError(
                    f"connection '{conn.conn_id}': extra is not a JSON object; fix it (e.g. {{\"token\": ...}})"
                ) from None
            extra = loaded if isinstance(loaded, dict) else {}
        host = (conn.host or "").strip().rstrip("/")
        if not host:
            raise ControllerError(f"connection '{conn.conn_id}' has no host: set it to the controller's address")
        if "://" in host:
            base = host
        else:
            scheme = (conn.schema or extra.get("scheme") or "http").lower()
            if scheme not in ("http", "https"):
                raise ControllerError(
                    f"connection '{conn.conn_id}': schema {scheme!r} is not http or https; set the schema field"
                )
            base = f"{scheme}://{host}"
        if conn.port and not _has_port(base):
            base = f"{base}:{int(conn.port)}"
        token = conn.password or extra.get("token") or None
        timeout = extra.get("timeout")
        return cls(
            conn_id=str(conn.conn_id),
            base_url=base,
            token=str(token) if token else None,
            mlflow_ui_url=_url(extra.get("mlflow_ui_url")),
            kibana_url=_url(extra.get("kibana_url")),
            verify=str(extra.get("verify", "true")).lower() not in ("false", "0", "no"),
            timeout=float(timeout) if timeout not in (None, "") else None,
        )

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "mlprov-airflow-plugin"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    # -- links ------------------------------------------------------------------------------------

    def task_url(self, task_id: str) -> str:
        """The controller's page of the task (its JSON: the controller has no HTML UI)."""
        return f"{self.base_url}/api/v1/tasks/{path_part(task_id)}"

    def log_search_url(self, task_id: str) -> str:
        """Kibana Discover filtered to the task when ``kibana_url`` is set, else the controller's log search."""
        if self.kibana_url:
            query = _rison_string(f'task_id:"{task_id}"')
            state = f"(query:(language:kuery,query:{query}))"
            app_state = quote(state, safe="(),:!'")
            return f"{self.kibana_url}/app/discover#/?_g=(time:(from:now-30d,to:now))&_a={app_state}"
        return f"{self.base_url}/api/v1/logs/search?" + urlencode({"task_id": task_id, "order": "asc"})

    def mlflow_run_url(self, mlflow_run_id: str | None) -> str | None:
        """The MLflow UI's run page (its ``#/runs/<id>`` route finds the experiment), when both are known."""
        if not self.mlflow_ui_url or not mlflow_run_id:
            return None
        return f"{self.mlflow_ui_url}/#/runs/{path_part(mlflow_run_id)}"


def _has_port(base: str) -> bool:
    return ":" in base.split("://", 1)[1].split("/", 1)[0]


def _url(value: Any) -> str | None:
    return str(value).rstrip("/") if value else None


def _detail(response: httpx.Response) -> tuple[str, str]:
    """The controller's ``(error code, detail)``; the raw text when the body is not its JSON shape."""
    try:
        body = response.json()
    except ValueError:
        return "", one_line(response.text or response.reason_phrase, 300)
    if isinstance(body, dict):
        return str(body.get("error") or ""), one_line(str(body.get("detail") or body), 300)
    return "", one_line(str(body), 300)


def error_for(endpoint: ControllerEndpoint, response: httpx.Response, what: str) -> ControllerError:
    """The exception for a non-2xx answer to ``what`` (e.g. ``"submit service 'train'"``)."""
    status = response.status_code
    code, detail = _detail(response)
    where = f"the controller at {endpoint.base_url}"
    if status in (401, 403):
        reason = "refused the token" if status == 401 else "refused this token's scope (it needs an admin token)"
        return ControllerAuthError(
            f"{what}: {where} {reason} of connection '{endpoint.conn_id}' (HTTP {status}: {detail}); "
            "set the connection's password to a valid mlprov token"
        )
    if status == 404 and code == "service_not_found":
        return UnknownServiceError(f"{what}: unknown service: {detail}")
    if status == 404 and code == "task_not_found":
        return ControllerTaskLost(f"{what}: {where} no longer knows this task: {detail}")
    if (
        status in (404, 405)
        and code in ("not_found", "method_not_allowed")
        and detail in ("Not Found", "Method Not Allowed")
    ):
        return ControllerRequestError(f"{what}: {where} has no such endpoint (HTTP {status}): upgrade the controller")
    if 400 <= status < 500:
        return ControllerRequestError(f"{what}: {where} refused the request (HTTP {status} {code}): {detail}")
    if status in TRANSIENT_STATUS:
        return ControllerUnreachable(f"{what}: {where} is unavailable (HTTP {status}: {detail}); retry later")
    return ControllerError(f"{what}: {where} failed (HTTP {status} {code}): {detail}")


def unreachable(endpoint: ControllerEndpoint, what: str, exc: Exception, attempts: int) -> ControllerUnreachable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
    return ControllerUnreachable(
        f"{what}: the controller at {endpoint.base_url} {kind} after {attempts} attempt(s) "
        f"({type(exc).__name__}: {exc}); is it running? check connection '{endpoint.conn_id}'"
    )
