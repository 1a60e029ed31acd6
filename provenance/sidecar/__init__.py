"""The provenance sidecar's building blocks: it watches a job's ``outputs/`` and reports complete artifacts
(:class:`Watcher`), classifies them (:class:`Classifier`), captures the job's environment
(:class:`EnvironmentCapture`), remembers what it signed (:class:`ArtifactLedger`) and delivers through a
durable outbox (:class:`Spool`). Configured by :class:`SidecarSettings` (``MLPROV_SIDECAR_*``).

The assembly (build manifest, sign, upload, register) sits on top of these; see each module's docstring.
Never imports ``controller``.
"""

from __future__ import annotations

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
from provenance.sidecar.environment import ENVIRONMENT_ASSERTION_LABEL, EnvironmentCapture, capture_environment
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
    "DeadItem",
    "DeliveryError",
    "EnvironmentCapture",
    "FinishReason",
    "FinishedArtifact",
    "IgnoreRules",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "SidecarSettings",
    "Spool",
    "SpoolItem",
    "WatchConfig",
    "Watcher",
    "capture_environment",
    "fingerprint",
    "get_sidecar_settings",
    "load_rules",
    "media_type",
]
