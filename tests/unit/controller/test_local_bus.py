"""The embedded durable log bus: offsets, segments, recovery, committed consumer offsets, at-least-once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from controller.logs.base import LogBus, LogConsumer, LogError, LogRecord
from controller.logs.local_bus import LocalLogBus


def _rec(i: int, **kw: object) -> LogRecord:
    return LogRecord(timestamp=1000.0 + i, message=f"line {i} ünïcode", component="job", **kw)  # type: ignore[arg-type]  # test kwargs


def _drain(consumer: LogConsumer, batch: int = 1000) -> list[LogRecord]:
    out: list[LogRecord] = []
    while records := consumer.poll(batch, 0.05):
        out.extend(records)
    return out


def test_publish_assigns_offsets_and_a_consumer_reads_them_in_order(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    assert isinstance(bus, LogBus)
    bus.publish(_rec(0, run_id="r1", task_id="t1", attempt=2, fields={"exit_code": 3}))
    bus.publish_many([_rec(i) for i in range(1, 5)])
    consumer = bus.consumer()
    assert isinstance(consumer, LogConsumer)
    got = _drain(consumer)
    assert [r.id for r in got] == [f"local:{i}" for i in range(5)]
    assert [r.message for r in got] == [f"line {i} ünïcode" for i in range(5)]
    assert got[0].run_id == "r1"
    assert got[0].attempt == 2
    assert got[0].fields == {"exit_code": 3}
    bus.close()


def test_lines_are_on_disk_as_json_with_their_offset(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    bus.publish_many([_rec(i) for i in range(3)])
    (segment,) = (tmp_path / "bus").glob("*.log")
    lines = [json.loads(line) for line in segment.read_text().splitlines()]
    assert [line["o"] for line in lines] == [0, 1, 2]
    assert lines[2]["message"] == "line 2 ünïcode"
    bus.close()


def test_uncommitted_records_are_redelivered_after_a_restart(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    bus.publish_many([_rec(i) for i in range(10)])
    consumer = bus.consumer()
    assert len(consumer.poll(4, 0.1)) == 4
    consumer.commit()
    assert len(consumer.poll(3, 0.1)) == 3  # read, never committed: the index did not accept them
    consumer.close()
    bus.close()

    reopened = LocalLogBus(tmp_path / "bus")
    again = _drain(reopened.consumer())  # read from the segment files (the in-memory tail is empty)
    assert [r.id for r in again] == [f"local:{i}" for i in range(4, 10)]
    assert again[0] == _rec(4, id="local:4")
    reopened.publish(_rec(10))  # offsets continue after a restart
    assert reopened.end_offset == 11
    reopened.close()


def test_a_torn_last_line_is_cut_off_on_open(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    bus.publish_many([_rec(i) for i in range(3)])
    bus.close()
    (segment,) = (tmp_path / "bus").glob("*.log")
    with segment.open("ab") as fh:
        fh.write(b'{"o":3,"timestamp":1003.0,"mess')  # a crash mid-write
    reopened = LocalLogBus(tmp_path / "bus")
    assert reopened.end_offset == 3
    reopened.publish(_rec(3))
    assert [r.id for r in _drain(reopened.consumer())] == [f"local:{i}" for i in range(4)]
    reopened.close()


def test_segments_rotate_and_consumed_ones_are_pruned(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus", segment_bytes=2000, keep_consumed_segments=1, tail_records=10)
    for i in range(0, 200, 10):
        bus.publish_many([_rec(j) for j in range(i, i + 10)])
    segments = sorted((tmp_path / "bus").glob("*.log"))
    assert len(segments) > 5
    consumer = bus.consumer()
    got = _drain(consumer, batch=7)  # beyond the 10-record tail: read across segment files
    assert [r.id for r in got] == [f"local:{i}" for i in range(200)]
    consumer.commit()
    remaining = sorted((tmp_path / "bus").glob("*.log"))
    assert len(remaining) == 2  # the active segment and one consumed one kept
    bus.close()
    reopened = LocalLogBus(tmp_path / "bus")
    assert reopened.end_offset == 200
    assert _drain(reopened.consumer()) == []
    reopened.close()


def test_offsets_are_never_reused_after_losing_lines_a_consumer_committed(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    bus.publish_many([_rec(i) for i in range(5)])
    bus.close()
    (tmp_path / "bus" / "consumer-index.offset").write_text("9\n")  # as if lines 5..8 were lost in a power cut
    reopened = LocalLogBus(tmp_path / "bus")
    assert reopened.end_offset == 9
    reopened.publish(_rec(9))
    assert [r.id for r in _drain(reopened.consumer("index"))] == ["local:9"]
    reopened.close()


def test_publish_stamps_positions_without_clobbering_delivered_records(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    first = _rec(0)
    bus.publish(first)
    assert first.id == "local:0"
    bus.publish(first)  # the same object again: a copy gets the new position
    got = _drain(bus.consumer())
    assert [r.id for r in got] == ["local:0", "local:1"]
    bus.close()


def test_poll_waits_for_new_records_and_closed_bus_refuses(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    consumer = bus.consumer()
    start = time.monotonic()
    assert consumer.poll(10, 0.2) == []
    assert time.monotonic() - start >= 0.15
    bus.close()
    with pytest.raises(LogError, match="closed"):
        bus.publish(_rec(0))
    with pytest.raises(LogError, match="consumer group"):
        bus.consumer("../evil")
