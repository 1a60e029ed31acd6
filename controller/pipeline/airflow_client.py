"""A small client of Airflow 3's REST API v2 (``/api/v2``) for ``mlprov pipeline test``.

Authentication: a bearer token given as is (``AIRFLOW_TOKEN``), or one obtained from ``POST /auth/token``
with a user and password (the simple auth manager and the FAB provider both answer it). Transport
failures become :class:`UnreachableError`; answers >= 400 :class:`HttpStatusError`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from controller.pipeline.controller_client import HttpStatusError, detail_of
from controller.pipeline.errors import UnreachableError

__all__ = ["TERMINAL_RUN_STATES", "AirflowClient"]

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowClient:
    """Airflow at ``base_url``; give ``token`` or ``username``/``password``; ``transport`` for tests."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._credentials = (username, password) if username and password is not None else None
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UnreachableError(
                f"Airflow at {self.base_url} is unreachable ({what}: {type(exc).__name__}): "
                "check the Airflow URL and that its API server runs"
            ) from exc

    def login(self) -> None:
        """Get a token from ``POST /auth/token`` when only a user and password were given."""
        if self._token is not None or self._credentials is None:
            return
        username, password = self._credentials
        response = self._send("POST", "/auth/token", "login", json={"username": username, "password": password})
        if response.status_code >= 300:
            raise HttpStatusError(
                f"Airflow refused the login of {username!r} ({response.status_code}): {detail_of(response)}",
                response.status_code,
            )
        self._token = str(response.json()["access_token"])

    def request(self, method: str, path: str, what: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        self.login()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        response = self._send(method, path, what, headers=headers, **kwargs)
        if response.status_code >= 400 and response.status_code not in ok:
            raise HttpStatusError(
                f"Airflow refused {what} ({response.status_code}): {detail_of(response)}", response.status_code
            )
        return response

    # -- the calls ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no authentication needed)."""
        response = self._send("GET", "/api/v2/monitor/health", "the health check")
        if response.status_code >= 400:
            raise HttpStatusError(f"Airflow's health check answered {response.status_code}", response.status_code)
        body: dict[str, Any] = response.json()
        return body

    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}", f"DAG {dag_id}", ok=(404,))
        if response.status_code == 404:
            return None
        dag: dict[str, Any] = response.json()
        return dag

    def import_errors(self) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/v2/importErrors", "the import errors", params={"limit": 100}).json()
        errors: list[dict[str, Any]] = body.get("import_errors", [])
        return errors

    def unpause(self, dag_id: str) -> None:
        self.request(
            "PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", f"unpausing {dag_id}", json={"is_paused": False}
        )

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Trigger a run now; its ``dag_run_id``."""
        body = self.request(
            "POST",
            f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
            f"triggering {dag_id}",
            json={"logical_date": None, "conf": conf},
        ).json()
        return str(body["dag_run_id"])

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
        run: dict[str, Any] = self.request("GET", path, f"run {run_id}").json()
        return run

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        body = self.request("GET", path, f"the task instances of {run_id}", params={"limit": 1000}).json()
        instances: list[dict[str, Any]] = body.get("task_instances", [])
        return instances
