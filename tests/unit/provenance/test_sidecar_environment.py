"""Environment capture: this interpreter, another one (run with a timeout), the image digest, the cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from provenance.errors import InvalidInputError
from provenance.sidecar.environment import (
    ENVIRONMENT_ASSERTION_LABEL,
    EnvironmentCapture,
    capture_environment,
    packages_digest,
)

DIGEST = "sha256:" + "ab" * 32


def _fake_interpreter(
    tmp_path: Path, payload: Mapping[str, object], *, sleep: float = 0, counter: Path | None = None
) -> Path:
    script = tmp_path / "fake-python"
    lines = ["#!/bin/sh"]
    if counter is not None:
        lines.append(f"echo x >> '{counter}'")
    if sleep:
        lines.append(f"exec sleep {sleep}")  # exec: the timeout's kill reaches the sleeping process itself
    lines.append(f"echo '{json.dumps(payload)}'")
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


PAYLOAD = {
    "implementation": "cpython",
    "version": "3.10.4",
    "executable": "/opt/job/bin/python",
    "packages": {"Foo_Bar": "1.0", "abc": "2", "foo-bar": "9"},
}


def test_current_interpreter() -> None:
    env = capture_environment()
    assert env["interpreter"] == {
        "implementation": sys.implementation.name,
        "version": platform.python_version(),
        "executable": sys.executable,
    }
    assert env["platform"]["machine"] == platform.machine()
    assert env["packages"]["digest"].startswith("sha256:")
    assert len(env["packages"]["digest"]) == 71
    names = {d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}
    assert env["packages"]["count"] == len(names)
    assert "image" not in env


def test_the_same_venv_gives_the_same_digest_through_a_subprocess() -> None:
    here = capture_environment()
    there = capture_environment(sys.executable)
    assert there["interpreter"]["version"] == here["interpreter"]["version"]
    assert there["packages"] == here["packages"]


def test_another_interpreter_and_the_digest_lines(tmp_path: Path) -> None:
    env = capture_environment(_fake_interpreter(tmp_path, PAYLOAD), include_packages=True)
    assert env["interpreter"] == {"implementation": "cpython", "version": "3.10.4", "executable": "/opt/job/bin/python"}
    # Foo_Bar and foo-bar are one distribution (PEP 503); the first one found wins, as importlib does.
    expected = "abc==2\nfoo-bar==1.0\n"
    assert env["packages"]["digest"] == "sha256:" + hashlib.sha256(expected.encode()).hexdigest()
    assert env["packages"]["count"] == 2
    assert env["packages"]["list"] == ["abc==2", "foo-bar==1.0"]
    assert packages_digest({"b": "1", "A": "2"}) == packages_digest({"a": "2", "B": "1"})


def test_a_hanging_interpreter_times_out(tmp_path: Path) -> None:
    slow = _fake_interpreter(tmp_path, PAYLOAD, sleep=5)
    with pytest.raises(InvalidInputError, match=r"within 0\.3 s"):
        capture_environment(slow, timeout=0.3)


def test_a_missing_or_failing_interpreter_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        capture_environment(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: boom' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(InvalidInputError, match="boom"):
        capture_environment(broken)


def test_image_digest_on_kubernetes() -> None:
    env = capture_environment(image_digest=DIGEST)
    assert env["image"] == {"digest": DIGEST}
    assert "interpreter" not in env
    assert "packages" not in env
    both = capture_environment(sys.executable, image_digest=f"registry.local/stages/train@{DIGEST}")
    assert both["image"] == {"digest": DIGEST, "repository": "registry.local/stages/train"}
    assert "packages" in both
    with pytest.raises(InvalidInputError, match="image digest"):
        capture_environment(image_digest="train:latest")


def test_capture_is_cached_per_interpreter(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    fake = _fake_interpreter(tmp_path, PAYLOAD, counter=counter)
    cache = EnvironmentCapture()
    first = cache.get(fake)
    first["interpreter"]["version"] = "mutated by a caller"
    for _ in range(5):
        assert cache.get(fake)["interpreter"]["version"] == "3.10.4"
    assert counter.read_text().count("x") == 1
    assertion = cache.assertion(fake)
    assert assertion["CustomAssertion"]["label"] == ENVIRONMENT_ASSERTION_LABEL == "mlprov.environment"
    assert json.loads(json.dumps(assertion)) == assertion
