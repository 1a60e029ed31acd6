"""Every file in ``dags/`` parses in Airflow's DagBag without errors, quickly and without I/O.

For ``demo_lifecycle`` also: the task ids and their order, each task's registered service (those of
the repository's ``services.yaml``), and what its templates render to at run time: digests picked by
name from the upstream's XCom ``outputs``, numbers as numbers (native rendering), the code ref.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

if "AIRFLOW_HOME" not in os.environ:  # Airflow reads its home once, at import: set it before
    _AIRFLOW_HOME = tempfile.mkdtemp(prefix="mlprov-airflow-")
    atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
    os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

# isort: split
from airflow.dag_processing.dagbag import DagBag

from controller.catalog import load_services_file
from plugins.operators import ControllerTaskOperator

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
DAG_FILES = sorted(p.name for p in DAGS.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert DAG_FILES, "dags/ holds DAG files"
    assert sorted(stat.file.lstrip("/") for stat in dagbag.dagbag_stats) == DAG_FILES
    assert all(stat.dag_num >= 1 for stat in dagbag.dagbag_stats)
    assert all(stat.warning_num == 0 for stat in dagbag.dagbag_stats)


def test_parsing_is_fast(dagbag: DagBag) -> None:
    slow = {s.file: s.duration.total_seconds() for s in dagbag.dagbag_stats if s.duration.total_seconds() >= 0.5}
    assert slow == {}


def test_demo_lifecycle_structure(dagbag: DagBag) -> None:
    dag = dagbag.dags["demo_lifecycle"]
    assert dag is not None
    order = ["ingest", "preprocess", "pretrain", "finetune", "evaluate"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in itertools.pairwise(order):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("ingest").upstream_task_ids == set()
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: triggered, never scheduled
    registered = {spec.name: spec for spec in load_services_file(ROOT / "services.yaml")}
    for task in dag.tasks:
        assert isinstance(task, ControllerTaskOperator)
        assert registered[task.service].kind.value == "job"
        # every parameter the DAG passes is one the service (and so the stage) takes
        assert set(task.service_params) <= set(registered[task.service].params)
    params = dag.params.dump()
    assert params["source"] == "builtin://synthetic"
    assert params["code_repo"] == str(ROOT)
    assert params["code_ref"] == "HEAD"


def _outputs(task_id: str, names: list[str]) -> list[dict[str, Any]]:
    return [
        {"name": name, "digest": f"sha256:{task_id}-{name}", "size": 1, "kind": "dataset", "manifest_id": None}
        for name in [*names, "metrics.json"]
    ]


UPSTREAM = {
    "ingest": _outputs("ingest", ["raw.csv"]),
    "preprocess": _outputs("preprocess", ["normalizer.json", "train.parquet", "val.parquet"]),
    "pretrain": _outputs("pretrain", ["base_model"]),
    "finetune": _outputs("finetune", ["model"]),
}


def _render(dag: Any, task_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    task = dag.get_task(task_id)
    pulls: list[tuple[str, str]] = []

    def xcom_pull(task_ids: str, key: str) -> list[dict[str, Any]]:
        pulls.append((task_ids, key))
        return UPSTREAM[task_ids]

    params = {**dag.params.dump(), **conf}
    context = {"ti": SimpleNamespace(xcom_pull=xcom_pull), "params": params}
    rendered = {
        field: task.render_template(getattr(task, field), context) for field in ("service_params", "inputs", "code")
    }
    assert all(key == "outputs" for _, key in pulls)
    return rendered


@pytest.mark.parametrize(
    ("task_id", "inputs"),
    [
        ("ingest", None),
        ("preprocess", ["sha256:ingest-raw.csv"]),
        ("pretrain", ["sha256:preprocess-train.parquet"]),
        ("finetune", ["sha256:pretrain-base_model", "sha256:preprocess-train.parquet"]),
        ("evaluate", ["sha256:pretrain-base_model", "sha256:finetune-model", "sha256:preprocess-val.parquet"]),
    ],
)
def test_inputs_are_the_upstream_digests_by_name(dagbag: DagBag, task_id: str, inputs: list[str] | None) -> None:
    rendered = _render(dagbag.dags["demo_lifecycle"], task_id, {})
    assert rendered["inputs"] == inputs
    assert rendered["code"] == {"repo": str(ROOT), "ref": "HEAD"}


def test_params_render_as_native_values(dagbag: DagBag) -> None:
    dag = dagbag.dags["demo_lifecycle"]
    conf = {"seed": 7, "epochs": 3, "learning_rate": 0.02, "source": "file:///data/x.csv"}
    finetune = _render(dag, "finetune", conf)["service_params"]
    assert finetune == {"seed": 7, "epochs": 3, "learning_rate": 0.02, "batch_size": 64}
    ingest = _render(dag, "ingest", conf)["service_params"]
    assert ingest["source"] == "file:///data/x.csv"
    assert ingest["rows"] == 2000
    assert ingest["sha256"] in (None, "")  # the stage reads both as "no digest to check"


@pytest.fixture
def audit() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Records file opens, directory listings, sockets and sub-processes while ``recording`` is on."""
    events: list[tuple[str, tuple[Any, ...]]] = []
    state = {"on": True}
    watched = ("open", "os.listdir", "os.scandir", "socket.connect", "socket.getaddrinfo", "subprocess.Popen")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if state["on"] and event in watched:
            events.append((event, args))

    sys.addaudithook(hook)  # hooks cannot be removed; this one goes quiet after the test
    try:
        yield events
    finally:
        state["on"] = False


@pytest.mark.parametrize("name", DAG_FILES)
def test_parsing_does_no_io(name: str, audit: list[tuple[str, tuple[Any, ...]]]) -> None:
    # What the DAG file imports is loaded first (as the dag processor has it loaded); then only
    # executing the file itself is watched.
    import airflow.sdk  # noqa: F401

    import plugins.operators  # noqa: F401

    path = DAGS / name
    spec = importlib.util.spec_from_file_location(f"_dag_probe_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    code = spec.loader.get_code(module.__name__)  # type: ignore[attr-defined]  # SourceFileLoader has it
    audit.clear()
    started = time.perf_counter()
    exec(code, module.__dict__)  # noqa: S102 - executing the DAG file is the point of this test
    seconds = time.perf_counter() - started
    offending = [(event, args) for event, args in audit if not (event == "open" and str(args[0]) == str(path))]
    assert offending == []
    assert seconds < 0.5
