"""The ``s3://`` deploy target against a real S3 HTTP server (moto's), through the minio client: files under
a versioned release prefix, ``CURRENT`` switched last, and both undone when the record is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.pipeline.controller_client import ControllerClient
from controller.pipeline.dagcheck import DagCheckReport, DagFileReport
from controller.pipeline.deploy import DeployOptions, deploy
from controller.pipeline.errors import PipelineError
from controller.pipeline.targets import S3Publisher, publisher_for
from tests.unit.controller.ingest_support import ADMIN, App

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def _checker(dags: Path, plugins: Path | None) -> DagCheckReport:
    return DagCheckReport([DagFileReport(p.name, [p.stem]) for p in sorted(dags.glob("*.py"))], 0.0)


def _objects(client: object, bucket: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for obj in client.list_objects(bucket, recursive=True):  # type: ignore[attr-defined]  # minio untyped
        answer = client.get_object(bucket, obj.object_name)  # type: ignore[attr-defined]
        found[obj.object_name] = answer.read()
        answer.close()
        answer.release_conn()
    return found


def test_s3_release_then_pointer_and_rollback(
    s3_endpoint: str, controller_app: App, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLPROV_DEPLOY_S3_ENDPOINT", f"http://{s3_endpoint}")
    monkeypatch.setenv("MLPROV_DEPLOY_S3_ACCESS_KEY", "testing")
    monkeypatch.setenv("MLPROV_DEPLOY_S3_SECRET_KEY", "testing")
    first = publisher_for("s3://airflow-dags/prod")
    assert isinstance(first, S3Publisher)
    first.client.make_bucket("airflow-dags")
    options = DeployOptions(dags=project / "dags", plugins=project / "plugins", services=project / "services.yaml")
    with ControllerClient(controller_app.url, ADMIN) as controller:
        result = deploy(options, controller, first, env={}, dag_checker=_checker)
    objects = _objects(first.client, "airflow-dags")
    pointer = json.loads(objects["prod/CURRENT"])
    release = result.target["release"]
    assert pointer == {"release": release, "prefix": f"prod/releases/{release}"}
    assert objects[f"prod/releases/{release}/dags/ci_demo.py"] == (project / "dags" / "ci_demo.py").read_bytes()
    assert f"prod/releases/{release}/services.yaml" in objects
    before = objects

    (project / "dags" / "ci_demo.py").write_text("# v2\n" + (project / "dags" / "ci_demo.py").read_text())
    second = publisher_for("s3://airflow-dags/prod")
    with ControllerClient(controller_app.url, ADMIN) as controller, pytest.raises(PipelineError):
        deploy(
            DeployOptions(dags=options.dags, plugins=options.plugins, services=options.services, commit="bad"),
            controller, second, env={}, dag_checker=_checker,
        )  # fmt: skip
    assert _objects(first.client, "airflow-dags") == before
