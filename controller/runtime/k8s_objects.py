"""The Kubernetes objects the runtime creates, as plain API dicts (pure functions, no client calls).

Per job attempt (docs/adr/0004-kubernetes-job-lifecycle.md):

- a ``batch/v1`` **Job**: init container ``mlprov-init`` (fetches the inputs, checks their digests, lays
  out ``task.json`` and ``params.json``), the provenance sidecar ``mlprov-sidecar`` as a native sidecar
  (an init container with ``restartPolicy: Always``), the stage container ``job``; a shared workspace
  volume (``emptyDir``, or a ``subPath`` of the run's PVC); ``backoffLimit: 0`` (retries are Airflow's),
  ``activeDeadlineSeconds``; no ``ttlSecondsAfterFinished`` (patched on after collection);
- an immutable **Secret** of the same name holding ``task.json``, ``params.json``, ``inputs.json`` (the
  inputs' download URLs, which may be presigned: not for a ConfigMap) and, in ``task-token`` mode, the
  per-task token; owned by the Job (``ownerReferences``, patched once the Job's uid is known).

Per ``server`` service and run: a **Deployment** and a ClusterIP **Service**
(:mod:`controller.runtime.k8s_server_objects`).

Identity is by labels, never by name: ``app.kubernetes.io/managed-by=mlprov``, ``mlprov.io/task-id``,
``mlprov.io/attempt``, ``mlprov.io/run`` (a hash of dag_id and run_id: Airflow run IDs are not label
values; the raw IDs are annotations) and ``mlprov.io/kind`` (``job`` | ``server``). Every pod meets the
Pod Security ``restricted`` profile.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from controller.catalog import KubernetesOptions, memory_bytes, millicores
from controller.runtime.base import JobSpec

__all__ = [
    "ANNOTATION_DAG_ID",
    "ANNOTATION_IMAGE_DIGEST",
    "ANNOTATION_RUN_ID",
    "ATTEMPT_DIR",
    "INIT_CONTAINER",
    "JOB_CONTAINER",
    "LABEL_ATTEMPT",
    "LABEL_KIND",
    "LABEL_MANAGED_BY",
    "LABEL_RUN",
    "LABEL_TASK",
    "MANAGED_SELECTOR",
    "SIDECAR_CONTAINER",
    "SIGNING_ITEMS",
    "TOKEN_PATH",
    "WORKSPACE",
    "K8sJobSpec",
    "ObjectConfig",
    "attempt_selector",
    "identity_labels",
    "job_body",
    "object_name",
    "owner_patch",
    "pvc_body",
    "resources_body",
    "run_hash",
    "secret_body",
]

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TASK = "mlprov.io/task-id"
LABEL_ATTEMPT = "mlprov.io/attempt"
LABEL_RUN = "mlprov.io/run"
LABEL_KIND = "mlprov.io/kind"
LABEL_SERVICE = "mlprov.io/service"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}=mlprov"
ANNOTATION_DAG_ID = "mlprov.io/dag-id"
ANNOTATION_RUN_ID = "mlprov.io/run-id"
ANNOTATION_IMAGE_DIGEST = "mlprov.io/image-digest"

JOB_CONTAINER = "job"
SIDECAR_CONTAINER = "mlprov-sidecar"
INIT_CONTAINER = "mlprov-init"
WORKSPACE = "/workspace"
ATTEMPT_DIR = "/etc/mlprov/attempt"
HOME_DIR = "/etc/mlprov/home"
TOKEN_DIR = "/var/run/secrets/mlprov"  # noqa: S105 - a mount path, not a secret
TOKEN_PATH = f"{TOKEN_DIR}/token"
SIGNING_ITEMS = (
    ("signer.key", "keys/signer.key"),
    ("signer.pem", "keys/signer.pem"),
    ("chain.pem", "keys/chain.pem"),
    ("ca.pem", "trust/ca.pem"),
)
"""Signing Secret key -> path under the sidecar's ``MLPROV_HOME``: the layout of ``provenance.keys.identity_paths``
(the Secret holds the flat output of ``mlprov keys init`` without the CA key)."""
_NON_ROOT_UID = 65532  # the distroless "nonroot" user; images built for the restricted profile use it
_JOB_ENV_ALLOW = ("MLPROV_TASK_ID", "MLPROV_ATTEMPT", "MLPROV_DAG_ID", "MLPROV_RUN_ID", "MLPROV_CONTROLLER_URL")
_SIDECAR_ONLY = ("MLPROV_TASK_TOKEN", "MLPROV_HOME")
_LABEL_SAFE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class K8sJobSpec(JobSpec):
    """A :class:`JobSpec` with what only the Kubernetes runtime needs (built by the dispatcher)."""

    service: str = ""
    kubernetes: KubernetesOptions | None = None
    image_digest: str | None = None
    """``sha256:<hex>`` the image tag resolved to; ``image`` is then ``<repository>@<digest>``."""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    """``{name, digest, path, url, auth}`` per input: what the init container downloads and checks."""
    port: int | None = None
    """``server``: the container port."""
    health_path: str | None = None


@dataclass(frozen=True)
class ObjectConfig:
    """The runtime's settings that shape every object (from ``Settings.kubernetes_*``)."""

    namespace: str = "mlprov"
    service_account: str = "mlprov-job"
    sidecar_image: str = "mlprov:latest"
    init_image: str = "mlprov:latest"
    sidecar_command: tuple[str, ...] = ("mlprov", "sidecar")
    init_command: tuple[str, ...] = ("python", "-m", "controller.runtime.k8s_init")
    audience: str = "mlprov-controller"
    token_expiration: int = 3600
    sidecar_credential: str = "service-account"
    signing_secret: str = "mlprov-signing-identity"  # noqa: S105 - a Secret object name
    controller_url: str = "http://mlprov-controller:8080"
    default_deadline: int = 86_400
    image_pull_secrets: tuple[str, ...] = ()


def run_hash(dag_id: str | None, run_id: str | None) -> str:
    """A label-safe stand-in for (dag_id, run_id): 32 hex characters of their SHA-256."""
    return hashlib.sha256(f"{dag_id or ''}\n{run_id or ''}".encode()).hexdigest()[:32]


def _label_value(text: str) -> str:
    cleaned = _LABEL_SAFE.sub("-", text.lower()).strip("-")[:63].strip("-")
    return cleaned or "x"


def object_name(prefix: str, *parts: str) -> str:
    """A unique DNS-label name (``prefix-part-...-<random>``): a label only, never identity."""
    body = "-".join(_label_value(p) for p in (prefix, *parts))[:52].strip("-")
    return f"{body}-{secrets.token_hex(3)}"


def identity_labels(spec: JobSpec, kind: str) -> dict[str, str]:
    labels = {
        LABEL_MANAGED_BY: "mlprov",
        LABEL_TASK: spec.task_id,
        LABEL_ATTEMPT: str(spec.attempt),
        LABEL_KIND: kind,
    }
    if spec.labels.get("run_id") is not None or spec.labels.get("dag_id") is not None:
        labels[LABEL_RUN] = run_hash(spec.labels.get("dag_id"), spec.labels.get("run_id"))
    if isinstance(spec, K8sJobSpec) and spec.service:
        labels[LABEL_SERVICE] = _label_value(spec.service)
    return labels


def attempt_selector(task_id: str, attempt: int) -> str:
    """The label selector that finds one attempt's objects (the job handle's ``ref``)."""
    return f"{MANAGED_SELECTOR},{LABEL_TASK}={task_id},{LABEL_ATTEMPT}={attempt}"


def _annotations(spec: JobSpec, options: KubernetesOptions | None) -> dict[str, str]:
    notes = dict(options.annotations) if options else {}
    for key, note in (("dag_id", ANNOTATION_DAG_ID), ("run_id", ANNOTATION_RUN_ID)):
        if spec.labels.get(key) is not None:
            notes[note] = str(spec.labels[key])
    if isinstance(spec, K8sJobSpec) and spec.image_digest:
        notes[ANNOTATION_IMAGE_DIGEST] = spec.image_digest
    return notes


def resources_body(resources: dict[str, Any], gpu_resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    """``{cpu, memory, gpus}`` as container resources: CPU and memory requested, memory also the limit
    (the kernel kills above it anyway), GPUs as the extended resource in limits (and requests)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.get("cpu") is not None:
        requests["cpu"] = f"{millicores(resources['cpu'])}m"
    if resources.get("memory") is not None:
        requests["memory"] = limits["memory"] = str(memory_bytes(resources["memory"]))
    gpus = int(resources.get("gpus") or 0)
    if gpus:
        requests[gpu_resource] = limits[gpu_resource] = str(gpus)
    body: dict[str, Any] = {}
    if requests:
        body["requests"] = requests
    if limits:
        body["limits"] = limits
    return body


def _restricted() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,  # writable: the workspace and a private /tmp
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _tmp_mount(container: str) -> dict[str, Any]:
    return {"name": "mlprov-tmp", "mountPath": "/tmp", "subPath": container}  # noqa: S108 - a private emptyDir


def _env(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in sorted(values.items())]


def _job_env(spec: JobSpec) -> dict[str, str]:
    """The stage's environment: the service's env and the task identity; never the token or identity."""
    env = {k: v for k, v in spec.env.items() if k not in _SIDECAR_ONLY and not k.startswith("MLPROV_")}
    env.update({k: v for k, v in spec.env.items() if k in _JOB_ENV_ALLOW or k.startswith("MLPROV_SERVER")})
    env["MLPROV_WORKSPACE"] = WORKSPACE
    env.setdefault("HOME", "/tmp")  # noqa: S108 - the container's private emptyDir (read-only root filesystem)
    env.setdefault("MLPROV_TASK_ID", spec.task_id)
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the device plugin assigns GPUs on Kubernetes
    return env


def _credential_env(config: ObjectConfig, secret_name: str) -> list[dict[str, Any]]:
    if config.sidecar_credential == "task-token":
        ref = {"secretKeyRef": {"name": secret_name, "key": "task-token"}}
        return [{"name": "MLPROV_TASK_TOKEN", "valueFrom": ref}]
    return [{"name": "MLPROV_TASK_TOKEN_FILE", "value": TOKEN_PATH}]


def _workspace_volume(spec: JobSpec, options: KubernetesOptions | None, pvc: str | None) -> dict[str, Any]:
    if pvc is not None:
        return {"name": "mlprov-workspace", "persistentVolumeClaim": {"claimName": pvc}}
    empty: dict[str, Any] = {}
    if options is not None and options.workspace.size:
        empty["sizeLimit"] = str(memory_bytes(options.workspace.size))
    return {"name": "mlprov-workspace", "emptyDir": empty}


def _workspace_mount(spec: JobSpec, pvc: str | None) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": "mlprov-workspace", "mountPath": WORKSPACE}
    if pvc is not None:
        mount["subPath"] = f"{spec.task_id}/{spec.attempt}"
    return mount


def _extra_volumes(options: KubernetesOptions | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for vol in options.volumes if options else []:
        source: dict[str, Any]
        if vol.pvc:
            source = {"persistentVolumeClaim": {"claimName": vol.pvc, "readOnly": vol.read_only}}
        elif vol.config_map:
            source = {"configMap": {"name": vol.config_map}}
        elif vol.secret:
            source = {"secret": {"secretName": vol.secret}}
        else:
            source = {"emptyDir": {"sizeLimit": str(memory_bytes(vol.size_limit))} if vol.size_limit else {}}
        volumes.append({"name": vol.name, **source})
        mounts.append({"name": vol.name, "mountPath": vol.mount_path, "readOnly": vol.read_only})
    return volumes, mounts


def _token_volume(config: ObjectConfig) -> dict[str, Any]:
    projection = {"audience": config.audience, "expirationSeconds": config.token_expiration, "path": "token"}
    return {"name": "mlprov-token", "projected": {"sources": [{"serviceAccountToken": projection}]}}


def _signing_volume(config: ObjectConfig) -> dict[str, Any]:
    """The signing Secret as the sidecar's read-only ``MLPROV_HOME`` (``keys/``, ``trust/``); group-readable
    only (the pod's ``fsGroup``), never world-readable."""
    items = [{"key": key, "path": path} for key, path in SIGNING_ITEMS]
    return {
        "name": "mlprov-home",
        "secret": {"secretName": config.signing_secret, "defaultMode": 0o440, "items": items},
    }


def _init_container(config: ObjectConfig, spec: JobSpec, secret_name: str, pvc: str | None) -> dict[str, Any]:
    env = {
        "MLPROV_WORKSPACE": WORKSPACE,
        "MLPROV_ATTEMPT_DIR": ATTEMPT_DIR,
        "MLPROV_TASK_ID": spec.task_id,
        "HOME": "/tmp",  # noqa: S108 - the container's private emptyDir (read-only root filesystem)
    }
    return {
        "name": INIT_CONTAINER,
        "image": config.init_image,
        "command": list(config.init_command),
        "env": [*_env(env), *_credential_env(config, secret_name)],
        "volumeMounts": [
            _workspace_mount(spec, pvc),
            {"name": "mlprov-attempt", "mountPath": ATTEMPT_DIR, "readOnly": True},
            {"name": "mlprov-token", "mountPath": TOKEN_DIR, "readOnly": True},
            _tmp_mount(INIT_CONTAINER),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _restricted(),
    }


def _sidecar_container(config: ObjectConfig, spec: JobSpec, secret_name: str, pvc: str | None) -> dict[str, Any]:
    env = {
        "MLPROV_TASK_ID": spec.task_id,
        "MLPROV_ATTEMPT": str(spec.attempt),
        "MLPROV_WORKSPACE": WORKSPACE,
        "MLPROV_CONTROLLER_URL": config.controller_url,
        "MLPROV_HOME": HOME_DIR,
        "HOME": "/tmp",  # noqa: S108 - the container's private emptyDir (read-only root filesystem)
    }
    if isinstance(spec, K8sJobSpec) and spec.image_digest:
        env["MLPROV_IMAGE_DIGEST"] = spec.image or spec.image_digest
    return {
        "name": SIDECAR_CONTAINER,
        "image": config.sidecar_image,
        "command": list(config.sidecar_command),
        "restartPolicy": "Always",  # a native sidecar: runs beside the job, stopped after it (K8s >= 1.29)
        "env": [*_env(env), *_credential_env(config, secret_name)],
        "volumeMounts": [
            _workspace_mount(spec, pvc),
            {"name": "mlprov-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "mlprov-home", "mountPath": HOME_DIR, "readOnly": True},
            _tmp_mount(SIDECAR_CONTAINER),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _restricted(),
    }


def _pod_spec(
    config: ObjectConfig,
    spec: JobSpec,
    secret_name: str,
    *,
    pvc: str | None,
    sidecar: bool,
    restart_policy: str,
    port: int | None = None,
    health_path: str | None = None,
) -> dict[str, Any]:
    options = spec.kubernetes if isinstance(spec, K8sJobSpec) else None
    extra_volumes, extra_mounts = _extra_volumes(options)
    main: dict[str, Any] = {
        "name": JOB_CONTAINER,
        "image": spec.image,
        "workingDir": WORKSPACE,
        "env": _env(_job_env(spec)),
        "volumeMounts": [_workspace_mount(spec, pvc), _tmp_mount(JOB_CONTAINER), *extra_mounts],
        "securityContext": _restricted(),
    }
    if spec.command:
        main["command"] = list(spec.command)
    resources = resources_body(dict(spec.resources), options.gpu_resource if options else "nvidia.com/gpu")
    if resources:
        main["resources"] = resources
    if port is not None:
        main["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        main["readinessProbe"] = {
            "httpGet": {"path": health_path or "/", "port": port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        }
    init = [_init_container(config, spec, secret_name, pvc)]
    volumes: list[dict[str, Any]] = [
        _workspace_volume(spec, options, pvc),
        {"name": "mlprov-attempt", "secret": {"secretName": secret_name}},
        _token_volume(config),
        {"name": "mlprov-tmp", "emptyDir": {}},
    ]
    if sidecar:
        init.append(_sidecar_container(config, spec, secret_name, pvc))
        volumes.append(_signing_volume(config))
    pull = [*config.image_pull_secrets, *(options.image_pull_secrets if options else [])]
    pod: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "serviceAccountName": (options.service_account if options else None) or config.service_account,
        "automountServiceAccountToken": False,  # the only token in the pod is the audience-bound projected one
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": _NON_ROOT_UID,
            "runAsGroup": _NON_ROOT_UID,
            "fsGroup": _NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": init,
        "containers": [main, *[]],
        "volumes": [*volumes, *extra_volumes],
    }
    if pull:
        pod["imagePullSecrets"] = [{"name": name} for name in dict.fromkeys(pull)]
    if options is not None:
        if options.node_selector:
            pod["nodeSelector"] = dict(options.node_selector)
        if options.tolerations:
            pod["tolerations"] = [_toleration(t.model_dump(exclude_none=True)) for t in options.tolerations]
        if options.priority_class_name:
            pod["priorityClassName"] = options.priority_class_name
    return pod


def _toleration(data: dict[str, Any]) -> dict[str, Any]:
    seconds = data.pop("toleration_seconds", None)
    if seconds is not None:
        data["tolerationSeconds"] = seconds
    return data


def _metadata(name: str, namespace: str, labels: dict[str, str], notes: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if notes:
        meta["annotations"] = dict(notes)
    return meta


def _pod_labels(spec: JobSpec, labels: dict[str, str]) -> dict[str, str]:
    options = spec.kubernetes if isinstance(spec, K8sJobSpec) else None
    return {**(options.labels if options else {}), **labels}


def job_body(config: ObjectConfig, spec: JobSpec, name: str, *, pvc: str | None = None) -> dict[str, Any]:
    """The attempt's Job (see the module docstring); ``name`` also names its Secret."""
    labels = identity_labels(spec, "job")
    options = spec.kubernetes if isinstance(spec, K8sJobSpec) else None
    notes = _annotations(spec, options)
    deadline = int(spec.timeout) if spec.timeout else config.default_deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, config.namespace, labels, notes),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, deadline),
            "template": {
                "metadata": {"labels": _pod_labels(spec, labels), **({"annotations": notes} if notes else {})},
                "spec": _pod_spec(
                    config, spec, name, pvc=pvc, sidecar=bool(spec.sidecar_command), restart_policy="Never"
                ),
            },
        },
    }


def secret_body(
    config: ObjectConfig,
    spec: JobSpec,
    name: str,
    *,
    task_json: str,
    params_json: str,
    kind: str = "job",
    task_token: str | None = None,
) -> dict[str, Any]:
    """The attempt's immutable Secret: task.json, params.json, inputs.json (+ the task token)."""
    inputs = spec.inputs if isinstance(spec, K8sJobSpec) else []
    data = {"task.json": task_json, "params.json": params_json, "inputs.json": json.dumps(inputs, indent=1)}
    if task_token is not None and config.sidecar_credential == "task-token":
        data["task-token"] = task_token
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, config.namespace, identity_labels(spec, kind), {}),
        "type": "Opaque",
        "immutable": True,
        "stringData": data,
    }


def owner_patch(owner: dict[str, Any]) -> dict[str, Any]:
    """A merge patch making ``owner`` (a created Job or Deployment) own the Secret: deleted with it."""
    meta = owner["metadata"]
    return {
        "metadata": {
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": False,
                    "blockOwnerDeletion": False,
                }
            ]
        }
    }


def pvc_body(config: ObjectConfig, spec: K8sJobSpec, name: str) -> dict[str, Any]:
    """The run's workspace PVC (one per run, shared by its tasks through ``subPath``)."""
    assert spec.kubernetes is not None
    ws = spec.kubernetes.workspace
    labels = {LABEL_MANAGED_BY: "mlprov", LABEL_KIND: "workspace"}
    if spec.labels.get("run_id") is not None or spec.labels.get("dag_id") is not None:
        labels[LABEL_RUN] = run_hash(spec.labels.get("dag_id"), spec.labels.get("run_id"))
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(name, config.namespace, labels, {}),
        "spec": {
            "accessModes": [ws.access_mode],
            "resources": {"requests": {"storage": str(memory_bytes(ws.size or "1Gi"))}},
        },
    }
    if ws.storage_class:
        body["spec"]["storageClassName"] = ws.storage_class
    return body
