"""The at-scale log clients without servers: Kafka producer throughput and Elasticsearch bulk requests.

1. *Kafka producer*: ``KafkaLogBus.publish_many`` (record -> topic/key/JSON/headers -> ``send``) into a
   loopback producer that appends every message to real v2 record batches with kafka-python's
   ``MemoryRecordsBuilder`` (what the real producer's accumulator builds), closes each batch when it
   reaches ``batch_bytes`` and sends it nowhere. Reports lines/s and the encoded MB/s.
2. *Elasticsearch bulk*: lines published on the local bus, moved by the ``LogPipeline`` into
   ``EsLogIndex`` (the real elasticsearch-py 9 client) talking to a loopback HTTP server that answers as
   Elasticsearch does (``X-Elastic-Product`` header, bulk ``items``) and counts requests. Reports
   ``_bulk`` requests per 10,000 lines, bytes per request and lines/s.

Run: ``.venv/bin/python -m bench.bench_log_clients [--lines 200000]``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kafka.future import Future
from kafka.record import MemoryRecordsBuilder

from bench.bench_logs import _line
from controller.logs.es_index import EsLogIndex
from controller.logs.kafka_bus import KafkaConfig, KafkaLogBus
from controller.logs.local_bus import LocalLogBus
from controller.logs.pipeline import LogPipeline
from controller.logs.spill import DiskSpill


class LoopbackProducer:
    """A ``KafkaProducer`` stand-in: real v2 record batches per topic, discarded when full."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.batch_bytes = int(kwargs.get("batch_size", 256 * 1024))
        self.builders: dict[str, MemoryRecordsBuilder] = {}
        self.batches = 0
        self.bytes = 0
        self.messages = 0

    def _builder(self, topic: str) -> MemoryRecordsBuilder:
        builder = self.builders.get(topic)
        if builder is None:
            builder = self.builders[topic] = MemoryRecordsBuilder(
                magic=2, compression_type=0, batch_size=self.batch_bytes
            )
        return builder

    def _seal(self, topic: str) -> None:
        builder = self.builders.pop(topic)
        builder.close()
        self.bytes += len(builder.buffer())
        self.batches += 1

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> Future:
        stamp = int(time.time() * 1000)
        if self._builder(topic).append(timestamp=stamp, key=key, value=value, headers=headers) is None:
            self._seal(topic)  # full: "send" it and start the next batch
            if self._builder(topic).append(timestamp=stamp, key=key, value=value, headers=headers) is None:
                raise ValueError("a message larger than batch_bytes")
        self.messages += 1
        future = Future()
        future.success(None)
        return future

    def flush(self, timeout: float | None = None) -> None:
        for topic in list(self.builders):
            self._seal(topic)

    def close(self, timeout: float | None = None) -> None:
        self.flush()


def bench_kafka_producer(home: Path, lines: int, batch: int) -> dict[str, float]:
    producers: list[LoopbackProducer] = []

    def factory(kwargs: dict[str, Any]) -> LoopbackProducer:
        producers.append(LoopbackProducer(kwargs))
        return producers[-1]

    config = KafkaConfig(bootstrap="127.0.0.1:9")
    bus = KafkaLogBus(config, DiskSpill(home / "spill", 1 << 30), producer_factory=factory, drain_interval=None)
    rng = random.Random(7)
    payload = [_line(i, rng) for i in range(lines)]
    start = time.perf_counter()
    for first in range(0, lines, batch):
        bus.publish_many(payload[first : first + batch])
    producers[0].flush()
    elapsed = time.perf_counter() - start
    bus.close()
    (producer,) = producers
    assert producer.messages == lines, "records went to the spill, not the producer"
    assert bus.spilled_bytes == 0
    return {"lines_per_s": lines / elapsed, "mb_per_s": producer.bytes / elapsed / 1e6, "batches": producer.batches}


class _EsState:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.bulk_bytes = 0
        self.bulk_docs = 0
        self.lock = threading.Lock()


def _handler(state: _EsState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _reply(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            with state.lock:
                state.requests[f"{self.command} {path}"] += 1
            if path == "/_bulk":
                lines = body.splitlines()
                items = [
                    {"create": {"_id": json.loads(action)["create"].get("_id"), "status": 201}}
                    for action in lines[0::2]
                ]
                with state.lock:
                    state.bulk_bytes += len(body)
                    state.bulk_docs += len(items)
                self._reply({"took": 1, "errors": False, "items": items})
            else:  # ILM policy, index template
                self._reply({"acknowledged": True})

        do_GET = do_PUT = do_POST = do_HEAD = _handle

    return Handler


@contextmanager
def loopback_es() -> Iterator[tuple[_EsState, str]]:
    state = _EsState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def bench_es_bulk(home: Path, lines: int, batch: int) -> dict[str, float]:
    from elasticsearch import Elasticsearch

    with loopback_es() as (state, url):
        client = Elasticsearch(url, request_timeout=10, max_retries=0)
        index = EsLogIndex(client)
        bus = LocalLogBus(home / "bus")
        pipeline = LogPipeline(bus.consumer("es"), index)
        pipeline.start()
        rng = random.Random(7)
        payload = [_line(i, rng) for i in range(lines)]
        start = time.perf_counter()
        for first in range(0, lines, batch):
            bus.publish_many(payload[first : first + batch])
        assert pipeline.flush(120), "the pipeline did not drain"
        elapsed = time.perf_counter() - start
        pipeline.close()
        bus.close()
        index.close()
        bulks = state.requests["PUT /_bulk"] + state.requests["POST /_bulk"]
        assert state.bulk_docs == lines, f"{state.bulk_docs} documents for {lines} lines"
    return {
        "lines_per_s": lines / elapsed,
        "bulk_per_10k": bulks / lines * 10_000,
        "bytes_per_bulk": state.bulk_bytes / bulks,
        "other_requests": sum(state.requests.values()) - bulks,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_log_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines per measurement (default 200000)")
    parser.add_argument("--batch", type=int, default=500, help="lines per publish_many call (default 500)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-log-clients-") as tmp:
        kafka = bench_kafka_producer(Path(tmp) / "kafka", args.lines, args.batch)
        es = bench_es_bulk(Path(tmp) / "es", args.lines, args.batch)
    print(f"log clients, {args.lines} lines, publish_many batches of {args.batch}")
    print(
        f"  Kafka producer path (loopback, v2 batches): {kafka['lines_per_s']:,.0f} lines/s, "
        f"{kafka['mb_per_s']:.1f} MB/s encoded, {kafka['batches']:.0f} record batches"
    )
    print(
        f"  Elasticsearch bulk (loopback server): {es['bulk_per_10k']:.2f} _bulk requests per 10,000 lines, "
        f"{es['bytes_per_bulk'] / 1e6:.1f} MB per request, {es['lines_per_s']:,.0f} lines/s, "
        f"{es['other_requests']:.0f} set-up requests"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
