"""A small synchronous client of the controller's ``/api/v1`` for deploy and pipeline checks.

Transport failures become :class:`UnreachableError` (exit 5); an answer >= 400 becomes
:class:`HttpStatusError` carrying the controller's one-line ``detail``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from controller.pipeline.errors import PipelineError, UnreachableError

__all__ = ["ControllerClient", "HttpStatusError", "detail_of"]


class HttpStatusError(PipelineError):
    """An HTTP answer >= 400 from Airflow or the controller."""

    def __init__(self, message: str, status_code: int = 0) -> None:
        super().__init__(message)
        self.status_code = status_code


def detail_of(response: httpx.Response) -> str:
    """The one-line reason of an error answer (the controller's ``detail``, Airflow's ``detail``)."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title") or body
        if isinstance(detail, list):  # FastAPI 422: [{loc, msg}, ...]
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                for d in detail
            )
        return " ".join(str(detail).split())[:500]
    return " ".join(str(body).split())[:500]


class ControllerClient:
    """The controller at ``base_url`` with a bearer ``token``; ``transport`` for tests (ASGI)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport, trust_env=False
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, what: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """``method path``; statuses in ``ok`` are returned as they are, other errors raised."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UnreachableError(
                f"the controller at {self.base_url} is unreachable ({what}: {type(exc).__name__}): "
                "check the controller URL and that it runs"
            ) from exc
        if response.status_code >= 400 and response.status_code not in ok:
            raise HttpStatusError(
                f"the controller refused {what} ({response.status_code}): {detail_of(response)}", response.status_code
            )
        return response

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        return self.request(method, path, what, **kwargs).json()

    # -- health and services ------------------------------------------------------------------------

    def ready(self) -> None:
        self.request("GET", "/readyz", "the readiness check")

    def validate_services(self, entries: list[Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", "/api/v1/services/validate", "the services dry run", json={"services": entries}
        )
        return result

    def get_service(self, name: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/api/v1/services/{quote(name, safe='')}", f"service {name}", ok=(404,))
        if response.status_code == 404:
            return None
        found: dict[str, Any] = response.json()
        return found

    def create_service(self, spec: dict[str, Any]) -> None:
        self.request("POST", "/api/v1/services", f"registering service {spec.get('name')!r}", json=spec)

    def replace_service(self, spec: dict[str, Any]) -> None:
        name = str(spec["name"])
        self.request("PUT", f"/api/v1/services/{quote(name, safe='')}", f"updating service {name!r}", json=spec)

    def delete_service(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/services/{quote(name, safe='')}", f"deleting service {name!r}", ok=(404,))

    def record_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/api/v1/deployments", "recording the deployment", json=body)
        return result

    # -- runs, provenance, logs ---------------------------------------------------------------------

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        path = f"/api/v1/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"
        result: dict[str, Any] = self._json("GET", path, f"run {dag_id}/{run_id}")
        return result

    def run_provenance(self, dag_id: str, run_id: str) -> dict[str, Any]:
        path = f"/api/v1/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}/provenance"
        result: dict[str, Any] = self._json("GET", path, f"the provenance of run {dag_id}/{run_id}")
        return result

    def verify(self, digest: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/api/v1/verify", f"verifying {digest}", json={"artifact": digest})
        return result

    def search_logs(self, **params: Any) -> list[dict[str, Any]]:
        page = self._json("GET", "/api/v1/logs/search", "the log search", params=params)
        records: list[dict[str, Any]] = page.get("records", [])
        return records
