"""Bearer-token authentication and scopes (the HTTP wiring is in ``controller.api.deps``).

Three kinds of token:

- admin (``MLPROV_ADMIN_TOKEN``): everything;
- read-only (``MLPROV_READ_TOKENS``): safe methods (GET, HEAD) only;
- per-task (issued by :func:`issue_task_token` when a task is submitted, handed to its sidecar):
  only requests whose path carries ``{task_id}`` equal to that task, plus the routes marked for task
  tokens (``controller.api.deps.TASK_TOKEN_ROUTE``), which check the task themselves. Stored as SHA-256 in
  ``api_tokens``; revoked with :func:`revoke_task_tokens` when the task ends.

Admin and read tokens are compared in constant time; task tokens are looked up by their hash.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.errors import ForbiddenError, UnauthorizedError
from controller.settings import Settings
from controller.store.models import ApiToken, TokenScope, utcnow

__all__ = [
    "SAFE_METHODS",
    "TASK_TOKEN_PREFIX",
    "Principal",
    "Role",
    "authenticate",
    "authenticate_static",
    "authorize",
    "hash_token",
    "issue_task_token",
    "revoke_task_tokens",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TASK_TOKEN_PREFIX = "mlpt_"  # noqa: S105 - a public prefix, not a secret
TASK_PATH_PARAM = "task_id"


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


def authenticate(token: str | None, settings: Settings, session: Session) -> Principal:
    """The principal for a bearer token; :class:`UnauthorizedError` when missing or unknown."""
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
