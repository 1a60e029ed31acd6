"""The MLflow recorder against a real MLflow tracking store (SQLite + local artifacts), one per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from controller.mlflow_recorder import MlflowRecorder, build_recorder, flatten_metrics, flatten_params
from controller.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.mlflow]


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowRecorder]:
    home = tmp_path_factory.mktemp("mlflow-home")
    rec = build_recorder(Settings(home=home))
    assert rec.tracking_uri == f"sqlite:///{home.resolve() / 'mlflow.db'}"
    yield rec
    rec.close()


def _start(
    recorder: MlflowRecorder, task_id: str, attempt: int = 1, run_id: str | None = "manual__1", **kw: object
) -> str:
    args: dict[str, object] = {
        "dag_id": "demo_lifecycle",
        "run_id": run_id,
        "task_id": task_id,
        "attempt": attempt,
        "service": "finetune",
        "mlprov_task_id": f"mlprov-{task_id}-{attempt}",
        "params": {"lr": 0.001, "model": {"name": "tiny", "layers": 2}, "tags": ["a", "b"]},
        "code_commit": "0123abcd" * 5,
    }
    args.update(kw)
    mlflow_run = recorder.start_task(**args)  # type: ignore[arg-type]  # test helper forwards typed values
    assert mlflow_run is not None
    return mlflow_run


def test_tasks_are_nested_runs_with_params_tags_metrics_and_log(recorder: MlflowRecorder, tmp_path: Path) -> None:
    client = recorder._client
    first = _start(recorder, "train")
    second = _start(recorder, "evaluate")
    run = client.get_run(first)
    parent_id = run.data.tags["mlflow.parentRunId"]
    assert client.get_run(second).data.tags["mlflow.parentRunId"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.data.tags["mlprov.kind"] == "pipeline"
    assert parent.data.tags["mlprov.run_id"] == "manual__1"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "demo_lifecycle"
    assert experiment.artifact_location.startswith((recorder._artifact_root or Path("/nope")).as_uri())
    assert run.data.params == {"lr": "0.001", "model.name": "tiny", "model.layers": "2", "tags": '["a", "b"]'}
    tags = run.data.tags
    assert (tags["mlprov.dag_id"], tags["mlprov.task_id"], tags["mlprov.attempt"]) == ("demo_lifecycle", "train", "1")
    assert tags["mlprov.service"] == "finetune"
    assert tags["mlprov.code_commit"] == "0123abcd" * 5
    assert tags["mlprov.task"] == "mlprov-train-1"

    recorder.finish_task(
        first,
        state="succeeded",
        metrics={"accuracy": 0.9, "eval": {"f1": 0.8}, "loss": [1.0, 0.5, 0.25], "note": "text", "ok": True},
        log_text="line 1\nline 2\n",
    )
    done = client.get_run(first)
    assert done.info.status == "FINISHED"
    assert done.data.tags["mlprov.state"] == "succeeded"
    assert done.data.metrics == {"accuracy": 0.9, "eval.f1": 0.8, "loss": 0.25}  # latest value of each
    history = client.get_metric_history(first, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    local = client.download_artifacts(first, "logs/task.log", str(tmp_path))
    assert Path(local).read_text() == "line 1\nline 2\n"

    recorder.log_artifact_bytes(first, "provenance/model.manifest.json", b'{"manifest": 1}')
    assert [a.path for a in client.list_artifacts(first, "provenance")] == ["provenance/model.manifest.json"]

    recorder.finish_task(second, state="failed", metrics={}, log_text="boom")
    assert client.get_run(second).info.status == "FAILED"
    recorder.end_pipeline_run("demo_lifecycle", "manual__1", "failed")
    assert client.get_run(parent_id).info.status == "FAILED"


def test_restarts_reuse_runs_and_new_attempts_get_their_own(recorder: MlflowRecorder) -> None:
    first = _start(recorder, "ingest", run_id="manual__2")
    again = _start(recorder, "ingest", run_id="manual__2", params={"lr": 0.001, "extra": 1})
    assert again == first
    assert recorder._client.get_run(first).data.params["extra"] == "1"
    retry = _start(recorder, "ingest", attempt=2, run_id="manual__2")
    assert retry != first
    assert recorder.find_task_run("demo_lifecycle", "manual__2", "ingest", 2) == retry
    client = recorder._client
    experiment_id = client.get_run(first).info.experiment_id
    parents = client.search_runs(
        [experiment_id], "tags.`mlprov.kind` = 'pipeline' and tags.`mlprov.run_id` = 'manual__2'"
    )
    assert len(parents) == 1


def test_no_dag_goes_to_the_default_experiment(recorder: MlflowRecorder) -> None:
    run = _start(recorder, "adhoc", dag_id=None, run_id=None)
    experiment = recorder._client.get_experiment(recorder._client.get_run(run).info.experiment_id)
    assert experiment.name == "mlprov"


def test_limits_and_odd_keys_are_respected(recorder: MlflowRecorder) -> None:
    long_value = "x" * 10_000
    run = _start(recorder, "limits", params={"weird key!": long_value, "k" * 300: 1, "../up": 2})
    params = recorder._client.get_run(run).data.params
    assert params["weird key_"] == "x" * 6000
    assert params["k" * 250] == "1"
    assert params["_/up"] == "2"
    many = {f"p{i}": i for i in range(250)}  # more than one log_batch of params
    run2 = _start(recorder, "many-params", params=many)
    assert len(recorder._client.get_run(run2).data.params) == 250


def test_failures_are_logged_never_raised(recorder: MlflowRecorder, tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as events:
        recorder.finish_task("0" * 32, state="succeeded", metrics={"a": 1}, log_text="x")
        recorder.log_artifact_bytes("0" * 32, "../escape", b"x")
    failed = [e for e in events if e["event"] == "mlflow_record_failed"]
    assert [e["op"] for e in failed] == ["finish_task", "log_artifact_bytes"]
    (tmp_path / "a-file").write_text("not a directory")
    broken = MlflowRecorder(f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")  # a store that cannot be opened
    with structlog.testing.capture_logs() as events:
        assert (
            broken.start_task(
                dag_id="d", run_id="r", task_id="t", attempt=1, service="s", mlprov_task_id="m", params={}
            )
            is None
        )
    assert events
    assert events[-1]["event"] == "mlflow_record_failed"


def test_flattening_rules() -> None:
    values, skipped = flatten_metrics({"a": 1, "b": {"c": 2.5, "d": "x"}, "e": [1, 2], "f": [], "g": float("nan")})
    assert values == {"a": [1.0], "b.c": [2.5], "e": [1.0, 2.0]}
    assert skipped == ["b.d", "f", "g"]
    assert flatten_params({"a": {"b": None}, "c": "s"}) == {"a.b": "null", "c": "s"}
