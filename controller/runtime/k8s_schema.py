"""``validate_schema`` (re-exported by :mod:`controller.runtime.k8s_policy`): built-in kinds against
kubernetes-validate's strict OpenAPI schemas, custom resources by a structural check.

One jsonschema validator is built per kind and version instead of re-reading the schema files on every
call as ``kubernetes_validate.validate`` does (same verdicts: tests/unit/infra/test_k8s_policy.py).
kubernetes-validate is a dev dependency, imported only when a check runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

from controller.runtime.k8s_policy import Obj, _check_enum, _get, _group, _ref

__all__ = ["validate_schema"]

# Custom resources: (group, kind) -> (accepted versions, required dotted spec paths).
_CUSTOM: dict[tuple[str, str], tuple[set[str], list[str]]] = {
    ("postgresql.cnpg.io", "Cluster"): ({"v1"}, ["spec.instances", "spec.storage.size"]),
    ("postgresql.cnpg.io", "Database"): ({"v1"}, ["spec.name", "spec.owner", "spec.cluster.name"]),
    ("kafka.strimzi.io", "Kafka"): ({"v1beta2", "v1"}, ["spec.kafka.listeners"]),
    ("kafka.strimzi.io", "KafkaNodePool"): ({"v1beta2", "v1"}, ["spec.replicas", "spec.roles", "spec.storage.type"]),
    ("kafka.strimzi.io", "KafkaTopic"): ({"v1beta2", "v1"}, ["spec.partitions", "spec.replicas"]),
    ("elasticsearch.k8s.elastic.co", "Elasticsearch"): ({"v1"}, ["spec.version", "spec.nodeSets"]),
    ("kibana.k8s.elastic.co", "Kibana"): ({"v1"}, ["spec.version", "spec.count", "spec.elasticsearchRef.name"]),
    ("security.istio.io", "PeerAuthentication"): ({"v1", "v1beta1"}, ["spec.mtls.mode"]),
    ("security.istio.io", "AuthorizationPolicy"): ({"v1", "v1beta1"}, []),
    ("external-secrets.io", "ExternalSecret"): ({"v1", "v1beta1"}, ["spec.secretStoreRef.name", "spec.target.name"]),
    ("kafka.strimzi.io", "KafkaUser"): ({"v1beta2", "v1"}, ["spec.authentication.type"]),
    ("minio.min.io", "Tenant"): ({"v2"}, ["spec.pools"]),
}
_CUSTOM_ENUMS: dict[tuple[str, str], dict[str, set[str]]] = {
    ("security.istio.io", "PeerAuthentication"): {"spec.mtls.mode": {"STRICT", "PERMISSIVE", "DISABLE", "UNSET"}},
    ("security.istio.io", "AuthorizationPolicy"): {"spec.action": {"ALLOW", "DENY", "AUDIT", "CUSTOM"}},
    ("external-secrets.io", "ExternalSecret"): {"spec.secretStoreRef.kind": {"SecretStore", "ClusterSecretStore"}},
    ("kafka.strimzi.io", "KafkaNodePool"): {"spec.storage.type": {"ephemeral", "persistent-claim", "jbod"}},
    ("kafka.strimzi.io", "KafkaUser"): {"spec.authentication.type": {"scram-sha-512", "tls", "tls-external"}},
}


def _check_custom(obj: Obj, versions: set[str], required: list[str]) -> Iterator[str]:
    ref, group = _ref(obj), _group(obj)
    version = str(obj.get("apiVersion", "")).rsplit("/", 1)[-1]
    if version not in versions:
        yield f"{ref}: apiVersion {obj.get('apiVersion')!r} is not one of {sorted(f'{group}/{v}' for v in versions)}"
    if not _get(obj, "metadata.name"):
        yield f"{ref}: metadata.name is required"
    for path in required:
        if _get(obj, path) in (None, "", [], {}):
            yield f"{ref}: {path} is required"
    for path, allowed in _CUSTOM_ENUMS.get((group, str(obj.get("kind"))), {}).items():
        yield from _check_enum(ref, path, _get(obj, path), allowed)
    if obj.get("kind") in {"KafkaTopic", "KafkaNodePool", "KafkaUser"} and not (_get(obj, "metadata.labels") or {}).get(
        "strimzi.io/cluster"
    ):
        yield f"{ref}: metadata.labels['strimzi.io/cluster'] is required (the Kafka cluster it belongs to)"
    spec: Obj = obj.get("spec") or {}
    if obj.get("kind") == "AuthorizationPolicy" and "selector" in spec and not _get(spec, "selector.matchLabels"):
        yield f"{ref}: spec.selector.matchLabels must not be empty (omit the selector for the whole namespace)"
    if obj.get("kind") == "Elasticsearch":
        for i, node_set in enumerate(_get(obj, "spec.nodeSets") or []):
            if not node_set.get("name") or not isinstance(node_set.get("count"), int):
                yield f"{ref}: spec.nodeSets[{i}] needs name and an integer count"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


@functools.cache
def _schema_validator(version: str, api_version: str, kind: str) -> Any:
    """kubernetes-validate's strict schema for ``kind`` as a jsonschema validator, built once per kind and
    version (kubernetes-validate itself re-reads the 6 MB definitions file on every call); None: no such kind.
    The schema is the newest kubernetes-validate ships that is not newer than ``version``, as it picks it."""
    import json
    from importlib import resources

    import jsonschema  # type: ignore[import-untyped]  # kubernetes-validate's dependency; no type information
    from referencing import Registry, Resource

    wanted = _version_tuple(version)
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    versions = sorted(
        (_version_tuple(d.name), d.name)
        for d in root.iterdir()
        if d.name.endswith("-local-strict") and _version_tuple(d.name) <= wanted
    )
    if not versions:
        raise ValueError(f"kubernetes-validate has no schema for Kubernetes {version}")
    folder = root / versions[-1][1]
    name = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_file = folder / f"{kind.lower()}-{name}.json"
    if not schema_file.is_file():
        return None
    schema = json.loads(schema_file.read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate_schema(objs: list[dict[str, Any]], version: str = "1.33") -> list[str]:
    """Problems against Kubernetes ``version``'s strict OpenAPI schema (kubernetes-validate's, unknown
    fields refused) for built-in kinds, and a structural check of the custom resources mlprov deploys;
    an empty list means all pass. Needs the dev extra ``kubernetes-validate`` (imported only here)."""
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]  # see _schema_validator

    problems: list[str] = []
    for obj in objs:
        ref = _ref(obj)
        custom = _CUSTOM.get((_group(obj), str(obj.get("kind"))))
        if custom is not None:
            problems.extend(_check_custom(obj, *custom))
            continue
        validator = _schema_validator(version, str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if validator is None:
            problems.append(f"{ref}: {obj.get('apiVersion')} {obj.get('kind')} is not a Kubernetes {version} kind")
            continue
        error = best_match(validator.iter_errors(obj))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "(object)"
            problems.append(f"{ref}: {where}: {error.message}")
    return problems
