"""``ControllerHook``: the plugin's one way to talk to the mlprov controller (httpx, sync and async).

Configured by the Airflow Connection ``mlprov_controller`` (see ``plugins._endpoint`` for its fields),
e.g. ``AIRFLOW_CONN_MLPROV_CONTROLLER='{"conn_type": "http", "host": "127.0.0.1", "port": 8080,
"password": "<token>"}'``. Every request has a time-out; connection errors and 502/503/504 answers are
retried with exponential back-off (``retries`` times), a 4xx never is. Answers become the named
exceptions of ``plugins.exceptions``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from airflow.sdk import BaseHook

from plugins._endpoint import TRANSIENT_STATUS, ControllerEndpoint, error_for, path_part, unreachable
from plugins.exceptions import ControllerError

__all__ = ["TERMINAL_STATES", "ControllerHook", "LogCursor"]

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "lost"})
"""Controller task states after which nothing changes."""
MAX_WAIT = 60.0
"""The longest long poll the controller accepts (``GET /api/v1/tasks/{id}?wait=``)."""

_MAX_BACKOFF = 10.0
# Errors where the request surely never reached the controller: safe to resend even a POST.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after which the request may have been processed: resend only idempotent requests.
_MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class LogCursor:
    """Where :meth:`ControllerHook.iter_logs` stopped; pass it again to get only newer records.

    ``page`` is the controller's last page cursor; ``seen`` the record ids already returned after it
    (the controller gives no cursor for a last, partial page, so that page is re-read and de-duplicated).
    """

    page: str | None = None
    seen: set[str] = field(default_factory=set)


def _record_key(record: dict[str, Any]) -> str:
    return str(record.get("id") or f"{record.get('timestamp')}:{record.get('component')}:{record.get('message')}")


class ControllerHook(BaseHook):
    """Client of the controller's task API, configured by an Airflow Connection."""

    conn_name_attr = "conn_id"
    default_conn_name = "mlprov_controller"
    conn_type = "http"
    hook_name = "mlprov controller"

    def __init__(
        self,
        conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        endpoint: ControllerEndpoint | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.retries = max(0, retries)
        self.backoff = backoff
        self._timeout = timeout
        self._endpoint = endpoint
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    # -- connection -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> ControllerEndpoint:
        """The controller's address and token, read from the Connection once."""
        if self._endpoint is None:
            self._endpoint = ControllerEndpoint.from_connection(self.get_connection(self.conn_id))
        return self._endpoint

    async def aendpoint(self) -> ControllerEndpoint:
        """:attr:`endpoint` for async callers (the triggerer): reads the Connection without blocking the loop."""
        if self._endpoint is None:
            self._endpoint = ControllerEndpoint.from_connection(await self.aget_connection(self.conn_id))
        return self._endpoint

    def _httpx_timeout(self, endpoint: ControllerEndpoint) -> httpx.Timeout:
        total = endpoint.timeout or self._timeout
        return httpx.Timeout(total, connect=min(5.0, total))

    def get_conn(self) -> httpx.Client:
        """The sync client (one per hook; closed by :meth:`close`)."""
        if self._client is None:
            ep = self.endpoint
            self._client = httpx.Client(
                base_url=ep.base_url, headers=ep.headers, timeout=self._httpx_timeout(ep), verify=ep.verify
            )
        return self._client

    async def aget_conn(self) -> httpx.AsyncClient:
        """The async client (one per hook; closed by :meth:`aclose`)."""
        if self._aclient is None:
            ep = await self.aendpoint()
            self._aclient = httpx.AsyncClient(
                base_url=ep.base_url, headers=ep.headers, timeout=self._httpx_timeout(ep), verify=ep.verify
            )
        return self._aclient

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def __enter__(self) -> ControllerHook:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        return float(min(_MAX_BACKOFF, self.backoff * (2**attempt)))

    def _retryable(self, exc: Exception, idempotent: bool) -> bool:
        return isinstance(exc, _NOT_SENT) or (idempotent and isinstance(exc, _MAYBE_SENT))

    def _request(self, method: str, path: str, what: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        client = self.get_conn()
        attempt = 0
        while True:
            try:
                response = client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.retries or not self._retryable(exc, idempotent):
                    raise unreachable(self.endpoint, what, exc, attempt + 1) from None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code not in TRANSIENT_STATUS or attempt >= self.retries or not idempotent:
                    raise error_for(self.endpoint, response, what)
            self.log.info("controller request %s %s: retrying in %.1fs", method, path, self._delay(attempt))
            time.sleep(self._delay(attempt))
            attempt += 1

    async def _arequest(self, method: str, path: str, what: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        client = await self.aget_conn()
        endpoint = await self.aendpoint()
        attempt = 0
        while True:
            try:
                response = await client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.retries or not self._retryable(exc, idempotent):
                    raise unreachable(endpoint, what, exc, attempt + 1) from None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code not in TRANSIENT_STATUS or attempt >= self.retries or not idempotent:
                    raise error_for(endpoint, response, what)
            await asyncio.sleep(self._delay(attempt))
            attempt += 1

    # -- tasks ------------------------------------------------------------------------------------

    def submit_task(
        self,
        service: str,
        *,
        params: dict[str, Any] | None = None,
        inputs: list[str] | None = None,
        code: dict[str, Any] | None = None,
        run: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Queue a task; ``{id, state, token, created}``. With ``run`` (dag_id, run_id, task_id,
        try_number) the submission is idempotent, so it is also retried after a lost answer."""
        body: dict[str, Any] = {"service": service, "params": params or {}, "inputs": list(inputs or [])}
        for key, value in (("code", code), ("run", run), ("resources", resources), ("timeout", timeout)):
            if value is not None:
                body[key] = value
        answer: dict[str, Any] = self._request(
            "POST", "/api/v1/tasks", f"submit service {service!r}", idempotent=run is not None, json=body
        )
        return answer

    def _wait_query(self, endpoint: ControllerEndpoint, wait: float | None, state: str | None) -> dict[str, Any]:
        """The query and time-out of a long poll (``wait`` seconds on top of the usual time-out), or none."""
        if not wait or wait <= 0:
            return {}
        params: dict[str, Any] = {"wait": min(wait, MAX_WAIT)}
        if state:
            params["state"] = state
        base = self._httpx_timeout(endpoint)
        timeout = httpx.Timeout(float(base.read or 0) + params["wait"], connect=base.connect)
        return {"params": params, "timeout": timeout}

    def get_task(self, task_id: str, *, wait: float | None = None, state: str | None = None) -> dict[str, Any]:
        """The task's JSON: state, exit_code, reason, outputs, mlflow_run_id, timings.

        ``wait``: a long poll (the controller answers as soon as the state is no longer ``state``, default
        its state now, or is terminal; at the latest after ``wait`` s, at most 60). A controller without
        long polls answers at once: callers must still pace their loop."""
        task: dict[str, Any] = self._request(
            "GET",
            f"/api/v1/tasks/{path_part(task_id)}",
            f"read task {task_id}",
            **self._wait_query(self.endpoint, wait, state),
        )
        return task

    async def aget_task(self, task_id: str, *, wait: float | None = None, state: str | None = None) -> dict[str, Any]:
        """:meth:`get_task` for async callers (the triggerer)."""
        task: dict[str, Any] = await self._arequest(
            "GET",
            f"/api/v1/tasks/{path_part(task_id)}",
            f"read task {task_id}",
            **self._wait_query(await self.aendpoint(), wait, state),
        )
        return task

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """Cancel (idempotent): a waiting task ends at once, a running one is killed then ``cancelled``."""
        task: dict[str, Any] = self._request("DELETE", f"/api/v1/tasks/{path_part(task_id)}", f"cancel task {task_id}")
        return task

    async def acancel_task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = await self._arequest(
            "DELETE", f"/api/v1/tasks/{path_part(task_id)}", f"cancel task {task_id}"
        )
        return task

    def iter_logs(self, task_id: str, after: LogCursor | None = None, *, limit: int = 200) -> Iterator[dict[str, Any]]:
        """The task's log records (output lines and events), oldest first, that ``after`` has not seen.

        ``after`` is updated as records are yielded: pass the same cursor again later for new ones."""
        cursor = after if after is not None else LogCursor()
        path = f"/api/v1/tasks/{path_part(task_id)}/logs"
        while True:
            query: dict[str, Any] = {"limit": limit}
            if cursor.page:
                query["cursor"] = cursor.page
            page = self._request("GET", path, f"read the logs of task {task_id}", params=query)
            for record in page.get("records") or []:
                key = _record_key(record)
                if key in cursor.seen:
                    continue
                cursor.seen.add(key)
                yield record
            next_page = page.get("next_cursor")
            if not next_page:
                return
            cursor.page, cursor.seen = next_page, set()

    def task_outputs(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The task's outputs as ``{name, digest, size, kind, manifest_id}``; ``manifest_id`` from the task
        JSON, else the artifact's latest output manifest written by this task, else None."""
        outputs: list[dict[str, Any]] = []
        for item in task.get("outputs") or []:
            manifest_id = item.get("manifest_id")
            if manifest_id is None and item.get("digest"):
                manifest_id = self._manifest_of(str(item["digest"]), str(task["id"]))
            outputs.append(
                {
                    "name": item.get("name"),
                    "digest": item.get("digest"),
                    "size": item.get("size"),
                    "kind": item.get("kind"),
                    "manifest_id": manifest_id,
                }
            )
        return outputs

    def _manifest_of(self, digest: str, task_id: str) -> str | None:
        try:
            artifact = self._request("GET", f"/api/v1/artifacts/{path_part(digest)}", f"read artifact {digest}")
        except ControllerError as exc:
            self.log.info("no manifest found for %s: %s", digest, exc)
            return None
        manifests = [
            m
            for m in artifact.get("manifests") or []
            if m.get("task_id") == task_id and m.get("role") == "output" and not m.get("deleted")
        ]
        return str(manifests[-1]["id"]) if manifests else None

    # -- runs and verification -------------------------------------------------------------------

    def end_run(self, dag_id: str, run_id: str, state: str = "succeeded") -> dict[str, Any]:
        """End the pipeline run (one Airflow DAG run) as ``state`` (succeeded, failed, cancelled); the
        controller stops the run's servers. Idempotent: the first state stays."""
        answer: dict[str, Any] = self._request(
            "POST",
            f"/api/v1/runs/{path_part(dag_id)}/{path_part(run_id)}/end",
            f"end run {dag_id}/{run_id}",
            json={"state": state},
        )
        return answer

    def verify(self, digest: str) -> dict[str, Any]:
        """The controller's full-chain verification report of the artifact (``ok`` false is still a report)."""
        report: dict[str, Any] = self._request("POST", "/api/v1/verify", f"verify {digest}", json={"artifact": digest})
        return report
