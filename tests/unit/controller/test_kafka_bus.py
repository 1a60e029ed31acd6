"""The Kafka LogBus and LogConsumer against kafka-python's own record classes (no broker here).

The fake producer writes each ``send`` into a v2 record batch with ``MemoryRecordsBuilder`` (what the
real producer's accumulator builds), the tests decode the bytes with ``MemoryRecords`` and the fake
consumer hands back kafka-python ``ConsumerRecord``s made from those decoded records.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its protocol schemas with importlib.resources.read_text (deprecated);
    # the import happens at collection, where pytest's filterwarnings marks do not apply
    warnings.filterwarnings("ignore", "(read|open)_text is deprecated", DeprecationWarning)
    import kafka
    from kafka.consumer.fetcher import ConsumerRecord
    from kafka.future import Future
    from kafka.record import MemoryRecords, MemoryRecordsBuilder
    from kafka.structs import OffsetAndMetadata, TopicPartition

from controller.logs import build_log_bus
from controller.logs.base import LogError, LogPage, LogQuery, LogRecord
from controller.logs.kafka_bus import (
    KafkaConfig,
    KafkaLogBus,
    KafkaLogConsumer,
    _kafka_producer,
    record_from_message,
)
from controller.logs.pipeline import LogPipeline
from controller.logs.spill import DiskSpill
from controller.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning")

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: the broker is down


def _cfg(bootstrap: str = CLOSED) -> KafkaConfig:
    return KafkaConfig(bootstrap=bootstrap, events_topic="ev", logs_topic="lg", timeout_ms=300)


def _line(i: int, task: str = "t1", event: str | None = None) -> LogRecord:
    return LogRecord(
        timestamp=1000.0 + i, message=f"line {i}", component="job", run_id="r1", task_id=task, event=event,
        fields={"manifest_id": f"m{i}"},
    )  # fmt: skip


class RecordingProducer:
    """Appends every send to a per-topic v2 batch; futures resolve at once (or fail when ``fail``)."""

    def __init__(self, kwargs: dict[str, Any], fail: bool = False) -> None:
        self.kwargs = kwargs
        self.fail = fail
        self.builders: dict[str, MemoryRecordsBuilder] = {}
        self.flushes = 0
        self.closed = False

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> Future:
        assert isinstance(value, bytes)
        assert isinstance(key, bytes)
        builder = self.builders.setdefault(topic, MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20))
        assert builder.append(timestamp=0, key=key, value=value, headers=headers) is not None
        future = Future()
        if self.fail:
            future.failure(TimeoutError("delivery timed out"))
        else:
            future.success(None)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def decoded(self, topic: str) -> list[Any]:
        builder = self.builders[topic]
        builder.close()
        batch = MemoryRecords(bytes(builder.buffer())).next_batch()
        assert batch is not None
        return list(batch)


def test_config_passes_bounds_durability_and_security_through(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, kafka_bootstrap="b1:9093,b2:9093", kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="u", kafka_sasl_password="p4ss-w0rd",
        kafka_ssl_cafile=tmp_path / "ca.pem", kafka_timeout_ms=1500,
    )  # fmt: skip
    kw = KafkaConfig.from_settings(settings).producer_kwargs()
    assert kw["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert (kw["acks"], kw["enable_idempotence"]) == ("all", True)
    assert (kw["bootstrap_timeout_ms"], kw["max_block_ms"], kw["request_timeout_ms"]) == (1500, 1500, 1500)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("u", "p4ss-w0rd")
    assert kw["ssl_cafile"] == str(tmp_path / "ca.pem")
    ckw = KafkaConfig.from_settings(settings).consumer_kwargs()
    assert ckw["enable_auto_commit"] is False
    assert ckw["group_id"] == "mlprov-log-index"
    # kafka-python itself accepts every argument (its constructors reject keys outside DEFAULT_CONFIG)
    assert not set(kw) - set(kafka.KafkaProducer.DEFAULT_CONFIG)
    assert not set(ckw) - set(kafka.KafkaConsumer.DEFAULT_CONFIG)


def test_messages_route_by_kind_key_by_run_and_task_and_carry_headers(tmp_path: Path) -> None:
    made: list[RecordingProducer] = []

    def factory(kwargs: dict[str, Any]) -> RecordingProducer:
        made.append(RecordingProducer(kwargs))
        return made[-1]

    bus = KafkaLogBus(_cfg(), DiskSpill(tmp_path / "spill", 1 << 20), producer_factory=factory, drain_interval=None)
    bus.publish_many([_line(0), _line(1, event="started"), _line(2, task="t2")])
    bus.publish(LogRecord(timestamp=5.0, message="boot", component="controller"))
    bus.close()
    (producer,) = made
    assert producer.kwargs["acks"] == "all"
    assert producer.closed
    logs, events = producer.decoded("lg"), producer.decoded("ev")
    assert [r.key for r in logs] == [b"r1/t1", b"r1/t2", b"component:controller"]
    assert [r.key for r in events] == [b"r1/t1"]
    first = json.loads(logs[0].value)
    assert LogRecord.from_dict(first) == _line(0)  # the value is the record's JSON, without an id
    assert "id" not in first
    assert dict(logs[0].headers) == {
        "mlprov-component": b"job", "mlprov-level": b"info", "mlprov-run": b"r1", "mlprov-task": b"t1",
    }  # fmt: skip
    assert dict(logs[2].headers) == {"mlprov-component": b"controller", "mlprov-level": b"info"}
    assert json.loads(events[0].value)["event"] == "started"


def test_unreachable_broker_spills_to_disk_then_drains_in_order(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    reachable = False
    made: list[RecordingProducer] = []

    def factory(kwargs: dict[str, Any]) -> Any:
        if not reachable:  # the real client against a closed port: fails within bootstrap_timeout_ms
            return _kafka_producer(kwargs)
        made.append(RecordingProducer(kwargs))
        return made[-1]

    bus = KafkaLogBus(_cfg(), DiskSpill(spill_dir, 1 << 20), producer_factory=factory, drain_interval=None)
    bus.publish_many([_line(i) for i in range(5)])
    assert bus.spilled_bytes > 0
    assert not made
    assert bus.drain() is False  # still down
    bus.close()  # a restart in between: the spill is on disk
    reachable = True
    bus = KafkaLogBus(_cfg(), DiskSpill(spill_dir, 1 << 20), producer_factory=factory, drain_interval=None)
    bus.publish(_line(5))  # must queue behind the spilled lines, not overtake them
    assert bus.spilled_bytes > 0
    assert bus.drain() is True
    assert bus.spilled_bytes == 0
    assert not list(spill_dir.iterdir())
    bus.publish(_line(6))  # direct again
    bus.close()
    (producer,) = made
    assert [json.loads(r.value)["message"] for r in producer.decoded("lg")] == [f"line {i}" for i in range(7)]


def test_failed_deliveries_and_a_full_spill_are_kept_or_counted(tmp_path: Path) -> None:
    failing = RecordingProducer({}, fail=True)
    bus = KafkaLogBus(_cfg(), DiskSpill(tmp_path, 600), producer_factory=lambda kw: failing, drain_interval=None)
    bus.publish(_line(0))  # sent, then the delivery fails: the errback keeps it
    bus.publish_many([_line(i) for i in range(1, 6)])  # down now: to the spill, until it is full
    assert bus.dropped > 0
    kept = bus.spilled_bytes
    assert kept > 0
    entries, _ = DiskSpill(tmp_path, 600).peek(100)
    assert entries[0].value == json.dumps(
        {k: v for k, v in _line(0).to_dict().items()}, ensure_ascii=False, separators=(",", ":")
    )  # the failed delivery is first: order kept
    bus.close()


class FakeConsumer:
    """Serves decoded kafka-python records as ``ConsumerRecord``s; records commits."""

    def __init__(self, batches: list[Mapping[TopicPartition, Sequence[ConsumerRecord]]]) -> None:
        self.batches = batches
        self.subscribed: list[str] = []
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []

    def subscribe(self, topics: Sequence[str]) -> None:
        self.subscribed = list(topics)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[TopicPartition, Sequence[Any]]:
        return self.batches.pop(0) if self.batches else {}

    def commit(self, offsets: Any = None, timeout_ms: int | None = None) -> None:
        assert timeout_ms is not None  # bounded
        self.commits.append(dict(offsets))

    def close(self) -> None:
        pass


def _consumed(producer: RecordingProducer, topic: str, partition: int, base: int) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(topic, partition, -1, base + i, r.timestamp, 0, r.key, r.value, r.headers, None, 0, 0, 0)
        for i, r in enumerate(producer.decoded(topic))
    ]


class ListIndex:
    def __init__(self, refuse: int = 0) -> None:
        self.by_id: dict[str, LogRecord] = {}
        self.refuse = refuse
        self.calls = 0

    def index(self, records: Sequence[LogRecord]) -> None:
        self.calls += 1
        if self.refuse:
            self.refuse -= 1
            raise OSError("cluster red")
        for r in records:
            assert r.id is not None
            self.by_id.setdefault(r.id, r)

    def search(self, query: LogQuery) -> LogPage:
        return LogPage(records=list(self.by_id.values()))


def test_consumer_ids_from_positions_and_commit_only_after_index(tmp_path: Path) -> None:
    producer = RecordingProducer({})
    bus = KafkaLogBus(_cfg(), DiskSpill(tmp_path, 1 << 20), producer_factory=lambda kw: producer, drain_interval=None)
    bus.publish_many([_line(0), _line(1), _line(2, event="finished")])
    bus.close()
    lg, ev = TopicPartition("lg", 3), TopicPartition("ev", 0)
    batch = {lg: _consumed(producer, "lg", 3, 40), ev: _consumed(producer, "ev", 0, 7)}
    fake = FakeConsumer([batch, dict(batch)])  # the second poll redelivers the same messages
    consumer = KafkaLogConsumer(_cfg(), consumer_factory=lambda kw: fake)
    assert fake.subscribed == ["ev", "lg"]
    index = ListIndex(refuse=1)
    pipeline = LogPipeline(consumer, index, poll_timeout=0.01)
    pipeline.start()
    assert pipeline.flush(5)
    pipeline.close()
    assert index.calls >= 2
    assert pipeline.failures >= 1
    assert sorted(index.by_id) == ["ev:0:7", "lg:3:40", "lg:3:41"]  # the redelivery added nothing
    assert index.by_id["lg:3:41"].message == "line 1"
    assert index.by_id["ev:0:7"].event == "finished"
    # nothing was committed for the refused attempt; each commit is the position after the indexed batch
    assert fake.commits == [{lg: OffsetAndMetadata(42, "", -1), ev: OffsetAndMetadata(8, "", -1)}] * 2


def test_poison_message_is_kept_as_an_error_line() -> None:
    rec = record_from_message("lg", 1, 9, b"\xffnot json")
    assert (rec.id, rec.component, rec.level) == ("lg:1:9", "external", "error")
    assert "not json" in rec.message


def test_consumer_against_a_down_broker_fails_fast_with_a_log_error() -> None:
    with pytest.raises(LogError, match="consumer group"):
        KafkaLogConsumer(_cfg())


def test_settings_choose_the_kafka_bus(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap=CLOSED, kafka_timeout_ms=200)
    bus = build_log_bus(settings)
    try:
        assert isinstance(bus, KafkaLogBus)
        bus.publish(_line(0))
        assert bus.spilled_bytes > 0
        assert (tmp_path / "logs" / "kafka-spill").is_dir()
    finally:
        bus.close()
