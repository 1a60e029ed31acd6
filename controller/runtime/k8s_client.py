"""Building the Kubernetes API clients and the runtime from ``Settings`` (the only place that loads config).

In a pod (``KUBERNETES_SERVICE_HOST`` set, or ``MLPROV_KUBERNETES_IN_CLUSTER=true``) the service
account's in-cluster config; otherwise ``MLPROV_KUBERNETES_KUBECONFIG`` / ``$KUBECONFIG`` /
``~/.kube/config`` with ``MLPROV_KUBERNETES_CONTEXT``. A configuration that cannot be loaded, or a
missing sidecar image, is a :class:`~controller.errors.ControllerError` at start-up, not at launch.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.errors import ControllerError
from controller.logging import get_logger
from controller.runtime.k8s_objects import ObjectConfig

if TYPE_CHECKING:
    from controller.runtime.kubernetes import KubernetesRuntime
    from controller.settings import Settings

__all__ = ["KubernetesApis", "build_kubernetes_runtime", "load_apis", "object_config", "registry_credentials"]

log = get_logger(__name__)


@dataclass(frozen=True)
class KubernetesApis:
    """The typed API groups the controller uses (all from one ``ApiClient``)."""

    batch: Any
    core: Any
    apps: Any
    authn: Any
    """``AuthenticationV1Api`` (TokenReview)."""


def load_apis(settings: Settings) -> KubernetesApis:
    """Load in-cluster or kubeconfig configuration and return the API groups."""
    from kubernetes import client, config  # type: ignore[import-untyped]  # the client ships no type information

    in_cluster = settings.kubernetes_in_cluster
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=str(settings.kubernetes_kubeconfig) if settings.kubernetes_kubeconfig else None,
                context=settings.kubernetes_context,
                client_configuration=configuration,
            )
    except Exception as exc:  # ConfigException, a missing file, a bad YAML
        where = "in-cluster service account" if in_cluster else "kubeconfig"
        raise ControllerError(
            f"MLPROV_RUNTIME=kubernetes: cannot load the {where} configuration ({exc}); set "
            "MLPROV_KUBERNETES_KUBECONFIG / KUBECONFIG, or run the controller in the cluster"
        ) from exc
    api = client.ApiClient(configuration)
    return KubernetesApis(
        batch=client.BatchV1Api(api),
        core=client.CoreV1Api(api),
        apps=client.AppsV1Api(api),
        authn=client.AuthenticationV1Api(api),
    )


def registry_credentials(core: Any, namespace: str, names: list[str], timeout: float) -> dict[str, tuple[str, str]]:
    """Registry -> (user, password) from the ``kubernetes.io/dockerconfigjson`` pull Secrets ``names``
    (for the digest resolver); a Secret that cannot be read is logged and skipped."""
    found: dict[str, tuple[str, str]] = {}
    for name in names:
        try:
            secret = core.read_namespaced_secret(name, namespace, _request_timeout=timeout)
            raw = base64.b64decode((secret.data or {}).get(".dockerconfigjson", ""))
            auths = json.loads(raw or b"{}").get("auths") or {}
        except Exception as exc:  # no permission, missing Secret, bad JSON: resolve anonymously
            log.warning("pull_secret_unreadable", secret=name, error=str(exc)[:200])
            continue
        for registry, entry in auths.items():
            host = registry.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
            if "docker.io" in host:
                host = "registry-1.docker.io"
            if entry.get("username") and entry.get("password"):
                found[host] = (str(entry["username"]), str(entry["password"]))
            elif entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                found[host] = (user, password)
    return found


def object_config(settings: Settings) -> ObjectConfig:
    if not settings.kubernetes_sidecar_image:
        raise ControllerError(
            "MLPROV_RUNTIME=kubernetes needs MLPROV_KUBERNETES_SIDECAR_IMAGE (the mlprov image the sidecar runs)"
        )
    return ObjectConfig(
        namespace=settings.kubernetes_namespace,
        service_account=settings.kubernetes_service_account,
        sidecar_image=settings.kubernetes_sidecar_image,
        init_image=settings.kubernetes_init_image or settings.kubernetes_sidecar_image,
        sidecar_command=tuple(settings.kubernetes_sidecar_command),
        audience=settings.kubernetes_token_audience,
        token_expiration=settings.kubernetes_token_expiration,
        sidecar_credential=settings.kubernetes_sidecar_credential,
        signing_secret=settings.kubernetes_signing_secret,
        controller_url=settings.effective_controller_url,
        default_deadline=settings.kubernetes_timeout_default,
        image_pull_secrets=tuple(settings.kubernetes_image_pull_secrets),
    )


def build_kubernetes_runtime(settings: Settings, apis: KubernetesApis | None = None) -> KubernetesRuntime:
    from controller.runtime.kubernetes import KubernetesRuntime

    config = object_config(settings)
    apis = apis or load_apis(settings)
    resolver = None
    if settings.kubernetes_resolve_digests:
        from controller.services.images import ImageResolver

        credentials = registry_credentials(
            apis.core, config.namespace, settings.kubernetes_image_pull_secrets, settings.kubernetes_request_timeout
        )
        resolver = ImageResolver(
            credentials=credentials,
            insecure=settings.kubernetes_registry_insecure,
            timeout=settings.kubernetes_request_timeout,
        ).resolve
    return KubernetesRuntime(
        resolver=resolver,
        batch=apis.batch,
        core=apis.core,
        apps=apis.apps,
        config=config,
        request_timeout=settings.kubernetes_request_timeout,
        watch_timeout=settings.kubernetes_watch_timeout,
        ttl_after_collection=settings.kubernetes_ttl_after_collection,
    )
