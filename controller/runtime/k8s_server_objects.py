"""A run's ``server`` as Kubernetes objects (pure functions, as :mod:`controller.runtime.k8s_objects`).

A **Deployment** (one replica: the init container that lays out the workspace, and the server container
with a readiness probe on ``health_path``; no provenance sidecar) and a ClusterIP **Service** selecting
its pods by their identity labels, reachable as ``<name>.<namespace>.svc`` for the run's duration (the
server manager stops it when the run ends). The attempt's Secret is :func:`~controller.runtime.k8s_objects.secret_body`
with ``kind="server"``, owned by the Deployment.
"""

from __future__ import annotations

from typing import Any

from controller.runtime.k8s_objects import (
    LABEL_ATTEMPT,
    LABEL_KIND,
    LABEL_MANAGED_BY,
    LABEL_TASK,
    K8sJobSpec,
    ObjectConfig,
    _annotations,
    _metadata,
    _pod_labels,
    _pod_spec,
    identity_labels,
)

__all__ = ["deployment_body", "server_url", "service_body"]


def deployment_body(config: ObjectConfig, spec: K8sJobSpec, name: str) -> dict[str, Any]:
    """A run's ``server``: one replica, selected by its identity labels, ready when ``health_path`` answers."""
    labels = identity_labels(spec, "server")
    notes = _annotations(spec, spec.kubernetes)
    selector = {k: labels[k] for k in (LABEL_MANAGED_BY, LABEL_TASK, LABEL_ATTEMPT, LABEL_KIND)}
    pod = _pod_spec(
        config,
        spec,
        name,
        pvc=None,
        sidecar=False,
        restart_policy="Always",
        port=spec.port or 8080,
        health_path=spec.health_path,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, config.namespace, labels, notes),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": _pod_labels(spec, labels), **({"annotations": notes} if notes else {})},
                "spec": pod,
            },
        },
    }


def service_body(config: ObjectConfig, spec: K8sJobSpec, name: str) -> dict[str, Any]:
    labels = identity_labels(spec, "server")
    selector = {k: labels[k] for k in (LABEL_MANAGED_BY, LABEL_TASK, LABEL_ATTEMPT, LABEL_KIND)}
    port = spec.port or 8080
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, config.namespace, labels, {}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def server_url(config: ObjectConfig, name: str, port: int) -> str:
    """How the controller and the run's jobs reach a server: its Service's cluster DNS name."""
    return f"http://{name}.{config.namespace}.svc:{port}"
