"""The log pipeline seams: ``LogBus`` (durable transport) and ``LogIndex`` (search).

Embedded: a durable local log and SQLite FTS5. At scale (issue 6): Kafka and Elasticsearch, behind
the same Protocols, so ``/api/v1/logs/search`` works unchanged on either.

Flow: producers ``publish`` to the bus; a :class:`LogConsumer` (a consumer group on Kafka, a
committed offset file on the local bus) hands batches to ``LogIndex.index`` and commits only after
the index accepted them: at-least-once. Each delivered record carries ``id``, its position on the bus
(``local:<offset>``, ``<topic>:<partition>:<offset>``); indexes are idempotent on it, so a
redelivered batch never duplicates a line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from controller import errors

MAX_LIMIT = 1000
"""The most records one search page returns, on every index."""

__all__ = [
    "MAX_LIMIT",
    "InvalidLogQueryError",
    "LogBus",
    "LogConsumer",
    "LogError",
    "LogIndex",
    "LogPage",
    "LogQuery",
    "LogRecord",
]


class LogError(errors.UnavailableError):
    """The log bus or index failed (I/O, a broker or cluster that cannot be reached). HTTP 503."""

    code = "log_backend_error"


class InvalidLogQueryError(LogError, errors.InvalidInputError):
    """A search the index cannot run: a malformed cursor, a limit out of range, since after until. HTTP 400."""

    status_code = 400
    code = "invalid_log_query"


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (unknown objects become their ``str``)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line or task event, with the fields Kibana and the embedded index search on."""

    timestamp: float  # epoch seconds
    message: str
    component: str  # "controller" | "job" | "sidecar" | "server" | "external" | "event"
    level: str = "info"  # debug | info | warning | error | critical
    stream: str | None = None  # "stdout" | "stderr" for job/sidecar output
    run_id: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    attempt: int | None = None
    event: str | None = None  # task events: submitted, started, lock_acquired, finished, ...
    fields: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (manifest_id, artifact digest, exit code, HTTP status ...); JSON data."""
    id: str | None = None
    """Set by the bus on delivery: the record's position (``local:<offset>``); the index's idempotency key."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (API responses, bus segments); ``None`` fields are left out."""
        out: dict[str, Any] = {
            "timestamp": self.timestamp,
            "message": self.message,
            "component": self.component,
            "level": self.level,
        }
        # written out, not a loop over names: this runs for every line on the bus
        if self.stream is not None:
            out["stream"] = self.stream
        if self.run_id is not None:
            out["run_id"] = self.run_id
        if self.dag_id is not None:
            out["dag_id"] = self.dag_id
        if self.task_id is not None:
            out["task_id"] = self.task_id
        if self.attempt is not None:
            out["attempt"] = self.attempt
        if self.event is not None:
            out["event"] = self.event
        if self.id is not None:
            out["id"] = self.id
        if self.fields:
            out["fields"] = _jsonable(self.fields)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogRecord:
        return cls(
            timestamp=float(data["timestamp"]),
            message=str(data["message"]),
            component=str(data["component"]),
            level=str(data.get("level", "info")),
            stream=data.get("stream"),
            run_id=data.get("run_id"),
            dag_id=data.get("dag_id"),
            task_id=data.get("task_id"),
            attempt=data.get("attempt"),
            event=data.get("event"),
            fields=dict(data.get("fields") or {}),
            id=data.get("id"),
        )


@dataclass(frozen=True)
class LogQuery:
    q: str | None = None
    """Full text over message and fields: words must all occur (any order); ``"a phrase"`` in double
    quotes must occur as written; ``word*`` matches a prefix. No other syntax: nothing can be malformed."""
    run_id: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    attempt: int | None = None
    component: str | None = None
    level: str | None = None
    stream: str | None = None
    event: str | None = None
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    limit: int = 100
    cursor: str | None = None
    """Opaque; from the previous page's ``next_cursor`` with the same filters and order."""
    order: Literal["desc", "asc"] = "desc"
    """``desc``: newest first (search); ``asc``: chronological (a task's log view)."""

    def check(self) -> None:
        """Refuse what no index can answer (every ``LogIndex`` calls this first)."""
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidLogQueryError(f"limit must be between 1 and {MAX_LIMIT}, not {self.limit}")
        if self.order not in ("asc", "desc"):
            raise InvalidLogQueryError(f"order must be asc or desc, not {self.order!r}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise InvalidLogQueryError("since is after until")

    def exact_filters(self) -> list[tuple[str, str | int]]:
        """``(LogRecord field, value)`` of every exact-match filter that is set, in one fixed order."""
        pairs: list[tuple[str, str | int | None]] = [
            ("run_id", self.run_id),
            ("dag_id", self.dag_id),
            ("task_id", self.task_id),
            ("attempt", self.attempt),
            ("component", self.component),
            ("level", self.level),
            ("stream", self.stream),
            ("event", self.event),
        ]
        return [(name, value) for name, value in pairs if value is not None]


@dataclass(frozen=True)
class LogPage:
    records: Sequence[LogRecord]
    next_cursor: str | None = None


@runtime_checkable
class LogBus(Protocol):
    def publish(self, record: LogRecord) -> None:
        """Accept a record durably without blocking the caller on the index."""
        ...

    def publish_many(self, records: Iterable[LogRecord]) -> None: ...

    def close(self) -> None:
        """Flush what is buffered."""
        ...


@runtime_checkable
class LogConsumer(Protocol):
    """Reads a bus for one consumer group; positions advance only on :meth:`commit`."""

    def poll(self, max_records: int, timeout: float) -> Sequence[LogRecord]:
        """The next records after the last poll (each with ``id`` set); empty after ``timeout`` s idle."""
        ...

    def commit(self) -> None:
        """Mark everything returned by :meth:`poll` so far as processed (durably)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class LogIndex(Protocol):
    def index(self, records: Sequence[LogRecord]) -> None:
        """Make ``records`` searchable, all or none; a record whose ``id`` is already indexed is skipped."""
        ...

    def search(self, query: LogQuery) -> LogPage:
        """Records matching ``query`` in ``query.order``; ``InvalidLogQueryError`` for a bad cursor."""
        ...
