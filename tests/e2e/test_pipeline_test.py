"""``mlprov deploy`` and ``mlprov pipeline test`` against ``make up``'s stack, and the GitLab CI template's
end-to-end job (gitlab-ci-local, shell executor) running ``mlprov pipeline test demo_lifecycle`` on it.

One DAG run in all (a few minutes on 2 cores): the deploy records the repository's DAGs and services in
place (the stack's Airflow reads the repository's ``dags/``), the CI job triggers ``demo_lifecycle`` and
checks every task, every output's provenance chain, the MLflow runs and the log search; its JUnit report
is read back. The failure cases (a DAG Airflow does not have, an unreachable controller) cost seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from controller.stack import Stack

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GCL = REPO / "gitlab-ci" / "tools" / "node_modules" / ".bin" / "gitlab-ci-local"
RUN_TIMEOUT = 480

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]


def _env(stack: Stack, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
            "MLPROV_HOME": str(stack.config.home),
            "MLPROV_TOKEN": (stack.config.home / "admin-token").read_text().strip(),
            "NO_COLOR": "1",
        }
    )
    for name in ("AIRFLOW_URL", "AIRFLOW_TOKEN", "MLPROV_CONTROLLER_URL", "CI_COMMIT_SHA"):
        env.pop(name, None)
    env.update(extra)
    return env


def _mlprov(stack: Stack, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mlprov"), *args], cwd=REPO, env=_env(stack, **extra), capture_output=True, text=True,
        timeout=RUN_TIMEOUT + 120, check=False,
    )  # fmt: skip


def _ci_project(root: Path) -> Path:
    """A checkout holding the CI templates and a pipeline running only mlprov-e2e."""
    root.mkdir()
    shutil.copytree(REPO / "gitlab-ci", root / "gitlab-ci", ignore=shutil.ignore_patterns("tools"))
    (root / ".gitlab-ci.yml").write_text("include:\n  - local: gitlab-ci/mlprov.yml\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."], ["git", "commit", "-q", "-m", "ci"]):
        subprocess.run(argv, cwd=root, env=env, check=True, capture_output=True, timeout=60)
    return root


def test_bad_targets_fail_fast_with_one_line(stack: Stack, tmp_path: Path) -> None:
    missing = _mlprov(stack, "pipeline", "test", "no_such_dag", "--no-deploy", "--timeout", "3")
    assert missing.returncode == 4, missing.stdout + missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: check 'dag loaded' failed: Airflow has no DAG")
    down = _mlprov(stack, "pipeline", "test", "demo_lifecycle", "--no-deploy", "--controller-url", "http://127.0.0.1:9")
    assert down.returncode == 5
    assert "error: check 'reachable' failed: the controller at http://127.0.0.1:9 is unreachable" in down.stderr


@pytest.mark.skipif(not GCL.exists(), reason="gitlab-ci-local not installed: `make install` (needs npm)")
@pytest.mark.skipif(shutil.which("rsync") is None, reason="gitlab-ci-local needs Debian's rsync")
def test_deploy_then_the_ci_end_to_end_job_passes(stack: Stack, tmp_path: Path) -> None:
    controller = stack.config.url("controller")
    deployed = _mlprov(
        stack, "deploy", "--controller", controller, "--dags", "dags", "--plugins", "plugins",
        "--services", "services.yaml", "--pipeline", "mlprov", "--environment", "e2e",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "recorded (sequence 1," in deployed.stdout

    project = _ci_project(tmp_path / "ci")
    variables = {
        "MLPROV_CLI": str(BIN / "mlprov"),
        "MLPROV_HOME": str(stack.config.home),
        "MLPROV_E2E_DAG_ID": "demo_lifecycle",
        "MLPROV_E2E_TIMEOUT": str(RUN_TIMEOUT),
    }
    argv = [str(GCL), "--shell-executor-no-image", "--no-color", "mlprov-e2e"]
    for name, value in variables.items():
        argv += ["--variable", f"{name}={value}"]
    done = subprocess.run(
        argv, cwd=project, env=_env(stack), capture_output=True, text=True, timeout=RUN_TIMEOUT + 180, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "PASS" in output
    assert "mlprov-e2e" in output
    reports = list(project.glob(".gitlab-ci-local/**/mlprov-e2e.xml"))
    assert reports, f"no JUnit report under {project / '.gitlab-ci-local'}"
    suite = ET.fromstring(reports[0].read_bytes()).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == [
        "reachable", "deploy", "dag loaded", "dag run", "tasks succeeded", "provenance verified", "mlflow runs",
        "logs searchable",
    ]  # fmt: skip
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "1"), output[-4000:]
    assert cases["deploy"].find("skipped") is not None  # --no-deploy: mlprov deploy ran first
    out = cases["provenance verified"].find("system-out")
    assert out is not None
    assert out.text is not None
    assert "model" in out.text
    assert "MLflow has the parent run" in output
