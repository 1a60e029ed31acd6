"""List-then-watch of one kind of object by label selector, with resync (the runtime's status source).

:class:`ResourceWatch` runs on its own thread: it **lists** (a consistent read; every object is handed to
``on_sync`` with the time the list started, so the caller can tell a vanished object from one created
after the list), then **watches** from the list's ``resourceVersion`` with bookmarks, handing each event
to ``on_event``. The watch asks the server to end after ``watch_timeout`` seconds; the loop then lists
again: the periodic resync. An ``ERROR`` event with code 410 (``Gone``: the resourceVersion is too old)
or an ``ApiException`` 410 also re-lists at once. Any other failure is logged and retried after a
back-off. Every call carries ``_request_timeout``; objects are raw API dicts (``_preload_content=False``),
never client models.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

__all__ = ["ResourceWatch", "iter_lines", "read_json"]

log = structlog.get_logger(__name__)

ListFn = Callable[..., Any]
SyncFn = Callable[[list[dict[str, Any]], float], None]
EventFn = Callable[[str, dict[str, Any]], None]


class _Gone(Exception):
    """The watch's resourceVersion expired (HTTP 410): list again."""


def read_json(response: Any) -> dict[str, Any]:
    """The JSON body of a ``_preload_content=False`` response (urllib3), released afterwards."""
    try:
        data: dict[str, Any] = json.loads(response.data)
        return data
    finally:
        release = getattr(response, "release_conn", None)
        if callable(release):
            release()


def iter_lines(response: Any, chunk: int = 16 * 1024) -> Iterator[str]:
    """The lines of a streamed response (watch events, followed logs); a last partial line too."""
    pending = b""
    for data in response.stream(chunk):
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace")


class ResourceWatch:
    """See the module docstring. ``start()`` once; ``stop()`` ends the thread (closing the open stream)."""

    def __init__(
        self,
        *,
        name: str,
        list_fn: ListFn,
        namespace: str,
        selector: str,
        on_sync: SyncFn,
        on_event: EventFn,
        request_timeout: float = 10.0,
        watch_timeout: int = 300,
        backoff: float = 2.0,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._namespace = namespace
        self._selector = selector
        self._on_sync = on_sync
        self._on_event = on_event
        self._timeout = request_timeout
        self._watch_timeout = watch_timeout
        self._backoff = backoff
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self.lists = 0
        """How many times it listed (tests and the resync figure)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"k8s-watch-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            close = getattr(response, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # closing a stream another thread reads may fail; the flag ends the loop
                    log.debug("watch_close_failed", watch=self.name)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self.list_once()
                self.watch_once(version)
            except _Gone:
                log.info("watch_expired_relisting", watch=self.name)
            except Exception as exc:  # the API server may be down: retry, never die
                if self._stop.is_set():
                    return
                log.warning("watch_failed", watch=self.name, error=" ".join(str(exc).split())[:300])
                self._stop.wait(self._backoff)

    def list_once(self) -> str:
        """List (consistent read), hand the items to ``on_sync``; return the list's resourceVersion."""
        started = time.time()
        body = read_json(
            self._list_fn(
                self._namespace,
                label_selector=self._selector,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )
        self.lists += 1
        self._on_sync(list(body.get("items") or []), started)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def watch_once(self, version: str) -> None:
        """Watch from ``version`` until the server ends the watch (``watch_timeout``) or the stop flag."""
        response: Any = None
        try:
            response = self._list_fn(
                self._namespace,
                label_selector=self._selector,
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                _request_timeout=(self._timeout, self._watch_timeout + self._timeout),
            )
            self._response = response
            for line in iter_lines(response):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason')}: {obj.get('message')}")
                if kind == "BOOKMARK":
                    continue
                self._on_event(kind, obj)
        except Exception as exc:
            if getattr(exc, "status", None) == 410:
                raise _Gone from exc
            raise
        finally:
            self._response = None
            release = getattr(response, "release_conn", None) if response is not None else None
            if callable(release):
                release()
