"""The service catalog's spec model and ``services.yaml`` loading.

A service (JSON over the API, the same keys in YAML)::

    {name, kind: job|server|external, command: [argv], image, env: {}, params: {},
     resources: {cpu, memory, gpus}, locks: [names], timeout,
     port, health_path          # server
     url, method, headers,      # external
     kubernetes: {node_selector, tolerations, volumes, workspace, service_account,
                  image_pull_secrets, labels, annotations, priority_class_name, gpu_resource}}

``job`` needs ``command`` or ``image`` (or both: on Kubernetes ``command`` then replaces the image's
entrypoint, as a container's ``command`` does, and the image's ``CMD`` is not used; the local runtime runs
``command`` as a process and ignores ``image``, which stays in the catalog); ``server`` also ``port`` and
``health_path``; ``external`` needs ``url`` and ``method`` (and no command/image). How the controller
runs servers and calls external services: ``docs/service-kinds.md``. Names are ``[a-z0-9][a-z0-9_.-]{0,62}`` and
never ``.``/``..``: a bad name raises :class:`~controller.errors.InvalidNameError` (HTTP 400), other
problems a pydantic ``ValidationError`` (HTTP 422), both naming the field.

``kubernetes`` holds what only the Kubernetes runtime uses (:class:`KubernetesOptions`, defined with the
quantity readers in :mod:`controller.catalog_k8s` and re-exported here); it is checked
at registration against the Kubernetes API's own rules (label keys and values, toleration operator and
effect, volume names and sources, quantities), so a service that cannot become a valid Job is refused
with a 422 naming the field, never at launch. That a ``job`` needs an ``image`` on Kubernetes depends on
the controller's runtime: :func:`validate_for_runtime` (validation context ``{"runtime": ...}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller.catalog_k8s import (
    KubernetesOptions,
    KubernetesVolume,
    Toleration,
    WorkspaceVolume,
    memory_bytes,
    millicores,
)
from controller.errors import CatalogError, InvalidInputError, InvalidNameError
from controller.store.models import ServiceKind

__all__ = [
    "LOCK_NAME_PATTERN",
    "SERVICE_NAME_PATTERN",
    "KubernetesOptions",
    "KubernetesVolume",
    "Resources",
    "ServiceSpec",
    "Toleration",
    "WorkspaceVolume",
    "load_services_file",
    "memory_bytes",
    "millicores",
    "read_service_entries",
    "validate_for_runtime",
    "validate_service_name",
]

SERVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
LOCK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_SERVICE_NAME = re.compile(SERVICE_NAME_PATTERN)
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_IMAGE_REF = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+|-+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+|-+[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def validate_service_name(name: str) -> str:
    """``name`` if it is a valid service name; :class:`InvalidNameError` (400) otherwise."""
    if not _SERVICE_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidNameError(
            f"service name {name!r} is not allowed: use 1-63 characters from a-z 0-9 _ . - starting with a "
            "letter or digit (no '/', '\\' or '..')"
        )
    return name


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: str | float | None = None
    """Cores (``2``, ``0.5``) or millicores (``500m``)."""
    memory: str | int | None = None
    """Bytes or a Kubernetes quantity (``512Mi``, ``2Gi``)."""
    gpus: int = Field(default=0, ge=0, le=64)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            millicores(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            memory_bytes(value)
        return value


LockName = Annotated[str, Field(pattern=LOCK_NAME_PATTERN)]


class ServiceSpec(BaseModel):
    """One catalog entry; validated the same way from the API and from ``services.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=255, json_schema_extra={"pattern": SERVICE_NAME_PATTERN})
    kind: ServiceKind = ServiceKind.JOB
    description: str | None = Field(default=None, max_length=2000)
    command: list[str] | None = Field(default=None, min_length=1)
    """argv, run with the job's workspace as working directory (never a shell string). With ``image`` on
    Kubernetes: the container's ``command`` (replaces the image's entrypoint)."""
    image: str | None = Field(default=None, min_length=1, max_length=512, validate_default=True)
    """An OCI image reference; required by the Kubernetes runtime, ignored by the local runtime."""
    env: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    """Default parameters; a task's ``params`` are merged over them."""
    resources: Resources = Field(default_factory=Resources)
    locks: list[LockName] = Field(default_factory=list)
    timeout: float | None = Field(default=None, gt=0)
    """Seconds."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """``server``: the port it listens on."""
    health_path: str | None = Field(default=None, pattern=r"^/[^\s]*$")
    """``server``: a path answering 2xx when ready, e.g. ``/healthz``."""
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """``external``: the endpoint the controller calls."""
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None = None
    """``external``: the HTTP method."""
    headers: dict[str, str] = Field(default_factory=dict)
    """``external``: request headers (values of secret-looking names are redacted in every record)."""
    kubernetes: KubernetesOptions | None = None
    """Pod placement and volumes for the Kubernetes runtime (:class:`KubernetesOptions`)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # Raises InvalidNameError, which pydantic does not wrap: the API answers 400, not 422.
        return validate_service_name(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value[0].strip():
            raise ValueError("command[0] must name a program")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"environment variable names must match [A-Za-z_][A-Za-z0-9_]*: {bad}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", k)]
        if bad or any("\n" in v or "\r" in v for v in value.values()):
            raise ValueError(f"header names must be HTTP tokens and values single lines: {bad or 'a value'}")
        return value

    @field_validator("locks")
    @classmethod
    def _unique_locks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("locks must not repeat a name")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not _IMAGE_REF.fullmatch(value):
            raise ValueError(
                f"image {value!r} is not an image reference: [registry/]repository[:tag][@sha256:<64 hex>]"
            )
        runtime = info.context.get("runtime") if isinstance(info.context, dict) else None
        kind = info.data.get("kind", ServiceKind.JOB)
        if value is None and runtime == "kubernetes" and kind is not ServiceKind.EXTERNAL:
            raise ValueError(f"the kubernetes runtime runs a {ServiceKind(kind).value} service from an image")
        return value

    @model_validator(mode="after")
    def _runtime_fields(self) -> ServiceSpec:
        if self.kubernetes is not None and self.kind is ServiceKind.EXTERNAL:
            raise ValueError("kubernetes: an external service runs no pod")
        return self

    @model_validator(mode="after")
    def _kind_fields(self) -> ServiceSpec:
        if self.kind is ServiceKind.EXTERNAL:
            if not self.url or not self.method:
                raise ValueError("an external service needs url (http(s)://...) and method (GET, POST, ...)")
            if self.command or self.image:
                raise ValueError("an external service is called over HTTP: remove command/image")
            return self
        if not self.command and not self.image:
            raise ValueError(f"a {self.kind.value} service needs command (an argv list) or image")
        if self.kind is ServiceKind.SERVER and (self.port is None or not self.health_path):
            raise ValueError("a server service needs port and health_path (e.g. 8000 and /healthz)")
        if self.url or self.method or self.headers:
            raise ValueError(f"url/method/headers are for external services, not {self.kind.value}")
        return self


def validate_for_runtime(spec: ServiceSpec, runtime: str) -> ServiceSpec:
    """``spec`` re-validated for the controller's runtime (on ``kubernetes`` a job or server needs an
    ``image``); a pydantic ``ValidationError`` naming the field otherwise (the API answers 422)."""
    return ServiceSpec.model_validate(spec.model_dump(exclude_unset=True), context={"runtime": runtime})


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "(entry)"
    return f"{where}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def read_service_entries(path: Path, *, option: str = "MLPROV_SERVICES_FILE") -> list[Any]:
    """The raw entries of ``services.yaml`` (a list, or ``{services: [...]}``), unvalidated;
    :class:`CatalogError` in one line naming the file (and ``option``, what to fix) when it cannot be read."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the services file ({exc.strerror}): fix {option}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]}): fix the file") from exc
    if data is None:
        return []
    entries = data.get("services") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: expected a list of services (or `services:` holding one)")
    return entries


def load_services_file(path: Path, runtime: str | None = None) -> list[ServiceSpec]:
    """Parse and validate ``services.yaml``; :class:`CatalogError` names the file, entry and field.

    The file is either a list of services or ``{services: [...]}``.
    """
    entries = read_service_entries(path)
    specs: list[ServiceSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = f"entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"
        if not isinstance(entry, dict):
            raise CatalogError(f"{path}: {label}: a service must be a mapping of keys (name, kind, command, ...)")
        try:
            spec = ServiceSpec.model_validate(entry, context={"runtime": runtime} if runtime else None)
        except ValidationError as exc:
            problems = "; ".join(_describe(dict(e)) for e in exc.errors())
            raise CatalogError(f"{path}: {label}: {problems}") from exc
        except InvalidInputError as exc:
            raise CatalogError(f"{path}: {label}: name: {exc}") from exc
        if spec.name in seen:
            raise CatalogError(f"{path}: {label}: name: {spec.name!r} is defined twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs
