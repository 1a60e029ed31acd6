"""The embedded SQLite FTS5 log index: full text, filters, both orders, cursors, idempotency."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.logs.base import InvalidLogQueryError, LogIndex, LogQuery, LogRecord
from controller.logs.fts_index import FtsLogIndex, fts_match_expression


@pytest.fixture
def index(tmp_path: Path) -> Iterator[FtsLogIndex]:
    idx = FtsLogIndex(tmp_path / "logs" / "index.db")
    yield idx
    idx.close()


def _records() -> list[LogRecord]:
    out = []
    for i in range(30):
        out.append(
            LogRecord(
                timestamp=1000.0 + i,
                message=f"epoch {i} loss={0.1 * i:.2f} accuracy improved" if i % 3 else f"checkpoint {i} saved",
                component="job" if i % 2 else "sidecar",
                level="error" if i % 10 == 9 else "info",
                stream="stdout",
                run_id="run-a" if i < 20 else "run-b",
                dag_id="demo",
                task_id=f"task-{i % 3}",
                attempt=1,
                fields={"manifest_id": f"urn:c2pa:{i:04d}"} if i == 7 else {},
                id=f"local:{i}",
            )
        )
    return out


def _all(index: FtsLogIndex, query: LogQuery) -> list[LogRecord]:
    records: list[LogRecord] = []
    cursor = None
    while True:
        page = index.search(LogQuery(**{**query.__dict__, "cursor": cursor}))
        records.extend(page.records)
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


def test_round_trip_and_newest_first(index: FtsLogIndex) -> None:
    assert isinstance(index, LogIndex)
    records = _records()
    index.index(records)
    page = index.search(LogQuery(limit=5))
    assert [r.id for r in page.records] == [f"local:{i}" for i in range(29, 24, -1)]
    assert page.records[0] == records[29]
    assert index.search(LogQuery(q="urn", limit=5)).records == [records[7]]  # fields are searchable


def test_full_text_with_filters(index: FtsLogIndex) -> None:
    index.index(_records())
    hits = _all(index, LogQuery(q="checkpoint saved", run_id="run-a", limit=2))
    assert [r.message for r in hits] == [f"checkpoint {i} saved" for i in (18, 15, 12, 9, 6, 3, 0)]
    assert all(r.level == "info" for r in _all(index, LogQuery(task_id="task-0", level="info")))
    errors = index.search(LogQuery(level="error")).records
    assert [r.timestamp for r in errors] == [1029.0, 1019.0, 1009.0]
    assert index.search(LogQuery(q="loss", component="sidecar", task_id="task-1", limit=100)).records[0].task_id == (
        "task-1"
    )
    window = _all(index, LogQuery(since=1005.0, until=1008.0))
    assert [r.timestamp for r in window] == [1007.0, 1006.0, 1005.0]
    assert index.search(LogQuery(q="improv*", run_id="run-b", limit=100)).records
    assert index.search(LogQuery(q='"accuracy improved"', limit=1)).records
    assert index.search(LogQuery(q='"improved accuracy"', limit=1)).records == []


def test_chronological_pages_cover_everything_once(index: FtsLogIndex) -> None:
    index.index(_records())
    ascending = _all(index, LogQuery(order="asc", limit=7))
    assert [r.timestamp for r in ascending] == [1000.0 + i for i in range(30)]
    descending = _all(index, LogQuery(order="desc", limit=4))
    assert descending == ascending[::-1]


def test_redelivered_records_are_not_duplicated(index: FtsLogIndex) -> None:
    records = _records()
    index.index(records[:20])
    index.index(records[10:])  # 10..19 again, as after a crash before the consumer committed
    assert index.count() == 30
    assert len(_all(index, LogQuery(q="checkpoint"))) == 10
    index.index([LogRecord(timestamp=1.0, message="no id", component="x")] * 2)  # no id: nothing to dedupe on
    assert index.count() == 32


@pytest.mark.parametrize(
    "q",
    ['"', "AND", "NOT OR", "a* OR", "(", "col:value", "^start", "-", "NEAR(a b)", "'; DROP TABLE logs; --", "**"],
)
def test_user_text_is_never_fts_syntax(index: FtsLogIndex, q: str) -> None:
    index.index(_records())
    index.search(LogQuery(q=q))  # must not raise
    assert index.count() == 30


def test_match_expression_quotes_every_term() -> None:
    assert fts_match_expression('loss "accuracy improved" epo*') == '"loss" AND "accuracy improved" AND "epo"*'
    assert fts_match_expression('say "hi') == '"say" AND """hi"'
    assert fts_match_expression("-- ** ()") is None


def test_bad_queries_are_refused(index: FtsLogIndex) -> None:
    index.index(_records())
    cursor = index.search(LogQuery(limit=2)).next_cursor
    assert cursor is not None
    with pytest.raises(InvalidLogQueryError, match="order"):
        index.search(LogQuery(limit=2, cursor=cursor, order="asc"))
    for bad in ("garbage!", "bm90IGpzb24", "W10"):
        with pytest.raises(InvalidLogQueryError, match="cursor"):
            index.search(LogQuery(cursor=bad))
    with pytest.raises(InvalidLogQueryError, match="limit"):
        index.search(LogQuery(limit=0))
    with pytest.raises(InvalidLogQueryError, match="since"):
        index.search(LogQuery(since=10.0, until=5.0))


def test_index_survives_reopening(tmp_path: Path) -> None:
    first = FtsLogIndex(tmp_path / "index.db")
    first.index(_records())
    first.close()
    second = FtsLogIndex(tmp_path / "index.db")
    second.index(_records())
    assert second.count() == 30
    assert len(second.search(LogQuery(q="checkpoint", limit=100)).records) == 10
    second.close()


def test_positions_are_tracked_per_kafka_partition(index: FtsLogIndex) -> None:
    def rec(partition: int, offset: int) -> LogRecord:
        return LogRecord(
            timestamp=float(offset), message=f"p{partition} o{offset}", component="job", id=f"logs:{partition}:{offset}"
        )

    index.index([rec(0, 5), rec(1, 2), rec(0, 6)])
    # partition 1 is behind partition 0: its offset 3 is new, its offset 2 and partition 0's 6 are redeliveries
    index.index([rec(1, 2), rec(1, 3), rec(0, 6), rec(0, 7)])
    assert index.count() == 5
    assert index.contains("logs:1:3")
    assert index.contains("logs:0:7")
    assert not index.contains("logs:1:4")
