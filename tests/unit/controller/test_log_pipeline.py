"""Bus -> pipeline -> index, end to end; failures retried without loss or duplicates; the search route;
the structlog sink."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import structlog
from fastapi import FastAPI

from controller.api.deps import get_app_state, require_reader
from controller.api.errors import install_error_handlers
from controller.api.routes.logs import router
from controller.logs import build_log_bus, build_log_index, build_log_pipeline
from controller.logs.base import LogQuery, LogRecord
from controller.logs.fts_index import FtsLogIndex
from controller.logs.local_bus import LocalLogBus
from controller.logs.pipeline import LogPipeline
from controller.logs.structlog_sink import LogBusProcessor, add_bus_sink, remove_bus_sink
from controller.settings import Settings


def _rec(i: int, task: str = "t1") -> LogRecord:
    return LogRecord(timestamp=float(i), message=f"line {i} of {task}", component="job", task_id=task, run_id="r")


class FlakyIndex:
    """Refuses the first ``failures`` batches, then delegates (as a locked or full index would)."""

    def __init__(self, inner: FtsLogIndex, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def index(self, records: Sequence[LogRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        self.inner.index(records)

    def search(self, query: LogQuery):  # type: ignore[no-untyped-def]  # delegation
        return self.inner.search(query)


def test_everything_published_becomes_searchable_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    bus, index = build_log_bus(settings), build_log_index(settings)
    assert isinstance(index, FtsLogIndex)
    pipeline = build_log_pipeline(settings, bus, index)
    pipeline.start()

    def produce(task: str) -> None:
        for i in range(500):
            bus.publish(_rec(i, task))

    producers = [threading.Thread(target=produce, args=(t,)) for t in ("a", "b", "c")]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    assert pipeline.flush(10)
    assert index.count() == 1500
    task_b = index.search(LogQuery(task_id="b", order="asc", limit=1000)).records
    assert [r.message for r in task_b] == [f"line {i} of b" for i in range(500)]  # each task's order kept
    pipeline.close()
    bus.close()
    assert (tmp_path / "logs" / "bus" / "consumer-index.offset").read_text().strip() == "1500"
    index.close()


def test_index_failures_are_retried_without_loss_or_duplicates(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    inner = FtsLogIndex(tmp_path / "index.db")
    pipeline = LogPipeline(bus.consumer(), FlakyIndex(inner, failures=2), max_backoff=0.05)
    bus.publish_many([_rec(i) for i in range(100)])
    pipeline.start()
    assert pipeline.flush(10)
    assert pipeline.failures == 2
    assert inner.count() == 100
    pipeline.close()
    bus.close()
    inner.close()


def test_a_crash_before_commit_redelivers_and_the_index_deduplicates(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    index = FtsLogIndex(tmp_path / "index.db")
    bus.publish_many([_rec(i) for i in range(50)])
    consumer = bus.consumer()
    index.index(consumer.poll(100, 0.1))  # indexed, then the process dies before commit()
    bus.close()
    bus = LocalLogBus(tmp_path / "bus")
    pipeline = LogPipeline(bus.consumer(), index)
    pipeline.start()
    assert pipeline.flush(10)
    assert pipeline.indexed == 50  # redelivered ...
    assert index.count() == 50  # ... but not duplicated
    pipeline.close()
    bus.close()
    index.close()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    index = FtsLogIndex(tmp_path / "index.db")
    index.index([replace(_rec(i), id=f"local:{i}") for i in range(12)])
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router, prefix="/api/v1")
    app.dependency_overrides[get_app_state] = lambda: SimpleNamespace(log_index=index)
    app.dependency_overrides[require_reader] = lambda: None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as test_client:
        yield test_client
    index.close()


async def test_search_route_pages_through_results(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/logs/search", params={"q": "line", "task_id": "t1", "limit": 5, "order": "asc"}
    )
    assert response.status_code == 200
    body = response.json()
    assert [r["message"] for r in body["records"]] == [f"line {i} of t1" for i in range(5)]
    assert body["records"][0]["component"] == "job"
    assert body["records"][0]["id"] == "local:0"
    seen = len(body["records"])
    while body["next_cursor"]:
        following = await client.get(
            "/api/v1/logs/search", params={"q": "line", "limit": 5, "order": "asc", "cursor": body["next_cursor"]}
        )
        body = following.json()
        seen += len(body["records"])
    assert seen == 12
    window = await client.get("/api/v1/logs/search", params={"since": "1970-01-01T00:00:03Z", "until": "5"})
    assert [r["timestamp"] for r in window.json()["records"]] == [4.0, 3.0]


@pytest.mark.parametrize(
    ("params", "status", "text"),
    [
        ({"limit": 0}, 422, "limit"),
        ({"limit": "many"}, 422, "limit"),
        ({"order": "sideways"}, 422, "order"),
        ({"cursor": "not-a-cursor"}, 400, "cursor"),
        ({"since": "yesterday"}, 400, "since"),
        ({"since": "10", "until": "5"}, 400, "since"),
    ],
)
async def test_search_route_explains_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, str | int], status: int, text: str
) -> None:
    response = await client.get("/api/v1/logs/search", params=params)
    assert response.status_code == status
    assert text in response.text


def test_structlog_events_reach_the_bus_as_controller_records(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus")
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), _swallow],
        cache_logger_on_first_use=False,
    )
    try:
        sink = add_bus_sink(bus)
        assert any(isinstance(p, LogBusProcessor) for p in structlog.get_config()["processors"])
        logger = structlog.get_logger("test")
        logger.warning(
            "lock acquired", run_id="r9", task_id="t9", try_number=2, task_event="lock_acquired", lock="gpu0"
        )
        remove_bus_sink(sink)
        logger.info("not published")
    finally:
        structlog.configure(**saved)
    consumer = bus.consumer()
    (record,) = consumer.poll(10, 0.1)
    assert record.component == "controller"
    assert (record.message, record.level, record.run_id, record.task_id, record.attempt, record.event) == (
        "lock acquired",
        "warning",
        "r9",
        "t9",
        2,
        "lock_acquired",
    )
    assert record.fields == {"lock": "gpu0"}
    assert record.timestamp > 1_600_000_000
    bus.close()


def _swallow(_logger: object, _name: str, _event: object) -> str:
    return ""
