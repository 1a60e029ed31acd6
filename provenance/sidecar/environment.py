"""The job's environment, captured once per job for the ``mlprov.environment`` CustomAssertion.

Locally: the interpreter (implementation, version, executable), the platform, and a digest of the
installed packages: SHA-256 over the sorted ``name==version`` lines (names normalised as PEP 503 does,
one line per distribution, each ending in ``\\n``). For the sidecar's own interpreter the packages come
from :mod:`importlib.metadata`; for another one (the job's venv) the same code runs under it,
isolated (``-I``: the sidecar's ``PYTHONPATH`` and user site must not leak in), with a timeout.

On Kubernetes the job runs in another container: the sidecar cannot run its interpreter, and the
image digest (``MLPROV_IMAGE_DIGEST``, set by the runtime) is what identifies the environment. It is
recorded under ``image``; the interpreter is recorded as well only when one is given.

:class:`EnvironmentCapture` caches per (interpreter, image digest): one capture per job, not per
artifact. The returned dict holds only strings, integers and nested dicts (stable JSON/CBOR).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from provenance.errors import InvalidInputError

__all__ = [
    "ENVIRONMENT_ASSERTION_LABEL",
    "EnvironmentCapture",
    "capture_environment",
    "package_lines",
    "packages_digest",
    "prime_current_environment",
]

ENVIRONMENT_ASSERTION_LABEL = "mlprov.environment"

_IMAGE_DIGEST = re.compile(r"^(?:(?P<repo>[^@\s]+)@)?(?P<digest>sha256:[0-9a-f]{64})$")

# Runs under the job's interpreter: standard library only; prints one JSON object.
_PROBE = """
import importlib.metadata as m, json, platform, sys
pkgs = {}
for d in m.distributions():
    name = d.metadata["Name"]
    if name and name not in pkgs:
        pkgs[name] = d.version
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": platform.python_version(),
    "executable": sys.executable,
    "packages": pkgs,
}))
"""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_lines(packages: dict[str, str]) -> list[str]:
    """Sorted ``name==version`` lines, names normalised (PEP 503); of two spellings the first one wins."""
    lines: dict[str, str] = {}
    for name, version in packages.items():
        lines.setdefault(_normalise(name), f"{_normalise(name)}=={version}")
    return [lines[k] for k in sorted(lines)]


def packages_digest(packages: dict[str, str]) -> tuple[str, int]:
    """``(sha256:<hex>, count)`` of :func:`package_lines`, each line ending in ``\\n``."""
    lines = package_lines(packages)
    text = "".join(line + "\n" for line in lines)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest(), len(lines)


def _scan_current() -> dict[str, Any]:
    import importlib.metadata as metadata

    packages: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in packages:
            packages[name] = dist.version
    return {
        "implementation": sys.implementation.name,
        "version": platform.python_version(),
        "executable": sys.executable,
        "packages": packages,
    }


def _path_state() -> tuple[tuple[str, int], ...]:
    """Each ``sys.path`` entry with its modification time: installing, upgrading or removing a distribution
    adds or removes a ``*.dist-info`` directory in one of them, which changes that entry's mtime."""
    state: list[tuple[str, int]] = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, -1))
    return tuple(state)


_current_lock = threading.Lock()
_current: tuple[tuple[tuple[str, int], ...], dict[str, Any]] | None = None


def _probe_current() -> dict[str, Any]:
    """This interpreter's probe (reading every distribution's metadata: a few hundred ms of CPU), kept while
    no ``sys.path`` entry changed (:func:`_path_state`), so a standby sidecar does it before its job starts
    (:func:`prime_current_environment`) and the job's capture only checks that nothing changed since."""
    global _current
    with _current_lock:
        state = _path_state()
        if _current is None or _current[0] != state:
            _current = (state, _scan_current())
        probe: dict[str, Any] = json.loads(json.dumps(_current[1]))  # a copy the caller may change
        return probe


def prime_current_environment() -> None:
    """Probe this interpreter now (warm-up), so a later capture of it is a cheap validity check."""
    _probe_current()


def _probe_interpreter(interpreter: Path, timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [str(interpreter), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise InvalidInputError(f"interpreter {interpreter} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise InvalidInputError(f"interpreter {interpreter} did not list its packages within {timeout} s") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot run interpreter {interpreter}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InvalidInputError(f"interpreter {interpreter} failed to list its packages: {last}")
    try:
        data: dict[str, Any] = json.loads(done.stdout)
    except ValueError as exc:
        raise InvalidInputError(f"interpreter {interpreter} printed no package list") from exc
    return data


def _platform() -> dict[str, str]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
    }


def capture_environment(
    interpreter: Path | str | None = None,
    *,
    image_digest: str | None = None,
    timeout: float = 30.0,
    include_packages: bool = False,
) -> dict[str, Any]:
    """Capture the environment (see module doc). ``interpreter``: the job's Python (``None``: this one,
    unless ``image_digest`` is given). ``include_packages`` adds the ``name==version`` list itself."""
    env: dict[str, Any] = {"platform": _platform()}
    if image_digest:
        match = _IMAGE_DIGEST.match(image_digest.strip())
        if match is None:
            raise InvalidInputError(f"image digest {image_digest!r} is not sha256:<64 hex> or <repo>@sha256:<64 hex>")
        image: dict[str, str] = {"digest": match["digest"]}
        if match["repo"]:
            image["repository"] = match["repo"]
        env["image"] = image
    if interpreter is None and image_digest:
        return env
    probe = _probe_current() if interpreter is None else _probe_interpreter(Path(interpreter), timeout)
    packages = {str(k): str(v) for k, v in probe["packages"].items()}
    digest, count = packages_digest(packages)
    env["interpreter"] = {
        "implementation": str(probe["implementation"]),
        "version": str(probe["version"]),
        "executable": str(probe["executable"]),
    }
    env["packages"] = {"digest": digest, "count": count, "format": "sorted PEP 503 name==version lines"}
    if include_packages:
        env["packages"]["list"] = package_lines(packages)
    return env


class EnvironmentCapture:
    """Captures once per (interpreter, image digest) and serves copies afterwards. Thread-safe."""

    def __init__(self, *, timeout: float = 30.0, include_packages: bool = False) -> None:
        self._timeout = timeout
        self._include_packages = include_packages
        self._lock = threading.Lock()
        self._cache: dict[tuple[str | None, str | None], dict[str, Any]] = {}

    def get(self, interpreter: Path | str | None = None, *, image_digest: str | None = None) -> dict[str, Any]:
        key = (str(Path(interpreter).absolute()) if interpreter is not None else None, image_digest or None)
        with self._lock:  # held while capturing: concurrent artifacts wait for the one capture
            if key not in self._cache:
                self._cache[key] = capture_environment(
                    interpreter,
                    image_digest=image_digest,
                    timeout=self._timeout,
                    include_packages=self._include_packages,
                )
            copy: dict[str, Any] = json.loads(json.dumps(self._cache[key]))  # a deep copy the caller may change
            return copy

    def assertion(self, interpreter: Path | str | None = None, *, image_digest: str | None = None) -> dict[str, Any]:
        """``{"CustomAssertion": {"label": "mlprov.environment", "data": ...}}`` as Atlas tags it."""
        return {
            "CustomAssertion": {
                "label": ENVIRONMENT_ASSERTION_LABEL,
                "data": self.get(interpreter, image_digest=image_digest),
            }
        }
