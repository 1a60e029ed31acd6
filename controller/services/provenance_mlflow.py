"""Registered manifests into the task's MLflow run, off the request path.

For each manifest registered for a task with an MLflow run (``Task.mlflow_run_id``) one job is queued;
a single worker thread writes it, so MLflow's latency never delays a registration, and a failure is
logged (``mlflow_provenance_failed``), never raised: MLflow is a view of the provenance, not its record.

What a job writes into the run:

- artifacts ``provenance/<label>.manifest.json``, ``provenance/<label>.c2pa``,
  ``provenance/<label>.oms-bundle.json`` (``label``: the artifact name, or ``code``, and the first 8
  characters of the manifest's UUID), through ``MlflowRecorder.log_artifact_bytes``;
- tags ``mlprov.manifest.<uuid>`` = ``<role> <artifact digest or ->`` and, for outputs,
  ``mlprov.artifact.<name>`` = ``<digest> <manifest ID>``;
- the task's dataset inputs (kind ``dataset``), once per run, as MLflow dataset inputs
  (``mlflow.entities.Dataset``: name, ``digest`` = the first 36 hex digits of the sha256, MLflow's limit;
  ``source_type`` ``mlprov``, ``source`` the full ``sha256:<hex>``; input tag ``mlprov.digest``).

Tags and dataset inputs go through an ``MlflowClient`` of the recorder's tracking URI (the recorder's
public API has no call for them).
"""

from __future__ import annotations

import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = ["MlflowJob", "ProvenanceMlflow", "build_provenance_mlflow"]

log = structlog.get_logger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_DIGEST_LIMIT = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE


@dataclass(frozen=True)
class MlflowJob:
    mlflow_run_id: str
    manifest_id: str
    role: str
    manifest_json: bytes
    c2pa: bytes | None = None
    oms_bundle: bytes | None = None
    artifact_name: str | None = None
    artifact_digest: str | None = None
    dataset_inputs: list[dict[str, Any]] = field(default_factory=list)
    """``[{name, digest}]`` of the task's inputs of kind dataset."""


def _label(job: MlflowJob) -> str:
    uuid = job.manifest_id.rsplit(":", 1)[-1]
    base = "code" if job.role == "code" else (job.artifact_name or "artifact")
    return f"{_SAFE.sub('_', base)[:120]}.{uuid[:8]}"


class ProvenanceMlflow:
    """One worker thread writing :class:`MlflowJob` s through ``recorder`` (a ``MlflowRecorder``)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self._queue: queue.Queue[MlflowJob | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client: Any | None = None
        self._inputs_logged: set[str] = set()
        self._written: set[tuple[str, str]] = set()
        """``(MLflow run, manifest ID)`` pairs written: a manifest queued twice (registration and the
        back-fill of :func:`controller.services.ingest.backfill_mlflow`) is written once."""
        self.failures = 0
        self.done = 0

    def submit(self, job: MlflowJob) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlprov-provenance-mlflow", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued job is written (tests, shutdown); False on time-out."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._write(job)
                self.done += 1
            except Exception as exc:
                self.failures += 1
                manifest_id = job.manifest_id if job is not None else None
                log.warning("mlflow_provenance_failed", manifest_id=manifest_id, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.recorder.tracking_uri)
        return self._client

    def _write(self, job: MlflowJob) -> None:
        key = (job.mlflow_run_id, job.manifest_id)
        if key in self._written:
            return
        label = _label(job)
        self.recorder.log_artifact_bytes(job.mlflow_run_id, f"provenance/{label}.manifest.json", job.manifest_json)
        if job.c2pa is not None:
            self.recorder.log_artifact_bytes(job.mlflow_run_id, f"provenance/{label}.c2pa", job.c2pa)
        if job.oms_bundle is not None:
            self.recorder.log_artifact_bytes(job.mlflow_run_id, f"provenance/{label}.oms-bundle.json", job.oms_bundle)
        from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag

        client = self._mlflow()
        uuid = job.manifest_id.rsplit(":", 1)[-1]
        tags = [RunTag(f"mlprov.manifest.{_SAFE.sub('_', uuid)}", f"{job.role} {job.artifact_digest or '-'}")]
        if job.role == "output" and job.artifact_name and job.artifact_digest:
            name = _SAFE.sub("_", job.artifact_name)[:200]
            tags.append(RunTag(f"mlprov.artifact.{name}", f"{job.artifact_digest} {job.manifest_id}"))
        client.log_batch(job.mlflow_run_id, tags=tags)
        if job.dataset_inputs and job.mlflow_run_id not in self._inputs_logged:
            datasets = [
                DatasetInput(
                    Dataset(
                        name=str(item.get("name") or item["digest"])[:500],
                        digest=str(item["digest"]).split(":", 1)[-1][:_DIGEST_LIMIT],
                        source_type="mlprov",
                        source=str(item["digest"]),
                    ),
                    tags=[InputTag("mlprov.digest", str(item["digest"]))],
                )
                for item in job.dataset_inputs
            ]
            client.log_inputs(job.mlflow_run_id, datasets=datasets)
            self._inputs_logged.add(job.mlflow_run_id)
        self._written.add(key)


def build_provenance_mlflow(recorder: Any | None) -> ProvenanceMlflow | None:
    return None if recorder is None else ProvenanceMlflow(recorder)
