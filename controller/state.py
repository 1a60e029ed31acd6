"""``AppState``: the long-lived components of one controller app, built once in the lifespan.

``create_app`` puts it on ``app.state.mlprov``; routes reach it through ``controller.api.deps``
(``StateDep``), background code gets it passed in. Fields:

- ``settings``: the ``Settings`` the app was created with.
- ``engine``: SQLAlchemy engine, migrated to head at start (``controller.store.db.make_engine``).
- ``session_factory``: ``sessionmaker[Session]``; use ``with session_scope(state.session_factory) as s:``.
- ``runtime``: ``Runtime`` (local | kubernetes), from ``controller.runtime.build_runtime(settings)``.
- ``artifact_store``: ``ArtifactStore`` (local dir | S3), from
  ``controller.artifacts.build_artifact_store(settings)``.
- ``log_bus``: ``LogBus`` (embedded durable log | Kafka), from ``controller.logs.build_log_bus(settings)``.
- ``log_index``: ``LogIndex`` (SQLite FTS5 | Elasticsearch), from ``controller.logs.build_log_index(settings)``.
- ``log_pipeline``: the thread feeding ``log_index`` from ``log_bus``, from
  ``controller.logs.build_log_pipeline(settings, log_bus, log_index)``; started here, drained on stop.
- ``recorder``: the MLflow recorder, from ``controller.mlflow_recorder.build_recorder(settings)``.
- ``dispatcher``: locks, launch, reconcile; from ``controller.services.dispatch.build_dispatcher(state)``.
- ``trust``: the ``TrustStore`` every registered manifest's signature is checked against, loaded once
  from ``$MLPROV_HOME/trust`` (``Settings.trust_dir``; restart the controller after changing it).
- ``tlog``: ``controller.services.tlog.GroupCommitLog`` over the embedded transparency log in
  ``Settings.effective_tlog_dir``; ``tlog.log`` is the ``LocalTransparencyLog`` (proofs, checkpoints).
- ``provenance_mlflow``: ``controller.services.provenance_mlflow.ProvenanceMlflow``, the background
  writer of manifests, tags and dataset inputs into the tasks' MLflow runs.

Start order: store, runtime, artifact store, log index, log bus, log pipeline (``start()``),
recorder, dispatcher (built last, from the state holding all the others; ``start()`` is called if it
has one: reconcile jobs left running by a previous controller). Stop order is the reverse:
``dispatcher.stop()``, ``recorder.close()``, ``log_pipeline.close()`` (drains the bus into the
index), ``log_bus.close()``, then ``close()`` of index, artifact store and runtime when they have
one; the engine is disposed last.

Until every worker's module has landed, a component whose module (or a ``controller.*`` module it
imports) does not exist yet is left ``None`` (logged); any other import or construction error fails
the start-up. (The lead removes this tolerance.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore
from controller.logging import get_logger
from controller.logs.base import LogBus, LogIndex
from controller.runtime.base import Runtime
from controller.services.tlog import GroupCommitLog, open_transparency_log
from controller.settings import Settings
from controller.store.db import make_engine, make_session_factory, migrate
from provenance.keys import TrustStore

__all__ = ["AppState", "build_state", "close_state"]

log = get_logger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    runtime: Runtime | None = None
    artifact_store: ArtifactStore | None = None
    log_bus: LogBus | None = None
    log_index: LogIndex | None = None
    log_pipeline: Any | None = None
    """``controller.logs.LogPipeline``."""
    recorder: Any | None = None
    """``controller.mlflow_recorder`` recorder (typed ``Any`` until that module lands)."""
    dispatcher: Any | None = None
    """``controller.services.dispatch.Dispatcher`` (typed ``Any`` until that module lands)."""
    trust: TrustStore | None = None
    tlog: GroupCommitLog | None = None
    provenance_mlflow: Any | None = None
    """``controller.services.provenance_mlflow.ProvenanceMlflow``."""


def _factory(module: str, name: str) -> Any | None:
    """``module.name``, or None while ``module`` itself does not exist yet (see module docstring)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Tolerated only for the controller's own modules still being written by another worker.
        if exc.name is not None and exc.name.startswith("controller."):
            log.warning("component module missing; running without it", module=module)
            return None
        raise
    factory = getattr(mod, name, None)
    if factory is None:
        log.warning("component factory missing; running without it", module=module, factory=name)
    return factory


def _build(module: str, name: str, *args: Any) -> Any | None:
    factory = _factory(module, name)
    return None if factory is None else factory(*args)


def _start(component: Any) -> None:
    start = getattr(component, "start", None)
    if callable(start):
        start()


def build_state(settings: Settings) -> AppState:
    """Connect and migrate the store, then build every component (see the table above)."""
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    state = AppState(settings=settings, engine=engine, session_factory=make_session_factory(engine))
    try:
        state.runtime = _build("controller.runtime", "build_runtime", settings)
        state.artifact_store = _build("controller.artifacts", "build_artifact_store", settings)
        state.log_index = _build("controller.logs", "build_log_index", settings)
        state.log_bus = _build("controller.logs", "build_log_bus", settings)
        if state.log_bus is not None and state.log_index is not None:
            state.log_pipeline = _build(
                "controller.logs", "build_log_pipeline", settings, state.log_bus, state.log_index
            )
            _start(state.log_pipeline)
        state.recorder = _build("controller.mlflow_recorder", "build_recorder", settings)
        state.trust = TrustStore.load(settings.trust_dir)
        if not state.trust.anchors and not state.trust.pinned:
            log.warning(
                "trust store is empty: every manifest registration will be refused", path=str(settings.trust_dir)
            )
        state.tlog = GroupCommitLog(open_transparency_log(settings.effective_tlog_dir))
        state.provenance_mlflow = _build(
            "controller.services.provenance_mlflow", "build_provenance_mlflow", state.recorder
        )
        state.dispatcher = _build("controller.services.dispatch", "build_dispatcher", state)
        _start(state.dispatcher)
    except BaseException:
        close_state(state)
        raise
    return state


def _call(obj: Any, method: str) -> None:
    fn = getattr(obj, method, None) if obj is not None else None
    if not callable(fn):
        return
    try:
        fn()
    except Exception:
        log.exception("error while stopping a component", component=type(obj).__name__, method=method)


def close_state(state: AppState) -> None:
    """Stop components in reverse start order; never raises (a failing stop is logged)."""
    _call(state.dispatcher, "stop")
    _call(state.provenance_mlflow, "close")
    _call(state.recorder, "close")
    _call(state.tlog, "close")
    _call(state.log_pipeline, "close")
    _call(state.log_bus, "close")
    _call(state.log_index, "close")
    _call(state.artifact_store, "close")
    _call(state.runtime, "close")
    state.engine.dispose()
