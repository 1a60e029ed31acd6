"""Typed FastAPI dependencies: use these aliases in route signatures.

::

    @router.get("/things/{task_id}")
    def get_thing(task_id: str, session: SessionDep, state: StateDep, caller: PrincipalDep) -> Thing: ...

Every ``/api/v1`` router is included with :func:`require_auth` (see ``controller.main.API_ROUTERS``),
so each route already refuses a missing/wrong token (401) and a token without the scope (403):
admin everything; read-only tokens safe methods only; task tokens only paths whose ``{task_id}``
is their task (name the path parameter ``task_id``). The stricter aliases below add a check on top.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from controller.auth import TASK_TOKEN_PREFIX, Principal, Role, authenticate, authenticate_static, authorize
from controller.errors import ForbiddenError, UnavailableError
from controller.settings import Settings
from controller.state import AppState

__all__ = [
    "TASK_TOKEN_ROUTE",
    "AdminDep",
    "PrincipalDep",
    "ReaderDep",
    "SessionDep",
    "SettingsDep",
    "StateDep",
    "TaskTokenDep",
    "TaskTokenOrReaderDep",
    "bearer_token",
    "get_app_state",
    "get_principal",
    "get_session",
    "require_admin",
    "require_auth",
    "require_reader",
    "require_task_access",
    "require_task_token_route",
]

TASK_TOKEN_ROUTE: dict[str, object] = {"x-mlprov-task-token": True}
"""``openapi_extra`` of a route without ``{task_id}`` that any task token may call (it checks the task
itself, e.g. the ``mlprov.task`` assertion of a registered manifest); shown in the OpenAPI document."""


def _is_task_token_route(request: Request) -> bool:
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    return bool(extra.get("x-mlprov-task-token"))


# The CPU-only dependencies below are ``async def`` on purpose: a sync dependency costs a thread-pool
# hop per request, which dominated the hot status-polling path (bench/bench_status_reads.py).


async def get_app_state(request: Request) -> AppState:
    state: AppState | None = getattr(request.app.state, "mlprov", None)
    if state is None:
        raise UnavailableError("the controller is starting or stopping: retry in a moment")
    return state


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (``create_app(settings)``); tests pass their own."""
    settings: Settings = request.app.state.settings
    return settings


StateDep = Annotated[AppState, Depends(get_app_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A session per request; routes (or the services they call) commit explicitly."""
    with state.session_factory() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(request: Request) -> str | None:
    """The bearer token: None without an Authorization header, "" for another scheme or an empty token."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


async def get_principal(request: Request, settings: SettingsDep, state: StateDep) -> Principal:
    """Who is calling (401 when the token is missing or unknown); cached per request by FastAPI.

    Admin and read-only tokens are checked in memory; only a task token needs the database, and that
    lookup runs in the thread pool so it never blocks the event loop."""
    token = bearer_token(request)
    if not token or not token.startswith(TASK_TOKEN_PREFIX):
        return authenticate_static(token, settings)

    def lookup() -> Principal:
        with state.session_factory() as session:
            return authenticate(token, settings, session)

    return await run_in_threadpool(lookup)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_auth(request: Request, principal: PrincipalDep) -> Principal:
    """The rule for every ``/api/v1`` route (applied at include time, not per route)."""
    authorize(principal, request.method, request.path_params, task_token_route=_is_task_token_route(request))
    return principal


async def require_admin(principal: PrincipalDep) -> Principal:
    if principal.role is not Role.ADMIN:
        raise ForbiddenError("this endpoint needs the admin token")
    return principal


async def require_reader(principal: PrincipalDep) -> Principal:
    """Admin or read-only tokens (not task tokens), e.g. listings across tasks."""
    if principal.role is Role.TASK:
        raise ForbiddenError("a task token cannot read this: use a read-only or the admin token")
    return principal


async def require_task_access(request: Request, principal: PrincipalDep) -> Principal:
    """Admin, read-only (safe methods), or the task token of the path's ``{task_id}``."""
    authorize(principal, request.method, request.path_params)
    return principal


async def require_task_token_route(request: Request, principal: PrincipalDep) -> Principal:
    """Admin, read-only (safe methods) or any task token, on a route marked :data:`TASK_TOKEN_ROUTE`."""
    if not _is_task_token_route(request):  # a wiring mistake, not a caller's: fail closed
        raise ForbiddenError("this route is not open to task tokens")
    authorize(principal, request.method, request.path_params, task_token_route=True)
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
ReaderDep = Annotated[Principal, Depends(require_reader)]
TaskTokenDep = Annotated[Principal, Depends(require_task_access)]
TaskTokenOrReaderDep = Annotated[Principal, Depends(require_task_token_route)]
