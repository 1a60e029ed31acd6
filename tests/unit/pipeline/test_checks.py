"""``mlprov pipeline test``'s checks: a fake Airflow (httpx.MockTransport answering the REST API v2 the way
Airflow 3.3 does) and the real controller app; the full happy path runs in tests/e2e/test_pipeline_test.py."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from controller.cli import cli
from controller.pipeline.airflow_client import AirflowClient
from controller.pipeline.checks import CHECKS, PipelineTest, PipelineTestOptions
from controller.pipeline.controller_client import ControllerClient
from tests.unit.controller.ingest_support import ADMIN, App


class FakeAirflow:
    """Airflow's REST API v2 for one DAG: login, DAG, trigger, run and task instances."""

    def __init__(self, task_states: dict[str, str], *, dag_present: bool = True, polls_until_done: int = 2) -> None:
        self.task_states = task_states
        self.dag_present = dag_present
        self.polls_until_done = polls_until_done
        self.polls = 0
        self.calls: list[tuple[str, str]] = []
        self.triggered: list[dict[str, Any]] = []
        self.paused = True

    def handler(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.calls.append((method, path))
        if path == "/api/v2/monitor/health":
            return httpx.Response(200, json={"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"}})
        if path == "/auth/token":
            body = json.loads(request.content)
            if body != {"username": "admin", "password": "pw"}:
                return httpx.Response(401, json={"detail": "Invalid credentials"})
            return httpx.Response(201, json={"access_token": "tok"})
        if request.headers.get("Authorization") != "Bearer tok":
            return httpx.Response(401, json={"detail": "Not authenticated"})
        if path == "/api/v2/importErrors":
            return httpx.Response(200, json={"import_errors": [], "total_entries": 0})
        if path == "/api/v2/dags/demo":
            if not self.dag_present:
                return httpx.Response(404, json={"detail": "The DAG with dag_id: `demo` was not found"})
            if method == "PATCH":
                self.paused = json.loads(request.content)["is_paused"]
            return httpx.Response(200, json={"dag_id": "demo", "is_paused": self.paused, "fileloc": "/dags/demo.py"})
        if path == "/api/v2/dags/demo/dagRuns" and method == "POST":
            self.triggered.append(json.loads(request.content))
            return httpx.Response(200, json={"dag_run_id": "manual__2026-01-01T00:00:00+00:00", "state": "queued"})
        if path.startswith("/api/v2/dags/demo/dagRuns/manual__"):
            done = self.polls >= self.polls_until_done
            if path.endswith("/taskInstances"):
                states = self.task_states if done else dict.fromkeys(self.task_states, "running")
                instances = [{"task_id": t, "state": s, "try_number": 1} for t, s in states.items()]
                return httpx.Response(200, json={"task_instances": instances, "total_entries": len(instances)})
            self.polls += 1
            failed = any(s != "success" for s in self.task_states.values())
            return httpx.Response(200, json={"state": ("failed" if failed else "success") if done else "running"})
        return httpx.Response(404, json={"detail": f"no route {method} {path}"})


def _airflow(fake: FakeAirflow) -> AirflowClient:
    return AirflowClient(
        "http://airflow.test", username="admin", password="pw", transport=httpx.MockTransport(fake.handler)
    )


def _test(fake: FakeAirflow, controller: ControllerClient, **options: Any) -> PipelineTest:
    return PipelineTest(
        PipelineTestOptions(dag_id="demo", conf={"seed": 7}, poll=0.0, **options),
        _airflow(fake),
        controller,
        sleep=lambda _s: None,
    )


def test_a_failed_task_is_the_first_failure_and_later_checks_are_skipped(controller_app: App) -> None:
    fake = FakeAirflow({"ingest": "success", "train": "failed", "evaluate": "upstream_failed"})
    with ControllerClient(controller_app.url, ADMIN) as controller:
        outcome = _test(fake, controller).run()
    by_name = {r.name: r for r in outcome.results}
    assert [r.name for r in outcome.results] == list(CHECKS)
    assert outcome.exit_code == 4
    assert by_name["reachable"].ok is True
    assert by_name["deploy"].ok is None
    assert by_name["dag loaded"].ok is True
    assert by_name["dag run"].ok is True
    assert "ended failed" in by_name["dag run"].message
    failure = outcome.first_failure
    assert failure is not None
    assert failure.name == "tasks succeeded"
    assert failure.message.startswith("task train of run manual__2026-01-01T00:00:00+00:00 is failed")
    assert [by_name[n].ok for n in ("provenance verified", "mlflow runs", "logs searchable")] == [None] * 3
    assert fake.triggered == [{"logical_date": None, "conf": {"seed": 7}}]
    assert fake.paused is False, "a paused DAG is unpaused before the trigger"


def test_a_run_the_controller_never_saw_fails_provenance(controller_app: App) -> None:
    fake = FakeAirflow({"ingest": "success"})
    with ControllerClient(controller_app.url, ADMIN) as controller:
        outcome = _test(fake, controller).run()
    failure = outcome.first_failure
    assert failure is not None
    assert failure.name == "provenance verified"
    assert "(404)" in failure.message
    assert "no pipeline run demo/manual__" in failure.message
    assert outcome.exit_code == 4


def test_a_missing_dag_names_it(controller_app: App) -> None:
    fake = FakeAirflow({}, dag_present=False)
    with ControllerClient(controller_app.url, ADMIN) as controller:
        outcome = _test(fake, controller, timeout=0.5).run()
    failure = outcome.first_failure
    assert failure is not None
    assert failure.name == "dag loaded"
    assert "Airflow has no DAG 'demo'" in failure.message
    assert fake.triggered == []


def test_unreachable_airflow_or_controller_is_exit_5(controller_app: App) -> None:
    with ControllerClient(controller_app.url, ADMIN) as controller:
        closed = AirflowClient("http://127.0.0.1:9", token="t")
        outcome = PipelineTest(PipelineTestOptions(dag_id="demo"), closed, controller).run()
    assert outcome.exit_code == 5
    assert outcome.first_failure is not None
    assert outcome.first_failure.name == "reachable"
    assert "Airflow at http://127.0.0.1:9 is unreachable" in outcome.first_failure.message
    with ControllerClient("http://127.0.0.1:9", ADMIN) as down:
        outcome = _test(FakeAirflow({}), down).run()
    assert outcome.exit_code == 5
    assert outcome.first_failure is not None
    assert "the controller at http://127.0.0.1:9 is unreachable" in outcome.first_failure.message


def _fake_controller(verify_ok: bool) -> httpx.MockTransport:
    """A controller holding one finished run (for the happy path without running real jobs)."""
    run = {
        "dag_id": "demo",
        "run_id": "manual__2026-01-01T00:00:00+00:00",
        "mlflow_run_id": "parent1",
        "tasks": [{"id": "t1", "service": "ingest", "mlflow_run_id": "child1"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/readyz":
            return httpx.Response(200, json={"ok": True})
        if path.endswith("/provenance"):
            return httpx.Response(
                200, json={"produced": ["sha256:" + "a" * 64], "artifacts": [{"digest": "sha256:" + "a" * 64,
                                                                              "name": "raw.csv"}]},
            )  # fmt: skip
        if path.startswith("/api/v1/runs/"):
            return httpx.Response(200, json=run)
        if path == "/api/v1/verify":
            broken = None if verify_ok else {"id": "m1", "title": "raw.csv", "error": "signature: invalid"}
            report = {"ok": verify_ok, "first_broken": broken, "summary": {"nodes": 3}}
            return httpx.Response(200, json={"ok": verify_ok, "report": report})
        if path == "/api/v1/logs/search":
            return httpx.Response(200, json={"records": [{"message": "x", "task_id": "t1"}]})
        return httpx.Response(404, json={"detail": "no route"})

    return httpx.MockTransport(handler)


def test_happy_path_and_a_broken_chain(tmp_path: Path) -> None:
    fake = FakeAirflow({"ingest": "success"})
    with ControllerClient("http://controller.test", "t", transport=_fake_controller(True)) as controller:
        outcome = _test(fake, controller).run()
    assert outcome.exit_code == 0, outcome.results
    assert all(r.ok is True for r in outcome.results if r.name != "deploy")
    with ControllerClient("http://controller.test", "t", transport=_fake_controller(False)) as controller:
        outcome = _test(FakeAirflow({"ingest": "success"}), controller).run()
    assert outcome.first_failure is not None
    assert outcome.first_failure.name == "provenance verified"
    assert "raw.csv" in outcome.first_failure.message
    assert "signature: invalid" in outcome.first_failure.message


def test_cli_remote_target_writes_junit_and_one_error_line(
    controller_app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command against a closed Airflow port: exit 5, one `error:` line, a JUnit report of 8 cases."""
    monkeypatch.setenv("MLPROV_TOKEN", ADMIN)
    report = tmp_path / "junit.xml"
    result = CliRunner().invoke(
        cli,
        ["pipeline", "test", "demo", "--target", "http://127.0.0.1:9", "--airflow-user", "admin",
         "--airflow-password", "pw", "--controller-url", controller_app.url, "--no-deploy", "--junit", str(report)],
    )  # fmt: skip
    assert result.exit_code == 5, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]]
    assert errors[0].startswith("error: check 'reachable' failed: Airflow at http://127.0.0.1:9 is unreachable")
    suite = ET.fromstring(report.read_bytes()).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("8", "1")


def test_cli_bad_conf_is_exit_2() -> None:
    result = CliRunner().invoke(cli, ["pipeline", "test", "demo", "--conf", "{not json"])
    assert result.exit_code == 2
    assert "error: --conf is not JSON" in result.output


def test_the_deploy_check_runs_first_and_a_refused_deploy_stops_the_test(controller_app: App) -> None:
    from controller.pipeline.errors import BadInputError

    deployed: list[str] = []

    def deployer() -> str:
        deployed.append("yes")
        return "deployment d1 recorded"

    fake = FakeAirflow({"ingest": "success"})
    with ControllerClient(controller_app.url, ADMIN) as controller:
        test = PipelineTest(
            PipelineTestOptions(dag_id="demo", poll=0.0), _airflow(fake), controller, deployer=deployer,
            sleep=lambda _s: None,
        )  # fmt: skip
        outcome = test.run()
    assert deployed == ["yes"]
    assert outcome.results[1].ok is True
    assert outcome.results[1].message == "deployment d1 recorded"

    def refused() -> str:
        raise BadInputError("services.yaml: entry 0 ('x') refused by the controller: command: missing")

    fake = FakeAirflow({"ingest": "success"})
    with ControllerClient(controller_app.url, ADMIN) as controller:
        outcome = PipelineTest(PipelineTestOptions(dag_id="demo"), _airflow(fake), controller, deployer=refused).run()
    assert outcome.exit_code == 2
    assert outcome.first_failure is not None
    assert outcome.first_failure.name == "deploy"
    assert fake.triggered == [], "nothing is triggered after a failed deploy"


def test_cli_local_target_without_make_up_is_exit_5_with_a_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLPROV_HOME", str(tmp_path / "home"))
    report = tmp_path / "junit.xml"
    result = CliRunner().invoke(cli, ["pipeline", "test", "demo", "--no-deploy", "--junit", str(report)])
    assert result.exit_code == 5, result.output
    assert f"error: check 'reachable' failed: the local stack is not up (no {tmp_path / 'home' / 'up.json'})" in (
        result.output
    )
    suite = ET.fromstring(report.read_bytes()).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "1", "7")
