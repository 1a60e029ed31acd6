"""Bearer-token authentication and scopes (the HTTP wiring is in ``controller.api.deps``).

Three kinds of token:

- admin (``MLPROV_ADMIN_TOKEN``): everything;
- read-only (``MLPROV_READ_TOKENS``): safe methods (GET, HEAD) only;
- per-task (issued by :func:`issue_task_token` when a task is submitted, handed to its sidecar):
  only requests whose path carries ``{task_id}`` equal to that task, plus the routes marked for task
  tokens (``controller.api.deps.TASK_TOKEN_ROUTE``), which check the task themselves. Stored as SHA-256 in
  ``api_tokens``; revoked with :func:`revoke_task_tokens` when the task ends.

Admin and read tokens are compared in constant time; task tokens are looked up by their hash.

On Kubernetes (``MLPROV_RUNTIME=kubernetes``) a job's sidecar may instead present its pod's projected,
audience-bound service-account token (a JWT). :class:`KubernetesTokenReviewer` asks the API server
(``TokenReview``, authentication.k8s.io/v1, with the configured audience), takes the pod's name and uid
from the reviewed user's extra claims, reads that pod and maps its labels (``mlprov.io/task-id``,
``mlprov.io/attempt``) to the task: the caller then gets the same :class:`Principal` a per-task token
gives, and only while that attempt is the task's current, running one (a task token stops working when
its task ends; so does the pod's). Reviews are cached briefly by token hash; the task check is not.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.errors import ForbiddenError, UnauthorizedError, UnavailableError
from controller.logging import get_logger
from controller.settings import Settings
from controller.store.models import ApiToken, Job, Task, TaskState, TokenScope, utcnow

__all__ = [
    "SAFE_METHODS",
    "TASK_TOKEN_PREFIX",
    "KubernetesTokenReviewer",
    "Principal",
    "ReviewedPod",
    "Role",
    "authenticate",
    "authenticate_static",
    "authorize",
    "hash_token",
    "is_service_account_token",
    "issue_task_token",
    "needs_lookup",
    "revoke_task_tokens",
]

log = get_logger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TASK_TOKEN_PREFIX = "mlpt_"  # noqa: S105 - a public prefix, not a secret
TASK_PATH_PARAM = "task_id"
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
_POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"


class Role(enum.StrEnum):
    ADMIN = "admin"
    READ = "read"
    TASK = "task"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role and, for a task token, the task it belongs to."""

    role: Role
    task_id: str | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_task_token(session: Session, task_id: str) -> str:
    """Create a token scoped to ``task_id`` and return it (shown once; only its hash is kept).

    Adds the row to ``session`` without committing: commit it with the task so nothing is half-recorded.
    """
    token = TASK_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=hash_token(token), scope=TokenScope.TASK.value, task_id=task_id))
    return token


def revoke_task_tokens(session: Session, task_id: str) -> int:
    """Revoke every live token of ``task_id`` (when the task ends); returns how many. Does not commit."""
    result = session.execute(
        update(ApiToken).where(ApiToken.task_id == task_id, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def is_service_account_token(token: str) -> bool:
    """Whether ``token`` looks like a Kubernetes service-account token (a JWT), for the TokenReview path."""
    return bool(_JWT.fullmatch(token))


def needs_lookup(token: str | None) -> bool:
    """Whether authenticating ``token`` needs the database or the API server (a task token or a pod's
    service-account token): ``controller.api.deps`` then runs :func:`authenticate` in the thread pool."""
    return bool(token) and (str(token).startswith(TASK_TOKEN_PREFIX) or is_service_account_token(str(token)))


@dataclass(frozen=True)
class ReviewedPod:
    """Who a reviewed service-account token belongs to: the pod and the task attempt its labels name."""

    namespace: str
    pod: str
    task_id: str
    attempt: int


class TokenReviewer(Protocol):
    def review(self, token: str) -> ReviewedPod | None:
        """The pod behind a valid token for our audience, or None (invalid, expired, not a job pod)."""
        ...


class KubernetesTokenReviewer:
    """TokenReview + pod lookup (see the module docstring). ``authn``/``core``: ``AuthenticationV1Api``/
    ``CoreV1Api`` (raw JSON answers, ``_request_timeout`` on each call). Thread-safe."""

    def __init__(
        self,
        *,
        authn: Any,
        core: Any,
        namespace: str,
        audience: str,
        request_timeout: float = 10.0,
        cache_seconds: float = 30.0,
        cache_size: int = 4096,
    ) -> None:
        self._authn, self._core = authn, core
        self._namespace, self._audience = namespace, audience
        self._timeout, self._ttl, self._size = request_timeout, cache_seconds, cache_size
        self._cache: dict[str, tuple[float, ReviewedPod | None]] = {}
        self._lock = threading.Lock()

    def review(self, token: str) -> ReviewedPod | None:
        key = hash_token(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        reviewed = self._review(token)
        with self._lock:
            if len(self._cache) >= self._size:
                self._cache.clear()
            self._cache[key] = (now + self._ttl, reviewed)
        return reviewed

    def _review(self, token: str) -> ReviewedPod | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }
        status = _json(
            self._authn.create_token_review(body, _preload_content=False, _request_timeout=self._timeout)
        ).get("status", {})
        if not status.get("authenticated") or self._audience not in (status.get("audiences") or [self._audience]):
            return None
        user = status.get("user") or {}
        parts = str(user.get("username", "")).split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or parts[2] != self._namespace:
            return None
        extra = user.get("extra") or {}
        pod_names, pod_uids = extra.get(_POD_NAME_CLAIM) or [], extra.get(_POD_UID_CLAIM) or []
        if len(pod_names) != 1 or len(pod_uids) != 1:
            return None  # not a pod-bound token (a Secret-based or TokenRequest token without a pod)
        pod = _json(
            self._core.read_namespaced_pod(
                pod_names[0], self._namespace, _preload_content=False, _request_timeout=self._timeout
            )
        )
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("uid") != pod_uids[0] or labels.get("app.kubernetes.io/managed-by") != "mlprov":
            return None
        task_id, attempt = labels.get("mlprov.io/task-id"), labels.get("mlprov.io/attempt")
        if not task_id or not str(attempt or "").isdigit():
            return None
        return ReviewedPod(self._namespace, pod_names[0], str(task_id), int(str(attempt)))


def _json(response: Any) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(response.data)
        return data
    finally:
        release = getattr(response, "release_conn", None)
        if callable(release):
            release()


@lru_cache(maxsize=4)
def _settings_reviewer(key: tuple[Any, ...], settings: Settings) -> KubernetesTokenReviewer:
    from controller.runtime.k8s_client import load_apis

    apis = load_apis(settings)
    return KubernetesTokenReviewer(
        authn=apis.authn,
        core=apis.core,
        namespace=settings.kubernetes_namespace,
        audience=settings.kubernetes_token_audience,
        request_timeout=settings.kubernetes_request_timeout,
    )


def _reviewer_for(settings: Settings) -> TokenReviewer | None:
    if settings.runtime != "kubernetes":
        return None
    key = (
        settings.kubernetes_namespace,
        settings.kubernetes_token_audience,
        settings.kubernetes_in_cluster,
        str(settings.kubernetes_kubeconfig),
        settings.kubernetes_context,
    )
    return _settings_reviewer(key, settings)


def _pod_principal(session: Session, pod: ReviewedPod) -> Principal | None:
    """The task principal for a reviewed pod: only while its attempt is the task's latest and running."""
    task = session.get(Task, pod.task_id)
    if task is None or task.state != TaskState.RUNNING.value:
        return None
    latest = session.scalar(select(Job.attempt).where(Job.task_id == pod.task_id).order_by(Job.attempt.desc()).limit(1))
    if latest != pod.attempt:
        return None
    return Principal(Role.TASK, task_id=pod.task_id)


def _matches(candidate: str, secret: str) -> bool:
    return hmac.compare_digest(candidate.encode(), secret.encode())


def _static_principal(token: str, settings: Settings) -> Principal | None:
    if _matches(token, settings.admin_token_value):
        return Principal(Role.ADMIN)
    # Check every read token (no early exit) so timing does not reveal which one matched.
    read_match = False
    for read in settings.read_tokens:
        read_match |= _matches(token, read.get_secret_value())
    return Principal(Role.READ) if read_match else None


def authenticate_static(token: str | None, settings: Settings) -> Principal:
    """The principal for an admin or read-only token (no database); 401 for anything else."""
    if not token:
        raise UnauthorizedError("missing bearer token: send `Authorization: Bearer <token>`")
    principal = _static_principal(token, settings)
    if principal is None:
        raise UnauthorizedError("invalid bearer token: check the token (task tokens stop working when their task ends)")
    return principal


def authenticate(
    token: str | None, settings: Settings, session: Session, reviewer: TokenReviewer | None = None
) -> Principal:
    """The principal for a bearer token; :class:`UnauthorizedError` when missing or unknown.

    ``reviewer``: checks pod service-account tokens (default: the TokenReview API when the runtime is
    kubernetes, none otherwise)."""
    if not token:
        raise UnauthorizedError("missing bearer token: send `Authorization: Bearer <token>`")
    principal = _static_principal(token, settings)
    if principal is not None:
        return principal
    if token.startswith(TASK_TOKEN_PREFIX):
        row = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
        )
        if row is not None and row.task_id is not None:
            return Principal(Role.TASK, task_id=row.task_id)
    elif is_service_account_token(token):
        reviewer = reviewer if reviewer is not None else _reviewer_for(settings)
        if reviewer is not None:
            try:
                pod = reviewer.review(token)
            except Exception as exc:  # the API server is down or refuses us: the caller retries (sidecar spool)
                log.warning("token_review_failed", error=" ".join(str(exc).split())[:300])
                raise UnavailableError("the Kubernetes API could not review the token: retry") from exc
            principal = _pod_principal(session, pod) if pod is not None else None
            if principal is not None:
                return principal
    raise UnauthorizedError("invalid bearer token: check the token (task tokens stop working when their task ends)")


def authorize(
    principal: Principal, method: str, path_params: Mapping[str, object], *, task_token_route: bool = False
) -> None:
    """The scope rule every ``/api/v1`` route gets; :class:`ForbiddenError` when the token may not do this.

    ``task_token_route``: the route is one of the few without ``{task_id}`` that any task token may call
    (``POST /manifests``, ``GET /software-manifests``); the route itself then checks what the task may do.
    """
    if principal.role is Role.ADMIN:
        return
    if principal.role is Role.READ:
        if method.upper() in SAFE_METHODS:
            return
        raise ForbiddenError(f"a read-only token cannot {method.upper()}: use the admin token")
    if task_token_route or path_params.get(TASK_PATH_PARAM) == principal.task_id:
        return
    raise ForbiddenError("a task token can only reach its own task's endpoints (/api/v1/tasks/<its id>/...)")
