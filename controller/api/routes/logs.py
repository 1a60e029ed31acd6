"""``/api/v1/logs/search``: full-text and filtered search over every task event and log line.

The same route serves the embedded index (SQLite FTS5) and, later, Elasticsearch: it only talks to
the ``LogIndex`` Protocol. Bad parameters: 422 from validation (wrong types, limit out of range),
400 from the index (a cursor that is malformed or belongs to another order, since after until).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from controller.api.deps import ReaderDep, StateDep
from controller.errors import InvalidInputError, UnavailableError
from controller.logs.base import MAX_LIMIT, LogQuery

__all__ = ["router"]

router = APIRouter(prefix="/logs", tags=["logs"])


class LogSearchPage(BaseModel):
    records: list[dict[str, Any]]
    """Each: timestamp (epoch s), message, component, level, and when set stream, run_id, dag_id,
    task_id, attempt, event, fields, id (the record's bus position)."""
    next_cursor: str | None = None
    """Pass as ``cursor`` (with the same filters and order) for the next page; null on the last page."""


def _epoch(value: str | None, name: str) -> float | None:
    """Epoch seconds, or an ISO 8601 date-time (``2026-01-31T12:00:00Z``)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"{name}={value!r} is neither epoch seconds nor an ISO 8601 date-time (e.g. 2026-01-31T12:00:00Z)"
        ) from None
    return parsed.timestamp()


@router.get(
    "/search",
    response_model=LogSearchPage,
    responses={400: {"description": "a malformed cursor or time range"}},
)
def search_logs(
    state: StateDep,
    _: ReaderDep,
    q: Annotated[str | None, Query(max_length=1000, description='all words must occur; "a phrase"; pre*')] = None,
    run_id: Annotated[str | None, Query(max_length=250)] = None,
    dag_id: Annotated[str | None, Query(max_length=250)] = None,
    task_id: Annotated[str | None, Query(max_length=250)] = None,
    attempt: Annotated[int | None, Query(ge=0)] = None,
    component: Annotated[str | None, Query(max_length=64)] = None,
    level: Annotated[str | None, Query(max_length=16)] = None,
    stream: Annotated[str | None, Query(max_length=16)] = None,
    event: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(description="epoch seconds or ISO 8601, inclusive")] = None,
    until: Annotated[str | None, Query(description="epoch seconds or ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    order: Annotated[Literal["desc", "asc"], Query(description="desc: newest first; asc: oldest first")] = "desc",
) -> LogSearchPage:
    index = state.log_index
    if index is None:
        raise UnavailableError("the log index is not running")
    query = LogQuery(
        q=q,
        run_id=run_id,
        dag_id=dag_id,
        task_id=task_id,
        attempt=attempt,
        component=component,
        level=level.lower() if level else None,
        stream=stream,
        event=event,
        since=_epoch(since, "since"),
        until=_epoch(until, "until"),
        limit=limit,
        cursor=cursor or None,
        order=order,
    )
    page = index.search(query)
    return LogSearchPage(records=[r.to_dict() for r in page.records], next_cursor=page.next_cursor)
