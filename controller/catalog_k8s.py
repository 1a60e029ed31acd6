"""The Kubernetes rules of the service catalog: quantities, names and the ``kubernetes`` options.

:class:`KubernetesOptions` holds what only the Kubernetes runtime uses (node selector, tolerations,
volumes, the per-run workspace volume, service account, pull secrets, labels, annotations, priority
class, GPU resource name). Every field is checked at registration against the Kubernetes API's own rules
(label keys and values, toleration operator and effect, volume names and sources, quantities), so a
service that cannot become a valid Job is refused with a 422 naming the field, never at launch.
:func:`millicores` and :func:`memory_bytes` read Kubernetes quantities, for ``resources`` too.
:mod:`controller.catalog` re-exports every public name here.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = ["KubernetesOptions", "KubernetesVolume", "Toleration", "WorkspaceVolume", "memory_bytes", "millicores"]

_CPU = re.compile(r"^(\d+(\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P|k)?$")
_MEMORY_UNITS = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def millicores(cpu: str | float) -> int:
    """Kubernetes CPU quantity (``2``, ``0.5``, ``500m``) in millicores; ValueError when malformed."""
    match = _CPU.fullmatch(str(cpu).strip())
    if not match:
        raise ValueError(f"cpu {cpu!r} is not a quantity: use cores (2, 0.5) or millicores (500m)")
    value = Decimal(match.group(1))
    result = int(value if match.group(3) else value * 1000)
    if result <= 0:
        raise ValueError(f"cpu {cpu!r} must be more than zero")
    return result


def memory_bytes(memory: str | int) -> int:
    """Kubernetes memory quantity (``512Mi``, ``2Gi``, ``1G``, bytes) in bytes; ValueError when malformed."""
    match = _MEMORY.fullmatch(str(memory).strip())
    if not match:
        raise ValueError(f"memory {memory!r} is not a quantity: use bytes or a unit suffix (512Mi, 2Gi, 1G)")
    try:
        result = int(Decimal(match.group(1)) * _MEMORY_UNITS[match.group(3)])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"memory {memory!r} is not a quantity") from exc
    if result <= 0:
        raise ValueError(f"memory {memory!r} must be more than zero")
    return result


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^((?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_RESERVED_MOUNTS = ("/workspace", "/etc/mlprov", "/var/run/secrets")


def _qualified_name(key: str, what: str) -> str:
    """A Kubernetes qualified name (``[prefix/]name``, the prefix a DNS subdomain); ValueError otherwise."""
    prefix, _, name = key.rpartition("/")
    if (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"{what} {key!r} is not a Kubernetes qualified name: [prefix/]name, name 1-63 characters "
            "[A-Za-z0-9-_.] starting and ending alphanumeric, prefix a DNS subdomain"
        )
    return key


def _labels(value: dict[str, str], what: str) -> dict[str, str]:
    for key, item in value.items():
        _qualified_name(key, f"{what} key")
        if not _LABEL_VALUE.fullmatch(item):
            raise ValueError(
                f"{what} value {item!r} (key {key!r}) is not a Kubernetes label value: at most 63 characters "
                "[A-Za-z0-9-_.], starting and ending alphanumeric"
            )
    return value


def _dns_subdomain(value: str, what: str) -> str:
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a DNS subdomain name (lower-case a-z 0-9 - ., at most 253)")
    return value


class Toleration(BaseModel):
    """A pod toleration, as the Kubernetes API takes it (snake_case keys)."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """None tolerates every effect."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """``NoExecute`` only: how long the pod stays bound after the taint appears."""

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return _qualified_name(value, "toleration key") if value else value

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without key must use operator Exists (it tolerates every taint)")
        if self.value and not _LABEL_VALUE.fullmatch(self.value):
            raise ValueError(f"toleration value {self.value!r} is not a valid label value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration_seconds is only allowed with effect NoExecute")
        return self


class KubernetesVolume(BaseModel):
    """An extra volume mounted into the stage container: exactly one of ``pvc``, ``config_map``,
    ``secret``, ``empty_dir``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    mount_path: str = Field(pattern=r"^/[^\s:]*$")
    read_only: bool = False
    pvc: str | None = None
    """The name of an existing PersistentVolumeClaim."""
    config_map: str | None = None
    secret: str | None = None
    empty_dir: bool = False
    size_limit: str | None = None
    """``empty_dir`` only: a memory-style quantity (``1Gi``)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_LABEL.fullmatch(value) or value.startswith("mlprov-"):
            raise ValueError(
                f"volume name {value!r} must be a DNS label (a-z 0-9 -, at most 63) not starting with 'mlprov-'"
            )
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount(cls, value: str) -> str:
        if ".." in value.split("/") or any(value == r or value.startswith(r + "/") for r in _RESERVED_MOUNTS):
            raise ValueError(f"mount_path {value!r} must not contain '..' nor be under {list(_RESERVED_MOUNTS)}")
        return value

    @field_validator("pvc", "config_map", "secret")
    @classmethod
    def _source_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _dns_subdomain(value, str(info.field_name)) if value is not None else None

    @field_validator("size_limit")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            memory_bytes(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> KubernetesVolume:
        sources = [n for n in ("pvc", "config_map", "secret") if getattr(self, n)] + (
            ["empty_dir"] if self.empty_dir else []
        )
        if len(sources) != 1:
            raise ValueError(f"volume {self.name!r} needs exactly one of pvc, config_map, secret, empty_dir")
        if self.size_limit and not self.empty_dir:
            raise ValueError("size_limit is for empty_dir volumes")
        return self


class WorkspaceVolume(BaseModel):
    """The job's shared workspace (``inputs/``, ``outputs/``): an ``emptyDir`` (default) or a per-run PVC."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["emptyDir", "pvc"] = "emptyDir"
    size: str | None = None
    """``emptyDir``: its size limit; ``pvc``: the storage requested (required)."""
    storage_class: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            memory_bytes(value)
        return value

    @field_validator("storage_class")
    @classmethod
    def _class(cls, value: str | None) -> str | None:
        return _dns_subdomain(value, "storage_class") if value is not None else None

    @model_validator(mode="after")
    def _pvc_size(self) -> WorkspaceVolume:
        if self.type == "pvc" and not self.size:
            raise ValueError("a pvc workspace needs size (e.g. 20Gi)")
        if self.type == "emptyDir" and self.storage_class:
            raise ValueError("storage_class is for a pvc workspace")
        return self


class KubernetesOptions(BaseModel):
    """What the Kubernetes runtime puts on the service's pods (ignored by the local runtime)."""

    model_config = ConfigDict(extra="forbid")

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    volumes: list[KubernetesVolume] = Field(default_factory=list)
    workspace: WorkspaceVolume = Field(default_factory=WorkspaceVolume)
    service_account: str | None = None
    """Unset: ``MLPROV_KUBERNETES_SERVICE_ACCOUNT``."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra pod labels (``mlprov.io/*`` and ``app.kubernetes.io/managed-by`` are the runtime's)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    priority_class_name: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    """The extended resource ``resources.gpus`` asks for."""

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        return _labels(value, "node_selector")

    @field_validator("labels")
    @classmethod
    def _pod_labels(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = [k for k in value if k.startswith("mlprov.io/") or k == "app.kubernetes.io/managed-by"]
        if reserved:
            raise ValueError(f"labels {reserved} are set by the runtime (identity): remove them")
        return _labels(value, "label")

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            _qualified_name(key, "annotation key")
        return value

    @field_validator("service_account", "priority_class_name")
    @classmethod
    def _names(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _dns_subdomain(value, str(info.field_name)) if value is not None else None

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            _dns_subdomain(name, "image_pull_secrets entry")
        return value

    @field_validator("gpu_resource")
    @classmethod
    def _gpu(cls, value: str) -> str:
        _qualified_name(value, "gpu_resource")
        if "/" not in value:
            raise ValueError(f"gpu_resource {value!r} must be an extended resource name (vendor/name)")
        return value

    @field_validator("volumes")
    @classmethod
    def _unique_volumes(cls, value: list[KubernetesVolume]) -> list[KubernetesVolume]:
        names = [v.name for v in value]
        paths = [v.mount_path for v in value]
        if len(set(names)) != len(names) or len(set(paths)) != len(paths):
            raise ValueError("volumes must not repeat a name or a mount_path")
        return value
