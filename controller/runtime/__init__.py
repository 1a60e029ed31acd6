"""Job runtimes behind the ``Runtime`` Protocol (``base``); ``build_runtime`` picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.runtime.base import JobHandle, JobSpec, JobState, JobStatus, OutputLine, Runtime

if TYPE_CHECKING:
    from controller.settings import Settings

__all__ = ["JobHandle", "JobSpec", "JobState", "JobStatus", "OutputLine", "Runtime", "build_runtime"]


def build_runtime(settings: Settings) -> Runtime:
    """The runtime ``settings.runtime`` names; ``local`` is the embedded default."""
    if settings.runtime == "local":
        from controller.runtime.local import LocalRuntime

        return LocalRuntime(standby_sidecar=settings.effective_sidecar_command, fork_server=settings.fork_server)
    from controller.runtime.k8s_client import build_kubernetes_runtime

    return build_kubernetes_runtime(settings)
