"""The log pipeline seams: ``LogBus`` (durable transport) and ``LogIndex`` (search).

Embedded: a durable local log and SQLite FTS5. At scale (issue 6): Kafka and Elasticsearch, behind
the same two Protocols, so ``/api/v1/logs/search`` works unchanged on either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["LogBus", "LogIndex", "LogQuery", "LogRecord", "LogPage"]


@dataclass(frozen=True)
class LogRecord:
    """One log line or task event, with the fields Kibana and the embedded index search on."""

    timestamp: float  # epoch seconds
    message: str
    component: str  # "controller" | "job" | "sidecar" | "server" | "external" | "event"
    level: str = "info"
    stream: str | None = None  # "stdout" | "stderr" for job/sidecar output
    run_id: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    attempt: int | None = None
    event: str | None = None  # task events: submitted, started, lock_acquired, finished, ...
    fields: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (manifest_id, artifact digest, exit code, HTTP status ...)."""


@dataclass(frozen=True)
class LogQuery:
    q: str | None = None  # full-text query
    run_id: str | None = None
    task_id: str | None = None
    component: str | None = None
    level: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: str | None = None


@dataclass(frozen=True)
class LogPage:
    records: Sequence[LogRecord]
    next_cursor: str | None = None


@runtime_checkable
class LogBus(Protocol):
    def publish(self, record: LogRecord) -> None:
        """Accept a record durably without blocking the caller on the index."""
        ...

    def publish_many(self, records: Iterable[LogRecord]) -> None:
        ...

    def close(self) -> None:
        """Flush what is buffered."""
        ...


@runtime_checkable
class LogIndex(Protocol):
    def index(self, records: Sequence[LogRecord]) -> None:
        ...

    def search(self, query: LogQuery) -> LogPage:
        ...
