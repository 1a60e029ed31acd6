"""Prometheus metrics of the controller, served at ``/metrics``.

The objects live in one registry (:data:`REGISTRY`, not the process default) so several apps in
one test process do not collide. Who updates what:

- :data:`TASKS_BY_STATE` - set from the database at every scrape (``/metrics`` route); nobody else.
- :data:`JOB_DURATION` - the dispatcher, when a job ends: ``JOB_DURATION.labels(service=..., state=...).observe(s)``.
- :data:`LOCK_WAIT` - the lock service, when a task got all its locks: ``LOCK_WAIT.observe(seconds_waited)``.
- :data:`DISPATCH_LATENCY` - the dispatcher:
  ``DISPATCH_LATENCY.labels(phase="submit_to_start"|"exit_to_final").observe(s)``.
- :data:`HTTP_LATENCY` - the HTTP middleware (``controller.api.middleware``), by route template.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DISPATCH_LATENCY",
    "HTTP_LATENCY",
    "JOB_DURATION",
    "LOCK_WAIT",
    "REGISTRY",
    "TASKS_BY_STATE",
    "render",
]

REGISTRY = CollectorRegistry(auto_describe=True)

TASKS_BY_STATE = Gauge(
    "mlprov_tasks",
    "Tasks in the store by state.",
    ["state"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "mlprov_job_duration_seconds",
    "Wall time of a job from process start to its end, by service and final state.",
    ["service", "state"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
    registry=REGISTRY,
)
LOCK_WAIT = Histogram(
    "mlprov_lock_wait_seconds",
    "Time a task waited for its named locks and GPU slots.",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
    registry=REGISTRY,
)
DISPATCH_LATENCY = Histogram(
    "mlprov_dispatch_latency_seconds",
    "Controller overhead: submit to process start, and process exit to final task state.",
    ["phase"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "mlprov_http_request_duration_seconds",
    "HTTP request latency by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)


def render() -> bytes:
    """The Prometheus text exposition of :data:`REGISTRY`."""
    return generate_latest(REGISTRY)
