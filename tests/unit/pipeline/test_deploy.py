"""``mlprov deploy`` against the real controller app: all or nothing.

A refused services.yaml entry, a DAG that does not import, a DAG doing I/O at parse time, a record the
controller refuses and an unreachable controller each leave the target, the catalog and the deployment
history exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controller.cli import cli
from controller.pipeline.controller_client import ControllerClient
from controller.pipeline.dagcheck import DagCheckReport, DagFileReport, check_dags
from controller.pipeline.deploy import DeployOptions, deploy
from controller.pipeline.errors import BadInputError, PipelineError, UnreachableError
from controller.pipeline.targets import GitBranchPublisher, LocalFolderPublisher
from tests.unit.controller.ingest_support import ADMIN, App
from tests.unit.pipeline.conftest import git, make_project


def _options(project: Path, **over: Any) -> DeployOptions:
    values: dict[str, Any] = {
        "dags": project / "dags",
        "plugins": project / "plugins",
        "services": project / "services.yaml",
        "pipeline": "ci-demo",
        "environment": "test",
    }
    values.update(over)
    return DeployOptions(**values)


def _fake_checker(dags: Path, plugins: Path | None) -> DagCheckReport:
    """Stands in for the Airflow import test where a test is not about it (each real one takes ~2 s)."""
    files = [DagFileReport(p.name, [p.stem]) for p in sorted(dags.glob("*.py"))]
    return DagCheckReport(files, 0.0)


def _state(app: App, dest: Path) -> dict[str, Any]:
    """What a deploy may change: the catalog, the deployment history and the target."""
    h = app.admin()
    services = {s["name"]: s for s in app.client.get("/api/v1/services", headers=h).json()}
    deployments = app.client.get("/api/v1/deployments", headers=h).json()
    link = os.readlink(dest) if dest.is_symlink() else None
    releases = sorted(p.name for p in dest.parent.glob(f"{dest.name}.releases/*"))
    return {"services": services, "deployments": deployments, "link": link, "releases": releases}


def test_deploy_to_a_folder_registers_switches_and_records(controller_app: App, project: Path, tmp_path: Path) -> None:
    dest = tmp_path / "airflow" / "current"
    dest.parent.mkdir()
    with ControllerClient(controller_app.url, ADMIN) as controller:
        result = deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=check_dags)
    assert (dest / "dags" / "ci_demo.py").read_text() == (project / "dags" / "ci_demo.py").read_text()
    assert (dest / "plugins" / "ci_helpers.py").is_file()
    assert (dest / "services.yaml").is_file()
    record = controller_app.client.get(
        f"/api/v1/deployments/{result.deployment['id']}", headers=controller_app.admin()
    ).json()
    assert record["commit"] == git("rev-parse", "HEAD", cwd=project)
    files = {f["path"]: f for f in record["files"]}
    assert files["dags/ci_demo.py"]["dag_ids"] == ["ci_demo"]
    assert files["dags/ci_demo.py"]["role"] == "dag"
    assert files["plugins/ci_helpers.py"]["role"] == "plugin"
    assert files["services.yaml"]["role"] == "services"
    assert record["services"] == ["prep", "train"]
    services = {s["name"] for s in controller_app.client.get("/api/v1/services", headers=controller_app.admin()).json()}
    assert services == {"prep", "train"}
    assert result.deployment["sequence"] == 1

    # a second deploy with one change: PUT for it, a new release, the link switched, chained record
    (project / "services.yaml").write_text((project / "services.yaml").read_text().replace("epochs: 3", "epochs: 4"))
    with ControllerClient(controller_app.url, ADMIN) as controller:
        again = deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    assert {s["name"]: s["action"] for s in again.services} == {"prep": "unchanged", "train": "update"}
    assert again.deployment["previous_id"] == result.deployment["id"]
    assert "epochs: 4" in (dest / "services.yaml").read_text()
    assert len(list((tmp_path / "airflow" / "current.releases").iterdir())) == 2


def test_gitlab_variables_fill_the_ci_context(controller_app: App, project: Path, tmp_path: Path) -> None:
    env = {
        "GITLAB_CI": "true",
        "CI_COMMIT_SHA": "b" * 40,
        "CI_COMMIT_REF_NAME": "feature",
        "CI_PIPELINE_ID": "77",
        "CI_JOB_ID": "991",
        "CI_PROJECT_PATH": "ml/project",
        "CI_PIPELINE_URL": "https://gitlab.example/ml/project/-/pipelines/77",
        "GITLAB_USER_LOGIN": "alice",
    }
    with ControllerClient(controller_app.url, ADMIN) as controller:
        result = deploy(_options(project), controller, None, env=env, dag_checker=_fake_checker)
    record = controller_app.client.get(
        f"/api/v1/deployments/{result.deployment['id']}", headers=controller_app.admin()
    ).json()
    assert (record["commit"], record["ref"]) == ("b" * 40, "feature")
    assert record["ci"] == {
        "provider": "gitlab",
        "pipeline_id": "77",
        "job_id": "991",
        "project": "ml/project",
        "pipeline_url": "https://gitlab.example/ml/project/-/pipelines/77",
        "triggered_by": "alice",
    }
    assert record["target"]["kind"] == "in-place"


def test_a_refused_services_entry_changes_nothing(controller_app: App, project: Path, tmp_path: Path) -> None:
    dest = tmp_path / "current"
    (project / "services.yaml").write_text(
        "services:\n  - {name: prep, command: [python]}\n  - {name: web, kind: server, command: [serve]}\n"
    )
    before = _state(controller_app, dest)
    with ControllerClient(controller_app.url, ADMIN) as controller, pytest.raises(BadInputError) as caught:
        deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    message = str(caught.value)
    assert "entry 1 ('web') refused by the controller" in message
    assert "port and health_path" in message
    assert "\n" not in message
    assert _state(controller_app, dest) == before
    assert not dest.exists()


def test_a_dag_that_does_not_import_changes_nothing(controller_app: App, project: Path, tmp_path: Path) -> None:
    dest = tmp_path / "current"
    (project / "dags" / "broken.py").write_text("from airflow.sdk import DAG\nimport not_a_module_anywhere\n")
    before = _state(controller_app, dest)
    with ControllerClient(controller_app.url, ADMIN) as controller, pytest.raises(BadInputError) as caught:
        deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=check_dags)
    assert str(caught.value).startswith("DAG file broken.py does not import: ")
    assert "not_a_module_anywhere" in str(caught.value)
    assert _state(controller_app, dest) == before


def test_the_import_test_refuses_parse_time_io(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (tmp_path / "data.txt").write_text("x")
    (dags / "reads.py").write_text(
        "from airflow.sdk import DAG\n"
        f"ROWS = open({str(tmp_path / 'data.txt')!r}).read()\n"
        'with DAG(dag_id="reads", schedule=None):\n    pass\n'
    )
    report = check_dags(dags)
    assert [(f.path, f.dag_ids) for f in report.files] == [("reads.py", ["reads"])]
    assert not report.ok
    problem = report.first_problem()
    assert problem is not None
    assert problem.startswith("DAG file reads.py does I/O at parse time (open ")


def test_a_refused_record_rolls_back_the_switch_and_the_services(
    controller_app: App, project: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "current"
    with ControllerClient(controller_app.url, ADMIN) as controller:
        deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    before = _state(controller_app, dest)
    (project / "services.yaml").write_text(
        "services:\n  - {name: prep, command: [python, changed]}\n  - {name: extra, command: [x]}\n"
    )
    (project / "dags" / "ci_demo.py").write_text("# changed\n" + (project / "dags" / "ci_demo.py").read_text())
    with ControllerClient(controller_app.url, ADMIN) as controller, pytest.raises(PipelineError) as caught:
        # the controller's record check refuses a short commit: after files and services were switched
        deploy(
            _options(project, commit="abc123"), controller, LocalFolderPublisher(dest), env={},
            dag_checker=_fake_checker,
        )  # fmt: skip
    assert "recording the deployment (422)" in str(caught.value)
    assert "rolled back" in str(caught.value)
    assert _state(controller_app, dest) == before
    assert not (dest / "dags" / "ci_demo.py").read_text().startswith("# changed")


class _FailingSecondWrite(ControllerClient):
    """The controller refuses the second service write (as when another client changed the catalog)."""

    writes = 0

    def _count(self) -> None:
        self.writes += 1
        if self.writes == 2:
            raise PipelineError("the controller refused registering service 'new' (409): exists")

    def create_service(self, spec: dict[str, Any]) -> None:
        self._count()
        super().create_service(spec)

    def replace_service(self, spec: dict[str, Any]) -> None:
        self._count()
        super().replace_service(spec)


def test_a_service_refused_midway_restores_the_previous_specs(
    controller_app: App, project: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "current"
    with ControllerClient(controller_app.url, ADMIN) as controller:
        deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    before = _state(controller_app, dest)
    (project / "services.yaml").write_text(
        "services:\n  - {name: train, command: [python, v2]}\n  - {name: new, command: [x]}\n"
    )
    with _FailingSecondWrite(controller_app.url, ADMIN) as controller, pytest.raises(PipelineError):
        deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    assert _state(controller_app, dest) == before


def test_an_unreachable_controller_is_exit_5_before_anything(project: Path, tmp_path: Path) -> None:
    dest = tmp_path / "current"
    with ControllerClient("http://127.0.0.1:9", ADMIN) as controller, pytest.raises(UnreachableError) as caught:
        deploy(_options(project), controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    assert caught.value.exit_code == 5
    assert "unreachable" in str(caught.value)
    assert not dest.exists()
    assert not (tmp_path / "current.releases").exists()


def test_git_branch_target_pushes_and_rolls_back(controller_app: App, project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "dags-remote.git"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)
    target = GitBranchPublisher(str(remote), "airflow-dags")
    with ControllerClient(controller_app.url, ADMIN) as controller:
        deploy(_options(project), controller, target, env={}, dag_checker=_fake_checker)
    first = git("rev-parse", "airflow-dags", cwd=remote)
    listed = git("ls-tree", "-r", "--name-only", "airflow-dags", cwd=remote).splitlines()
    assert listed == ["dags/ci_demo.py", "plugins/ci_helpers.py", "services.yaml"]
    (project / "dags" / "ci_demo.py").write_text("# v2\n" + (project / "dags" / "ci_demo.py").read_text())
    with ControllerClient(controller_app.url, ADMIN) as controller, pytest.raises(PipelineError):
        deploy(
            _options(project, commit="short"), controller, GitBranchPublisher(str(remote), "airflow-dags"), env={},
            dag_checker=_fake_checker,
        )  # fmt: skip
    assert git("rev-parse", "airflow-dags", cwd=remote) == first


def test_cli_prints_one_line_and_exit_2_for_a_broken_dag(
    controller_app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p2")
    (project / "dags" / "broken.py").write_text("from airflow.sdk import DAG\nraise RuntimeError('boom at parse')\n")
    monkeypatch.chdir(project)
    result = CliRunner().invoke(
        cli,
        ["deploy", "--controller", controller_app.url, "--dags", "dags", "--plugins", "plugins", "--services",
         "services.yaml", "--to", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert lines[0].startswith("error: DAG file broken.py does not import:")
    assert "boom at parse" in lines[0]
    assert not (tmp_path / "out").exists()
    assert (
        json.loads(controller_app.client.get("/api/v1/deployments", headers=controller_app.admin()).text)["deployments"]
        == []
    )


def test_images_are_pinned_from_the_build_jobs_dotenv(controller_app: App, project: Path, tmp_path: Path) -> None:
    digest = "sha256:" + "c" * 64
    (project / "services.yaml").write_text("services:\n  - {name: train, image: '${MLPROV_STAGE_IMAGE}'}\n")
    images = tmp_path / "images.env"
    images.write_text(f"# from the build jobs\nMLPROV_STAGE_IMAGE=registry.example/ml/stage@{digest}\n")
    dest = tmp_path / "current"
    options = _options(project, images=images, require_pinned_images=True)
    with ControllerClient(controller_app.url, ADMIN) as controller:
        result = deploy(options, controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    spec = controller_app.client.get("/api/v1/services/train", headers=controller_app.admin()).json()
    assert spec["image"] == f"registry.example/ml/stage@{digest}"
    assert f"registry.example/ml/stage@{digest}" in (dest / "services.yaml").read_text()
    assert (dest / "images.env").read_text() == images.read_text()
    recorded = {f.path: f.digest for f in result.files}
    deployed = hashlib.sha256((dest / "services.yaml").read_bytes()).hexdigest()
    assert recorded["services.yaml"] == f"sha256:{deployed}"  # the record names what Airflow reads
    assert "images.env" in recorded

    (project / "services.yaml").write_text("services:\n  - {name: train, image: 'registry.example/ml/stage:latest'}\n")
    with ControllerClient(controller_app.url, ADMIN) as controller, pytest.raises(BadInputError) as caught:
        deploy(options, controller, LocalFolderPublisher(dest), env={}, dag_checker=_fake_checker)
    assert "image 'registry.example/ml/stage:latest' is not pinned by digest" in str(caught.value)
