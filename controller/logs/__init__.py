"""The log pipeline: bus (transport) -> pipeline thread -> index (search), each chosen from settings.

Life cycle, as the app assembles it::

    bus = build_log_bus(settings)            # publish() from anywhere, never blocks on the index
    index = build_log_index(settings)        # search() for /api/v1/logs/search and task log views
    pipeline = build_log_pipeline(settings, bus, index)
    pipeline.start()
    ...
    pipeline.close()                         # drains: everything published is indexed
    bus.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.logs.base import (
    InvalidLogQueryError,
    LogBus,
    LogConsumer,
    LogError,
    LogIndex,
    LogPage,
    LogQuery,
    LogRecord,
)
from controller.logs.pipeline import LogPipeline

if TYPE_CHECKING:
    from controller.settings import Settings

__all__ = [
    "InvalidLogQueryError",
    "LogBus",
    "LogConsumer",
    "LogError",
    "LogIndex",
    "LogPage",
    "LogPipeline",
    "LogQuery",
    "LogRecord",
    "build_log_bus",
    "build_log_index",
    "build_log_pipeline",
]

INDEX_CONSUMER_GROUP = "index"


def build_log_bus(settings: Settings) -> LogBus:
    """``MLPROV_KAFKA_BOOTSTRAP`` set: Kafka (spilling to ``$MLPROV_HOME/logs/kafka-spill`` while the
    broker is unreachable); unset: the durable local log in ``$MLPROV_HOME/logs/bus/``."""
    if settings.kafka_bootstrap:
        from controller.logs.kafka_bus import KafkaConfig, KafkaLogBus
        from controller.logs.spill import DiskSpill

        spill = DiskSpill(settings.effective_kafka_spill_dir, settings.kafka_spill_max_bytes)
        return KafkaLogBus(KafkaConfig.from_settings(settings), spill)
    from controller.logs.local_bus import LocalLogBus

    return LocalLogBus(settings.home / "logs" / "bus")


def build_log_index(settings: Settings) -> LogIndex:
    """``MLPROV_ELASTICSEARCH_URL`` set: Elasticsearch; unset: SQLite FTS5 in ``$MLPROV_HOME/logs/index.db``."""
    if settings.elasticsearch_url:
        from controller.logs.es_index import EsLogIndex

        return EsLogIndex.from_settings(settings)
    from controller.logs.fts_index import FtsLogIndex

    return FtsLogIndex(settings.home / "logs" / "index.db")


def build_log_pipeline(settings: Settings, bus: LogBus, index: LogIndex) -> LogPipeline:
    """The thread that feeds ``index`` from ``bus`` (not started: call ``start()``)."""
    from controller.logs.kafka_bus import KafkaConfig, KafkaLogBus, KafkaLogConsumer
    from controller.logs.local_bus import LocalLogBus

    if isinstance(bus, LocalLogBus):
        return LogPipeline(bus.consumer(INDEX_CONSUMER_GROUP), index)
    if isinstance(bus, KafkaLogBus):
        return LogPipeline(KafkaLogConsumer(KafkaConfig.from_settings(settings)), index)
    raise LogError(f"no consumer for a {type(bus).__name__} log bus")
