"""The real round trip through Elasticsearch: template, ILM policy, bulk, search, redelivery.

Runs only when ``MLPROV_ELASTICSEARCH_URL`` points at a cluster (see docs/logging.md); skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from controller.logs import build_log_index
from controller.logs.base import LogQuery, LogRecord
from controller.logs.es_index import EsLogIndex
from controller.settings import Settings

URL = os.environ.get("MLPROV_ELASTICSEARCH_URL")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.elasticsearch,
    pytest.mark.skipif(not URL, reason="MLPROV_ELASTICSEARCH_URL is not set: no Elasticsearch to talk to"),
]


def test_index_search_and_redelivery(tmp_path: Path) -> None:
    stream = f"mlprov-it-{uuid.uuid4().hex[:8]}"
    index = build_log_index(Settings(home=tmp_path, elasticsearch_url=URL, elasticsearch_data_stream=stream))
    assert isinstance(index, EsLogIndex)
    records = [
        LogRecord(timestamp=1000.0 + i, message=f"epoch {i} loss {i / 10}", component="job", run_id="r", task_id="t",
                  id=f"lg:0:{i}")
        for i in range(20)
    ]  # fmt: skip
    try:
        index.index(records)
        index.index(records[:5])  # redelivered: no duplicates
        index.client.indices.refresh(index=stream)
        page = index.search(LogQuery(task_id="t", order="asc", limit=50))
        assert [r.id for r in page.records] == [r.id for r in records]
        assert [r.message for r in index.search(LogQuery(q='"epoch 3"')).records] == ["epoch 3 loss 0.3"]
        first = index.search(LogQuery(limit=15))
        assert first.next_cursor is not None
        rest = index.search(LogQuery(limit=15, cursor=first.next_cursor))
        assert len(rest.records) == 5
        assert rest.next_cursor is None
    finally:
        index.client.indices.delete_data_stream(name=stream)
        index.close()
