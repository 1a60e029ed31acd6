"""The controller's transparency log: the embedded log opened once, with group commit for registrations.

:func:`open_transparency_log` opens :class:`~provenance.tlog.local.LocalTransparencyLog` in
``MLPROV_TLOG_DIR`` (default ``$MLPROV_HOME/tlog``; the log holds a file lock while the controller runs).

:class:`GroupCommitLog` is what ingestion appends through. Each registration is one HTTP request on a
thread of the pool; a manifest entry costs one fsync when appended alone. Concurrent callers are grouped
without a background thread (leader/follower): a caller queues its entry; if no append is in flight it
becomes the leader, takes every queued entry and writes them with one ``append_many`` (one write, one
fsync); callers arriving meanwhile queue behind and the next leader takes them all. So N concurrent
registrations cost about two fsyncs, not N, and a lone registration pays no batching delay.

An append that fails raises :class:`~provenance.errors.TransparencyLogError` to every caller of that
batch; the log's appends are idempotent (identical data returns the existing entry), so a retry is safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from provenance.errors import TransparencyLogError
from provenance.tlog.base import LogEntry, TransparencyLog
from provenance.tlog.local import LocalTransparencyLog

__all__ = ["BatchAppender", "GroupCommitLog", "open_transparency_log"]

log = structlog.get_logger(__name__)

LOCK_TIMEOUT = 10.0
"""Seconds to wait for a previous controller process to release the log's file lock."""


class BatchAppender(Protocol):
    def append_many(self, items: list[bytes]) -> list[LogEntry]: ...


@dataclass
class _Slot:
    data: bytes
    entry: LogEntry | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class GroupStats:
    batches: int = 0
    entries: int = 0
    largest_batch: int = 0
    sizes: list[int] = field(default_factory=list)


class GroupCommitLog:
    """Appends grouped into ``append_many`` batches (see the module docstring); thread-safe."""

    def __init__(self, log: TransparencyLog, *, max_batch: int = 1024) -> None:
        self.log = log
        self.max_batch = max_batch
        self.stats = GroupStats()
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._busy = False

    def append(self, data: bytes) -> LogEntry:
        """Append ``data`` (durable when this returns); the entry, existing or new."""
        slot = _Slot(data)
        with self._cond:
            self._pending.append(slot)
        while True:
            with self._cond:
                while self._busy and not slot.done:
                    self._cond.wait()
                if slot.done:
                    return self._result(slot)
                self._busy = True  # lead: take what is queued (our slot is among the first max_batch or later)
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[_Slot]) -> None:
        try:
            many = getattr(self.log, "append_many", None)
            entries = many([s.data for s in batch]) if callable(many) else [self.log.append(s.data) for s in batch]
        except BaseException as exc:
            for slot in batch:
                slot.error, slot.done = exc, True
            return
        for slot, entry in zip(batch, entries, strict=True):
            slot.entry, slot.done = entry, True
        self.stats.batches += 1
        self.stats.entries += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        if len(self.stats.sizes) < 10_000:
            self.stats.sizes.append(len(batch))

    @staticmethod
    def _result(slot: _Slot) -> LogEntry:
        if slot.error is not None:
            if isinstance(slot.error, TransparencyLogError):
                raise slot.error
            raise TransparencyLogError(f"cannot append to the transparency log: {slot.error}") from slot.error
        assert slot.entry is not None
        return slot.entry

    def close(self) -> None:
        close = getattr(self.log, "close", None)
        if callable(close):
            close()


def open_transparency_log(directory: str | object, *, lock_timeout: float = LOCK_TIMEOUT) -> LocalTransparencyLog:
    """The embedded log in ``directory`` (created, with its signing key, on first use)."""
    opened = LocalTransparencyLog(str(directory), lock_timeout=lock_timeout)
    log.info("transparency log open", path=str(directory), size=opened.size(), vkey=opened.verifier_key)
    return opened
