"""``TaskView.links.logs``: Kibana Discover filtered to the task, or the embedded log search."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from controller.services.tasks import log_link, task_view
from controller.store.models import Task

SAVED_OBJECTS = Path(__file__).resolve().parents[3] / "infra" / "kibana" / "mlprov-saved-objects.ndjson"


def _task(task_id: str = "t-0123") -> Task:
    return Task(
        id=task_id,
        service="train",
        state="running",
        params={},
        inputs=[],
        outputs=[],
        resources={},
        submitted_at=datetime(2026, 11, 22, 12, 0, 5, 250000, tzinfo=UTC),
    )


def test_without_kibana_the_link_is_the_embedded_search() -> None:
    link = task_view(_task("t/1 & x"), kibana_url=None).links["logs"]
    parts = urlsplit(link)
    assert parts.path == "/api/v1/logs/search"
    assert parse_qs(parts.query) == {"task_id": ["t/1 & x"], "order": ["asc"]}


def test_with_kibana_the_link_opens_the_task_saved_search_filtered_to_the_task() -> None:
    link = task_view(_task(), kibana_url="https://kibana.example:5601/").links["logs"]
    base, _, fragment = link.partition("#")
    assert base == "https://kibana.example:5601/app/discover"
    route, _, query = fragment.partition("?")
    saved_id = route.removeprefix("/view/")
    ids = {json.loads(line)["id"] for line in SAVED_OBJECTS.read_text().splitlines()}
    assert saved_id == "mlprov-task-logs"
    assert saved_id in ids
    state = {k: unquote(v) for k, _, v in (p.partition("=") for p in query.split("&"))}
    assert state["_a"] == """(query:(language:kuery,query:'task_id:"t-0123"'))"""
    assert state["_g"] == "(time:(from:'2026-11-22T12:00:05.250Z',to:now))"
    assert " " not in link
    assert '"' not in link


def test_quotes_in_a_task_id_cannot_break_out_of_the_filter() -> None:
    link = log_link("a'b\"c!", "http://k")
    state_a = unquote(link.split("_a=", 1)[1])
    # Rison escapes ' and ! with !; KQL escapes " with a backslash
    assert state_a == """(query:(language:kuery,query:'task_id:"a!'b\\"c!!"'))"""
    assert "now-7d" in unquote(link)
