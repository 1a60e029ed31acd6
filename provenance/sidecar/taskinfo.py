"""``$MLPROV_WORKSPACE/.mlprov/task.json``: what the dispatcher tells the sidecar about its task.

The layout is docs/sidecar-protocol.md section 1. :func:`load_task_info` validates it with pydantic
and turns every problem into one :class:`~provenance.errors.InvalidInputError` line that names the
file and the field, so ``mlprov sidecar`` can print it and exit non-zero before watching anything.
Unknown keys are kept out of the model (the controller may add fields; the sidecar ignores them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from provenance.errors import InvalidInputError

__all__ = ["TASK_FILE", "CodeRef", "DeploymentRef", "InputRef", "RunRef", "TaskInfo", "load_task_info", "task_file"]

TASK_FILE = Path(".mlprov") / "task.json"

_DIGEST = re.compile(r"^sha(256|384|512):[0-9a-f]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RunRef(_Model):
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    try_number: int | None = None


class CodeRef(_Model):
    repo: str = Field(min_length=1)
    ref: str | None = None
    commit: str = Field(min_length=1)
    path: str | None = None


class InputRef(_Model):
    name: str = Field(min_length=1)
    digest: str
    path: str | None = None
    kind: str | None = None
    manifest_id: str | None = None
    manifest_hash: str | None = None

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _DIGEST.match(value):
            raise ValueError(f"{value!r} is not <alg>:<hex>")
        return value


class DeploymentRef(_Model):
    """The deployment (DAG version) the task ran under, as the controller recorded it at submission."""

    id: str = Field(min_length=1)
    pipeline: str | None = None
    environment: str | None = None
    sequence: int | None = None
    commit: str | None = None
    manifest_id: str | None = None
    manifest_hash: str | None = None
    dag_id: str | None = None
    dag_file: str | None = None
    dag_file_digest: str | None = None


class TaskInfo(_Model):
    """task.json, validated. ``params`` is the task's parameters (``params.json`` when task.json has none)."""

    task_id: str = Field(min_length=1)
    attempt: int = Field(default=1, ge=1)
    service: str | None = None
    run: RunRef = Field(default_factory=RunRef)
    params: dict[str, Any] = Field(default_factory=dict)
    code: CodeRef | None = None
    inputs: list[InputRef] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    deployment: DeploymentRef | None = None

    def task_assertion(self) -> dict[str, Any]:
        """The ``mlprov.task`` assertion's data; ``deployment`` only when the task ran under a known one."""
        data: dict[str, Any] = {"task_id": self.task_id, "attempt": self.attempt, "service": self.service}
        if self.deployment is not None:
            data["deployment"] = self.deployment.model_dump()
        return data

    def linked_inputs(self) -> list[InputRef]:
        """Inputs with a manifest to cross-reference (an input without one is an unsigned ancestor)."""
        return [i for i in self.inputs if i.manifest_id and i.manifest_hash]


def task_file(workspace: Path) -> Path:
    return Path(workspace) / TASK_FILE


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", ())) or "(top level)"


def load_task_info(workspace: Path, *, expected_task_id: str | None = None) -> TaskInfo:
    """Read and validate ``<workspace>/.mlprov/task.json`` (see the module docstring).

    ``expected_task_id`` (``MLPROV_TASK_ID``) must equal the file's ``task_id`` when given.
    ``params`` fall back to ``<workspace>/params.json`` when task.json has none.
    """
    path = task_file(workspace)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{path} not found: the dispatcher writes it before the job starts") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path} must hold a JSON object")
    if "params" not in raw:
        params_file = Path(workspace) / "params.json"
        if params_file.is_file():
            try:
                raw["params"] = json.loads(params_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"cannot read {params_file}: {exc}") from None
    try:
        info = TaskInfo.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidInputError(f"{path}: {_where(dict(first))}: {first['msg']}{more}") from None
    if expected_task_id and info.task_id != expected_task_id:
        raise InvalidInputError(f"{path} is for task {info.task_id!r}, but MLPROV_TASK_ID is {expected_task_id!r}")
    return info
