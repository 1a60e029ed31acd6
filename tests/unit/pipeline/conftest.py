"""Fixtures of the pipeline CI tests: a small project (DAGs, a plugin, services.yaml in a git checkout)
and the real controller app served on a loopback port (``tests.unit.controller.ingest_support``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.controller.ingest_support import ADMIN, App, running_app

GOOD_DAG = """\
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="{dag_id}", schedule=None, catchup=False):
    EmptyOperator(task_id="only")
"""

SERVICES = """\
services:
  - name: prep
    command: ["python", "-c", "print('prep')"]
  - name: train
    command: ["python", "-c", "print('train')"]
    params: {epochs: 3}
"""

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def make_project(root: Path, *, dag_ids: tuple[str, ...] = ("ci_demo",)) -> Path:
    """``root`` as a git checkout with ``dags/``, ``plugins/`` and ``services.yaml``; one commit."""
    (root / "dags").mkdir(parents=True)
    (root / "plugins").mkdir()
    for dag_id in dag_ids:
        (root / "dags" / f"{dag_id}.py").write_text(GOOD_DAG.format(dag_id=dag_id))
    (root / "plugins" / "ci_helpers.py").write_text("VALUE = 1\n")
    (root / "services.yaml").write_text(SERVICES)
    git("init", "-q", "-b", "main", cwd=root)
    git("add", ".", cwd=root)
    git("commit", "-q", "-m", "project", cwd=root)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def controller_app(mlprov_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("MLPROV_TOKEN", ADMIN)
    with running_app(mlprov_home) as running:
        yield running


PYTHON = sys.executable
