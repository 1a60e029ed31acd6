"""The GitLab CI templates run by gitlab-ci-local 4.56.0 (``make install`` puts it in gitlab-ci/tools).

A small project (a DAG, a plugin, services.yaml, one unit test) includes ``gitlab-ci/mlprov.yml`` and runs
lint, import test, unit test and deploy in the shell (``--shell-executor-no-image``) against the real
controller and a local Airflow folder. Broken inputs fail the right job with one ``error:`` line and
deploy nothing. The image-building jobs (``image:`` based: Kaniko, Buildah) are schema-validated only.
The end-to-end job against the ``make up`` stack is in tests/e2e/test_pipeline_test.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.controller.ingest_support import ADMIN, App, running_app

REPO = Path(__file__).resolve().parents[2]
GCL = REPO / "gitlab-ci" / "tools" / "node_modules" / ".bin" / "gitlab-ci-local"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not GCL.exists(), reason="gitlab-ci-local not installed: `make install` (needs npm)"),
    pytest.mark.skipif(shutil.which("rsync") is None, reason="gitlab-ci-local needs Debian's rsync"),
]

DAG = '''\
"""A DAG for the CI template test."""

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="ci_demo", schedule=None, catchup=False):
    EmptyOperator(task_id="only")
'''
SERVICES = "services:\n  - name: ci-prep\n    command: [python, -c, \"print('prep')\"]\n"
PIPELINE = """\
include:
  - local: gitlab-ci/mlprov.yml
variables:
  MLPROV_UNIT_TEST_ARGS: "-q -p no:cacheprovider tests/unit"
  MLPROV_DEPLOY_ARGS: ""
"""
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, timeout=60)


def _project(root: Path) -> Path:
    (root / "dags").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "tests" / "unit").mkdir(parents=True)
    (root / "dags" / "ci_demo.py").write_text(DAG)
    (root / "plugins" / "ci_helpers.py").write_text('"""A plugin module."""\n\nVALUE = 1\n')
    (root / "tests" / "unit" / "test_ok.py").write_text("def test_ok() -> None:\n    assert 1 + 1 == 2\n")
    (root / "services.yaml").write_text(SERVICES)
    (root / ".gitlab-ci.yml").write_text(PIPELINE)
    shutil.copytree(REPO / "gitlab-ci", root / "gitlab-ci", ignore=shutil.ignore_patterns("tools"))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "project")
    return root


def gitlab_ci_local(
    root: Path, *args: str, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(GCL), "--shell-executor-no-image", "--no-color", "--max-job-name-padding", "0"]
    base = {"MLPROV_CLI": str(BIN / "mlprov"), "MLPROV_PYTHON": sys.executable, "MLPROV_RUFF": str(BIN / "ruff")}
    for name, value in {**base, **(variables or {})}.items():
        argv += ["--variable", f"{name}={value}"]
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "FORCE_COLOR": "0"}
    return subprocess.run([*argv, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)


def error_lines(output: str, needle: str) -> list[str]:
    """The distinct ``error:`` lines holding ``needle`` (gitlab-ci-local repeats a failed job's last lines
    in its summary)."""
    found = {line.split("error:", 1)[1].strip() for line in output.splitlines() if "error:" in line and needle in line}
    return sorted(found)


def _job_failed(output: str, job: str) -> bool:
    return re.search(rf"FAIL\s+{re.escape(job)}\b", output) is not None


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return _project(tmp_path / "project")


@pytest.fixture
def controller(mlprov_home: Path) -> Iterator[App]:
    with running_app(mlprov_home) as running:
        yield running


def _deploy_vars(controller: App, dest: Path) -> dict[str, str]:
    return {"MLPROV_CONTROLLER_URL": controller.url, "MLPROV_TOKEN": ADMIN, "MLPROV_DEPLOY_TO": str(dest)}


def test_lint_import_unit_and_deploy_pass(project: Path, controller: App, tmp_path: Path) -> None:
    dest = tmp_path / "airflow" / "current"
    dest.parent.mkdir()
    done = gitlab_ci_local(
        project, "mlprov-lint", "mlprov-import-test", "mlprov-unit-test", "mlprov-deploy",
        variables=_deploy_vars(controller, dest),
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for job in ("mlprov-lint", "mlprov-import-test", "mlprov-unit-test", "mlprov-deploy"):
        assert re.search(rf"PASS\s+{job}\b", output), f"{job} did not pass:\n{output[-4000:]}"
    assert "ok   ci_demo.py: ci_demo" in output
    assert "1 passed" in output
    assert (dest / "dags" / "ci_demo.py").read_text() == DAG
    deployments = controller.client.get("/api/v1/deployments", headers=controller.admin()).json()["deployments"]
    assert len(deployments) == 1
    assert deployments[0]["services"] == ["ci-prep"]
    assert deployments[0]["ci"]["provider"] == "gitlab"  # gitlab-ci-local sets GitLab's CI_* variables
    names = [s["name"] for s in controller.client.get("/api/v1/services", headers=controller.admin()).json()]
    assert names == ["ci-prep"]


def test_a_broken_dag_fails_the_import_test_and_the_deploy(project: Path, controller: App, tmp_path: Path) -> None:
    (project / "dags" / "broken.py").write_text('"""Broken."""\n\nfrom airflow.sdk import DAG\n\nimport no_such_mod\n')
    _git(project, "add", ".")
    _git(project, "commit", "-q", "-m", "broken")
    dest = tmp_path / "current"
    done = gitlab_ci_local(project, "mlprov-import-test", variables=_deploy_vars(controller, dest))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert _job_failed(output, "mlprov-import-test"), output[-3000:]
    errors = error_lines(output, "DAG file")
    assert len(errors) == 1
    assert "broken.py does not import" in errors[0]
    assert "no_such_mod" in errors[0]
    done = gitlab_ci_local(project, "mlprov-deploy", variables=_deploy_vars(controller, dest))
    assert done.returncode != 0
    assert _job_failed(done.stdout + done.stderr, "mlprov-deploy")
    assert not dest.exists()
    assert controller.client.get("/api/v1/services", headers=controller.admin()).json() == []


def test_a_refused_service_fails_the_deploy_and_deploys_nothing(project: Path, controller: App, tmp_path: Path) -> None:
    (project / "services.yaml").write_text(SERVICES + "  - {name: web, kind: server, command: [serve]}\n")
    _git(project, "commit", "-q", "-am", "bad service")
    dest = tmp_path / "current"
    done = gitlab_ci_local(project, "mlprov-deploy", variables=_deploy_vars(controller, dest))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert _job_failed(output, "mlprov-deploy"), output[-3000:]
    errors = error_lines(output, "refused by the controller")
    assert len(errors) == 1, output[-3000:]
    assert "entry 1 ('web')" in errors[0]
    assert not dest.exists()
    assert controller.client.get("/api/v1/services", headers=controller.admin()).json() == []


def test_an_unreachable_controller_fails_the_deploy(project: Path, tmp_path: Path) -> None:
    dest = tmp_path / "current"
    variables = {"MLPROV_CONTROLLER_URL": "http://127.0.0.1:9", "MLPROV_TOKEN": "x", "MLPROV_DEPLOY_TO": str(dest)}
    done = gitlab_ci_local(project, "mlprov-deploy", variables=variables)
    output = done.stdout + done.stderr
    assert _job_failed(output, "mlprov-deploy"), output[-3000:]
    assert error_lines(output, "unreachable")[0].startswith("the controller at http://127.0.0.1:9 is unreachable")
    assert not dest.exists()


def _root_copy(tmp_path: Path) -> Path:
    root = tmp_path / "mlprov"
    root.mkdir()
    shutil.copy(REPO / ".gitlab-ci.yml", root / ".gitlab-ci.yml")
    shutil.copytree(REPO / "gitlab-ci", root / "gitlab-ci", ignore=shutil.ignore_patterns("tools"))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "ci")
    return root


def test_the_repository_pipeline_and_image_jobs_validate(tmp_path: Path) -> None:
    root = _root_copy(tmp_path)
    listed = gitlab_ci_local(root, "--list-all")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "json schema validated" in listed.stdout + listed.stderr
    for job in ("mlprov-lint", "mlprov-import-test", "mlprov-unit-test", "mlprov-deploy", "mlprov-e2e"):
        assert job in listed.stdout
    for image in ("controller", "sidecar", "stage"):
        assert f"mlprov-build-kaniko: [{image}]" in listed.stdout
    buildah = gitlab_ci_local(root, "--list", variables={"MLPROV_IMAGE_BUILDER": "buildah"})
    assert "mlprov-build-buildah: [stage]" in buildah.stdout
    assert "mlprov-build-kaniko" not in buildah.stdout
    # the schema check is real: an unknown job keyword is refused before anything runs
    (root / ".gitlab-ci.yml").write_text((root / ".gitlab-ci.yml").read_text() + "\nmlprov-lint:\n  scirpt: [x]\n")
    _git(root, "commit", "-q", "-am", "typo")
    refused = gitlab_ci_local(root, "--list")
    assert refused.returncode != 0
    assert "scirpt" in refused.stdout + refused.stderr
