"""What the dispatcher does differently before a Kubernetes launch (called from ``Dispatcher._prepare``).

Locally the dispatcher copies the inputs into the workspace. On Kubernetes the workspace lives in the
pod, so instead it: checks each input is in the artifact store and gives the init container a URL for
it (a presigned GET when the store can make one, else the controller's
``GET /api/v1/artifacts/{digest}/content`` with the pod's credential), which the init container
downloads and re-hashes; resolves the image tag to a digest (:mod:`controller.services.images`),
runs the pinned reference and records ``image`` / ``image_digest`` on the task (``details.environment``,
an ``image_resolved`` event) and in task.json's ``environment`` (the sidecar's ``mlprov.environment``
assertion); and hands the runtime a :class:`~controller.runtime.k8s_objects.K8sJobSpec`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller.artifacts.base import ArtifactStore
from controller.catalog import ServiceSpec
from controller.errors import ArtifactNotFoundError
from controller.logs.base import LogRecord
from controller.runtime.base import JobSpec
from controller.runtime.k8s_objects import K8sJobSpec
from controller.services.images import ResolvedImage
from controller.services.task_records import add_event
from controller.store.models import ServiceKind, Task

__all__ = ["input_entries", "kubernetes_spec", "record_image", "resolve_image", "task_environment"]

_PRESIGN_SECONDS = 3600


def resolve_image(runtime: object, image: str | None) -> ResolvedImage | None:
    """The image pinned to its digest by the runtime's resolver (None: no image or no resolver)."""
    resolve = getattr(runtime, "resolve_image", None)
    if image is None or not callable(resolve):
        return None
    resolved: ResolvedImage | None = resolve(image)
    return resolved


def input_entries(store: ArtifactStore, controller_url: str, resolved: list[Any]) -> list[dict[str, Any]]:
    """``{name, digest, path, url, auth}`` per input for the init container; refuses an input the
    store does not hold (the task fails before any object is created)."""
    presign = getattr(store, "presigned_get_url", None)
    entries = []
    for item in resolved:
        if not store.exists(item.digest):
            raise ArtifactNotFoundError(f"input {item.ref!r} ({item.digest}) is not in the artifact store")
        if callable(presign):
            url, auth = str(presign(item.digest, _PRESIGN_SECONDS)), "none"
        else:
            url, auth = f"{controller_url.rstrip('/')}/api/v1/artifacts/{item.digest}/content", "bearer"
        entries.append(
            {"name": item.name, "digest": item.digest, "path": f"inputs/{item.name}", "url": url, "auth": auth}
        )
    return entries


def task_environment(image: ResolvedImage | None) -> dict[str, Any] | None:
    """task.json's ``environment`` on Kubernetes: the pinned image and its digest."""
    if image is None:
        return None
    return {"image": image.pinned, "image_digest": image.digest, "image_reference": image.reference}


def record_image(session: Session, task: Task, attempt: int, image: ResolvedImage) -> list[LogRecord]:
    """``details.environment`` on the task and an ``image_resolved`` event, in the caller's transaction
    (the records are published by the caller once it committed)."""
    pending: list[LogRecord] = []
    details = dict(task.details or {})
    details["environment"] = {"image": image.pinned, "image_digest": image.digest, "reference": image.reference}
    task.details = details
    add_event(session, task, "image_resolved", pending, attempt=attempt, image=image.reference, digest=image.digest)
    return pending


def kubernetes_spec(
    base: JobSpec, service: ServiceSpec, image: ResolvedImage | None, inputs: list[dict[str, Any]]
) -> K8sJobSpec:
    fields = dict(base.__dict__)
    env = dict(base.env)
    if image is not None:
        fields["image"] = image.pinned
        env["MLPROV_IMAGE_DIGEST"] = image.pinned
    if service.kind is ServiceKind.SERVER:  # the pod's own port on all interfaces, reached through its Service
        port = str(service.port or 8080)
        env.update(PORT=port, MLPROV_SERVER_PORT=port, HOST="0.0.0.0", MLPROV_SERVER_HOST="0.0.0.0")  # noqa: S104
    fields["env"] = env
    return K8sJobSpec(
        **fields,
        service=service.name,
        kubernetes=service.kubernetes,
        image_digest=image.digest if image is not None else None,
        inputs=inputs,
        port=service.port,
        health_path=service.health_path,
    )
