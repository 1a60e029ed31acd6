"""``ControllerHook`` and ``ControllerTaskTrigger`` against the real controller app on a real port.

The controller (temp ``MLPROV_HOME``, local runtime, real ``python -c`` jobs) runs in a uvicorn thread
shared by the module; the hook reads its address and token from ``AIRFLOW_CONN_*`` Connections.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.plugin_support import ADMIN, ControllerServer, connection_env, running_controller

# isort: split
import httpx
from airflow.sdk.exceptions import AirflowFailException

from plugins import (
    ControllerAuthError,
    ControllerError,
    ControllerHook,
    ControllerRequestError,
    ControllerTaskLost,
    ControllerTaskOperator,
    ControllerTaskTrigger,
    ControllerUnreachable,
    LogCursor,
    UnknownServiceError,
)
from plugins._endpoint import ControllerEndpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerServer]:
    with running_controller(tmp_path_factory.mktemp("mlprov-home")) as ctl, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_MLPROV_CONTROLLER", connection_env(ctl.port))
        mp.setenv("AIRFLOW_CONN_MLPROV_WRONG_TOKEN", connection_env(ctl.port, token="not-the-token"))
        mp.setenv("AIRFLOW_CONN_MLPROV_CLOSED", connection_env(_closed_port()))
        yield ctl


@pytest.fixture
def hook(controller: ControllerServer) -> Iterator[ControllerHook]:
    with ControllerHook() as h:
        yield h


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(hook: ControllerHook, task_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = hook.get_task(task_id)
        if task["state"] in states:
            return task
        assert time.monotonic() < deadline, f"task stayed {task['state']}: {task}"
        time.sleep(0.05)


def _run(task_id: str, run_id: str = "manual__hook") -> dict[str, Any]:
    return {"dag_id": "plugin_hook", "run_id": run_id, "task_id": task_id, "try_number": 1}


def test_submit_wait_outputs_and_logs(hook: ControllerHook) -> None:
    submitted = hook.submit_task("produce", params={"who": "ann"}, run=_run("produce"))
    assert submitted["created"] is True
    again = hook.submit_task("produce", params={"who": "ann"}, run=_run("produce"))
    assert (again["id"], again["created"]) == (submitted["id"], False)  # the run identity is the key

    task = _wait(hook, submitted["id"], "succeeded", "failed")
    assert (task["state"], task["exit_code"]) == ("succeeded", 0), task
    digest = "sha256:" + hashlib.sha256(b"r:ann").hexdigest()
    outputs = hook.task_outputs(task)
    assert outputs == [
        {"name": "result.txt", "digest": digest, "size": 5, "kind": "dataset", "manifest_id": outputs[0]["manifest_id"]}
    ]

    cursor = LogCursor()
    deadline = time.monotonic() + 10
    records: list[dict[str, Any]] = []
    while not any(r.get("event") == "finished" for r in records):
        assert time.monotonic() < deadline, records
        records += list(hook.iter_logs(submitted["id"], after=cursor))
        time.sleep(0.1)
    assert ("job", "stdout", "hello ann") in [(r["component"], r.get("stream"), r["message"]) for r in records]
    assert next(r["event"] for r in records if r.get("event")) == "submitted"
    assert list(hook.iter_logs(submitted["id"], after=cursor)) == []  # the cursor remembers
    assert len(list(hook.iter_logs(submitted["id"]))) == len(records)


def test_log_pages_are_followed_and_not_repeated(hook: ControllerHook) -> None:
    tid = hook.submit_task("produce", params={"who": "pages"})["id"]
    _wait(hook, tid, "succeeded")
    everything = list(hook.iter_logs(tid, limit=1000))
    cursor = LogCursor()
    paged = list(hook.iter_logs(tid, after=cursor, limit=2))  # several pages of two
    assert [r["id"] for r in paged] == [r["id"] for r in everything]
    assert len(paged) >= 3
    assert list(hook.iter_logs(tid, after=cursor, limit=2)) == []


def test_cancel_ends_a_running_task(hook: ControllerHook) -> None:
    tid = hook.submit_task("sleeper")["id"]
    _wait(hook, tid, "running")
    assert hook.cancel_task(tid)["id"] == tid
    assert _wait(hook, tid, "cancelled")["finished_at"]
    assert hook.cancel_task(tid)["state"] == "cancelled"  # idempotent


def test_end_run_and_verify(hook: ControllerHook) -> None:
    tid = hook.submit_task("produce", params={"who": "end"}, run=_run("produce", "manual__end"))["id"]
    task = _wait(hook, tid, "succeeded")
    ended = hook.end_run("plugin_hook", "manual__end", "succeeded")
    assert ended
    report = hook.verify(task["outputs"][0]["digest"])
    assert isinstance(report, dict)
    assert "ok" in report


def test_unknown_service_is_named_and_not_retried_by_airflow(hook: ControllerHook) -> None:
    with pytest.raises(UnknownServiceError, match=r"unknown service.*no-such-service") as err:
        hook.submit_task("no-such-service")
    assert isinstance(err.value, AirflowFailException)
    assert "\n" not in str(err.value)


def test_bad_input_is_a_request_error(hook: ControllerHook) -> None:
    with pytest.raises(ControllerRequestError, match="no artifact named 'ghost'"):
        hook.submit_task("produce", inputs=["ghost"])


def test_unknown_task_is_lost(hook: ControllerHook) -> None:
    with pytest.raises(ControllerTaskLost, match="no longer knows"):
        hook.get_task("no-such-task")


def test_wrong_token_is_an_auth_error(controller: ControllerServer) -> None:
    with ControllerHook("mlprov_wrong_token") as hook, pytest.raises(ControllerAuthError) as err:
        hook.submit_task("produce")
    message = str(err.value)
    assert "refused the token of connection 'mlprov_wrong_token'" in message
    assert "not-the-token" not in message
    assert isinstance(err.value, AirflowFailException)


def test_closed_port_is_unreachable_after_bounded_retries(controller: ControllerServer) -> None:
    started = time.monotonic()
    with ControllerHook("mlprov_closed", retries=2, backoff=0.05) as hook, pytest.raises(ControllerUnreachable) as err:
        hook.get_task("anything")
    assert time.monotonic() - started < 3
    assert "is unreachable after 3 attempt(s)" in str(err.value)
    assert "mlprov_closed" in str(err.value)


def _scripted(answers: list[int], calls: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        status = answers.pop(0)
        if status == 200:
            return httpx.Response(200, json={"id": "t", "state": "running"})
        return httpx.Response(status, json={"error": "x", "detail": f"answer {status}"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("answers", "expected_calls", "outcome", "message"),
    [
        ([503, 502, 200], 3, None, ""),
        ([503, 503, 503], 3, ControllerUnreachable, "unavailable .HTTP 503"),
        ([400, 200], 1, ControllerRequestError, "refused the request .HTTP 400"),
        ([401, 200], 1, ControllerAuthError, "refused the token"),
        ([500, 200], 1, ControllerError, "failed .HTTP 500"),
    ],
)
def test_transient_answers_are_retried_and_others_never(
    answers: list[int], expected_calls: int, outcome: type[Exception] | None, message: str
) -> None:
    calls: list[str] = []
    endpoint = ControllerEndpoint(conn_id="fake", base_url="http://controller.invalid", token=ADMIN)
    hook = ControllerHook(endpoint=endpoint, retries=2, backoff=0.001)
    hook._client = httpx.Client(base_url=endpoint.base_url, transport=_scripted(answers, calls))
    if outcome is None:
        assert hook.get_task("t")["state"] == "running"
    else:
        with pytest.raises(outcome, match=message):
            hook.get_task("t")
    assert len(calls) == expected_calls
    hook.close()


def test_a_submission_without_run_identity_is_not_resent_after_a_503() -> None:
    calls: list[str] = []
    endpoint = ControllerEndpoint(conn_id="fake", base_url="http://controller.invalid", token=ADMIN)
    hook = ControllerHook(endpoint=endpoint, retries=3, backoff=0.001)
    hook._client = httpx.Client(base_url=endpoint.base_url, transport=_scripted([503, 200], calls))
    with pytest.raises(ControllerUnreachable):
        hook.submit_task("produce")  # no run identity: a resend could queue it twice
    assert calls == ["POST"]


def test_connection_fields_become_the_endpoint() -> None:
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="c",
        conn_type="http",
        host="ctl.example",
        port=8443,
        schema="https",
        extra='{"token": "tok", "mlflow_ui_url": "http://mlflow:5000/", "kibana_url": "http://kb:5601"}',
    )
    ep = ControllerEndpoint.from_connection(conn)
    assert (ep.base_url, ep.token) == ("https://ctl.example:8443", "tok")
    assert ep.task_url("t 1") == "https://ctl.example:8443/api/v1/tasks/t%201"
    assert ep.mlflow_run_url("abc") == "http://mlflow:5000/#/runs/abc"
    assert ep.mlflow_run_url(None) is None
    assert ep.log_search_url("t-1") == (
        "http://kb:5601/app/discover#/?_g=(time:(from:now-30d,to:now))"
        "&_a=(query:(language:kuery,query:'task_id:%22t-1%22'))"
    )
    plain = ControllerEndpoint.from_connection(
        Connection(conn_id="p", conn_type="http", host="http://h:1", password="x")
    )
    assert plain.base_url == "http://h:1"
    assert plain.log_search_url("t-1") == "http://h:1/api/v1/logs/search?task_id=t-1&order=asc"
    with pytest.raises(Exception, match="has no host"):
        ControllerEndpoint.from_connection(Connection(conn_id="n", conn_type="http"))


# -- the trigger -----------------------------------------------------------------------------------


async def _events(trigger: ControllerTaskTrigger, timeout: float = 20) -> list[dict[str, Any]]:
    import asyncio

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout)


async def test_trigger_fires_once_when_the_task_ends(hook: ControllerHook) -> None:
    tid = hook.submit_task("produce", params={"who": "trig"})["id"]
    trigger = ControllerTaskTrigger(tid, poll_interval=0.1)
    classpath, kwargs = trigger.serialize()
    assert classpath == "plugins.triggers.ControllerTaskTrigger"
    assert ControllerTaskTrigger(**kwargs).serialize() == (classpath, kwargs)
    [event] = await _events(trigger)
    assert event["status"] == "done"
    assert (event["task"]["id"], event["task"]["state"]) == (tid, "succeeded")


async def test_trigger_error_events_are_one_named_line(controller: ControllerServer) -> None:
    [lost] = await _events(ControllerTaskTrigger("no-such-task", poll_interval=0.1))
    assert (lost["status"], lost["error"]) == ("error", "ControllerTaskLost")
    [auth] = await _events(ControllerTaskTrigger("x", conn_id="mlprov_wrong_token", poll_interval=0.1))
    assert auth["error"] == "ControllerAuthError"
    assert "\n" not in auth["message"]
    [down] = await _events(
        ControllerTaskTrigger("x", conn_id="mlprov_closed", poll_interval=0.05, unreachable_timeout=0.5)
    )
    assert down["error"] == "ControllerUnreachable"


async def test_trigger_on_kill_cancels_the_controller_task(hook: ControllerHook) -> None:
    tid = hook.submit_task("sleeper")["id"]
    _wait(hook, tid, "running")
    await ControllerTaskTrigger(tid).on_kill()
    assert _wait(hook, tid, "cancelled")["state"] == "cancelled"


def test_closed_port_helper_is_really_closed() -> None:
    port = _closed_port()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


# -- long polls ------------------------------------------------------------------------------------


def test_a_long_poll_returns_at_the_state_change(hook: ControllerHook) -> None:
    tid = hook.submit_task("sleeper")["id"]
    _wait(hook, tid, "running")
    started = time.monotonic()
    assert hook.get_task(tid, wait=0.4, state="running")["state"] == "running"  # no change: the whole wait
    assert time.monotonic() - started >= 0.35

    def cancel() -> None:
        with ControllerHook() as other:
            other.cancel_task(tid)

    canceller = threading.Timer(0.3, cancel)
    canceller.start()
    started = time.monotonic()
    try:
        task = hook.get_task(tid, wait=30, state="running")
        while task["state"] == "running":  # cancel requested: the job is being stopped
            task = hook.get_task(tid, wait=30, state="running")
    finally:
        canceller.join()
    assert task["state"] == "cancelled"
    assert time.monotonic() - started < 20  # ended by the change, not by the 30 s


class _ScriptedHook:
    """A stand-in hook answering ``states`` in turn, instantly (a controller without long polls)."""

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.calls: list[tuple[float, float | None, str | None]] = []

    def get_task(self, task_id: str, *, wait: float | None = None, state: str | None = None) -> dict[str, Any]:
        self.calls.append((time.monotonic(), wait, state))
        return {"id": task_id, "state": self.states.pop(0)}

    def iter_logs(self, task_id: str, after: LogCursor | None = None) -> Iterator[dict[str, Any]]:
        return iter(())


def test_the_operator_passes_the_last_state_and_still_paces_a_controller_without_long_polls() -> None:
    operator = ControllerTaskOperator(task_id="t", service="s", poll_interval=0.2, long_poll=5.0)
    scripted = _ScriptedHook(["queued", "running", "running", "running", "succeeded"])
    task = operator._poll(scripted, "t", LogCursor())  # type: ignore[arg-type]  # a duck-typed hook
    assert task["state"] == "succeeded"
    assert [(wait, state) for _, wait, state in scripted.calls] == [
        (5.0, None), (5.0, "queued"), (5.0, "running"), (5.0, "running"), (5.0, "running"),
    ]  # fmt: skip
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(scripted.calls)]
    assert gaps[0] < 0.15  # a change: ask again at once
    assert gaps[1] < 0.15
    assert min(gaps[2:]) >= 0.18  # same state at once: an old controller, polled every poll_interval
