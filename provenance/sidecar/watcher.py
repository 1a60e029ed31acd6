"""The sidecar's watcher: turns file-system events under a job's ``outputs/`` into "artifact finished" reports.

Events (inotify through watchdog, or watchdog's polling observer) are only *hints*: they are mapped to
the top-level entry they concern and fed to a :class:`~provenance.sidecar.completion.CompletionTracker`,
which decides completeness by re-stat'ing (see that module for the rules and for versions). So the
polling fallback reports the same artifacts with the same content; only the reason may differ (a
polling observer sees a quick ``write tmp; rename`` as a plain creation: ``stable`` instead of
``renamed``). Polling is used when configured, and automatically when inotify cannot be set up
(``OSError``: no inotify, instance or watch limit reached).

One worker thread owns the tracker; it sleeps on a condition until an event arrives or the next
check is due (no busy loop), and re-scans ``outputs/`` every ``rescan_interval`` as a safety net for
lost events (inotify queue overflow, watches not added below a limit). Reports go to a queue; iterate
the watcher (or call :meth:`Watcher.get`) to consume them. :meth:`Watcher.finish` is the job's exit:
pending artifacts are flushed and iteration ends once nothing is pending.

Restart: given the :class:`~provenance.sidecar.spool.ArtifactLedger`, :meth:`Watcher.start` re-scans
``outputs/`` and reports only what is not already signed (the assembly still dedupes by name and
digest with :meth:`ArtifactLedger.find`).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Literal, Protocol

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from provenance.errors import InvalidInputError
from provenance.sidecar.completion import CompletionRules, CompletionTracker, FinishedArtifact

if TYPE_CHECKING:
    from provenance.sidecar.spool import ArtifactLedger

__all__ = ["ObserverLike", "WatchConfig", "Watcher", "warm_observer"]

log = structlog.get_logger(__name__)

Hint = tuple[Literal["observe", "marker", "renamed", "removed"], str]


class ObserverLike(Protocol):
    """What the watcher needs of a watchdog observer (tests inject failing ones)."""

    def schedule(self, event_handler: FileSystemEventHandler, path: str, *, recursive: bool = ...) -> object: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = ...) -> None: ...


@dataclass(frozen=True)
class WatchConfig:
    rules: CompletionRules = field(default_factory=CompletionRules)
    use_polling: bool = False
    poll_interval: float = 1.0
    rescan_interval: float = 30.0


def _native_observer() -> ObserverLike:
    current = sys.platform  # a variable: mypy would otherwise judge the other branch unreachable on Linux
    if current.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        observer: ObserverLike = InotifyObserver(generate_full_events=True)  # moved_to from outside: a move
        return observer
    from watchdog.observers import Observer

    native: ObserverLike = Observer()
    return native


def warm_observer() -> None:
    """Import the native observer's modules now (a standby sidecar's warm-up), not when watching starts."""
    if sys.platform.startswith("linux"):
        from watchdog.observers import inotify  # noqa: F401
    else:
        from watchdog import observers  # noqa: F401


def _polling_observer(interval: float) -> ObserverLike:
    from watchdog.observers.polling import PollingObserver

    observer: ObserverLike = PollingObserver(timeout=interval)
    return observer


class _Handler(FileSystemEventHandler):
    """Hands every event to the watcher (which maps it to a hint)."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        self._watcher._on_event(event)


class Watcher:
    """Watches ``outputs`` and queues a :class:`FinishedArtifact` when an artifact is complete.

    Thread-safe: the observer thread, the worker thread and the consumer share only the hint list
    (under a condition) and the result queue. Use as a context manager or call :meth:`start` /
    :meth:`stop`.
    """

    def __init__(
        self,
        outputs: Path,
        config: WatchConfig | None = None,
        *,
        ledger: ArtifactLedger | None = None,
        observer_factory: Callable[[], ObserverLike] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outputs = Path(outputs)
        self.config = config or WatchConfig()
        self._ledger = ledger
        self._observer_factory = observer_factory or _native_observer
        self._clock = clock
        self._tracker = CompletionTracker(self.outputs, self.config.rules)
        self._root = os.path.abspath(self.outputs)
        self._cond = threading.Condition()
        self._hints: list[Hint] = []
        self._rescan = False
        self._finish_requested = False
        self._stopping = False
        self._done = threading.Event()
        self._results: queue.Queue[FinishedArtifact | None] = queue.Queue()
        self._observer: ObserverLike | None = None
        self._worker: threading.Thread | None = None
        self._pending_snapshot: list[str] = []
        self.mode: Literal["inotify", "polling", "stopped"] = "stopped"
        self.reported = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Watcher:
        if self._worker is not None:
            return self
        if not self.outputs.is_dir():
            raise InvalidInputError(f"{self.outputs} is not a directory; the job's outputs/ must exist before watching")
        self._observer = self._start_observer()
        self._seed()
        self._worker = threading.Thread(target=self._run, name="mlprov-sidecar-watcher", daemon=True)
        self._worker.start()
        return self

    def _start_observer(self) -> ObserverLike:
        handler = _Handler(self)
        if not self.config.use_polling:
            observer = None
            try:
                observer = self._observer_factory()
                observer.schedule(handler, self._root, recursive=True)
                observer.start()
                self.mode = "inotify"
                return observer
            except OSError as exc:  # no inotify, or its instance/watch limit reached
                log.warning("watcher_inotify_unavailable", error=str(exc), fallback="polling")
                if observer is not None:
                    self._quiet_stop(observer)
        observer = _polling_observer(self.config.poll_interval)
        observer.schedule(handler, self._root, recursive=True)
        observer.start()
        self.mode = "polling"
        return observer

    @staticmethod
    def _quiet_stop(observer: ObserverLike) -> None:
        try:
            observer.stop()
            observer.join(1.0)
        except (OSError, RuntimeError):
            pass

    def _seed(self) -> None:
        """Initial scan (and the restart re-scan): all present is tracked, signed versions are not re-reported."""
        now = self._clock()
        for name in self._top_level_names():
            record = self._ledger.latest(name) if self._ledger is not None else None
            if record is not None:
                self._tracker.adopt(name, record.generation, record.fingerprint, now)
            else:
                self._tracker.observe(name, now)
        log.info(
            "watcher_started", outputs=str(self.outputs), mode=self.mode, tracked=len(list(self._tracker.tracked()))
        )

    def finish(self, timeout: float | None = None) -> bool:
        """The job exited: flush everything pending. Returns ``True`` once all is reported (the iterator
        then ends), ``False`` if ``timeout`` passed first (see :meth:`pending`)."""
        with self._cond:
            self._finish_requested = True
            self._cond.notify_all()
        return self._done.wait(timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop watching at once (pending artifacts are not reported); ends the iterator. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        self._stop_observer()
        self._results.put(None)
        self.mode = "stopped"

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5.0)

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- consumer side -----------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> FinishedArtifact | None:
        """The next finished artifact; ``None`` at the end (after finish/stop) or when ``timeout`` passed."""
        try:
            item = self._results.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._results.put(None)  # the end stays the end for every later caller
        return item

    def __iter__(self) -> Iterator[FinishedArtifact]:
        while (item := self.get()) is not None:
            yield item

    @property
    def running(self) -> bool:
        """The worker is alive: more reports may come (``False`` once flushed, stopped or crashed)."""
        return self._worker is not None and self._worker.is_alive()

    def pending(self) -> list[str]:
        """Names still awaiting completion (a snapshot taken by the worker at its last pass)."""
        with self._cond:
            return list(self._pending_snapshot)

    # -- event side (observer thread) --------------------------------------------------------------
    def _relative(self, raw: object) -> PurePath | None:
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not isinstance(raw, str) or not raw:
            return None
        rel = os.path.relpath(os.path.abspath(raw), self._root)
        if rel == "." or rel.startswith(".."):
            return None
        return PurePath(rel)

    def _on_event(self, event: object) -> None:
        kind = getattr(event, "event_type", "")
        if kind in ("opened", "closed_no_write", "attrib"):
            return  # reads (our own hashing included) and chmod do not change content
        hints: list[Hint] = []
        src = self._relative(getattr(event, "src_path", ""))
        dest = self._relative(getattr(event, "dest_path", "")) if kind == "moved" else None
        if src is not None:
            if kind in ("deleted", "moved") and len(src.parts) == 1:
                hints.append(("removed", src.parts[0]))
            else:
                hints.append(self._hint_for(src))
        if dest is not None:
            hints.append(("renamed", dest.parts[0]) if len(dest.parts) == 1 else self._hint_for(dest))
        hints = [h for h in hints if not self.config.rules.ignore.is_ignored(h[1])]
        if hints:
            with self._cond:
                self._hints.extend(hints)
                self._cond.notify_all()

    def _hint_for(self, rel: PurePath) -> Hint:
        top = rel.parts[0]
        if len(rel.parts) == 2 and rel.parts[1] in self.config.rules.markers:
            return ("marker", top)
        return ("observe", top)

    # -- worker ------------------------------------------------------------------------------------
    def _top_level_names(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.outputs))
        except FileNotFoundError:
            return []
        return [n for n in names if not self.config.rules.ignore.is_ignored(n)]

    def _run(self) -> None:
        next_rescan = self._clock() + self.config.rescan_interval
        finishing = False
        try:
            while True:
                with self._cond:
                    while not (self._hints or self._stopping or (self._finish_requested and not finishing)):
                        now = self._clock()
                        wake = min(t for t in (self._tracker.next_check(), next_rescan) if t is not None)
                        if wake <= now:
                            break
                        self._cond.wait(wake - now)
                    if self._stopping:
                        return
                    hints, self._hints = self._hints, []
                    finish_now = self._finish_requested and not finishing
                now = self._clock()
                for op, name in hints:
                    self._apply(op, name, now)
                if finish_now or now >= next_rescan:
                    for name in self._top_level_names():  # safety net (and, at exit, the final scan)
                        self._tracker.observe(name, now)
                    next_rescan = now + self.config.rescan_interval
                if finish_now:
                    finishing = True
                    self._tracker.finish(now)
                for artifact in self._tracker.due(self._clock()):
                    self.reported += 1
                    log.info(
                        "artifact_finished",
                        artifact=artifact.name,
                        reason=artifact.reason,
                        generation=artifact.generation,
                        size=artifact.size,
                    )
                    self._results.put(artifact)
                with self._cond:
                    self._pending_snapshot = self._tracker.pending_names()
                if finishing and self._tracker.idle():
                    log.info("watcher_flushed", reported=self.reported)
                    self._done.set()
                    self._results.put(None)
                    return
        except Exception:
            log.exception("watcher_crashed")
            self._results.put(None)
            raise

    def _apply(self, op: str, name: str, now: float) -> None:
        if op == "removed":
            self._tracker.removed(name)
        elif op == "renamed":
            self._tracker.renamed(name, now)
        else:
            self._tracker.observe(name, now, marker=op == "marker")
