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

Any import or construction error fails the start-up, after closing what was already built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore
from controller.logging import get_logger
from controller.logs.base import LogBus, LogIndex
from controller.runtime.base import Runtime
from controller.services.tlog import GroupCommitLog, open_transparency_log
from controller.settings import Settings
from controller.store.db import make_engine, make_session_factory, migrate
from provenance.keys import TrustStore, identity_paths, init_identity

if TYPE_CHECKING:
    from controller.logs.pipeline import LogPipeline
    from controller.logs.structlog_sink import LogBusProcessor
    from controller.mlflow_recorder import MlflowRecorder
    from controller.services.dispatch import Dispatcher
    from controller.services.provenance_mlflow import ProvenanceMlflow

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
    log_pipeline: LogPipeline | None = None
    recorder: MlflowRecorder | None = None
    dispatcher: Dispatcher | None = None
    trust: TrustStore | None = None
    tlog: GroupCommitLog | None = None
    provenance_mlflow: ProvenanceMlflow | None = None
    bus_sink: LogBusProcessor | None = None
    """The structlog processor feeding the controller's own logs into ``log_bus``."""


def build_state(settings: Settings) -> AppState:
    """Connect and migrate the store, then build every component (see the table above)."""
    # Imported here, not at module level: these modules import AppState's neighbours (deps, services).
    from controller.artifacts import build_artifact_store
    from controller.logs import build_log_bus, build_log_index, build_log_pipeline
    from controller.logs.structlog_sink import add_bus_sink
    from controller.mlflow_recorder import build_recorder
    from controller.runtime import build_runtime
    from controller.services.dispatch import build_dispatcher
    from controller.services.provenance_mlflow import build_provenance_mlflow

    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    state = AppState(settings=settings, engine=engine, session_factory=make_session_factory(engine))
    try:
        state.runtime = build_runtime(settings)
        state.artifact_store = build_artifact_store(settings)
        state.log_index = build_log_index(settings)
        state.log_bus = build_log_bus(settings)
        state.log_pipeline = build_log_pipeline(settings, state.log_bus, state.log_index)
        state.log_pipeline.start()
        # The controller's own structured logs join the bus as component "controller".
        state.bus_sink = add_bus_sink(state.log_bus)
        state.recorder = build_recorder(settings)
        if settings.environment == "development" and not identity_paths(settings.home).signer_key.exists():
            # The embedded default needs no setup: a local CA and signing identity, as `mlprov keys init`.
            init_identity(settings.home)
            log.info("signing identity created", home=str(settings.home))
        state.trust = TrustStore.load(settings.trust_dir)
        if not state.trust.anchors and not state.trust.pinned:
            log.warning(
                "trust store is empty: every manifest registration will be refused", path=str(settings.trust_dir)
            )
        state.tlog = GroupCommitLog(open_transparency_log(settings.effective_tlog_dir))
        state.provenance_mlflow = build_provenance_mlflow(state.recorder)
        state.dispatcher = build_dispatcher(state)
        if state.dispatcher is not None:
            state.dispatcher.start()
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
    if state.bus_sink is not None:
        from controller.logs.structlog_sink import remove_bus_sink

        remove_bus_sink(state.bus_sink)
    _call(state.log_pipeline, "close")
    _call(state.log_bus, "close")
    _call(state.log_index, "close")
    _call(state.artifact_store, "close")
    _call(state.runtime, "close")
    state.engine.dispose()
