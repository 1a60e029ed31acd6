"""The Elasticsearch ``LogIndex`` (elasticsearch-py 9), chosen by ``MLPROV_ELASTICSEARCH_URL``.

Storage: one data stream (``mlprov-logs`` by default) whose index template maps every log field
explicitly (``dynamic: false``: nothing else is indexed) and whose ILM policy rolls the write index over
by primary shard size or age and deletes backing indices after the retention. Template and policy are
put (idempotently) before the first write, so a fresh cluster needs nothing by hand.

Writes: one ``_bulk`` per batch, ``create`` actions with ``_id`` = the record id (the bus position,
``<topic>:<partition>:<offset>``): a redelivered record answers 409 and counts as accepted, so a replay
never duplicates (within the current backing index; across a rollover the consumer's committed offsets
are what prevents replays). Any other item failure raises ``LogError`` and the pipeline retries the
batch without committing.

Search: the embedded index's semantics (see ``LogQuery``): every word / ``"phrase"`` / ``prefix*`` of
``q`` must occur in the message or the fields' text; filters are exact terms; ``since`` inclusive,
``until`` exclusive. Order is ``timestamp`` then record id (the embedded index orders by arrival: the
same for one task's lines, which are timestamped in order); the cursor wraps ``search_after``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from controller.logs.base import InvalidLogQueryError, LogError, LogPage, LogQuery, LogRecord

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from controller.settings import Settings

__all__ = ["MAPPINGS", "EsLogIndex", "ilm_policy", "index_template", "text_clauses", "to_document"]

log = structlog.get_logger(__name__)

_KEYWORDS = ("run_id", "dag_id", "task_id", "component", "stream", "level", "event", "record_id")
MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date", "format": "epoch_millis||strict_date_optional_time"},
        "timestamp": {"type": "double"},
        "message": {"type": "text"},
        "attempt": {"type": "integer"},
        **{name: {"type": "keyword"} for name in _KEYWORDS},
        "manifest_id": {"type": "keyword"},
        "artifact_id": {"type": "keyword"},
        "fields": {"type": "flattened"},
        "fields_text": {"type": "text"},
    },
}
_TEXT_FIELDS = ["message", "fields_text"]
_TERM = re.compile(r'"([^"]*)"|(\S+)')
_WORD = re.compile(r"\w", re.UNICODE)


def ilm_policy(max_size: str, max_age: str, retention: str) -> dict[str, Any]:
    return {
        "phases": {
            "hot": {"actions": {"rollover": {"max_primary_shard_size": max_size, "max_age": max_age}}},
            "delete": {"min_age": retention, "actions": {"delete": {}}},
        }
    }


def index_template(data_stream: str, policy: str) -> dict[str, Any]:
    """The arguments of ``indices.put_index_template`` for ``data_stream``."""
    return {
        "index_patterns": [data_stream],
        "data_stream": {},
        "priority": 200,
        "template": {"settings": {"index.lifecycle.name": policy}, "mappings": MAPPINGS},
        "meta": {"managed_by": "mlprov"},
    }


def to_document(record: LogRecord) -> dict[str, Any]:
    """The document for ``record``: its JSON form plus ``@timestamp``, ``record_id`` and the searchable
    copies of ``fields`` (text) and of the manifest / artifact ids."""
    doc = record.to_dict()
    doc.pop("id", None)
    doc["@timestamp"] = int(record.timestamp * 1000)
    if record.id is not None:
        doc["record_id"] = record.id
    if record.fields:
        doc["fields_text"] = json.dumps(doc["fields"], ensure_ascii=False, default=str)
        for name, keys in (("manifest_id", ("manifest_id",)), ("artifact_id", ("artifact_id", "digest"))):
            for key in keys:
                value = record.fields.get(key)
                if isinstance(value, str):
                    doc[name] = value
                    break
    return doc


def _from_hit(hit: Mapping[str, Any]) -> LogRecord:
    source = dict(hit["_source"])
    source["id"] = source.get("record_id", hit.get("_id"))
    return LogRecord.from_dict(source)


def text_clauses(q: str) -> list[dict[str, Any]]:
    """``q`` as ``must`` clauses: each word or phrase as a phrase, ``word*`` as a phrase prefix."""
    clauses: list[dict[str, Any]] = []
    for match in _TERM.finditer(q):
        phrase, word = match.group(1), match.group(2)
        text = phrase if phrase is not None else word
        prefix = phrase is None and text.endswith("*")
        text = text.rstrip("*") if prefix else text
        if not _WORD.search(text):
            continue
        kind = "phrase_prefix" if prefix else "phrase"
        clauses.append({"multi_match": {"query": text, "type": kind, "fields": _TEXT_FIELDS}})
    return clauses


def _encode_cursor(sort: Sequence[Any], order: str) -> str:
    raw = json.dumps([list(sort), order], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, order: str) -> list[Any]:
    try:
        sort, cursor_order = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(sort, list) or len(sort) != 2:
            raise ValueError("bad sort values")
    except (binascii.Error, ValueError, TypeError):
        raise InvalidLogQueryError("malformed cursor: pass next_cursor from the previous page unchanged") from None
    if cursor_order != order:
        raise InvalidLogQueryError(f"this cursor belongs to order={cursor_order}; ask with the same order")
    return sort


def search_body(query: LogQuery) -> dict[str, Any]:
    """The ``_search`` body for ``query`` (validated as the embedded index validates it)."""
    query.check()
    filters: list[dict[str, Any]] = [{"term": {name: value}} for name, value in query.exact_filters()]
    if query.since is not None or query.until is not None:
        bounds: dict[str, float] = {}
        if query.since is not None:
            bounds["gte"] = query.since
        if query.until is not None:
            bounds["lt"] = query.until
        filters.append({"range": {"timestamp": bounds}})
    body: dict[str, Any] = {
        "query": {"bool": {"filter": filters, "must": text_clauses(query.q) if query.q else []}},
        "sort": [{"timestamp": {"order": query.order}}, {"record_id": {"order": query.order}}],
        "size": query.limit + 1,
        "track_total_hits": False,
    }
    if query.cursor:
        body["search_after"] = _decode_cursor(query.cursor, query.order)
    return body


class EsLogIndex:
    """Log records in an Elasticsearch data stream; thread-safe (the client is)."""

    def __init__(
        self,
        client: Elasticsearch,
        data_stream: str = "mlprov-logs",
        *,
        rollover_max_size: str = "10gb",
        rollover_max_age: str = "1d",
        retention: str = "30d",
    ) -> None:
        self.client = client
        self.data_stream = data_stream
        self._policy = ilm_policy(rollover_max_size, rollover_max_age, retention)
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EsLogIndex:
        from elasticsearch import Elasticsearch

        assert settings.elasticsearch_url is not None
        auth: dict[str, Any] = {}
        if settings.elasticsearch_api_key is not None:
            auth["api_key"] = settings.elasticsearch_api_key.get_secret_value()
        elif settings.elasticsearch_username is not None and settings.elasticsearch_password is not None:
            auth["basic_auth"] = (settings.elasticsearch_username, settings.elasticsearch_password.get_secret_value())
        if settings.elasticsearch_ca_certs is not None:
            auth["ca_certs"] = str(settings.elasticsearch_ca_certs)
        client = Elasticsearch(
            settings.elasticsearch_url,
            request_timeout=settings.elasticsearch_timeout,
            max_retries=1,
            retry_on_timeout=False,
            **auth,
        )
        return cls(
            client,
            settings.elasticsearch_data_stream,
            rollover_max_size=settings.elasticsearch_rollover_max_size,
            rollover_max_age=settings.elasticsearch_rollover_max_age,
            retention=settings.elasticsearch_retention,
        )

    def ensure_setup(self) -> None:
        """Put the ILM policy and the index template (both idempotent PUTs)."""
        from elasticsearch import ApiError, TransportError

        try:
            self.client.ilm.put_lifecycle(name=self.data_stream, policy=self._policy)
            self.client.indices.put_index_template(
                name=self.data_stream, **index_template(self.data_stream, self.data_stream)
            )
        except (ApiError, TransportError) as exc:
            raise LogError(f"cannot set up the Elasticsearch data stream {self.data_stream}: {exc}") from exc
        self._ready = True

    def index(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        from elasticsearch import ApiError, TransportError

        if not self._ready:
            self.ensure_setup()
        operations: list[Mapping[str, Any]] = []
        for record in records:
            action: dict[str, Any] = {"_index": self.data_stream}
            if record.id is not None:
                action["_id"] = record.id
            operations.append({"create": action})
            operations.append(to_document(record))
        try:
            response = self.client.bulk(operations=operations)
        except (ApiError, TransportError) as exc:
            raise LogError(f"cannot index {len(records)} log records in {self.data_stream}: {exc}") from exc
        if response.get("errors"):
            failed = [
                item["create"]
                for item in response["items"]
                if item["create"].get("status", 500) >= 300 and item["create"].get("status") != 409
            ]
            if failed:
                raise LogError(
                    f"Elasticsearch refused {len(failed)} of {len(records)} log records: {failed[0].get('error')}"
                )

    def search(self, query: LogQuery) -> LogPage:
        from elasticsearch import ApiError, NotFoundError, TransportError

        body = search_body(query)
        try:
            response = self.client.search(index=self.data_stream, **body)
        except NotFoundError:  # nothing indexed yet: the data stream does not exist
            return LogPage(records=[])
        except (ApiError, TransportError) as exc:
            raise LogError(f"log search failed in {self.data_stream}: {exc}") from exc
        hits = response["hits"]["hits"]
        more = len(hits) > query.limit
        hits = hits[: query.limit]
        next_cursor = _encode_cursor(hits[-1]["sort"], query.order) if more else None
        return LogPage(records=[_from_hit(hit) for hit in hits], next_cursor=next_cursor)

    def close(self) -> None:
        self.client.close()
