"""MLflow recording: one parent run per pipeline run, each task attempt a nested run under it.

Uses ``MlflowClient`` (explicit run ids, no fluent global "active run"), so concurrent tasks never
clash. Layout in the tracking store:

* experiment: the DAG id (``mlprov`` when a task has none);
* parent run per ``(dag_id, run_id)``: tags ``mlprov.kind=pipeline``, ``mlprov.dag_id``, ``mlprov.run_id``;
* nested run per ``(dag_id, run_id, task_id, attempt)``: tag ``mlflow.parentRunId``, the ``mlprov.*``
  tags (dag_id, run_id, task_id, attempt, service, code_commit, task = mlprov task id, state),
  parameters (flattened with dots, MLflow's key/value limits applied), metrics (numbers from the
  stage's ``metrics.json``; nested dicts flattened with dots; lists of numbers logged as steps), and
  the task's log as the artifact ``logs/task.log``; later, manifests under ``provenance/``.

Idempotent: each run carries ``mlprov.key``, a hash of its identity, and is looked up by it before
one is created, so a controller restart re-uses runs instead of duplicating them.

Never fails a task: every public method catches what MLflow raises, logs ``mlflow_record_failed``
(which also reaches the log bus) and returns ``None``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from controller.settings import Settings

__all__ = ["MlflowRecorder", "build_recorder", "flatten_metrics", "flatten_params", "load_metrics"]

log = structlog.get_logger(__name__)

DEFAULT_EXPERIMENT = "mlprov"
# MLflow's limits (mlflow.utils.validation): keys 250 chars, param values 6000, tag values 8000,
# 100 params/tags and 1000 metrics per log_batch call.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")
_STATUS = {
    "succeeded": "FINISHED",
    "failed": "FAILED",
    "timed_out": "FAILED",
    "lost": "FAILED",
    "cancelled": "KILLED",
    "running": "RUNNING",
}


def _key(name: str) -> str:
    """A name MLflow accepts: allowed characters only, no empty or '..' path segments, 250 chars."""
    cleaned = _BAD_KEY_CHARS.sub("_", name)
    parts = [p if p not in ("", ".", "..") else "_" for p in cleaned.split("/")]
    return "/".join(parts)[:MAX_KEY] or "_"


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, value


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested dicts become dotted keys; lists and other values their JSON text, cut to MLflow's limit."""
    out: dict[str, str] = {}
    for name, value in _flatten("", params):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        out[_key(name)] = text[:MAX_PARAM_VALUE]
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flatten_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, list[float]], list[str]]:
    """``({key: [values by step]}, [skipped keys])``: numbers only, nested dicts dotted, lists as steps."""
    out: dict[str, list[float]] = {}
    skipped: list[str] = []
    for name, value in _flatten("", metrics):
        if _is_number(value):
            out[_key(name)] = [float(value)]
        elif isinstance(value, list) and value and all(_is_number(v) for v in value):
            out[_key(name)] = [float(v) for v in value]
        else:
            skipped.append(name)
    return out, skipped


def load_metrics(path: Path) -> dict[str, Any]:
    """A stage's ``outputs/metrics.json`` as a dict; ``{}`` when it is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _identity(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]


class MlflowRecorder:
    """Records pipeline runs and task attempts in an MLflow tracking store (thread-safe)."""

    def __init__(self, tracking_uri: str, *, artifact_root: Path | None = None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.tracking_uri = tracking_uri
        self._artifact_root = artifact_root
        self._client_instance: MlflowClient | None = None
        self._lock = threading.RLock()
        self._experiments: dict[str, str] = {}
        self.failures = 0

    @property
    def _client(self) -> MlflowClient:
        """Created on first use (and again after a failed attempt), so a store that is down at start-up
        costs recordings, never the controller's start."""
        if self._client_instance is None:
            from mlflow.tracking import MlflowClient  # heavy import (~1 s): only when recording is used

            self._client_instance = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client_instance

    # -- helpers ------------------------------------------------------------------------------
    def _failed(self, op: str, exc: Exception, **context: Any) -> None:
        self.failures += 1
        log.warning("mlflow_record_failed", op=op, error=f"{type(exc).__name__}: {exc}", **context)

    def _experiment_id(self, dag_id: str | None) -> str:
        name = dag_id or DEFAULT_EXPERIMENT
        cached = self._experiments.get(name)
        if cached is not None:
            return cached
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            location = (self._artifact_root / _identity(name)[:16]).as_uri() if self._artifact_root else None
            try:
                experiment_id = self._client.create_experiment(name, artifact_location=location)
            except MlflowException:  # created meanwhile by another controller: use that one
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        self._experiments[name] = str(experiment_id)
        return str(experiment_id)

    def _find(self, experiment_id: str, key: str) -> Any | None:
        runs = self._client.search_runs([experiment_id], filter_string=f"tags.`mlprov.key` = '{key}'", max_results=1)
        return runs[0] if runs else None

    def _parent(self, dag_id: str | None, run_id: str) -> str:
        experiment_id = self._experiment_id(dag_id)
        key = _identity("pipeline", dag_id, run_id)
        found = self._find(experiment_id, key)
        if found is not None:
            return str(found.info.run_id)
        tags = {"mlprov.key": key, "mlprov.kind": "pipeline", "mlprov.run_id": run_id}
        if dag_id:
            tags["mlprov.dag_id"] = dag_id
        run = self._client.create_run(experiment_id, tags=tags, run_name=run_id[:MAX_KEY])
        return str(run.info.run_id)

    def _log_batch(self, run_id: str, *, params: Mapping[str, str] = {}, metrics: list[Any] | None = None) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])
        metrics = metrics or []
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    # -- the API ------------------------------------------------------------------------------
    def start_task(
        self,
        *,
        dag_id: str | None,
        run_id: str | None,
        task_id: str,
        attempt: int,
        service: str,
        mlprov_task_id: str,
        params: Mapping[str, Any] | None = None,
        code_commit: str | None = None,
    ) -> str | None:
        """The task attempt's MLflow run id (created, or found again after a restart); None on failure."""
        try:
            from mlflow.entities import RunTag

            with self._lock:
                pipeline_run = run_id or f"task-{mlprov_task_id}"
                parent = self._parent(dag_id, pipeline_run)
                experiment_id = self._experiment_id(dag_id)
                key = _identity("task", dag_id, pipeline_run, task_id, attempt)
                found = self._find(experiment_id, key)
                tags = {
                    "mlflow.parentRunId": parent,
                    "mlprov.key": key,
                    "mlprov.kind": "task",
                    "mlprov.run_id": pipeline_run,
                    "mlprov.task_id": task_id,
                    "mlprov.attempt": str(attempt),
                    "mlprov.service": service,
                    "mlprov.task": mlprov_task_id,
                    "mlprov.state": "running",
                }
                if dag_id:
                    tags["mlprov.dag_id"] = dag_id
                if code_commit:
                    tags["mlprov.code_commit"] = code_commit
                if found is None:
                    run = self._client.create_run(experiment_id, tags=tags, run_name=f"{task_id}.{attempt}"[:MAX_KEY])
                    mlflow_run_id = str(run.info.run_id)
                    existing: dict[str, str] = {}
                else:
                    mlflow_run_id = str(found.info.run_id)
                    existing = dict(found.data.params)
                    tag_list = [RunTag(k, v[:MAX_TAG_VALUE]) for k, v in tags.items() if k != "mlprov.state"]
                    self._client.log_batch(mlflow_run_id, tags=tag_list)
                wanted = flatten_params(params or {})
                new = {k: v for k, v in wanted.items() if k not in existing}
                clashing = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
                if clashing:  # MLflow parameters are immutable: keep the first value, say so
                    log.warning("mlflow_params_kept", run=mlflow_run_id, keys=clashing[:20])
                self._log_batch(mlflow_run_id, params=new)
                return mlflow_run_id
        except Exception as exc:
            self._failed("start_task", exc, dag_id=dag_id, run_id=run_id, task_id=task_id, attempt=attempt)
            return None

    def finish_task(
        self,
        mlflow_run_id: str | None,
        *,
        state: str,
        metrics: Mapping[str, Any] | None = None,
        log_text: str | None = None,
    ) -> None:
        """Metrics, the log as ``logs/task.log``, the ``mlprov.state`` tag; then end the run by ``state``."""
        if not mlflow_run_id:
            return
        try:
            from mlflow.entities import Metric

            with self._lock:
                values, skipped = flatten_metrics(metrics or {})
                if skipped:
                    log.info("mlflow_metrics_skipped", run=mlflow_run_id, keys=skipped[:20], reason="not numbers")
                now = int(time.time() * 1000)
                batch = [Metric(k, v, now, step) for k, steps in values.items() for step, v in enumerate(steps)]
                self._log_batch(mlflow_run_id, metrics=batch)
                if log_text is not None:
                    self._client.log_text(mlflow_run_id, log_text, "logs/task.log")
                self._client.set_tag(mlflow_run_id, "mlprov.state", state)
                self._client.set_terminated(mlflow_run_id, status=_STATUS.get(state, "FINISHED"))
        except Exception as exc:
            self._failed("finish_task", exc, mlflow_run=mlflow_run_id, state=state)

    def log_artifact_bytes(self, mlflow_run_id: str | None, path: str, data: bytes) -> None:
        """Store ``data`` as the run's artifact ``path`` (e.g. ``provenance/<artifact>.manifest.json``)."""
        if not mlflow_run_id:
            return
        try:
            relative = PurePosixPath(path)
            if relative.is_absolute() or ".." in relative.parts or not relative.name:
                raise ValueError(f"artifact path {path!r} must be relative, without '..'")
            with self._lock, tempfile.TemporaryDirectory(prefix="mlprov-mlflow-") as tmp:
                local = Path(tmp) / relative.name
                local.write_bytes(data)
                parent = str(relative.parent)
                self._client.log_artifact(mlflow_run_id, str(local), None if parent == "." else parent)
        except Exception as exc:
            self._failed("log_artifact_bytes", exc, mlflow_run=mlflow_run_id, path=path)

    def end_pipeline_run(self, dag_id: str | None, run_id: str, state: str) -> None:
        """End the pipeline's parent run (``state``: succeeded, failed, ...)."""
        try:
            with self._lock:
                parent = self._parent(dag_id, run_id)
                self._client.set_tag(parent, "mlprov.state", state)
                self._client.set_terminated(parent, status=_STATUS.get(state, "FINISHED"))
        except Exception as exc:
            self._failed("end_pipeline_run", exc, dag_id=dag_id, run_id=run_id, state=state)

    def find_pipeline_run(self, dag_id: str | None, run_id: str) -> str | None:
        """The MLflow run id of the pipeline's parent run already recorded, or None."""
        try:
            with self._lock:
                found = self._find(self._experiment_id(dag_id), _identity("pipeline", dag_id, run_id))
                return None if found is None else str(found.info.run_id)
        except Exception as exc:
            self._failed("find_pipeline_run", exc, dag_id=dag_id, run_id=run_id)
            return None

    def find_task_run(self, dag_id: str | None, run_id: str, task_id: str, attempt: int) -> str | None:
        """The MLflow run id of a task attempt already recorded, or None."""
        try:
            with self._lock:
                found = self._find(self._experiment_id(dag_id), _identity("task", dag_id, run_id, task_id, attempt))
                return None if found is None else str(found.info.run_id)
        except Exception as exc:
            self._failed("find_task_run", exc, dag_id=dag_id, run_id=run_id, task_id=task_id)
            return None

    def close(self) -> None:
        """Nothing buffered: every call writes through. Kept for the app's stop sequence."""


def build_recorder(settings: Settings) -> MlflowRecorder:
    """``MLPROV_MLFLOW_TRACKING_URI``, default ``sqlite:///$MLPROV_HOME/mlflow.db`` with artifacts in
    ``$MLPROV_HOME/mlartifacts`` (for any local ``sqlite:``/``file:`` store: MLflow would otherwise put
    them in ``./mlruns`` of the working directory)."""
    uri = settings.effective_mlflow_tracking_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    if uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    return MlflowRecorder(uri, artifact_root=settings.home / "mlartifacts" if local else None)
