"""infra/docker: non-root, digest-pinned bases, the entrypoints the chart and the runtime expect.

The images are built in CI (no Docker engine here); these checks read the Dockerfiles and run the
stages image's entrypoint script on this interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "infra" / "docker"
IMAGES = ("controller", "sidecar", "stages")


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


@pytest.mark.parametrize("name", IMAGES)
def test_base_is_pinned_by_digest(name: str) -> None:
    steps = _instructions(name)
    (arg,) = [rest for word, rest in steps if word == "ARG" and rest.startswith("PYTHON_BASE=")]
    assert re.fullmatch(r"PYTHON_BASE=python:3\.11-[a-z-]+@sha256:[0-9a-f]{64}", arg)
    froms = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert froms
    assert all(f == "${PYTHON_BASE}" for f in froms)


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [rest for word, rest in _instructions(name) if word == "USER"]
    assert users[-1] == "65532:65532"  # numeric: the kubelet can check runAsNonRoot without /etc/passwd


@pytest.mark.parametrize("name", IMAGES)
def test_nothing_is_written_to_the_root_filesystem_at_run_time(name: str) -> None:
    env = " ".join(rest for word, rest in _instructions(name) if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env  # the chart mounts an emptyDir there
    assert any(word == "RUN" and "compileall" in rest for word, rest in _instructions(name))


def test_entrypoints_match_the_commands_the_chart_and_runtime_run() -> None:
    def entry(name: str) -> tuple[str, str]:
        steps = dict(_instructions(name))
        return steps.get("ENTRYPOINT", ""), steps.get("CMD", "")

    assert entry("controller") == ('["mlprov"]', '["serve", "--host", "0.0.0.0", "--port", "8080"]')
    assert entry("sidecar") == ('["mlprov"]', '["sidecar"]')  # settings.kubernetes_sidecar_command: mlprov sidecar
    assert entry("stages")[0] == '["python", "/opt/stages/run_stage.py"]'


def test_dockerignore_copies_are_identical() -> None:
    """BuildKit reads `<name>.Dockerfile.dockerignore`; they are copies of infra/docker/.dockerignore."""
    source = (DOCKER / ".dockerignore").read_text()
    assert "!stages/**" in source
    assert ".venv" in source
    for name in IMAGES:
        assert (DOCKER / f"{name}.Dockerfile.dockerignore").read_text() == source, name


def test_stages_image_installs_exactly_the_stage_dependencies_pinned_in_pyproject() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    picked = [d for d in deps if d.split("==")[0] in {"numpy", "pyarrow", "safetensors"}]
    assert len(picked) == 3  # the Dockerfile's `test ... -eq 3` fails the build otherwise
    assert all("==" in d for d in picked)


def _run_stage(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DOCKER / "run_stage.py"), *args],
        env={"STAGE_MODULE": module, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stage_entrypoint_runs_the_named_stage_module() -> None:
    done = _run_stage("stages.ingest", "--help")
    assert done.returncode == 0, done.stderr
    assert "python -m stages.ingest" in done.stdout


@pytest.mark.parametrize("module", ["", "os", "stages", "stages.ingest; rm -rf /", "stages.../x"])
def test_stage_entrypoint_refuses_anything_but_a_stage_module(module: str) -> None:
    done = _run_stage(module)
    assert done.returncode == 2
    assert "STAGE_MODULE must name a stage module" in done.stderr
