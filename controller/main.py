"""Assembles the controller app; no logic lives here.

``create_app(settings)`` wires: logging, error handlers, body-size limit (413), latency metrics,
``/healthz`` ``/readyz`` ``/metrics`` at the root, the routers of :data:`API_ROUTERS` under
``/api/v1`` behind the bearer-token rule, and the Atlas storage API (``/manifests``) at the root with
its own rule. The lifespan builds the ``AppState``
(``controller.state``: store migrated to head, runtime, artifact store, logs, MLflow recorder,
dispatcher) and loads ``services.yaml`` into the catalog.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from controller.api.body_limits import RouteBodyLimits
from controller.api.deps import require_auth, require_reader
from controller.api.errors import install_error_handlers
from controller.api.middleware import MetricsMiddleware
from controller.api.routes import atlas, health
from controller.catalog import load_services_file
from controller.logging import configure_logging, get_logger
from controller.settings import Settings, get_settings
from controller.state import AppState, build_state, close_state
from controller.store.db import session_scope
from controller.store.services_repo import upsert_services

__all__ = ["API_PREFIX", "API_ROUTERS", "create_app"]

API_PREFIX = "/api/v1"

# The routers served under /api/v1, in this order: one module per resource in controller.api.routes.
API_ROUTERS: tuple[str, ...] = (
    "services",
    "tasks",
    "runs",
    "logs",
    "lineage",
    "provenance",
    "verify",
    "artifacts",
    "manifests",
    "software",
    "log",
    "deployments",
)
# Routers that only read, even through POST (a query with a body): any reader token, not the method rule.
_READ_ONLY_ROUTERS = frozenset({"verify"})

log = get_logger(__name__)


def _router_module(name: str) -> ModuleType:
    return importlib.import_module(f"controller.api.routes.{name}")


def _startup(settings: Settings) -> AppState:
    state = build_state(settings)
    try:
        if settings.services_file is not None:
            specs = load_services_file(settings.services_file, runtime=settings.runtime)
            with session_scope(state.session_factory) as session:
                upsert_services(session, specs)
            log.info("services file loaded", path=str(settings.services_file), services=len(specs))
    except BaseException:
        close_state(state)
        raise
    return state


def create_app(settings: Settings | None = None) -> FastAPI:
    """The controller app for ``settings`` (the environment's ``get_settings()`` when None)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.mlprov = await run_in_threadpool(_startup, settings)
        log.info("controller started", environment=settings.environment, runtime=settings.runtime)
        try:
            yield
        finally:
            state, app.state.mlprov = app.state.mlprov, None
            await run_in_threadpool(close_state, state)
            log.info("controller stopped")

    app = FastAPI(
        title="mlprov controller",
        version="0.1.0",
        description="ML service controller: service catalog, tasks, runs, logs. Bearer tokens required under /api/v1.",
        lifespan=lifespan,
    )
    app.state.mlprov = None
    # Routes read the settings from here (controller.api.deps.get_app_settings). Not a
    # dependency_override: any override makes FastAPI re-solve every dependency per request.
    app.state.settings = settings
    install_error_handlers(app)

    app.include_router(health.router)
    for name in API_ROUTERS:
        module = _router_module(name)
        auth = require_reader if name in _READ_ONLY_ROUTERS else require_auth
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(auth)])
    # The Atlas storage API lives at the root, where atlas-cli's --storage-url points; its routes carry
    # their own auth rule (controller.api.routes.atlas: tokens, or anonymous when the operator allows it).
    app.include_router(atlas.router)

    # Outermost last: metrics see every answer, including 413s.
    app.add_middleware(
        RouteBodyLimits, max_bytes=settings.max_body_bytes, max_artifact_bytes=settings.max_artifact_bytes
    )
    app.add_middleware(MetricsMiddleware)
    return app
