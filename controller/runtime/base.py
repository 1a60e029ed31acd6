"""The ``Runtime`` seam: how a task's job (stage process + provenance sidecar) is launched and watched.

Implementations: ``local`` (process groups on this machine; the embedded default) and, later,
``kubernetes`` (batch/v1 Jobs with a native sidecar). The dispatcher talks only to this Protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["JobHandle", "JobSpec", "JobState", "JobStatus", "OutputLine", "Runtime"]


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    """The job vanished (its process or Job is gone and no exit was observed): a recorded outcome."""


@dataclass(frozen=True)
class OutputLine:
    """One line a job (or its sidecar) wrote, as captured."""

    stream: str  # "stdout" | "stderr"
    component: str  # "job" | "sidecar"
    timestamp: float  # epoch seconds when captured
    text: str


@dataclass(frozen=True)
class JobSpec:
    """Everything a runtime needs to launch one attempt of one task."""

    task_id: str
    attempt: int
    workspace: Path
    """``inputs/``, ``outputs/`` and ``params.json`` live here; the job runs with it as working directory."""
    command: list[str] | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    """Seconds; the runtime kills the whole job when it is exceeded and reports ``TIMED_OUT``."""
    labels: dict[str, str] = field(default_factory=dict)
    """Identity of the job for runtimes that find jobs by label (run, task, attempt)."""
    sidecar_command: list[str] | None = None
    """Started beside the job sharing its workspace; the job is done only once the sidecar has exited."""
    resources: dict[str, str | int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobHandle:
    """How a runtime finds a job again, also after a controller restart (persist ``ref``)."""

    task_id: str
    attempt: int
    ref: str
    """Runtime-specific identity: ``pid:<pgid>:<start-time>`` locally, a label selector on Kubernetes."""


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


OutputSink = Callable[[OutputLine], None]


@runtime_checkable
class Runtime(Protocol):
    def launch(self, spec: JobSpec, on_output: OutputSink) -> JobHandle:
        """Start the job and its sidecar; raise ``JobLaunchError`` if the command cannot start."""
        ...

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        """Block until the job (and its sidecar) ended or ``timeout`` passed; return the status."""
        ...

    def status(self, handle: JobHandle) -> JobStatus: ...

    def cancel(self, handle: JobHandle) -> None:
        """Kill the whole job (process group / Job) and its sidecar; idempotent."""
        ...

    def reattach(self, handle: JobHandle, on_output: OutputSink) -> JobStatus:
        """After a controller restart: re-attach to a job still running, or report ``LOST``."""
        ...
