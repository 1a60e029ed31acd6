"""The list-then-watch loop: the exact list and watch calls, events handed on, re-list on 410 Gone and after
the server ends the watch (resync), and a failing API retried rather than killing the thread."""

from __future__ import annotations

import json
import threading
from typing import Any
from unittest.mock import call, create_autospec

import pytest
from kubernetes.client import BatchV1Api
from kubernetes.client.exceptions import ApiException

from controller.runtime.k8s_watch import ResourceWatch, iter_lines

NS = "ml"
SEL = "app.kubernetes.io/managed-by=mlprov"


class Resp:
    def __init__(self, body: Any = None, events: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(body or {}).encode()
        self._events = events or []

    def stream(self, amt: int) -> Any:
        text = "".join(json.dumps(e) + "\n" for e in self._events).encode()
        for i in range(0, len(text), 7):  # events split across chunks
            yield text[i : i + 7]

    def release_conn(self) -> None:
        pass


def _job(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def test_lists_then_watches_from_the_list_version_and_relists_on_gone() -> None:
    api = create_autospec(BatchV1Api, instance=True)
    synced: list[list[str]] = []
    events: list[tuple[str, str]] = []
    watch: ResourceWatch

    answers = iter(
        [
            Resp({"items": [_job("a", "9")], "metadata": {"resourceVersion": "10"}}),
            Resp(
                events=[
                    {"type": "ADDED", "object": _job("b", "11")},
                    {"type": "BOOKMARK", "object": _job("", "12")},
                    {"type": "ERROR", "object": {"code": 410, "reason": "Expired"}},
                ]
            ),
            Resp({"items": [_job("a", "9"), _job("b", "11")], "metadata": {"resourceVersion": "20"}}),
            Resp(events=[{"type": "DELETED", "object": _job("a", "21")}]),
        ]
    )

    def answer(*args: Any, **kw: Any) -> Resp:
        try:
            return next(answers)
        except StopIteration:
            watch.stop(timeout=0)
            return Resp({"items": [], "metadata": {"resourceVersion": "30"}})

    api.list_namespaced_job.side_effect = answer
    watch = ResourceWatch(
        name="jobs", list_fn=api.list_namespaced_job, namespace=NS, selector=SEL,
        on_sync=lambda items, at: synced.append([i["metadata"]["name"] for i in items]),
        on_event=lambda kind, obj: events.append((kind, obj["metadata"]["name"])),
        request_timeout=3.0, watch_timeout=60,
    )  # fmt: skip
    watch.run()
    assert synced[:2] == [["a"], ["a", "b"]]
    assert events == [("ADDED", "b"), ("DELETED", "a")]
    calls = api.list_namespaced_job.call_args_list
    assert calls[0] == call(NS, label_selector=SEL, _preload_content=False, _request_timeout=3.0)
    assert calls[1] == call(
        NS, label_selector=SEL, watch=True, resource_version="10", allow_watch_bookmarks=True, timeout_seconds=60,
        _preload_content=False, _request_timeout=(3.0, 63.0),
    )  # fmt: skip
    assert calls[2] == calls[0]  # 410 Gone: list again
    assert calls[3].kwargs["resource_version"] == "20"
    assert calls[4] == calls[0]  # the server ended the watch: periodic resync


def test_an_api_410_on_the_watch_call_relists_and_other_errors_back_off() -> None:
    api = create_autospec(BatchV1Api, instance=True)
    outcomes: list[Any] = [
        Resp({"items": [], "metadata": {"resourceVersion": "1"}}),
        ApiException(status=410, reason="Gone"),
        ApiException(status=500, reason="Internal"),
    ]
    done = threading.Event()
    watch: ResourceWatch

    def answer(*args: Any, **kw: Any) -> Resp:
        if not outcomes:
            done.set()
            watch.stop(timeout=0)
            raise ApiException(status=503, reason="stopping")
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    api.list_namespaced_job.side_effect = answer
    watch = ResourceWatch(
        name="jobs", list_fn=api.list_namespaced_job, namespace=NS, selector=SEL,
        on_sync=lambda items, at: None, on_event=lambda kind, obj: None, backoff=0.01,
    )  # fmt: skip
    watch.run()
    assert done.is_set()
    kinds = ["watch" if c.kwargs.get("watch") else "list" for c in api.list_namespaced_job.call_args_list]
    assert kinds[:3] == ["list", "watch", "list"]  # 410 on the watch call -> list, not back-off


@pytest.mark.parametrize("chunks", [[b"a\nb", b"c\n"], [b"a\n", b"bc"]])
def test_iter_lines_joins_chunks(chunks: list[bytes]) -> None:
    class R:
        def stream(self, amt: int) -> Any:
            return iter(chunks)

    assert list(iter_lines(R())) == ["a", "bc"]
