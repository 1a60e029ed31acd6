"""``write_task_file`` writes task.json as docs/sidecar-protocol.md section 1 says, and the sidecar reads it."""

from __future__ import annotations

import json
from pathlib import Path

from controller.services.taskfile import write_task_file
from controller.store.db import make_engine, make_session_factory, migrate, session_scope
from controller.store.models import Artifact, Manifest, Task, utcnow
from provenance.sidecar.taskinfo import load_task_info


def test_task_file_carries_the_latest_manifest_of_each_input(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    factory = make_session_factory(engine)
    signed, unsigned = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    with session_scope(factory) as session:
        session.add_all(
            [Artifact(digest=signed, kind="dataset", size=1), Artifact(digest=unsigned, kind="model", size=2)]
        )
        session.flush()
        for i, mid in enumerate(["urn:c2pa:old", "urn:c2pa:new"]):
            created = utcnow().replace(microsecond=i)
            session.add(
                Manifest(id=mid, artifact_digest=signed, manifest={}, manifest_hash=f"h{i}", created_at=created)
            )
        session.add(
            Task(
                id="t-1",
                service="finetune",
                params={"epochs": 3},
                dag_id="demo",
                run_id="manual__1",
                airflow_task_id="finetune",
                try_number=2,
            )
        )
    workspace = tmp_path / "ws"
    with session_scope(factory) as session:
        task = session.get(Task, "t-1")
        assert task is not None
        path = write_task_file(
            workspace,
            task=task,
            inputs=[{"name": "train.parquet", "digest": signed}, {"name": "base", "digest": unsigned, "kind": "model"}],
            code={"repo": "/src", "ref": "main", "commit": "c" * 40, "path": "stages/finetune.py"},
            session=session,
            attempt=2,
            environment={"interpreter": "/usr/bin/python3"},
        )
    assert path == workspace / ".mlprov" / "task.json"
    content = json.loads(path.read_text())
    assert content["task_id"] == "t-1"
    assert content["attempt"] == 2
    assert content["service"] == "finetune"
    assert content["run"] == {"dag_id": "demo", "run_id": "manual__1", "task_id": "finetune", "try_number": 2}
    assert content["params"] == {"epochs": 3}
    assert content["inputs"] == [
        {
            "name": "train.parquet",
            "digest": signed,
            "path": "inputs/train.parquet",
            "kind": "dataset",
            "manifest_id": "urn:c2pa:new",
            "manifest_hash": "h1",
        },
        {
            "name": "base",
            "digest": unsigned,
            "path": "inputs/base",
            "kind": "model",
            "manifest_id": None,
            "manifest_hash": None,
        },
    ]
    info = load_task_info(workspace, expected_task_id="t-1")
    assert [i.manifest_id for i in info.linked_inputs()] == ["urn:c2pa:new"]
    assert info.code is not None
    assert info.code.commit == "c" * 40
    assert not list((workspace / ".mlprov").glob(".task.*"))  # no temporary file left
    engine.dispose()
