"""The controller's own structlog events, into the log bus as component ``controller``.

:class:`LogBusProcessor` is a structlog processor: it publishes a copy of each event and passes the
event dict on unchanged, so the console/JSON renderer after it still prints it. Put it after the
processors that add ``timestamp`` and ``level`` and before the renderer; :func:`add_bus_sink` does
that on the current structlog configuration. It is safe to install before a bus exists
(``attach``/``detach``), never raises into the logging call, and ignores events emitted while it is
publishing (so a bus that logs cannot recurse).

Field mapping: ``event`` -> message; ``level``; ``run_id``/``dag_id``/``task_id``/``attempt``
(``try_number`` too) -> the record's own fields; ``task_event`` -> ``event``; everything else -> ``fields``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import MutableMapping
from datetime import datetime
from typing import Any

import structlog

from controller.logs.base import LogBus, LogRecord

__all__ = ["LogBusProcessor", "add_bus_sink", "remove_bus_sink"]

# structlog's level numbers (those of the standard library), by name
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}
_SKIP = frozenset({"event", "level", "timestamp", "run_id", "dag_id", "task_id", "attempt", "try_number"})
_SKIP_ALSO = frozenset({"task_event", "_record", "_from_structlog", "exc_info", "stack_info"})


def _timestamp(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class LogBusProcessor:
    """A structlog processor publishing each event to a :class:`LogBus` (when one is attached)."""

    def __init__(self, bus: LogBus | None = None, *, component: str = "controller", min_level: str = "debug") -> None:
        self._bus = bus
        self._component = component
        self._min = _LEVELS.get(min_level, 0)
        self._busy = threading.local()
        self.dropped = 0
        """Events the bus refused (closed or failing); counted, never raised into the caller."""

    def attach(self, bus: LogBus) -> None:
        self._bus = bus

    def detach(self) -> None:
        self._bus = None

    def to_record(self, method_name: str, event_dict: MutableMapping[str, Any]) -> LogRecord:
        level = str(event_dict.get("level") or method_name).lower()
        if level == "exception":
            level = "error"
        extra = {k: v for k, v in event_dict.items() if k not in _SKIP and k not in _SKIP_ALSO}
        exc = event_dict.get("exception")
        if exc is not None:
            extra["exception"] = str(exc)
        return LogRecord(
            timestamp=_timestamp(event_dict.get("timestamp")),
            message=str(event_dict.get("event", "")),
            component=self._component,
            level=level,
            run_id=_str_or_none(event_dict.get("run_id")),
            dag_id=_str_or_none(event_dict.get("dag_id")),
            task_id=_str_or_none(event_dict.get("task_id")),
            attempt=_int_or_none(event_dict.get("attempt", event_dict.get("try_number"))),
            event=_str_or_none(event_dict.get("task_event")),
            fields=extra,
        )

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        bus = self._bus
        if bus is None or getattr(self._busy, "active", False):
            return event_dict
        level = str(event_dict.get("level") or method_name).lower()
        if _LEVELS.get(level, 100) < self._min:
            return event_dict
        self._busy.active = True
        try:
            bus.publish(self.to_record(method_name, event_dict))
        except Exception:  # logging must never fail the caller; the count shows it in /metrics
            self.dropped += 1
        finally:
            self._busy.active = False
        return event_dict


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def add_bus_sink(bus: LogBus, *, min_level: str = "debug") -> LogBusProcessor:
    """Insert a :class:`LogBusProcessor` for ``bus`` before the renderer of the current structlog config."""
    processor = LogBusProcessor(bus, min_level=min_level)
    processors = list(structlog.get_config()["processors"])
    position = max(0, len(processors) - 1)  # the last processor renders; publish the dict before it
    processors.insert(position, processor)
    structlog.configure(processors=processors)
    return processor


def remove_bus_sink(processor: LogBusProcessor) -> None:
    """Take ``processor`` out of the structlog configuration and detach it from its bus."""
    processor.detach()
    processors = [p for p in structlog.get_config()["processors"] if p is not processor]
    structlog.configure(processors=processors)
