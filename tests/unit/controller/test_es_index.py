"""The Elasticsearch LogIndex against a loopback HTTP server that answers as Elasticsearch does.

The server records every request the real elasticsearch-py 9 client sends (method, path, headers,
body) and keeps bulk-created documents by ``_id`` (409 on a second create, as Elasticsearch does); its
``_search`` applies the body's term filters, sort, ``search_after`` and ``size``, so paging is checked
end to end. Text matching is Elasticsearch's; here only the query body the client sends is checked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.logs import build_log_index
from controller.logs.base import InvalidLogQueryError, LogError, LogQuery, LogRecord
from controller.logs.es_index import MAPPINGS, EsLogIndex
from controller.settings import Settings


class FakeEs:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.docs: dict[str, dict[str, Any]] = {}
        self.fail_bulk = False


def _handler(state: FakeEs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Type", "application/vnd.elasticsearch+json;compatible-with=9")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            path = self.path.split("?")[0]
            state.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "raw": raw,
                }
            )
            if self.command == "PUT" and path.startswith(("/_ilm/policy/", "/_index_template/")):
                return self._reply(200, {"acknowledged": True})
            if path == "/_bulk":
                lines = [json.loads(line) for line in raw.splitlines() if line]
                items, errors = [], False
                for action, doc in zip(lines[::2], lines[1::2], strict=True):
                    _id = action["create"]["_id"]
                    if state.fail_bulk:
                        errors = True
                        items.append(
                            {
                                "create": {
                                    "_id": _id,
                                    "status": 429,
                                    "error": {"type": "es_rejected_execution_exception"},
                                }
                            }
                        )
                    elif _id in state.docs:
                        errors = True
                        items.append(
                            {
                                "create": {
                                    "_id": _id,
                                    "status": 409,
                                    "error": {"type": "version_conflict_engine_exception"},
                                }
                            }
                        )
                    else:
                        state.docs[_id] = doc
                        items.append({"create": {"_id": _id, "status": 201, "result": "created"}})
                return self._reply(200, {"took": 1, "errors": errors, "items": items})
            if path.endswith("/_search"):
                if not state.docs:
                    return self._reply(404, {"error": {"type": "index_not_found_exception"}, "status": 404})
                body = json.loads(raw)
                hits = list(state.docs.values())
                for clause in body["query"]["bool"]["filter"]:
                    if "term" in clause:
                        ((name, value),) = clause["term"].items()
                        hits = [d for d in hits if d.get(name) == value]
                keys = [next(iter(s)) for s in body["sort"]]
                desc = body["sort"][0][keys[0]]["order"] == "desc"
                hits.sort(key=lambda d: [d[k] for k in keys], reverse=desc)
                if "search_after" in body:
                    after = body["search_after"]
                    hits = [d for d in hits if ([d[k] for k in keys] < after if desc else [d[k] for k in keys] > after)]
                hits = hits[: body["size"]]
                out = [{"_id": d["record_id"], "_source": d, "sort": [d[k] for k in keys]} for d in hits]
                return self._reply(200, {"hits": {"hits": out}})
            return self._reply(400, {"error": {"type": "unexpected", "reason": self.path}, "status": 400})

        do_GET = do_PUT = do_POST = _handle

    return Handler


@pytest.fixture
def fake_es() -> Iterator[tuple[FakeEs, str]]:
    state = FakeEs()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _rec(i: int, task: str = "t1", **kw: Any) -> LogRecord:
    return LogRecord(
        timestamp=1000.0 + i, message=f"line {i}", component="job", run_id="r1", task_id=task,
        id=f"lg:0:{i}", **kw,
    )  # fmt: skip


def _index(tmp_path: Path, url: str) -> EsLogIndex:
    index = build_log_index(Settings(home=tmp_path, elasticsearch_url=url, elasticsearch_retention="7d"))
    assert isinstance(index, EsLogIndex)
    return index


def test_setup_then_bulk_with_ids_and_redelivery_does_not_duplicate(
    tmp_path: Path, fake_es: tuple[FakeEs, str]
) -> None:
    state, url = fake_es
    index = _index(tmp_path, url)
    batch = [_rec(0, fields={"manifest_id": "urn:m:1", "digest": "sha256:ab"}), _rec(1, event="started")]
    index.index(batch)
    index.index([*batch, _rec(2)])  # a redelivery plus one new line
    index.close()
    ilm, template, bulk1, bulk2 = state.requests
    assert (ilm["method"], ilm["path"].split("?")[0]) == ("PUT", "/_ilm/policy/mlprov-logs")
    phases = json.loads(ilm["raw"])["policy"]["phases"]
    assert phases["hot"]["actions"]["rollover"] == {"max_primary_shard_size": "10gb", "max_age": "1d"}
    assert phases["delete"] == {"min_age": "7d", "actions": {"delete": {}}}
    assert (template["method"], template["path"].split("?")[0]) == ("PUT", "/_index_template/mlprov-logs")
    tbody = json.loads(template["raw"])
    assert tbody["index_patterns"] == ["mlprov-logs"]
    assert tbody["data_stream"] == {}
    assert tbody["template"]["settings"] == {"index.lifecycle.name": "mlprov-logs"}
    props = tbody["template"]["mappings"]["properties"]
    for name in ("run_id", "task_id", "attempt", "component", "stream", "level", "@timestamp", "message", "event",
                 "manifest_id", "artifact_id"):  # fmt: skip
        assert name in props, name
    assert tbody["template"]["mappings"] == MAPPINGS
    assert bulk1["path"].split("?")[0] == "/_bulk"
    assert "ndjson" in bulk1["headers"]["content-type"]
    lines = [json.loads(line) for line in bulk1["raw"].splitlines()]
    assert lines[0] == {"create": {"_index": "mlprov-logs", "_id": "lg:0:0"}}
    doc = lines[1]
    assert doc["@timestamp"] == 1_000_000
    assert doc["record_id"] == "lg:0:0"
    assert doc["message"] == "line 0"
    assert (doc["manifest_id"], doc["artifact_id"]) == ("urn:m:1", "sha256:ab")
    assert json.loads(doc["fields_text"]) == {"manifest_id": "urn:m:1", "digest": "sha256:ab"}
    assert lines[3]["event"] == "started"
    assert sorted(state.docs) == ["lg:0:0", "lg:0:1", "lg:0:2"]  # 409s on the replay were accepted
    assert bulk2["raw"].count('"create"') == 3


def test_refused_items_raise_so_the_batch_is_retried(tmp_path: Path, fake_es: tuple[FakeEs, str]) -> None:
    state, url = fake_es
    index = _index(tmp_path, url)
    state.fail_bulk = True
    with pytest.raises(LogError, match="refused 1 of 1"):
        index.index([_rec(0)])
    index.close()


def test_search_filters_text_order_and_cursor(tmp_path: Path, fake_es: tuple[FakeEs, str]) -> None:
    state, url = fake_es
    index = _index(tmp_path, url)
    assert index.search(LogQuery()).records == []  # no data stream yet: empty, not an error
    index.index([_rec(i, task="t1" if i % 2 else "t2") for i in range(7)])
    seen: list[str] = []
    cursor = None
    while True:
        page = index.search(LogQuery(task_id="t1", order="asc", limit=2, cursor=cursor))
        seen += [r.message for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["line 1", "line 3", "line 5"]
    page = index.search(LogQuery(run_id="r1", limit=3))
    assert [r.id for r in page.records] == ["lg:0:6", "lg:0:5", "lg:0:4"]
    assert page.next_cursor
    assert page.records[0] == _rec(6, task="t2")  # the record comes back whole
    index.search(LogQuery(q='boom "disk full" cuda*', since=1.0, until=2.0, level="error"))
    body = json.loads(state.requests[-1]["raw"])
    assert body["query"]["bool"]["must"] == [
        {"multi_match": {"query": "boom", "type": "phrase", "fields": ["message", "fields_text"]}},
        {"multi_match": {"query": "disk full", "type": "phrase", "fields": ["message", "fields_text"]}},
        {"multi_match": {"query": "cuda", "type": "phrase_prefix", "fields": ["message", "fields_text"]}},
    ]
    assert {"range": {"timestamp": {"gte": 1.0, "lt": 2.0}}} in body["query"]["bool"]["filter"]
    assert {"term": {"level": "error"}} in body["query"]["bool"]["filter"]
    with pytest.raises(InvalidLogQueryError):
        index.search(LogQuery(cursor="%%%"))
    with pytest.raises(InvalidLogQueryError, match="order=desc"):
        index.search(LogQuery(cursor=page.next_cursor, order="asc"))
    index.close()


def test_server_down_is_a_log_error_at_once(tmp_path: Path) -> None:
    index = _index(tmp_path, "http://127.0.0.1:1")
    with pytest.raises(LogError):
        index.index([_rec(0)])
    with pytest.raises(LogError):
        index.search(LogQuery())
    index.close()
