"""The Kafka ``LogBus`` and ``LogConsumer`` (kafka-python 3), chosen by ``MLPROV_KAFKA_BOOTSTRAP``.

Messages: records with an ``event`` go to the task-events topic, every other line to the component-logs
topic; the key is ``<run>/<task>`` (``component:<name>`` for lines outside any task) so one task's lines
land on one partition, in order; the value is the record's JSON (``LogRecord.to_dict``, without ``id``);
headers ``mlprov-component``, ``mlprov-level`` and, when set, ``mlprov-run`` / ``mlprov-task`` let a
shipper or sink route without parsing the value.

Producer: ``acks=all``, idempotence on, bounded batches (``batch_size``) and ``linger_ms``, every wait
bounded (``bootstrap_timeout_ms``, ``max_block_ms``, ``request_timeout_ms``, ``delivery_timeout_ms``).
When the broker is unreachable (the constructor fails, ``send`` times out, or a delivery fails after its
timeout) records go to a :class:`~controller.logs.spill.DiskSpill` and every later record follows them
there, so a task's order holds; a background thread reconnects and drains the spill in order, then
direct sends resume. ``publish`` never waits on a reconnect: at most ``max_block_ms`` in ``send``.

Consumer: a consumer group over both topics, auto-commit off; ``commit`` commits exactly the positions
after the records ``poll`` returned, which the pipeline calls only after the index accepted them. Each
record's ``id`` is ``<topic>:<partition>:<offset>``, so a redelivery is skipped by the index.
"""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from controller.logs.base import LogError, LogRecord
from controller.logs.spill import DiskSpill, SpillEntry

if TYPE_CHECKING:
    from controller.settings import Settings

__all__ = [
    "KafkaConfig",
    "KafkaLogBus",
    "KafkaLogConsumer",
    "message_for",
    "record_from_message",
]

log = structlog.get_logger(__name__)

_DRAIN_BATCH = 1000


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str
    events_topic: str = "mlprov.task-events"
    logs_topic: str = "mlprov.component-logs"
    group: str = "mlprov-log-index"
    timeout_ms: int = 5000
    linger_ms: int = 20
    batch_bytes: int = 256 * 1024
    security: Mapping[str, Any] | None = None
    """kafka-python ``security_protocol`` / ``sasl_*`` / ``ssl_*`` arguments, passed through."""

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConfig:
        if not settings.kafka_bootstrap:
            raise LogError("MLPROV_KAFKA_BOOTSTRAP is not set")
        security: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
        if settings.kafka_sasl_mechanism:
            security["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_username is not None:
            security["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            security["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, f"kafka_{name}")
            if value is not None:
                security[name] = str(value)
        return cls(
            bootstrap=settings.kafka_bootstrap,
            events_topic=settings.kafka_events_topic,
            logs_topic=settings.kafka_logs_topic,
            group=settings.kafka_consumer_group,
            timeout_ms=settings.kafka_timeout_ms,
            linger_ms=settings.kafka_linger_ms,
            batch_bytes=settings.kafka_batch_bytes,
            security=security,
        )

    @property
    def topics(self) -> tuple[str, str]:
        return (self.events_topic, self.logs_topic)

    def _common(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap.split(","),
            "bootstrap_timeout_ms": self.timeout_ms,
            "request_timeout_ms": max(self.timeout_ms, 1000),
            **(self.security or {}),
        }

    def producer_kwargs(self) -> dict[str, Any]:
        """Arguments for ``kafka.KafkaProducer``: every wait bounded by ``timeout_ms``."""
        request_timeout = max(self.timeout_ms, 1000)
        return {
            **self._common(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_bytes,
            "max_block_ms": self.timeout_ms,
            "delivery_timeout_ms": max(30_000, self.linger_ms + request_timeout),
            "max_in_flight_requests_per_connection": 5,  # the most idempotence keeps in order
        }

    def consumer_kwargs(self) -> dict[str, Any]:
        """Arguments for ``kafka.KafkaConsumer``: a group, manual commits, oldest first for a new group."""
        return {
            **self._common(),
            "request_timeout_ms": max(self.timeout_ms, 1000),  # must exceed fetch_max_wait_ms (500)
            "group_id": self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
        }


class _Future(Protocol):
    is_done: bool

    def succeeded(self) -> bool: ...

    def add_errback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


class _Producer(Protocol):
    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> _Future: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


def _collect_failed_client() -> None:
    """kafka-python 3.0.12 leaves the sockets of a failed constructor to the garbage collector: close
    them now (quietly: their ResourceWarning is the library's), not at some later collection."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _check_reachable(servers: Sequence[str], timeout: float, what: str) -> None:
    """A TCP connect to each bootstrap server until one answers, before kafka-python is involved: a
    failed consumer constructor leaves its I/O thread holding sockets, so "broker down" stops here."""
    errors: list[str] = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or server, int(port or 9092)), timeout=timeout).close()
            return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    raise LogError(f"cannot start the Kafka {what}: no bootstrap server reachable ({'; '.join(errors)})")


def _construct(cls: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
    """``cls(**kwargs)``; a failure becomes a ``LogError`` once the half-built client is collected."""
    _check_reachable(kwargs["bootstrap_servers"], kwargs["bootstrap_timeout_ms"] / 1000, what)
    failure = None
    try:
        return cls(**kwargs)
    except Exception as exc:  # NoBrokersAvailable, KafkaTimeoutError, a refused SASL handshake...
        failure = f"{type(exc).__name__}: {exc}"
    _collect_failed_client()  # the traceback (and with it the client) is gone here
    raise LogError(f"cannot start the Kafka {what} ({kwargs.get('bootstrap_servers')}): {failure}")


def _kafka_producer(kwargs: dict[str, Any]) -> _Producer:
    from kafka import KafkaProducer

    producer: _Producer = _construct(KafkaProducer, kwargs, "producer")
    return producer


def message_for(record: LogRecord, config: KafkaConfig) -> SpillEntry:
    """The Kafka message for ``record``: topic, key, JSON value, headers (all text; bytes on the wire)."""
    topic = config.events_topic if record.event is not None else config.logs_topic
    if record.run_id is not None or record.task_id is not None:
        key = f"{record.run_id or '-'}/{record.task_id or '-'}"
    else:
        key = f"component:{record.component}"
    data = record.to_dict()
    data.pop("id", None)  # the position is assigned by the broker, on delivery
    headers = [("mlprov-component", record.component), ("mlprov-level", record.level)]
    if record.run_id is not None:
        headers.append(("mlprov-run", record.run_id))
    if record.task_id is not None:
        headers.append(("mlprov-task", record.task_id))
    value = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return SpillEntry(topic=topic, key=key, value=value, headers=tuple(headers))


def record_from_message(topic: str, partition: int, offset: int, value: bytes | None) -> LogRecord:
    """The ``LogRecord`` in a consumed message, ``id`` = ``<topic>:<partition>:<offset>``.

    A value that is not a record (another producer wrote to the topic) is kept as an ``external`` error
    line holding the raw text: a poison message must neither stop the group nor vanish.
    """
    record_id = f"{topic}:{partition}:{offset}"
    text = (value or b"").decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        data["id"] = record_id
        return LogRecord.from_dict(data)
    except (ValueError, TypeError, KeyError):
        return LogRecord(
            timestamp=time.time(),
            message=text,
            component="external",
            level="error",
            fields={"undecodable": True, "topic": topic},
            id=record_id,
        )


class KafkaLogBus:
    """See the module docstring; thread-safe."""

    def __init__(
        self,
        config: KafkaConfig,
        spill: DiskSpill,
        *,
        producer_factory: Callable[[dict[str, Any]], _Producer] = _kafka_producer,
        drain_interval: float | None = 5.0,
    ) -> None:
        self.config = config
        self._spill = spill
        self._factory = producer_factory
        self._lock = threading.Lock()
        self._failed_lock = threading.Lock()
        self._failed: list[SpillEntry] = []
        self._down = False
        self._producer: _Producer | None = None
        self.dropped = 0
        """Records refused because the spill was full (reported in a structured warning)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connect()
        if drain_interval is not None:
            self._thread = threading.Thread(
                target=self._drain_loop, args=(drain_interval,), name="mlprov-kafka-drain", daemon=True
            )
            self._thread.start()

    @property
    def spilled_bytes(self) -> int:
        return self._spill.pending_bytes

    def _connect(self) -> _Producer | None:
        """The producer, connecting first if needed; called without ``_lock`` held, so a slow bootstrap
        (up to ``timeout_ms``) never holds up ``publish``, which spills meanwhile."""
        if self._producer is not None:
            return self._producer
        try:
            producer = self._factory(self.config.producer_kwargs())
        except Exception as exc:  # LogError (unreachable), a refused SASL handshake...
            log.warning("kafka_unreachable", bootstrap=self.config.bootstrap, error=repr(exc))
            return None
        with self._lock:
            current = self._producer  # another thread may have connected meanwhile
            if current is None:
                self._producer = current = producer
        if current is not producer:
            producer.close(timeout=0)
        return current

    def _on_send_failed(self, entry: SpillEntry, exc: BaseException) -> None:
        """Errback (producer I/O thread): a delivery failed after its timeout; keep it for the spill."""
        with self._failed_lock:
            self._failed.append(entry)
            self._down = True
        log.warning("kafka_delivery_failed", topic=entry.topic, key=entry.key, error=repr(exc))

    def _to_spill(self, entries: Sequence[SpillEntry]) -> None:
        refused = self._spill.append(entries)
        if refused:
            self.dropped += refused
            log.error("kafka_spill_full", refused=refused, max_bytes=self._spill.max_bytes, dropped=self.dropped)

    def _take_failed(self) -> None:
        with self._failed_lock:
            failed, self._failed = self._failed, []
        if failed:
            self._to_spill(failed)

    def publish(self, record: LogRecord) -> None:
        self.publish_many((record,))

    def publish_many(self, records: Iterable[LogRecord]) -> None:
        entries = [message_for(r, self.config) for r in records]
        if not entries:
            return
        with self._lock:
            self._take_failed()
            producer = self._producer
            if producer is None or self._down or not self._spill.empty:
                self._to_spill(entries)
                return
            for i, entry in enumerate(entries):
                try:
                    future = self._send(producer, entry)
                except Exception as exc:  # KafkaTimeoutError after max_block_ms: buffer full or no metadata
                    log.warning("kafka_send_blocked", error=repr(exc), spilled=len(entries) - i)
                    self._down = True
                    self._to_spill(entries[i:])
                    return
                future.add_errback(self._on_send_failed, entry)

    @staticmethod
    def _send(producer: _Producer, entry: SpillEntry) -> _Future:
        return producer.send(
            entry.topic,
            value=entry.value.encode(),
            key=entry.key.encode(),
            headers=[(name, value.encode()) for name, value in entry.headers],
        )

    def drain(self) -> bool:
        """Re-send spilled records in order; True when the spill is empty and direct sends resumed."""
        producer = self._connect()
        if producer is None:
            return False
        with self._lock:
            self._take_failed()
            timeout = self.config.timeout_ms / 1000
            while not self._spill.empty:
                entries, end = self._spill.peek(_DRAIN_BATCH)
                try:
                    futures = [self._send(producer, entry) for entry in entries]
                    producer.flush(timeout=timeout)
                except Exception as exc:
                    log.warning("kafka_drain_failed", error=repr(exc), pending_bytes=self._spill.pending_bytes)
                    return False
                if not all(f.is_done and f.succeeded() for f in futures):
                    log.warning("kafka_drain_incomplete", pending_bytes=self._spill.pending_bytes)
                    return False
                self._spill.advance(end)
                log.info("kafka_drained", records=len(entries), pending_bytes=self._spill.pending_bytes)
            with self._failed_lock:
                if self._failed:
                    return False
                self._down = False
            return True

    def _drain_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self._down or self._producer is None or not self._spill.empty:
                try:
                    self.drain()
                except LogError as exc:
                    log.error("kafka_drain_error", error=str(exc))

    def close(self) -> None:
        """Stop draining, flush the producer (bounded), and keep anything undelivered in the spill."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout_ms / 1000 * 3)
            self._thread = None
        with self._lock:
            if self._producer is not None:
                timeout = self.config.timeout_ms / 1000
                try:
                    self._producer.flush(timeout=timeout)
                except Exception as exc:
                    log.warning("kafka_flush_failed", error=repr(exc))
                try:
                    self._producer.close(timeout=timeout)
                except Exception as exc:
                    log.warning("kafka_close_failed", error=repr(exc))
                self._producer = None
            self._take_failed()


class _Consumer(Protocol):
    def subscribe(self, topics: Sequence[str]) -> None: ...

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[Any, Sequence[Any]]: ...

    def commit(self, offsets: Any = None, timeout_ms: int | None = None) -> None: ...

    def close(self) -> None: ...


def _kafka_consumer(kwargs: dict[str, Any]) -> _Consumer:
    from kafka import KafkaConsumer

    consumer: _Consumer = _construct(KafkaConsumer, kwargs, "consumer")
    return consumer


class KafkaLogConsumer:
    """A consumer group over the log topics; see :class:`controller.logs.base.LogConsumer`."""

    def __init__(
        self, config: KafkaConfig, *, consumer_factory: Callable[[dict[str, Any]], _Consumer] = _kafka_consumer
    ) -> None:
        self.config = config
        try:
            self._consumer = consumer_factory(config.consumer_kwargs())
            self._consumer.subscribe(list(config.topics))
        except Exception as exc:
            raise LogError(
                f"cannot join the Kafka consumer group {config.group!r} at {config.bootstrap}: {exc}"
            ) from exc
        self._positions: dict[Any, int] = {}

    def poll(self, max_records: int, timeout: float) -> Sequence[LogRecord]:
        batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        out: list[LogRecord] = []
        for tp, messages in batches.items():
            for message in messages:
                out.append(record_from_message(message.topic, message.partition, message.offset, message.value))
                self._positions[tp] = message.offset + 1
        return out

    def commit(self) -> None:
        """Commit the position after every record polled so far (call only once the index accepted them)."""
        if not self._positions:
            return
        from kafka.structs import OffsetAndMetadata

        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._positions.items()}
        try:
            self._consumer.commit(offsets=offsets, timeout_ms=self.config.timeout_ms)
        except Exception as exc:
            raise LogError(f"cannot commit Kafka offsets for group {self.config.group!r}: {exc}") from exc
        self._positions.clear()

    def close(self) -> None:
        self._consumer.close()
