"""The provenance sidecar's building blocks: it watches a job's ``outputs/`` and reports complete artifacts
(:class:`Watcher`), classifies them (:class:`Classifier`), captures the job's environment
(:class:`EnvironmentCapture`), remembers what it signed (:class:`ArtifactLedger`) and delivers through a
durable outbox (:class:`Spool`). Configured by :class:`SidecarSettings` (``MLPROV_SIDECAR_*``).

The assembly (:class:`Sidecar` in :mod:`provenance.sidecar.agent`: hash, classify, build, sign, spool,
upload, register) sits on top of these, with :class:`ControllerClient` (the HTTP calls of
docs/sidecar-protocol.md), :class:`SoftwareManifests` and :func:`load_task_info`. Never imports ``controller``.
"""

from __future__ import annotations

from provenance.sidecar.agent import Sidecar, Summary
from provenance.sidecar.classify import (
    DEFAULT_RULES,
    ArtifactKind,
    Classification,
    Classifier,
    ClassifierRule,
    load_rules,
    media_type,
)
from provenance.sidecar.completion import (
    CompletionRules,
    CompletionTracker,
    FinishedArtifact,
    FinishReason,
    IgnoreRules,
    fingerprint,
)
from provenance.sidecar.config import SidecarSettings, get_sidecar_settings
from provenance.sidecar.delivery import ControllerClient
from provenance.sidecar.environment import ENVIRONMENT_ASSERTION_LABEL, EnvironmentCapture, capture_environment
from provenance.sidecar.software import SoftwareManifests, SoftwareRef
from provenance.sidecar.spool import (
    ArtifactLedger,
    ArtifactRecord,
    Backoff,
    DeadItem,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Spool,
    SpoolItem,
)
from provenance.sidecar.taskinfo import TaskInfo, load_task_info
from provenance.sidecar.watcher import WatchConfig, Watcher

__all__ = [
    "DEFAULT_RULES",
    "ENVIRONMENT_ASSERTION_LABEL",
    "ArtifactKind",
    "ArtifactLedger",
    "ArtifactRecord",
    "Backoff",
    "Classification",
    "Classifier",
    "ClassifierRule",
    "CompletionRules",
    "CompletionTracker",
    "ControllerClient",
    "DeadItem",
    "DeliveryError",
    "EnvironmentCapture",
    "FinishReason",
    "FinishedArtifact",
    "IgnoreRules",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "Sidecar",
    "SidecarSettings",
    "SoftwareManifests",
    "SoftwareRef",
    "Spool",
    "SpoolItem",
    "Summary",
    "TaskInfo",
    "WatchConfig",
    "Watcher",
    "capture_environment",
    "fingerprint",
    "get_sidecar_settings",
    "load_rules",
    "load_task_info",
    "media_type",
]
