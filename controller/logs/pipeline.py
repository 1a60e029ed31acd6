"""Moves records from a bus consumer into the index on a background thread, at-least-once.

Loop: ``poll`` a batch (up to ``batch_size``; whatever accumulated while the previous batch was being
indexed, so batches grow with load) -> ``index.index(batch)`` -> ``consumer.commit()``. If the index
refuses, the same batch is retried with back-off and nothing is committed; if the process dies
first, the bus redelivers from the committed offset and the index skips what it already has.
Producers never wait for any of this: ``publish`` returns once the bus has the record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import structlog

from controller.logs.base import LogConsumer, LogIndex, LogRecord

__all__ = ["LogPipeline"]

log = structlog.get_logger(__name__)


class LogPipeline:
    """``start()`` once; ``flush()`` waits until everything published so far is searchable; ``close()`` drains."""

    def __init__(
        self,
        consumer: LogConsumer,
        index: LogIndex,
        *,
        batch_size: int = 20_000,
        poll_timeout: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._consumer = consumer
        self._index = index
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._polls_started = 0
        self._last_empty_poll = 0
        self._thread: threading.Thread | None = None
        self.indexed = 0
        """Records handed to the index and committed (redeliveries included)."""
        self.failures = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mlprov-log-pipeline", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.1
        pending: Sequence[LogRecord] = ()
        while not self._stop.is_set():
            if not pending:
                with self._cond:
                    self._polls_started += 1
                    poll_number = self._polls_started
                try:
                    pending = self._consumer.poll(self._batch_size, self._poll_timeout)
                except Exception as exc:  # a broken bus must not kill the pipeline thread
                    self.failures += 1
                    log.warning("log_pipeline_poll_failed", error=str(exc))
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                if not pending:
                    with self._cond:
                        self._last_empty_poll = poll_number
                        self._cond.notify_all()
                    continue
            try:
                self._index.index(pending)
                self._consumer.commit()
            except Exception as exc:  # keep the batch and retry it: nothing is lost or committed early
                self.failures += 1
                log.warning("log_pipeline_index_failed", records=len(pending), error=str(exc), retry_in=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self.indexed += len(pending)
            pending = ()
            backoff = 0.1

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until a poll that began after this call found nothing new (all earlier records indexed)."""
        if not self.running:
            return False
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._polls_started + 1
            while self._last_empty_poll < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._cond.wait(min(remaining, self._poll_timeout * 2))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Drain what the bus holds (up to ``timeout``), then stop the thread and close the consumer."""
        if self._thread is not None:
            self.flush(timeout)
            self._stop.set()
            self._thread.join(timeout=max(1.0, self._poll_timeout * 10))
            self._thread = None
        self._consumer.close()
