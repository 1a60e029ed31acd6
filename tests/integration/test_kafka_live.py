"""The real round trip through a Kafka broker: KafkaLogBus -> topic -> consumer group -> an index.

Runs only when ``MLPROV_KAFKA_BOOTSTRAP`` points at a broker (see docs/logging.md for how to run one);
skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from controller.logs.base import LogPage, LogQuery, LogRecord
from controller.logs.kafka_bus import KafkaConfig, KafkaLogBus, KafkaLogConsumer
from controller.logs.pipeline import LogPipeline
from controller.logs.spill import DiskSpill

BOOTSTRAP = os.environ.get("MLPROV_KAFKA_BOOTSTRAP")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.skipif(not BOOTSTRAP, reason="MLPROV_KAFKA_BOOTSTRAP is not set: no Kafka broker to talk to"),
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),  # kafka-python 3.0.12
]


class DictIndex:
    def __init__(self) -> None:
        self.by_id: dict[str, LogRecord] = {}

    def index(self, records: Sequence[LogRecord]) -> None:
        for r in records:
            assert r.id is not None
            self.by_id.setdefault(r.id, r)

    def search(self, query: LogQuery) -> LogPage:
        return LogPage(records=list(self.by_id.values()))


def test_published_lines_reach_the_index_once_in_task_order(tmp_path: Path) -> None:
    assert BOOTSTRAP is not None
    suffix = uuid.uuid4().hex[:8]
    config = KafkaConfig(
        bootstrap=BOOTSTRAP, events_topic=f"it-ev-{suffix}", logs_topic=f"it-lg-{suffix}", group=f"it-{suffix}"
    )
    bus = KafkaLogBus(config, DiskSpill(tmp_path / "spill", 1 << 24), drain_interval=None)
    run = f"run-{suffix}"
    bus.publish_many(LogRecord(timestamp=float(i), message=f"line {i}", component="job", run_id=run, task_id="t")
                     for i in range(200))  # fmt: skip
    bus.publish(
        LogRecord(timestamp=1.0, message="started", component="event", run_id=run, task_id="t", event="started")
    )
    bus.close()
    assert bus.spilled_bytes == 0
    index = DictIndex()
    pipeline = LogPipeline(KafkaLogConsumer(config), index, poll_timeout=1.0)
    pipeline.start()
    for _ in range(30):
        if len(index.by_id) >= 201:
            break
        pipeline.flush(2.0)
    pipeline.close()
    lines = [r for r in index.by_id.values() if r.event is None]
    assert [r.message for r in sorted(lines, key=lambda r: int(r.id.rsplit(":", 1)[1]))] == [  # type: ignore[union-attr]
        f"line {i}" for i in range(200)
    ]
    assert any(r.event == "started" for r in index.by_id.values())
