"""Offline checks of Kubernetes objects: what a schema validator does not catch.

``check_objects`` enforces the rules mlprov's manifests (the Helm chart in ``infra/helm/mlprov`` and
the Jobs the Kubernetes runtime builds) must follow, without a cluster:

- Pod Security Standard ``restricted`` on every pod template (host namespaces, privileged, volume
  types, host ports, capabilities, privilege escalation, non-root, seccomp, sysctls, procMount) plus
  mlprov's own rule: ``readOnlyRootFilesystem: true`` on every container.
- Enum values the OpenAPI schema types only as strings (restartPolicy, imagePullPolicy, protocol,
  Service type, toleration operator/effect, dnsPolicy, selector operators, ...).
- Label selectors match: a workload's selector its own pod template; a Service, PodDisruptionBudget
  and NetworkPolicy selector some pod (a template here or in ``context``, or the pods an operator
  makes for a custom resource it knows); an HPA's ``scaleTargetRef`` an object that exists.
- Every pod template is selected by a NetworkPolicy, whenever the objects or ``context`` hold any.
- Images are pinned by digest (``require_digests``); ``:latest`` and untagged images never pass.
- Secrets never appear as literal env values; RBAC rules use no wildcards; names and labels are valid.

``validate_schema`` checks built-in kinds against kubernetes-validate's strict OpenAPI schemas
(Kubernetes 1.33 by default; unknown fields refused), building one validator per kind and version
instead of re-reading the schema files on every call as ``kubernetes_validate.validate`` does (same
verdicts: tests/unit/infra/test_k8s_policy.py). The custom resources mlprov deploys (CloudNativePG,
Strimzi, ECK, Istio, External Secrets, MinIO) are not in that schema: they get a structural check
(known apiVersion/kind, required spec fields, a few enums). kubernetes-validate is a *dev* dependency
(``pip install -e '.[dev]'``): only ``validate_schema`` needs it, and only when it runs.

Both return a list of problems, each naming ``Kind/name`` and the field; an empty list means fine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["check_objects", "validate_schema"]

Obj = dict[str, Any]

_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
# Env names whose literal value would be a secret (names of Secrets, like ``..._SIGNING_SECRET``, pass).
_SECRET_ENV = re.compile(
    r"(TOKENS?|PASSWORD|PASSWD|SECRET_KEY|SECRET_ACCESS_KEY|CLIENT_SECRET|PRIVATE_KEY|API_KEY)$", re.I
)
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")

# Enum-valued fields the schema types as plain strings: pod spec, container, and per kind (dotted paths).
_POD_ENUMS: dict[str, set[str]] = {
    "restartPolicy": {"Always", "OnFailure", "Never"},
    "dnsPolicy": {"ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"},
    "preemptionPolicy": {"PreemptLowerPriority", "Never"},
}
_CONTAINER_ENUMS: dict[str, set[str]] = {
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "terminationMessagePolicy": {"File", "FallbackToLogsOnError"},
}
_KIND_ENUMS: dict[str, dict[str, set[str]]] = {
    "Service": {
        "spec.type": {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"},
        "spec.sessionAffinity": {"None", "ClientIP"},
        "spec.externalTrafficPolicy": {"Cluster", "Local"},
        "spec.internalTrafficPolicy": {"Cluster", "Local"},
        "spec.ipFamilyPolicy": {"SingleStack", "PreferDualStack", "RequireDualStack"},
    },
    "Deployment": {"spec.strategy.type": {"RollingUpdate", "Recreate"}},
    "StatefulSet": {"spec.podManagementPolicy": {"OrderedReady", "Parallel"}},
    "Job": {
        "spec.completionMode": {"NonIndexed", "Indexed"},
        "spec.podReplacementPolicy": {"TerminatingOrFailed", "Failed"},
    },
    "PodDisruptionBudget": {"spec.unhealthyPodEvictionPolicy": {"IfHealthyBudget", "AlwaysAllow"}},
    "PersistentVolumeClaim": {"spec.volumeMode": {"Filesystem", "Block"}},
}
_PROTOCOLS = {"TCP", "UDP", "SCTP"}
_ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
_SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}
_HPA_METRICS = {"Resource", "Pods", "Object", "External", "ContainerResource"}
_HPA_TARGETS = {"Utilization", "Value", "AverageValue"}

# Pods an operator makes for a custom resource: (apiVersion group, kind) -> labels from the CR's name.
_OPERATOR_PODS: dict[tuple[str, str], Callable[[str, Obj], dict[str, str]]] = {
    ("postgresql.cnpg.io", "Cluster"): lambda n, o: {"cnpg.io/cluster": n, "cnpg.io/podRole": "instance"},
    ("kafka.strimzi.io", "Kafka"): lambda n, o: {"strimzi.io/cluster": n, "strimzi.io/kind": "Kafka"},
    ("kafka.strimzi.io", "KafkaNodePool"): lambda n, o: {
        "strimzi.io/cluster": o.get("metadata", {}).get("labels", {}).get("strimzi.io/cluster", ""),
        "strimzi.io/kind": "Kafka",
        "strimzi.io/pool-name": n,
    },
    ("elasticsearch.k8s.elastic.co", "Elasticsearch"): lambda n, o: {
        "elasticsearch.k8s.elastic.co/cluster-name": n,
        "common.k8s.elastic.co/type": "elasticsearch",
    },
    ("kibana.k8s.elastic.co", "Kibana"): lambda n, o: {
        "kibana.k8s.elastic.co/name": n,
        "common.k8s.elastic.co/type": "kibana",
    },
    ("minio.min.io", "Tenant"): lambda n, o: {"v1.min.io/tenant": n},
}


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _ref(obj: Obj) -> str:
    return f"{obj.get('kind', '?')}/{_get(obj, 'metadata.name') or '?'}"


def _group(obj: Obj) -> str:
    api = str(obj.get("apiVersion", ""))
    return api.rsplit("/", 1)[0] if "/" in api else ""


def _pod_templates(obj: Obj) -> Iterator[tuple[str, dict[str, str], Obj]]:
    """(field path of the pod spec, pod labels, pod spec) for every pod the object defines."""
    kind = obj.get("kind")
    if kind == "Pod":
        yield "spec", dict(_get(obj, "metadata.labels") or {}), obj.get("spec") or {}
    elif kind in _WORKLOADS:
        yield (
            "spec.template.spec",
            dict(_get(obj, "spec.template.metadata.labels") or {}),
            _get(obj, "spec.template.spec") or {},
        )
    elif kind == "CronJob":
        yield (
            "spec.jobTemplate.spec.template.spec",
            dict(_get(obj, "spec.jobTemplate.spec.template.metadata.labels") or {}),
            _get(obj, "spec.jobTemplate.spec.template.spec") or {},
        )


def _containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(field) or []):
            yield f"{field}[{i}]({c.get('name', '?')})", c


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels + matchExpressions) selects ``labels``; None selects nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def _check_restricted(ref: str, base: str, spec: Obj) -> Iterator[str]:
    """Pod Security Standard ``restricted`` (Kubernetes 1.33) plus a read-only root filesystem."""
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field) is True:
            yield f"{ref}: {base}.{field} must not be true (restricted)"
    for i, vol in enumerate(spec.get("volumes") or []):
        kinds = set(vol) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            extra = sorted(kinds - _RESTRICTED_VOLUMES)
            yield f"{ref}: {base}.volumes[{i}]({vol.get('name')}) uses {extra} (restricted)"
    pod_sc: Obj = spec.get("securityContext") or {}
    for i, sysctl in enumerate(pod_sc.get("sysctls") or []):
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            yield f"{ref}: {base}.securityContext.sysctls[{i}] {sysctl.get('name')} is not a safe sysctl (restricted)"
    yield from _check_identity(ref, f"{base}.securityContext", pod_sc)
    for where, c in _containers(spec):
        sc: Obj = c.get("securityContext") or {}
        path = f"{base}.{where}.securityContext"
        yield from _check_identity(ref, path, sc)
        if sc.get("privileged") is True:
            yield f"{ref}: {path}.privileged must not be true (restricted)"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{ref}: {path}.allowPrivilegeEscalation must be false (restricted)"
        caps: Obj = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield f"{ref}: {path}.capabilities.drop must include ALL (restricted)"
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            yield f"{ref}: {path}.capabilities.add may only hold NET_BIND_SERVICE (restricted)"
        if sc.get("procMount", "Default") != "Default":
            yield f"{ref}: {path}.procMount must be Default (restricted)"
        if sc.get("readOnlyRootFilesystem") is not True:
            yield f"{ref}: {path}.readOnlyRootFilesystem must be true (mlprov)"
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            yield f"{ref}: {path}.runAsNonRoot must be true here or in the pod securityContext (restricted)"
        seccomp = _get(sc, "seccompProfile.type") or _get(pod_sc, "seccompProfile.type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            yield f"{ref}: {path}.seccompProfile.type must be RuntimeDefault or Localhost, here or in the pod"
        for j, port in enumerate(c.get("ports") or []):
            if port.get("hostPort"):
                yield f"{ref}: {base}.{where}.ports[{j}].hostPort must not be set (restricted)"


def _check_identity(ref: str, path: str, sc: Obj) -> Iterator[str]:
    if sc.get("runAsNonRoot") is False:
        yield f"{ref}: {path}.runAsNonRoot must not be false (restricted)"
    if sc.get("runAsUser") == 0:
        yield f"{ref}: {path}.runAsUser must not be 0 (restricted)"
    if _get(sc, "seccompProfile.type") == "Unconfined":
        yield f"{ref}: {path}.seccompProfile.type must not be Unconfined (restricted)"
    if _get(sc, "appArmorProfile.type") not in {None, "RuntimeDefault", "Localhost"}:
        yield f"{ref}: {path}.appArmorProfile.type must be RuntimeDefault or Localhost (restricted)"
    se_type = _get(sc, "seLinuxOptions.type")
    if se_type not in {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}:
        yield f"{ref}: {path}.seLinuxOptions.type {se_type!r} is not allowed (restricted)"
    if _get(sc, "seLinuxOptions.user") or _get(sc, "seLinuxOptions.role"):
        yield f"{ref}: {path}.seLinuxOptions user/role must not be set (restricted)"


def _check_enum(ref: str, path: str, value: Any, allowed: set[str]) -> Iterator[str]:
    if value is not None and value not in allowed:
        yield f"{ref}: {path} {value!r} is not one of {sorted(allowed)}"


def _check_selector_syntax(ref: str, path: str, selector: Any) -> Iterator[str]:
    if not isinstance(selector, Mapping):
        return
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        yield from _check_enum(ref, f"{path}.matchExpressions[{i}].operator", expr.get("operator"), _SELECTOR_OPERATORS)
        if expr.get("operator") in {"In", "NotIn"} and not expr.get("values"):
            yield f"{ref}: {path}.matchExpressions[{i}].values must not be empty for {expr.get('operator')}"
        if expr.get("operator") in {"Exists", "DoesNotExist"} and expr.get("values"):
            yield f"{ref}: {path}.matchExpressions[{i}].values must be empty for {expr.get('operator')}"
    yield from _check_labels(ref, f"{path}.matchLabels", selector.get("matchLabels"))


def _check_labels(ref: str, path: str, labels: Any) -> Iterator[str]:
    for key, value in (labels or {}).items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
            yield f"{ref}: {path} key {key!r} is not a valid label key"
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            yield f"{ref}: {path}[{key}] value {value!r} is not a valid label value (63 chars, [A-Za-z0-9._-])"


def _check_pod_spec(ref: str, kind: str, base: str, spec: Obj, require_digests: bool) -> Iterator[str]:
    yield from _check_restricted(ref, base, spec)
    for field, allowed in _POD_ENUMS.items():
        yield from _check_enum(ref, f"{base}.{field}", spec.get(field), allowed)
    restart = spec.get("restartPolicy")
    if kind in {"Job", "CronJob"} and restart not in {"OnFailure", "Never"}:
        yield f"{ref}: {base}.restartPolicy must be OnFailure or Never for a Job, got {restart!r}"
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"} and restart not in {None, "Always"}:
        yield f"{ref}: {base}.restartPolicy must be Always for a {kind}, got {restart!r}"
    for i, tol in enumerate(spec.get("tolerations") or []):
        yield from _check_enum(ref, f"{base}.tolerations[{i}].operator", tol.get("operator"), {"Exists", "Equal"})
        yield from _check_enum(ref, f"{base}.tolerations[{i}].effect", tol.get("effect") or None,
                               {"NoSchedule", "PreferNoSchedule", "NoExecute"})  # fmt: skip
        if tol.get("operator") == "Exists" and tol.get("value"):
            yield f"{ref}: {base}.tolerations[{i}].value must be empty with operator Exists"
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    names: set[str] = set()
    for where, c in _containers(spec):
        path = f"{base}.{where}"
        name = str(c.get("name", ""))
        if not _DNS_LABEL.match(name) or len(name) > 63:
            yield f"{ref}: {path}.name {name!r} is not a DNS-1123 label"
        if name in names:
            yield f"{ref}: {path}.name {name!r} is used by another container of the pod"
        names.add(name)
        yield from _check_image(ref, f"{path}.image", c.get("image"), require_digests)
        for field, allowed in _CONTAINER_ENUMS.items():
            yield from _check_enum(ref, f"{path}.{field}", c.get(field), allowed)
        if where.startswith("initContainers"):
            yield from _check_enum(ref, f"{path}.restartPolicy", c.get("restartPolicy"), {"Always"})
        elif c.get("restartPolicy") is not None:
            yield f"{ref}: {path}.restartPolicy is only allowed on init containers (native sidecars)"
        for j, port in enumerate(c.get("ports") or []):
            yield from _check_enum(ref, f"{path}.ports[{j}].protocol", port.get("protocol"), _PROTOCOLS)
        for j, mount in enumerate(c.get("volumeMounts") or []):
            if mount.get("name") not in volumes:
                yield f"{ref}: {path}.volumeMounts[{j}] names volume {mount.get('name')!r}, not in the pod's volumes"
        for j, env in enumerate(c.get("env") or []):
            if "value" in env and _SECRET_ENV.search(str(env.get("name", ""))) and env.get("value"):
                yield f"{ref}: {path}.env[{j}]({env.get('name')}) holds a literal secret; use valueFrom.secretKeyRef"
        for section in ("requests", "limits"):
            for res, qty in (_get(c, f"resources.{section}") or {}).items():
                if not _QUANTITY.match(str(qty)):
                    yield f"{ref}: {path}.resources.{section}.{res} {qty!r} is not a quantity"


def _check_image(ref: str, path: str, image: Any, require_digests: bool) -> Iterator[str]:
    text = str(image or "")
    if not text:
        yield f"{ref}: {path} is empty"
        return
    if _DIGEST.search(text):
        return
    if require_digests:
        yield f"{ref}: {path} {text!r} is not pinned by digest (@sha256:...)"
    last = text.rsplit("/", 1)[-1]
    if ":" not in last or last.endswith(":latest"):
        yield f"{ref}: {path} {text!r} is untagged or :latest"


def _pods_of(objs: Sequence[Obj]) -> list[tuple[str | None, dict[str, str]]]:
    """(namespace, labels) of every pod the objects define or make an operator create."""
    pods: list[tuple[str | None, dict[str, str]]] = []
    for obj in objs:
        ns = _get(obj, "metadata.namespace")
        pods.extend((ns, labels) for _, labels, _ in _pod_templates(obj))
        make = _OPERATOR_PODS.get((_group(obj), str(obj.get("kind"))))
        if make is not None:
            pods.append((ns, make(str(_get(obj, "metadata.name")), obj)))
    return pods


def _same_ns(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _check_kind(obj: Obj, pods: list[tuple[str | None, dict[str, str]]], everything: Sequence[Obj]) -> Iterator[str]:
    ref, kind, ns = _ref(obj), obj.get("kind"), _get(obj, "metadata.namespace")
    spec: Obj = obj.get("spec") or {}
    for path, allowed in _KIND_ENUMS.get(str(kind), {}).items():
        yield from _check_enum(ref, path, _get(obj, path), allowed)
    if kind in _WORKLOADS and spec.get("selector") is not None:
        yield from _check_selector_syntax(ref, "spec.selector", spec["selector"])
        if not _matches(spec["selector"], _get(obj, "spec.template.metadata.labels") or {}):
            yield f"{ref}: spec.selector does not match spec.template.metadata.labels"
    elif kind in _WORKLOADS - {"Job"}:
        yield f"{ref}: spec.selector is required"
    if kind == "Service":
        for i, port in enumerate(spec.get("ports") or []):
            yield from _check_enum(ref, f"spec.ports[{i}].protocol", port.get("protocol"), _PROTOCOLS)
        selector = spec.get("selector")
        if selector and not any(_same_ns(ns, pns) and _matches({"matchLabels": selector}, p) for pns, p in pods):
            yield f"{ref}: spec.selector {selector} matches no pod template"
        yield from _check_labels(ref, "spec.selector", selector)
    if kind == "PodDisruptionBudget":
        yield from _check_selector_syntax(ref, "spec.selector", spec.get("selector"))
        if not any(_same_ns(ns, pns) and _matches(spec.get("selector"), p) for pns, p in pods):
            yield f"{ref}: spec.selector matches no pod template"
        if "minAvailable" in spec and "maxUnavailable" in spec:
            yield f"{ref}: spec.minAvailable and spec.maxUnavailable are mutually exclusive"
    if kind == "NetworkPolicy":
        selector = spec.get("podSelector")
        yield from _check_selector_syntax(ref, "spec.podSelector", selector)
        if selector and not any(_same_ns(ns, pns) and _matches(selector, p) for pns, p in pods):
            yield f"{ref}: spec.podSelector matches no pod template"
        for t in spec.get("policyTypes") or []:
            yield from _check_enum(ref, "spec.policyTypes[]", t, {"Ingress", "Egress"})
        for direction, peers in (("ingress", "from"), ("egress", "to")):
            for i, rule in enumerate(spec.get(direction) or []):
                for j, port in enumerate(rule.get("ports") or []):
                    yield from _check_enum(
                        ref, f"spec.{direction}[{i}].ports[{j}].protocol", port.get("protocol"), _PROTOCOLS
                    )
                for j, peer in enumerate(rule.get(peers) or []):
                    for sel in ("podSelector", "namespaceSelector"):
                        yield from _check_selector_syntax(
                            ref, f"spec.{direction}[{i}].{peers}[{j}].{sel}", peer.get(sel)
                        )
    if kind == "HorizontalPodAutoscaler":
        target: Obj = spec.get("scaleTargetRef") or {}
        if not any(_is_target(o, target, ns) for o in everything):
            yield f"{ref}: spec.scaleTargetRef {target.get('kind')}/{target.get('name')} is not among the objects"
        if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
            yield f"{ref}: spec.minReplicas is greater than spec.maxReplicas"
        for i, metric in enumerate(spec.get("metrics") or []):
            yield from _check_enum(ref, f"spec.metrics[{i}].type", metric.get("type"), _HPA_METRICS)
            mtype = str(metric.get("type", ""))
            key = mtype[0].lower() + mtype[1:] if mtype else ""
            yield from _check_enum(
                ref, f"spec.metrics[{i}].{key}.target.type", _get(metric, f"{key}.target.type"), _HPA_TARGETS
            )
    if kind == "PersistentVolumeClaim":
        for mode in spec.get("accessModes") or []:
            yield from _check_enum(ref, "spec.accessModes[]", mode, _ACCESS_MODES)
    if kind in {"Role", "ClusterRole"}:
        for i, rule in enumerate(obj.get("rules") or []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in (rule.get(field) or []):
                    yield f"{ref}: rules[{i}].{field} uses '*' (least privilege: name them)"


def _is_target(obj: Obj, target: Obj, namespace: str | None) -> bool:
    """Whether ``obj`` is what an HPA's ``scaleTargetRef`` names."""
    return (
        obj.get("kind") == target.get("kind")
        and _get(obj, "metadata.name") == target.get("name")
        and obj.get("apiVersion") == target.get("apiVersion", obj.get("apiVersion"))
        and _same_ns(namespace, _get(obj, "metadata.namespace"))
    )


def _check_network_coverage(objs: Sequence[Obj], policies: Sequence[Obj]) -> Iterator[str]:
    for obj in objs:
        ns = _get(obj, "metadata.namespace")
        for path, labels, _ in _pod_templates(obj):
            covered = any(
                _same_ns(ns, _get(p, "metadata.namespace")) and _matches(_get(p, "spec.podSelector") or {}, labels)
                for p in policies
            )
            if not covered:
                where = path.rsplit(".spec", 1)[0] or "pod"
                yield f"{_ref(obj)}: {where} labels {labels} are selected by no NetworkPolicy"


def check_objects(
    objs: list[dict[str, Any]], *, context: Sequence[dict[str, Any]] = (), require_digests: bool = True
) -> list[str]:
    """Problems with ``objs`` that a schema check misses; an empty list means they pass.

    ``context`` holds objects already in the cluster (the chart's NetworkPolicies, an operator's
    custom resources, a Deployment a Service selects): selectors and NetworkPolicy coverage are
    resolved against ``objs`` plus ``context``, but only ``objs`` are checked. NetworkPolicy coverage
    is checked whenever ``objs`` or ``context`` hold a NetworkPolicy. ``require_digests=False``
    accepts tagged images (a development cluster fed by ``kind load``); ``:latest`` never passes.
    """
    problems: list[str] = []
    everything = [*objs, *context]
    pods = _pods_of(everything)
    seen: set[tuple[str, str, str]] = set()
    for obj in objs:
        ref, kind = _ref(obj), str(obj.get("kind", ""))
        key = (kind, str(_get(obj, "metadata.namespace") or ""), str(_get(obj, "metadata.name") or ""))
        if key in seen:
            problems.append(f"{ref}: defined twice in namespace {key[1]!r}")
        seen.add(key)
        name = str(_get(obj, "metadata.name") or "")
        if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
            problems.append(f"{ref}: metadata.name {name!r} is not a DNS-1123 subdomain")
        problems.extend(_check_labels(ref, "metadata.labels", _get(obj, "metadata.labels")))
        for path, labels, spec in _pod_templates(obj):
            problems.extend(_check_labels(ref, path.removesuffix(".spec") + ".metadata.labels", labels))
            problems.extend(_check_pod_spec(ref, kind, path, spec, require_digests))
        problems.extend(_check_kind(obj, pods, everything))
    policies = [o for o in everything if o.get("kind") == "NetworkPolicy"]
    if policies:
        problems.extend(_check_network_coverage(objs, policies))
    return problems


def validate_schema(objs: list[dict[str, Any]], version: str = "1.33") -> list[str]:
    """Problems against Kubernetes ``version``'s strict OpenAPI schema (kubernetes-validate's, unknown
    fields refused) for built-in kinds, and a structural check of the custom resources mlprov deploys;
    an empty list means all pass (:mod:`controller.runtime.k8s_schema`; needs the dev extra)."""
    from controller.runtime.k8s_schema import validate_schema as validate

    return validate(objs, version)
