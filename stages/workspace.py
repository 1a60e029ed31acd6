"""The job workspace contract the stages share: typed ``params.json``, ``inputs/``, atomic ``outputs/``.

A stage's ``main`` is :func:`run_stage`: it parses ``--workspace`` (default: the working directory),
runs the stage and turns a :class:`StageError` into one ``error: <stage>: ...`` line on stderr and
its exit code (2 bad parameters or input, 3 the data source failed). Outputs are published
atomically so the provenance sidecar never sees half an artifact: a file is written to
``outputs/.<name>.tmp`` and renamed into place; a directory is built as ``outputs/.<name>.tmp/``
and renamed into place whole (the atomic-publish idiom; no ``_SUCCESS`` marker is needed, so the
digest the sidecar signs and the one the controller records are of the same files).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "InputError",
    "Params",
    "SourceError",
    "StageError",
    "Workspace",
    "run_stage",
]


class StageError(Exception):
    """A failure the stage reports in one line; ``exit_code`` is the process's exit status."""

    exit_code = 1


class InputError(StageError):
    """Bad ``params.json`` or a missing/malformed input: fix the task, not the stage."""

    exit_code = 2


class SourceError(StageError):
    """The data source could not be read (unreachable, refused, not found, digest mismatch)."""

    exit_code = 3


_MISSING = object()


class Params:
    """``params.json`` read with types and bounds; :meth:`finish` refuses names no getter asked for."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self._seen: set[str] = set()
        self.used: dict[str, Any] = {}
        """Every parameter as the stage used it (defaults filled in), for configs and logs."""

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        value = self._data.get(name, default)
        if value is _MISSING:
            raise InputError(f"params.json: parameter {name!r} is required")
        return value

    def integer(self, name: str, default: int | object = _MISSING, *, low: int, high: int) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"params.json: {name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise InputError(f"params.json: {name} must be between {low} and {high}, got {value}")
        self.used[name] = value
        return value

    def number(self, name: str, default: float | object = _MISSING, *, low: float, high: float) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"params.json: {name} must be a number, got {value!r}")
        if not low <= value <= high:
            raise InputError(f"params.json: {name} must be between {low} and {high}, got {value}")
        self.used[name] = float(value)
        return float(value)

    def text(self, name: str, default: str | object = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"params.json: {name} must be a non-empty string, got {value!r}")
        self.used[name] = value
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._get(name, None)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InputError(f"params.json: {name} must be a string, got {value!r}")
        self.used[name] = value
        return value

    def finish(self) -> None:
        """Refuse parameters the stage does not know (a typo would otherwise be silently ignored)."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise InputError(f"params.json: unknown parameter(s) {unknown}; this stage takes {sorted(self._seen)}")


class Workspace:
    """``params.json``, ``inputs/`` and ``outputs/`` of one job, rooted at ``root``."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root = root
        self.stage = stage
        self.inputs = root / "inputs"
        self.outputs = root / "outputs"

    def params(self) -> Params:
        path = self.root / "params.json"
        if not path.exists():
            return Params({})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"params.json is not readable JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"params.json must hold a JSON object, not {type(data).__name__}")
        return Params(data)

    def input_file(self, name: str) -> Path:
        path = self.inputs / name
        if not path.is_file():
            raise InputError(f"input {name!r} is missing: expected the file inputs/{name}")
        return path

    def input_dir(self, name: str, *files: str) -> Path:
        path = self.inputs / name
        if not path.is_dir():
            raise InputError(f"input {name!r} is missing: expected the directory inputs/{name}/")
        for file in files:
            if not (path / file).is_file():
                raise InputError(f"input {name!r} is incomplete: inputs/{name}/{file} is missing")
        return path

    def log(self, message: str) -> None:
        print(f"[{self.stage}] {message}", flush=True)

    def _ready(self) -> None:
        self.outputs.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def publish_file(self, name: str, mode: str = "wb") -> Iterator[IO[Any]]:
        """Write ``outputs/<name>`` through ``outputs/.<name>.tmp``, renamed into place when the block ends."""
        self._ready()
        target, tmp = self.outputs / name, self.outputs / f".{name}.tmp"
        try:
            with open(tmp, mode) as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.log(f"wrote outputs/{name} ({target.stat().st_size} bytes)")

    def publish_json(self, name: str, data: Any) -> None:
        with self.publish_file(name, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True, allow_nan=False)
            out.write("\n")

    @contextlib.contextmanager
    def publish_dir(self, name: str) -> Iterator[Path]:
        """Build ``outputs/.<name>.tmp/`` and rename the whole directory to ``outputs/<name>`` at the end."""
        self._ready()
        target, tmp = self.outputs / name, self.outputs / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            for file in sorted(tmp.iterdir()):
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum(f.stat().st_size for f in target.iterdir())
        self.log(f"wrote outputs/{name}/ ({len(list(target.iterdir()))} files, {size} bytes)")


def run_stage(stage: str, body: Callable[[Workspace], None], argv: list[str] | None = None) -> int:
    """Parse ``--workspace``, run ``body``; a :class:`StageError` becomes one stderr line and its exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"the demo {stage} stage")
    parser.add_argument("--workspace", type=Path, default=Path.cwd(), help="job workspace (default: cwd)")
    args = parser.parse_args(argv)
    workspace = Workspace(args.workspace, stage)
    try:
        body(workspace)
    except StageError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0
