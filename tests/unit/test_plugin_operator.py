"""``ControllerTaskOperator`` in real DAGs run by Airflow's ``dag.test()`` against the real controller.

One controller (uvicorn thread, real port) and one Airflow home (temp, SQLite, no examples) per
module; the operator finds the controller through ``AIRFLOW_CONN_MLPROV_CONTROLLER``.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin_support import ControllerServer, connection_env, running_controller

# isort: split
from plugins import ControllerHook, ControllerTaskOperator, input_refs
from plugins.exceptions import ControllerRequestError

pytestmark = [
    pytest.mark.airflow,
    pytest.mark.integration,
    # Airflow's in-process execution API (dag.test) imports starlette.testclient, which warns about httpx.
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated"),
]

MLFLOW_UI = "http://mlflow.example:5000"

DAG_FILE = textwrap.dedent(
    '''
    """Test DAGs of the plugin (written by tests/unit/test_plugin_operator.py)."""
    import json
    from datetime import datetime
    from pathlib import Path

    from airflow.sdk import DAG, Param

    from plugins.operators import ControllerTaskOperator

    FAILURES = Path(__file__).with_name("failures.jsonl")


    def record_failure(context):
        exc = context.get("exception")
        line = {"task": context["ti"].task_id, "type": type(exc).__name__, "message": str(exc)}
        with FAILURES.open("a") as fh:
            fh.write(json.dumps(line) + "\\n")


    START = datetime(2026, 1, 1)
    FAST = {"poll_interval": 0.2, "log_settle": 3.0, "retries": 0, "on_failure_callback": record_failure}

    with DAG("plugin_ok", schedule=None, start_date=START, params={"who": Param("dag-default", type="string")}):
        produce = ControllerTaskOperator(
            task_id="produce", service="produce", params={"who": "{{ params.who }}"}, deferrable=False, **FAST
        )
        consume = ControllerTaskOperator(
            task_id="consume", service="consume", inputs=produce.output, deferrable=True, **FAST
        )

    with DAG("plugin_bad", schedule=None, start_date=START):
        ControllerTaskOperator(task_id="stage_fails", service="fail", deferrable=False, **FAST)
        ControllerTaskOperator(task_id="stage_fails_deferred", service="fail", deferrable=True, **FAST)
        ControllerTaskOperator(task_id="unknown_service", service="no-such-service", deferrable=False, **FAST)
        ControllerTaskOperator(
            task_id="wrong_token", service="produce", conn_id="mlprov_wrong_token", deferrable=False, **FAST
        )
    '''
)


@pytest.fixture(scope="module")
def airflow_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControllerServer, Path]]:
    """The controller, the Airflow metadata database, and the test DAG file in the dags folder."""
    from airflow.configuration import conf
    from airflow.utils import db

    with running_controller(tmp_path_factory.mktemp("mlprov-home")) as ctl, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_MLPROV_CONTROLLER", connection_env(ctl.port, mlflow_ui_url=MLFLOW_UI))
        mp.setenv("AIRFLOW_CONN_MLPROV_WRONG_TOKEN", connection_env(ctl.port, token="not-the-token"))
        db.initdb()
        dags = Path(conf.get("core", "dags_folder"))
        dags.mkdir(parents=True, exist_ok=True)
        dag_file = dags / "plugin_test_dags.py"
        dag_file.write_text(DAG_FILE)
        (dags / "failures.jsonl").unlink(missing_ok=True)
        yield ctl, dag_file


def _dag(dag_file: Path, dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def _xcom(dag_run: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, key=key, task_ids=task_id, dag_ids=dag_run.dag_id)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _states(dag_run: Any) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def test_a_dag_of_two_controller_tasks_passes_outputs_through_xcom(
    airflow_world: tuple[ControllerServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    ctl, dag_file = airflow_world
    dag_run = _dag(dag_file, "plugin_ok").test(run_conf={"who": "conf-who"})
    assert str(dag_run.state) == "success", _states(dag_run)
    task_log = [r.getMessage() for r in caplog.records if r.name.endswith("ControllerTaskOperator")]
    assert any("[job:stdout] hello conf-who" in line for line in task_log)  # polled, streamed
    assert any("[job:stdout] inputs result.txt" in line for line in task_log)  # deferred, logged on resume

    produced = "sha256:" + hashlib.sha256(b"r:conf-who").hexdigest()  # the run's conf reached the job
    outputs = _xcom(dag_run, "produce", "outputs")
    assert [(o["name"], o["digest"], o["size"], o["kind"]) for o in outputs] == [
        ("result.txt", produced, len(b"r:conf-who"), "dataset")
    ]
    assert set(outputs[0]) == {"name", "digest", "size", "kind", "manifest_id"}
    assert _xcom(dag_run, "produce", "return_value") == outputs
    assert _xcom(dag_run, "produce", "digests") == [produced]
    assert _xcom(dag_run, "produce", "by_name") == {"result.txt": produced}
    assert _xcom(dag_run, "produce", "manifest_ids") == [o["manifest_id"] for o in outputs if o["manifest_id"]]

    joined = _xcom(dag_run, "consume", "outputs")  # deferred: the trigger ran in line, then it resumed
    assert [o["name"] for o in joined] == ["joined.txt"]
    assert joined[0]["digest"] == "sha256:" + hashlib.sha256(b"r:conf-who").hexdigest()

    with ControllerHook() as hook:
        task = hook.get_task(_xcom(dag_run, "produce", "mlprov_task")["task_id"])
        consumer = hook.get_task(_xcom(dag_run, "consume", "mlprov_task")["task_id"])
    assert task["run"] == {"dag_id": "plugin_ok", "run_id": dag_run.run_id, "task_id": "produce", "try_number": 1}
    assert task["params"] == {"who": "conf-who"}
    assert [i["ref"] for i in consumer["inputs"]] == [produced]

    # the extra links Airflow computed on the worker when each task ended
    assert _xcom(dag_run, "produce", "_link_ControllerTaskLink") == f"{ctl.base_url}/api/v1/tasks/{task['id']}"
    assert _xcom(dag_run, "produce", "_link_ControllerLogsLink") == (
        f"{ctl.base_url}/api/v1/logs/search?task_id={task['id']}&order=asc"
    )
    assert task["mlflow_run_id"]
    assert _xcom(dag_run, "produce", "_link_MlflowRunLink") == f"{MLFLOW_UI}/#/runs/{task['mlflow_run_id']}"


def test_bad_input_fails_the_airflow_task_with_one_clear_line(airflow_world: tuple[ControllerServer, Path]) -> None:
    ctl, dag_file = airflow_world
    dag_run = _dag(dag_file, "plugin_bad").test()
    assert str(dag_run.state) == "failed"
    assert set(_states(dag_run).values()) == {"failed"}, _states(dag_run)
    failures = {f["task"]: f for f in map(json.loads, (dag_file.parent / "failures.jsonl").read_text().splitlines())}
    assert failures["stage_fails"]["type"] == "ControllerTaskFailed"
    assert "(service 'fail') failed: " in failures["stage_fails"]["message"]
    assert failures["stage_fails_deferred"]["type"] == "ControllerTaskFailed"
    assert failures["unknown_service"]["type"] == "UnknownServiceError"
    assert "no-such-service" in failures["unknown_service"]["message"]
    assert failures["wrong_token"]["type"] == "ControllerAuthError"
    assert all("\n" not in f["message"] for f in failures.values())

    with ctl.client() as client:  # nothing recorded as succeeded
        tasks = client.get("/api/v1/tasks", params={"dag_id": "plugin_bad"}).json()
    assert sorted(t["run"]["task_id"] for t in tasks) == ["stage_fails", "stage_fails_deferred"]
    assert {t["state"] for t in tasks} == {"failed"}
    reason = next(t["reason"] for t in tasks if t["run"]["task_id"] == "stage_fails")
    assert reason
    assert reason in failures["stage_fails"]["message"]  # the controller's reason, word for word
    for task_id in ("stage_fails", "unknown_service", "wrong_token"):
        assert _xcom(dag_run, task_id, "outputs") is None


def test_on_kill_cancels_the_controller_task(airflow_world: tuple[ControllerServer, Path]) -> None:
    op = ControllerTaskOperator(task_id="killed", service="sleeper")
    with ControllerHook() as hook:
        tid = hook.submit_task("sleeper")["id"]
        deadline = time.monotonic() + 15
        while hook.get_task(tid)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        op._controller_task_id = tid
        op.on_kill()
        while hook.get_task(tid)["state"] != "cancelled":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_service_params_stay_apart_from_airflow_params() -> None:
    from airflow.sdk import DAG, Param

    with DAG("params_split", schedule=None, params={"lr": Param(0.1, type="number"), "seed": 7}):
        op = ControllerTaskOperator(task_id="t", service="s", params={"lr": "{{ params.lr }}", "epochs": 3})
    assert op.service_params == {"lr": "{{ params.lr }}", "epochs": 3}
    assert dict(op.params) == {"lr": 0.1, "seed": 7}  # the DAG's own, unshadowed
    bare = ControllerTaskOperator(task_id="b", service="s", params={"x": 1})
    assert (bare.service_params, dict(bare.params)) == ({"x": 1}, {})


def test_inputs_accept_digests_names_outputs_and_rendered_lists() -> None:
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    outputs = [
        {"name": "model", "digest": d1, "kind": "model"},
        {"name": "metrics.json", "digest": d2, "kind": "evaluation"},
    ]
    assert input_refs(None) == []
    assert input_refs("raw-data@latest") == ["raw-data@latest"]
    assert input_refs(outputs) == [d1]  # an upstream's metrics are not data
    assert input_refs([outputs, [d2, d1]]) == [d1, d2]
    assert input_refs(str([d1, d2])) == [d1, d2]  # a rendered xcom_pull
    assert input_refs(json.dumps([d2])) == [d2]
    with pytest.raises(ControllerRequestError, match="has no 'digest'"):
        input_refs([{"name": "x"}])
    with pytest.raises(ControllerRequestError, match="is not a digest"):
        input_refs([42])
