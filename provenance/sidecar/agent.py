"""The sidecar assembly: every finished artifact of ``outputs/`` becomes a signed, linked, delivered manifest.

Per artifact (:meth:`Sidecar.process`), in this order:

1. classify (:class:`~provenance.sidecar.classify.Classifier`): model, dataset, evaluation, config, other;
2. hash once with sha256: a file's plain digest, a directory's OMS root digest without its completion
   marker (``_SUCCESS``); the same hex serves as artifact digest and ingredient hash;
3. skip it if the ledger already holds this (name, digest): never two manifests for one artifact;
   otherwise start uploading the bytes at once on the upload thread (the ``PUT`` is idempotent and only
   stores content the controller re-hashes to this digest; no manifest names it yet), so the upload
   overlaps the signing below instead of following it;
4. for a model, sign the OMS bundle (same ``ignore`` as the hash, so its subject digest is checked
   against ours); build the Atlas manifest (kind mapping below), cross-referencing the task's input
   manifests and the code's software manifest, with the CustomAssertions of docs/sidecar-protocol.md
   section 3; sign it; sign the C2PA sidecar (a directory's is bound to its canonical listing). These
   parts come from :mod:`provenance.sidecar.claims`;
5. re-check the fingerprint (for an artifact reported at its rename, not before rename +
   ``recheck_interval``: :attr:`FinishedArtifact.confirm_at`): if the artifact changed since it was
   reported, nothing is kept (the watcher reports the new version): a half-written file is never signed;
6. ``spool.put`` (durable) then ``ledger.record_signed``; the spool's thread uploads the artifact
   (``PUT``; skipped when the early upload of step 3 succeeded) and registers the manifest (``POST``),
   retrying with back-off; ``on_delivered`` marks it.

Kinds: model -> ``model``, dataset -> ``dataset``, evaluation -> ``evaluation`` (metrics read from the
file when it is a JSON object), config/other -> a ``dataset`` manifest; the classification is always in
the ``mlprov.artifact`` assertion. The ingredient's ``file://`` URL is the path inside the job's
workspace, a label only: verification elsewhere resolves artifacts **by digest from the store**.

Job exit (SIGTERM or the exit marker file): the watcher flushes, everything pending is processed,
the spool drains until ``drain_timeout``; :meth:`Sidecar.run` returns a :class:`Summary`. After a
SIGKILL the restarted sidecar re-scans (the watcher skips what the ledger signed), reconciles the
ledger with the spool and re-delivers what the spool holds (the controller is idempotent on ID).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from provenance.errors import ProvenanceError, RetryableDeliveryError
from provenance.hashing import DirectoryDigest, hash_directory, hash_file
from provenance.keys import SigningIdentity
from provenance.manifest import build_manifest, make_ingredient
from provenance.sidecar import delivery
from provenance.sidecar.claims import (
    OMS_BUNDLE_LABEL,
    ArtifactChanged,
    ArtifactSigner,
    artifact_assertions,
    asset_kind,
    cross_references,
    evaluation_links,
    evaluation_metrics,
    oms_bundle_assertion,
)
from provenance.sidecar.classify import Classifier
from provenance.sidecar.completion import FinishedArtifact, fingerprint
from provenance.sidecar.config import SidecarSettings
from provenance.sidecar.delivery import ControllerClient
from provenance.sidecar.environment import (
    EnvironmentCapture,
    prime_current_environment,
)
from provenance.sidecar.software import CODE_KIND, SoftwareManifests, SoftwareRef
from provenance.sidecar.spool import ArtifactLedger, Spool, SpoolItem
from provenance.sidecar.taskinfo import TaskInfo
from provenance.sidecar.watcher import ObserverLike, Watcher, warm_observer
from provenance.signing import sign_manifest

__all__ = ["OMS_BUNDLE_LABEL", "OUTPUT_KIND", "READY_FD_ENV", "Sidecar", "Summary", "asset_kind"]

log = structlog.get_logger(__name__)

OUTPUT_KIND = "output"
_EXIT_POLL = 0.02
"""Seconds between looks at the job-exit marker while no artifact is pending: the job's end waits for it."""
READY_FD_ENV = "MLPROV_SIDECAR_READY_FD"
"""A standby sidecar writes one byte to this inherited file descriptor when its warm-up is done."""


def _job_waiting() -> bool:
    """Standby: whether the job (or EOF) is already on stdin, i.e. the warm-up is late and should end."""
    try:
        readable, _, _ = select.select([0], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


def _signal_ready() -> None:
    """Standby: one byte on the inherited descriptor :data:`READY_FD_ENV` names (the local launcher's, see
    ``controller/runtime/launcher.py``), then close it; nothing when the variable is unset."""
    raw = os.environ.pop(READY_FD_ENV, None)
    if not raw:
        return
    try:
        fd = int(raw)
    except ValueError:
        return
    with contextlib.suppress(OSError):  # the runtime stopped listening: nothing to tell
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)


@dataclass
class Summary:
    """The one-line JSON the sidecar prints at exit."""

    task_id: str
    captured: int
    delivered: int
    undelivered: int
    failed: list[str] = field(default_factory=list)
    dead: list[dict[str, str]] = field(default_factory=list)
    software_manifest: str | None = None
    software_delivered: bool = True

    @property
    def ok(self) -> bool:
        return self.undelivered == 0 and not self.failed and not self.dead and self.software_delivered

    def to_json(self) -> str:
        return json.dumps({"event": "sidecar_summary", "ok": self.ok, **asdict(self)}, sort_keys=True)


class Sidecar:
    """One task's sidecar. ``run()`` blocks until the job exited and delivery drained (or timed out)."""

    def __init__(
        self,
        settings: SidecarSettings,
        task: TaskInfo,
        identity: SigningIdentity,
        client: ControllerClient,
        *,
        classifier: Classifier | None = None,
        environment: EnvironmentCapture | None = None,
        observer_factory: Callable[[], ObserverLike] | None = None,
    ) -> None:
        self.settings = settings
        self.task = task
        self.identity = identity
        self.client = client
        self.classifier = classifier or settings.classifier()
        self.environment = environment or EnvironmentCapture(timeout=settings.env_capture_timeout)
        state = settings.effective_state_dir
        state.mkdir(parents=True, exist_ok=True)
        scratch = state / "tmp"
        scratch.mkdir(mode=0o700, exist_ok=True)
        self._signer = ArtifactSigner(identity, scratch)
        self.ledger = ArtifactLedger(settings.state_file)
        self.spool = Spool(
            settings.effective_spool_dir,
            self._deliver,
            backoff=settings.backoff(),
            on_delivered=self._on_delivered,
            max_attempts=settings.max_attempts,
        )
        self.software = SoftwareManifests(
            client=client, identity=identity, ledger=self.ledger, spool=self.spool, workspace=settings.workspace
        )
        self.watcher = Watcher(
            settings.effective_outputs_dir,
            settings.watch_config(),
            ledger=self.ledger,
            observer_factory=observer_factory,
        )
        self._exit = threading.Event()
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlprov-upload")
        self._uploads: dict[str, Future[int]] = {}
        self._uploads_lock = threading.Lock()
        self._failed: list[str] = []
        self._software_ref: SoftwareRef | None = None
        self._environment: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def request_exit(self) -> None:
        """The job exited (SIGTERM handler, exit marker, ``--once``): flush, drain and return. Signal-safe."""
        self._exit.set()

    def start(self) -> None:
        """Reconcile state, warm up (imports, environment, software manifest), start delivering and watching."""
        adopted = self.ledger.reconcile(self.spool.pending())
        if adopted:
            log.info("ledger_reconciled", adopted=len(adopted))
        # Watch first: an artifact renamed into place during the warm-up is reported as renamed (queued
        # until the run loop takes it), not found later and held for the stability interval.
        self.watcher.start()
        captured: list[dict[str, Any]] = []  # the environment probe (I/O, a subprocess) overlaps the imports
        probe = threading.Thread(target=lambda: captured.append(self._capture_environment()), daemon=True)
        probe.start()
        self._import_signing()
        self._software_ref = self.software.resolve(self.task)
        probe.join()
        self._environment = captured[0] if captured else self._capture_environment()
        self.spool.start()
        log.info(
            "sidecar_started",
            outputs=str(self.watcher.outputs),
            mode=self.watcher.mode,
            software_manifest=self._software_ref.manifest_id if self._software_ref else None,
            spooled=len(self.spool),
        )

    @staticmethod
    def _import_signing() -> None:
        """Import the signing libraries once, now, rather than inside the first artifact's latency."""
        import c2pa  # noqa: F401
        from model_signing import hashing, signing  # noqa: F401

    @staticmethod
    def _warm_up(*, for_fork: bool = False) -> None:
        """A standby sidecar's work before its job is known (``mlprov sidecar --standby``): every one-time cost
        of :meth:`start` that needs no job -- the signing libraries, the watcher's observer, the HTTP
        client's set-up, the probe of this interpreter's packages --, then the readiness signal
        (:data:`READY_FD_ENV`), so the job's start pays only for what is the job's own.

        ``for_fork``: the local runtime's sidecar fork server's warm-up, done once for every job it forks:
        the probe always, no readiness signal. None of it leaves a thread running (the server forks)."""
        Sidecar._import_signing()
        warm_observer()
        delivery.warm_up()
        if for_fork or not _job_waiting():  # speculative (the job's interpreter may be another)
            prime_current_environment()
        if not for_fork:
            _signal_ready()

    def run(self, *, once: bool = False) -> Summary:
        """Watch until the job exits, then flush and drain; return the summary."""
        self.start()
        if once:
            self.request_exit()
        finishing = False
        marker = self.settings.effective_exit_marker
        try:
            while True:
                if not finishing and (self._exit.is_set() or marker.exists()):
                    finishing = True
                    log.info("sidecar_finishing", reason="signal" if self._exit.is_set() else "exit-marker")
                    self.watcher.finish(timeout=0)
                item = self.watcher.get(timeout=_EXIT_POLL)
                if item is not None:
                    self.process(item)
                    continue
                if not self.watcher.running:  # flushed (or crashed): take what is still queued
                    while (rest := self.watcher.get(timeout=0)) is not None:
                        self.process(rest)
                    break
        finally:
            self.watcher.stop()
            self.spool.stop()
        left = self.spool.drain(time.monotonic() + self.settings.drain_timeout)
        self._uploader.shutdown(wait=False, cancel_futures=True)
        summary = self.summary()
        log.info("sidecar_done", ok=summary.ok, undelivered=summary.undelivered, spooled=len(left))
        return summary

    def summary(self) -> Summary:
        records = self.ledger.records()
        delivered = sum(1 for r in records if r.delivered)
        pending_code = [i for i in self.spool.pending() if i.kind == CODE_KIND]
        dead = [{"key": d.item.key, "kind": d.item.kind, "reason": d.reason} for d in self.spool.dead()]
        return Summary(
            task_id=self.task.task_id,
            captured=len(records),
            delivered=delivered,
            undelivered=len(records) - delivered,
            failed=list(self._failed),
            dead=dead,
            software_manifest=self._software_ref.manifest_id if self._software_ref else None,
            software_delivered=not pending_code and not any(d["kind"] == CODE_KIND for d in dead),
        )

    # -- delivery (spool thread) -----------------------------------------------------------------------
    def _deliver(self, item: SpoolItem) -> None:
        with structlog.contextvars.bound_contextvars(manifest_id=item.key):
            if item.kind == OUTPUT_KIND and any(i.kind == CODE_KIND for i in self.spool.pending()):
                raise RetryableDeliveryError("waiting for the software manifest's registration first")
            upload = item.payload.get("upload")
            if upload and not self._uploaded_early(str(upload["digest"])):
                self.client.upload_artifact(
                    upload["digest"],
                    Path(upload["path"]),
                    is_dir=bool(upload["is_dir"]),
                    exclude_top_level=frozenset(upload.get("exclude") or ()),
                )
            answer = self.client.register_manifest(item.payload["body"])
            if item.kind == CODE_KIND:
                self.software.delivered(item, answer)
            elif answer["id"] != item.key:
                log.warning("controller_answered_other_id", answered=answer["id"])

    # -- early upload (upload thread) -------------------------------------------------------------------
    def _upload_early(self, digest: str, path: Path, *, is_dir: bool, exclude: frozenset[str]) -> None:
        """Start ``PUT``-ting the artifact now (step 3 of the module docstring); best effort: the spool's
        delivery uploads it again if this fails."""

        def upload() -> int:
            return self.client.upload_artifact(digest, path, is_dir=is_dir, exclude_top_level=exclude)

        with self._uploads_lock:
            if digest in self._uploads:
                return
            try:
                self._uploads[digest] = self._uploader.submit(upload)
            except RuntimeError:  # shut down (the run is over): the spool uploads it
                return

    def _uploaded_early(self, digest: str) -> bool:
        """Whether the early upload of ``digest`` succeeded (waiting for it if it is under way)."""
        with self._uploads_lock:
            future = self._uploads.pop(digest, None)
        if future is None:
            return False
        try:
            future.result(timeout=self.settings.http_timeout + 5.0)
        except Exception as exc:  # any failure: the regular, retried upload follows
            log.info("early_upload_failed", digest=digest, error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _on_delivered(self, item: SpoolItem) -> None:
        if item.kind == OUTPUT_KIND:
            self.ledger.mark_delivered(item.key)
            created = item.meta.get("signed_at")
            latency = round(time.time() - created, 4) if isinstance(created, float) else None
            log.info("manifest_delivered", manifest_id=item.key, since_signed_s=latency)

    # -- per artifact ----------------------------------------------------------------------------------
    def process(self, artifact: FinishedArtifact) -> str | None:
        """Sign and spool one finished artifact; return its manifest ID (``None``: skipped or failed)."""
        with structlog.contextvars.bound_contextvars(artifact=artifact.name, generation=artifact.generation):
            try:
                return self._process(artifact)
            except ArtifactChanged as exc:
                log.info("artifact_changed_while_signing", detail=str(exc))
            except ProvenanceError as exc:
                if not artifact.path.exists():
                    log.info("artifact_vanished")
                    return None
                log.error("artifact_failed", error=str(exc), error_type=type(exc).__name__)
                self._failed.append(artifact.name)
            except Exception as exc:  # one bad artifact must not stop the capture of the others
                log.exception("artifact_crashed", error=f"{type(exc).__name__}: {exc}")
                self._failed.append(artifact.name)
            return None

    def _process(self, artifact: FinishedArtifact) -> str | None:
        started = time.perf_counter()
        path = artifact.path
        exclude = frozenset({artifact.marker}) if artifact.marker else frozenset()
        classification = self.classifier.classify(path)
        listing: DirectoryDigest | None = None
        if artifact.is_dir:
            listing = hash_directory(path, "sha256", exclude_top_level=exclude)
            hex_digest = listing.root
        else:
            hex_digest = hash_file(path, "sha256")
        digest = f"sha256:{hex_digest}"
        structlog.contextvars.bind_contextvars(artifact_digest=digest)
        try:
            existing = self.ledger.find(artifact.name, digest)
            if existing is not None:
                log.info("artifact_already_signed", manifest_id=existing.manifest_id)
                return None
            self._upload_early(digest, path, is_dir=artifact.is_dir, exclude=exclude)
            kind = asset_kind(classification)
            media_type = None if artifact.is_dir else classification.media_type
            ingredient = make_ingredient(
                path, artifact.name, kind=kind, hash_alg="sha256", media_type=media_type, digest_hex=hex_digest
            )
            assertions = artifact_assertions(
                self.task, self._environment, artifact, classification, digest, ingredient["dc:format"], exclude
            )
            oms_bundle = (
                self._signer.oms_bundle(path, hex_digest, exclude, artifact.is_dir) if kind == "model" else None
            )
            if oms_bundle is not None:
                assertions.append(oms_bundle_assertion(oms_bundle, digest, exclude))
            unsigned = build_manifest(
                kind=kind,
                title=artifact.name,
                ingredients=[ingredient],
                description=f"{classification.kind} written by task {self.task.task_id} ({self.task.service or 'job'})",
                cross_references=cross_references(self.task, self._software_ref),
                assertions=assertions,
                parameters=evaluation_links(self.task) if kind == "evaluation" else None,
                metrics=evaluation_metrics(path) if kind == "evaluation" and not artifact.is_dir else None,
            )
            signed = sign_manifest(unsigned, self.identity, hash_alg="sha256")
            manifest_id = str(signed["instance_id"])
            structlog.contextvars.bind_contextvars(manifest_id=manifest_id)
            c2pa = self._signer.c2pa(path, listing, signed)
            if artifact.confirm_at is not None:  # reported at its rename: re-check no earlier than planned
                time.sleep(max(0.0, artifact.confirm_at - time.monotonic()))
            if fingerprint(path) != artifact.fingerprint:
                raise ArtifactChanged("fingerprint differs from the one reported complete")
            body = {
                "manifest": signed,
                "c2pa": base64.b64encode(c2pa).decode() if c2pa is not None else None,
                "oms_bundle": base64.b64encode(oms_bundle).decode() if oms_bundle is not None else None,
                "artifact": {
                    "digest": digest,
                    "name": artifact.name,
                    "kind": classification.kind,
                    "size": artifact.size,
                    "media_type": ingredient["dc:format"],
                },
                "role": "output",
            }
            upload = {"digest": digest, "path": str(path), "is_dir": artifact.is_dir, "exclude": sorted(exclude)}
            meta = {**ArtifactLedger.spool_meta(artifact, digest), "signed_at": time.time()}
            self.spool.put(manifest_id, {"body": body, "upload": upload}, kind=OUTPUT_KIND, meta=meta)
            self.ledger.record_signed(artifact, digest=digest, manifest_id=manifest_id)
            log.info(
                "artifact_signed",
                kind=classification.kind,
                size=artifact.size,
                reason=artifact.reason,
                sign_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return manifest_id
        finally:
            structlog.contextvars.unbind_contextvars("artifact_digest", "manifest_id")

    # -- pieces ----------------------------------------------------------------------------------------
    def _capture_environment(self) -> dict[str, Any]:
        interpreter = self.settings.interpreter or self.task.environment.get("interpreter")
        if interpreter is not None and not Path(str(interpreter)).exists():
            interpreter = None  # another container's path (Kubernetes): the image digest identifies it
        try:
            return self.environment.get(interpreter, image_digest=self.settings.image_digest)
        except ProvenanceError as exc:
            log.warning("environment_capture_failed", error=str(exc))
            return {"error": str(exc), "interpreter": str(interpreter) if interpreter else None}
