"""What the sidecar keeps on disk so that a SIGKILL loses nothing: the delivery outbox and the artifact ledger.

**Spool** (:class:`Spool`): every delivery (a manifest registration, an artifact upload) is first an item
in ``<dir>/pending/`` (one JSON file per idempotency key, written atomically), then attempted. The
delivery is a callable: it returns on success, raises :class:`RetryableDeliveryError` (or any other
exception: treated as retryable and logged) to be retried with exponential back-off and jitter
(bounded by :attr:`Backoff.maximum`), or :class:`PermanentDeliveryError` to move the item to
``<dir>/dead/`` with the reason (never retried). At most one attempt per key is in flight, whichever
thread asks. A restarted spool re-loads pending items and attempts them at once. :meth:`Spool.drain`
flushes until a deadline and returns what is left (job exit).

**Ledger** (:class:`ArtifactLedger`, ``.mlprov-sidecar/state.json``): per artifact name, every version
signed (generation, fingerprint, digest, manifest ID) and whether it was delivered. The watcher reads
it on start to skip what is already signed; the assembly uses :meth:`ArtifactLedger.find` to dedupe by
(name, digest). Crash-safe order for the assembly: ``spool.put(..., meta=ArtifactLedger.spool_meta(...))``
then ``ledger.record_signed(...)``; on start ``ledger.reconcile(spool.pending())`` closes the gap between
the two writes, and ``Spool(on_delivered=...)`` marks delivery before the spool forgets the item.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from provenance.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError, StorageError

if TYPE_CHECKING:
    from provenance.sidecar.completion import FinishedArtifact

__all__ = [
    "ArtifactLedger",
    "ArtifactRecord",
    "Backoff",
    "DeadItem",
    "DeliveryError",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "Spool",
    "SpoolItem",
    "write_json_atomic",
]

log = structlog.get_logger(__name__)


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write JSON so that readers (and a restart after SIGKILL) see the old file or the new one, never half.

    ``durable``: ``fsync`` the file and its directory before returning (survives a power loss too).
    Without it the rename is still atomic and survives the process being killed (the page cache is the
    kernel's), at no disk-flush cost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True, separators=(",", ":"))
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` failures: ``min(maximum, initial * multiplier**(n-1))``,
    of which a random fraction up to ``jitter`` is taken off (0: none; 1: "full jitter")."""

    initial: float = 0.5
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True)
class SpoolItem:
    key: str
    """Idempotency key (the manifest ID, or e.g. ``<manifest id>#upload``): one item per key."""
    kind: str
    payload: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    created_at: float = 0.0
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class DeadItem:
    item: SpoolItem
    reason: str
    dead_at: float


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest() + ".json"


class Spool:
    """Durable outbox with retries. Thread-safe; :meth:`start` runs a background delivery thread."""

    def __init__(
        self,
        directory: Path,
        deliver: Callable[[SpoolItem], None],
        *,
        backoff: Backoff | None = None,
        on_delivered: Callable[[SpoolItem], None] | None = None,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._pending_dir = self.directory / "pending"
        self._dead_dir = self.directory / "dead"
        self._pending_dir.mkdir(parents=True, exist_ok=True)
        self._dead_dir.mkdir(parents=True, exist_ok=True)
        self._deliver = deliver
        self._on_delivered = on_delivered
        self._backoff = backoff or Backoff()
        self._max_attempts = max_attempts
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._cond = threading.Condition()
        self._items: dict[str, SpoolItem] = {}
        self._due: dict[str, float] = {}
        self._inflight: set[str] = set()
        self._seq = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._load()

    # -- persistence -------------------------------------------------------------------------------
    def _load(self) -> None:
        now = self._clock()
        for path in sorted(self._pending_dir.iterdir()):
            if path.name.startswith("."):  # a temporary file left by a kill mid-write
                path.unlink(missing_ok=True)
                continue
            try:
                item = SpoolItem(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.error("spool_item_unreadable", file=str(path), error=str(exc))
                path.replace(self._dead_dir / path.name)
                continue
            self._items[item.key] = item
            self._due[item.key] = now
            self._seq = max(self._seq, item.seq)
        if self._items:
            log.info("spool_reloaded", pending=len(self._items))

    def _write(self, item: SpoolItem) -> None:
        write_json_atomic(self._pending_dir / _file_name(item.key), asdict(item))

    def _bury(self, item: SpoolItem, reason: str) -> None:
        record = {"item": asdict(item), "reason": reason, "dead_at": time.time()}
        write_json_atomic(self._dead_dir / _file_name(item.key), record)
        (self._pending_dir / _file_name(item.key)).unlink(missing_ok=True)
        log.error("spool_item_dead", key=item.key, kind=item.kind, reason=reason, attempts=item.attempts)

    # -- public API --------------------------------------------------------------------------------
    def put(
        self, key: str, payload: dict[str, Any], *, kind: str = "manifest", meta: dict[str, Any] | None = None
    ) -> SpoolItem:
        """Persist an item (durable when this returns) and wake the delivery thread; idempotent on ``key``."""
        with self._cond:
            existing = self._items.get(key)
            if existing is not None:
                return existing
            self._seq = max(self._seq + 1, time.time_ns())
            item = SpoolItem(
                key=key, kind=kind, payload=payload, meta=dict(meta or {}), seq=self._seq, created_at=time.time()
            )
            self._write(item)
            self._items[key] = item
            self._due[key] = self._clock()
            self._cond.notify_all()
        log.debug("spool_put", key=key, kind=kind)
        return item

    def pending(self) -> list[SpoolItem]:
        """Items not delivered yet, oldest first."""
        with self._cond:
            return sorted(self._items.values(), key=lambda i: i.seq)

    def dead(self) -> list[DeadItem]:
        """Items refused permanently, with the reason."""
        out = []
        for path in sorted(self._dead_dir.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                out.append(DeadItem(SpoolItem(**raw["item"]), raw["reason"], raw["dead_at"]))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return out

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def run_due(self) -> int:
        """Attempt every item whose back-off has elapsed (oldest first); return how many were delivered."""
        with self._cond:
            now = self._clock()
            keys = [
                i.key
                for i in sorted(self._items.values(), key=lambda i: i.seq)
                if self._due[i.key] <= now and i.key not in self._inflight
            ]
        return sum(1 for key in keys if self._attempt(key))

    def _attempt(self, key: str) -> bool:
        with self._cond:
            item = self._items.get(key)
            if item is None or key in self._inflight or self._due[key] > self._clock():
                return False
            self._inflight.add(key)
        try:
            try:
                self._deliver(item)
                if self._on_delivered is not None:
                    self._on_delivered(item)
            except PermanentDeliveryError as exc:
                with self._cond:
                    self._bury(replace(item, attempts=item.attempts + 1, last_error=str(exc)), str(exc))
                    self._forget(key)
                return False
            except Exception as exc:  # retryable: RetryableDeliveryError, or anything the callable did not classify
                self._failed(item, exc)
                return False
            with self._cond:
                (self._pending_dir / _file_name(key)).unlink(missing_ok=True)
                self._forget(key)
            log.info("spool_delivered", key=key, kind=item.kind, attempts=item.attempts + 1)
            return True
        finally:
            with self._cond:
                self._inflight.discard(key)
                self._cond.notify_all()

    def _forget(self, key: str) -> None:
        self._items.pop(key, None)
        self._due.pop(key, None)

    def _failed(self, item: SpoolItem, exc: Exception) -> None:
        failed = replace(item, attempts=item.attempts + 1, last_error=f"{type(exc).__name__}: {exc}")
        with self._cond:
            if self._max_attempts is not None and failed.attempts >= self._max_attempts:
                self._bury(failed, f"gave up after {failed.attempts} attempts: {failed.last_error}")
                self._forget(item.key)
                return
            delay = self._backoff.delay(failed.attempts, self._rng)
            self._write(failed)
            self._items[item.key] = failed
            self._due[item.key] = self._clock() + delay
        level = "warning" if isinstance(exc, RetryableDeliveryError) else "error"
        getattr(log, level)(
            "spool_retry", key=item.key, attempts=failed.attempts, retry_in=round(delay, 3), error=failed.last_error
        )

    def _wait_time(self, deadline: float | None) -> float | None:
        """Seconds until something may be attempted (caller holds the lock); ``None``: wait to be woken."""
        now = self._clock()
        dues = [d for k, d in self._due.items() if k not in self._inflight]
        wake = min(dues) if dues else None
        if deadline is not None:
            wake = deadline if wake is None else min(wake, deadline)
        return None if wake is None else max(0.0, wake - now)

    def drain(self, deadline: float) -> list[SpoolItem]:
        """Deliver until everything is delivered or ``deadline`` (on the spool's clock, by default
        ``time.monotonic()``) has passed, honouring back-off; return what is still undelivered.

        An attempt already started is not interrupted: the delivery callable's own timeout bounds it.
        """
        while True:
            with self._cond:
                if not self._items or self._clock() >= deadline:
                    break
            self.run_due()
            with self._cond:
                if not self._items:
                    break
                timeout = self._wait_time(deadline)
                if timeout:
                    self._cond.wait(timeout)
        remaining = self.pending()
        if remaining:
            log.warning("spool_drain_incomplete", remaining=len(remaining))
        return remaining

    # -- background thread -------------------------------------------------------------------------
    def start(self) -> None:
        """Deliver in a background thread until :meth:`stop`."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="mlprov-spool", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping.is_set():
                    return
                timeout = self._wait_time(None)
                if timeout is None or timeout > 0:
                    self._cond.wait(timeout)
                if self._stopping.is_set():
                    return
            self.run_due()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the background thread (an attempt in progress finishes first); pending items stay on disk."""
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> Spool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ArtifactRecord:
    """One signed version of one artifact."""

    name: str
    generation: int
    fingerprint: str
    digest: str
    manifest_id: str
    delivered: bool = False


class ArtifactLedger:
    """The sidecar's durable memory of what it signed and delivered (thread-safe, written atomically)."""

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, list[ArtifactRecord]] = {}
        self._software: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                for name, records in raw.get("artifacts", {}).items():
                    self._records[name] = [ArtifactRecord(**r) for r in records]
                self._software = dict(raw.get("software", {}))
            except (OSError, ValueError, TypeError) as exc:
                raise StorageError(
                    f"sidecar state {self.path} is unreadable ({exc}); move it away to start afresh"
                ) from exc

    def _save(self, *, durable: bool = True) -> None:
        data = {
            "version": self.VERSION,
            "artifacts": {n: [asdict(r) for r in rs] for n, rs in self._records.items()},
            "software": self._software,
        }
        write_json_atomic(self.path, data, durable=durable)

    def latest(self, name: str) -> ArtifactRecord | None:
        with self._lock:
            records = self._records.get(name)
            return records[-1] if records else None

    def find(self, name: str, digest: str) -> ArtifactRecord | None:
        """The record of ``name`` with content ``digest``: if there is one, do not sign it again."""
        with self._lock:
            return next((r for r in self._records.get(name, []) if r.digest == digest), None)

    def software(self, key: str) -> dict[str, Any] | None:
        """The software manifest remembered for a code commit (``key``: e.g. ``<repo>@<commit>``)."""
        with self._lock:
            found = self._software.get(key)
            return dict(found) if found is not None else None

    def record_software(self, key: str, data: dict[str, Any]) -> None:
        """Remember the software manifest of a code commit (JSON-ready ``data``), so a restart reuses it."""
        with self._lock:
            self._software[key] = dict(data)
            self._save()

    def records(self) -> list[ArtifactRecord]:
        with self._lock:
            return [r for rs in self._records.values() for r in rs]

    def undelivered(self) -> list[ArtifactRecord]:
        return [r for r in self.records() if not r.delivered]

    def record_signed(self, artifact: FinishedArtifact, *, digest: str, manifest_id: str) -> ArtifactRecord:
        """Remember that ``artifact`` (this generation and fingerprint) has manifest ``manifest_id``.

        Written without ``fsync`` (it survives a kill, not necessarily a power loss): the spool item put
        just before holds the same record (:meth:`spool_meta`, durable), :meth:`reconcile` rebuilds it from
        there, and :meth:`mark_delivered` saves durably before the spool forgets the item."""
        record = ArtifactRecord(artifact.name, artifact.generation, artifact.fingerprint, digest, manifest_id)
        return self._add(record, durable=False)

    def _add(self, record: ArtifactRecord, *, durable: bool = True) -> ArtifactRecord:
        with self._lock:
            records = self._records.setdefault(record.name, [])
            for existing in records:
                if existing.manifest_id == record.manifest_id or existing.digest == record.digest:
                    return existing
            records.append(record)
            self._save(durable=durable)
        return record

    def mark_delivered(self, manifest_id: str) -> bool:
        """Record that ``manifest_id`` reached the controller; ``False`` if no record has that ID."""
        with self._lock:
            for records in self._records.values():
                for i, r in enumerate(records):
                    if r.manifest_id == manifest_id:
                        if not r.delivered:
                            records[i] = replace(r, delivered=True)
                            self._save()
                        return True
        return False

    @staticmethod
    def spool_meta(artifact: FinishedArtifact, digest: str) -> dict[str, Any]:
        """The ``meta`` to give :meth:`Spool.put` so that :meth:`reconcile` can rebuild a lost record."""
        return {
            "artifact": {
                "name": artifact.name,
                "generation": artifact.generation,
                "fingerprint": artifact.fingerprint,
                "digest": digest,
            }
        }

    def reconcile(self, items: Iterable[SpoolItem]) -> list[ArtifactRecord]:
        """Adopt spooled manifests whose record was not written (killed between the two writes)."""
        added = []
        for item in items:
            a = item.meta.get("artifact")
            if not isinstance(a, dict):
                continue
            record = ArtifactRecord(a["name"], int(a["generation"]), a["fingerprint"], a["digest"], item.key)
            if self._add(record) is record:
                added.append(record)
        return added
