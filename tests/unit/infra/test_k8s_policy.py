"""controller/runtime/k8s_policy.py: a compliant set passes, and every rule catches its violation."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from controller.runtime.k8s_policy import check_objects, validate_schema

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example/mlprov/stages@{DIGEST}"
SIDECAR = f"registry.example/mlprov/sidecar@{DIGEST}"
JOB_LABELS = {"app.kubernetes.io/name": "mlprov-job", "mlprov.io/component": "job", "mlprov.io/task-id": "t-1"}
CTRL_LABELS = {"app.kubernetes.io/name": "mlprov", "app.kubernetes.io/component": "controller"}


def _sc() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod(image: str, labels: dict[str, str], restart: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "restartPolicy": restart,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [
                {
                    "name": "mlprov-sidecar",
                    "image": SIDECAR,
                    "restartPolicy": "Always",
                    "securityContext": _sc(),
                    "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                    "env": [
                        {"name": "MLPROV_TASK_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "token"}}}
                    ],
                }
            ],
            "containers": [
                {
                    "name": "stage",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "securityContext": _sc(),
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1.5Gi"}},
                    "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                    "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                }
            ],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
            "dnsPolicy": "ClusterFirst",
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def _good() -> list[dict[str, Any]]:
    meta = {"namespace": "mlprov"}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "mlprov-t-1-1", "labels": dict(JOB_LABELS), **meta},
        "spec": {"backoffLimit": 0, "template": _pod(IMAGE, JOB_LABELS, "Never")},
    }
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mlprov-controller", "labels": dict(CTRL_LABELS), **meta},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(CTRL_LABELS)},
            "template": _pod(IMAGE, CTRL_LABELS, "Always"),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "mlprov-controller", **meta},
        "spec": {"type": "ClusterIP", "selector": dict(CTRL_LABELS), "ports": [{"port": 80, "targetPort": "http"}]},
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "mlprov-controller", **meta},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(CTRL_LABELS)}},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "mlprov-controller", **meta},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlprov-controller"},
            "minReplicas": 1,
            "maxReplicas": 2,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", **meta},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "jobs", **meta},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "mlprov.io/component", "operator": "In", "values": ["job"]}]},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": dict(CTRL_LABELS)}}], "ports": [{"port": 8080}]}],
        },
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "mlprov-controller", **meta},
        "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"]}],
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "home", **meta},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    return [job, deploy, service, pdb, hpa, deny, allow, role, pvc]


def test_a_compliant_set_passes_both_checks() -> None:
    objs = _good()
    assert check_objects(objs) == []
    assert validate_schema(objs) == []


def _job_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objs[0]["spec"]["template"]["spec"]
    return spec


def _stage(objs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = _job_pod(objs)["containers"][0]
    return container


def _set(path: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    """A mutation setting ``objs[i].a.b.c`` (path ``"i.a.b.c"``; list indexes as numbers; keys with dots
    in brackets: ``"0.metadata.labels[mlprov.io/task-id]"``)."""

    def apply(objs: list[dict[str, Any]]) -> None:
        parts = [a or b for a, b in re.findall(r"\[([^\]]+)\]|([^.\[\]]+)", path)]
        node: Any = objs
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


_DELETE = object()
POD = "0.spec.template.spec"
STAGE = f"{POD}.containers.0"
SIDE = f"{POD}.initContainers.0"

RULES: list[tuple[str, Callable[[list[dict[str, Any]]], None], str]] = [
    # Pod Security Standard restricted
    ("hostNetwork", _set(f"{POD}.hostNetwork", True), "hostNetwork must not be true"),
    ("hostPath", _set(f"{POD}.volumes.0", {"name": "workspace", "hostPath": {"path": "/"}}), "uses ['hostPath']"),
    ("privileged", _set(f"{STAGE}.securityContext.privileged", True), "privileged must not be true"),
    ("escalation", _set(f"{STAGE}.securityContext.allowPrivilegeEscalation", True), "allowPrivilegeEscalation"),
    ("escalation unset", _set(f"{SIDE}.securityContext.allowPrivilegeEscalation", _DELETE), "allowPrivilegeEscalation"),
    ("drop ALL", _set(f"{STAGE}.securityContext.capabilities", {"drop": ["NET_RAW"]}), "drop must include ALL"),
    ("add cap", _set(f"{STAGE}.securityContext.capabilities.add", ["SYS_ADMIN"]), "NET_BIND_SERVICE"),
    ("non-root unset", _set(f"{POD}.securityContext.runAsNonRoot", _DELETE), "runAsNonRoot must be true"),
    ("container root", _set(f"{STAGE}.securityContext.runAsUser", 0), "runAsUser must not be 0"),
    ("seccomp unset", _set(f"{POD}.securityContext.seccompProfile", _DELETE), "seccompProfile.type must be"),
    ("seccomp unconfined", _set(f"{SIDE}.securityContext.seccompProfile", {"type": "Unconfined"}), "Unconfined"),
    ("sysctl", _set(f"{POD}.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "safe sysctl"),
    ("hostPort", _set(f"{STAGE}.ports.0.hostPort", 80), "hostPort must not be set"),
    ("procMount", _set(f"{STAGE}.securityContext.procMount", "Unmasked"), "procMount"),
    ("read-only root", _set(f"{SIDE}.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
    # enums
    ("job restartPolicy", _set(f"{POD}.restartPolicy", "Always"), "OnFailure or Never for a Job"),
    ("pod restartPolicy", _set(f"{POD}.restartPolicy", "Sometimes"), "restartPolicy 'Sometimes'"),
    ("deploy restartPolicy", _set("1.spec.template.spec.restartPolicy", "Never"), "must be Always for a Deployment"),
    ("sidecar restartPolicy", _set(f"{SIDE}.restartPolicy", "OnFailure"), "restartPolicy 'OnFailure'"),
    ("container restartPolicy", _set(f"{STAGE}.restartPolicy", "Always"), "only allowed on init containers"),
    ("imagePullPolicy", _set(f"{STAGE}.imagePullPolicy", "Sometimes"), "imagePullPolicy"),
    ("port protocol", _set(f"{STAGE}.ports.0.protocol", "tcp"), "protocol 'tcp'"),
    ("service type", _set("2.spec.type", "Internal"), "spec.type 'Internal'"),
    ("service protocol", _set("2.spec.ports.0.protocol", "HTTP"), "spec.ports[0].protocol"),
    ("toleration operator", _set(f"{POD}.tolerations.0.operator", "Is"), "operator 'Is'"),
    ("toleration effect", _set(f"{POD}.tolerations.0.effect", "NoRun"), "effect 'NoRun'"),
    ("dnsPolicy", _set(f"{POD}.dnsPolicy", "ClusterLast"), "dnsPolicy"),
    ("strategy", _set("1.spec.strategy.type", "BlueGreen"), "strategy.type"),
    ("policyTypes", _set("5.spec.policyTypes", ["Inbound"]), "policyTypes[]"),
    ("selector operator", _set("6.spec.podSelector.matchExpressions.0.operator", "Has"), "operator 'Has'"),
    ("hpa target type", _set("4.spec.metrics.0.resource.target.type", "Percent"), "target.type"),
    ("access mode", _set("8.spec.accessModes", ["ReadWriteAll"]), "accessModes[]"),
    # selectors and references
    ("deploy selector", _set("1.spec.selector.matchLabels[app.kubernetes.io/name]", "other"), "does not match"),
    ("service selector", _set("2.spec.selector", {"app": "nothing"}), "matches no pod template"),
    ("pdb selector", _set("3.spec.selector", {"matchLabels": {"app": "nothing"}}), "matches no pod template"),
    ("netpol selector", _set("6.spec.podSelector.matchExpressions.0.values", ["server"]), "matches no pod template"),
    ("hpa target", _set("4.spec.scaleTargetRef.name", "missing"), "scaleTargetRef Deployment/missing"),
    ("hpa bounds", _set("4.spec.minReplicas", 5), "minReplicas is greater"),
    ("netpol coverage", _set("5.spec.podSelector", {"matchLabels": {"app": "x"}}), "selected by no NetworkPolicy"),
    # images, secrets, names, RBAC, quantities
    ("digest", _set(f"{STAGE}.image", "registry.example/mlprov/stages:1.0"), "not pinned by digest"),
    ("latest", _set(f"{STAGE}.image", "registry.example/mlprov/stages"), "untagged or :latest"),
    ("literal secret", _set(f"{STAGE}.env", [{"name": "MLPROV_ADMIN_TOKEN", "value": "abc"}]), "literal secret"),
    ("container name", _set(f"{STAGE}.name", "Stage_1"), "DNS-1123 label"),
    ("duplicate container", _set(f"{STAGE}.name", "mlprov-sidecar"), "used by another container"),
    ("label value", _set("0.metadata.labels[mlprov.io/task-id]", "manual__2026-11-22T12:00:00+00:00"), "label value"),
    ("object name", _set("0.metadata.name", "Job_1"), "DNS-1123 subdomain"),
    ("volume mount", _set(f"{STAGE}.volumeMounts.0.name", "nowhere"), "not in the pod's volumes"),
    ("quantity", _set(f"{STAGE}.resources.limits.memory", "1.5 GB"), "is not a quantity"),
    ("rbac wildcard", _set("7.rules.0.verbs", ["*"]), "uses '*'"),
]


@pytest.mark.parametrize(("rule", "mutate", "expected"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_catches_its_violation(
    rule: str, mutate: Callable[[list[dict[str, Any]]], None], expected: str
) -> None:
    objs = copy.deepcopy(_good())
    mutate(objs)
    problems = check_objects(objs)
    assert any(expected in p for p in problems), (rule, problems)


def test_problems_name_kind_name_and_field() -> None:
    objs = _good()
    _set(f"{STAGE}.securityContext.privileged", True)(objs)
    (problem,) = check_objects(objs)
    assert problem.startswith("Job/mlprov-t-1-1: spec.template.spec.containers[0](stage).securityContext.privileged")


def test_container_settings_override_a_compliant_pod_level() -> None:
    objs = _good()
    _set(f"{STAGE}.securityContext.runAsNonRoot", False)(objs)
    assert any("runAsNonRoot must not be false" in p for p in check_objects(objs))


def test_tags_pass_when_digests_are_not_required_but_latest_never_does() -> None:
    objs = _good()
    _set(f"{STAGE}.image", "mlprov-stages:dev")(objs)
    assert check_objects(objs, require_digests=False) == []
    _set(f"{STAGE}.image", "mlprov-stages:latest")(objs)
    assert any(":latest" in p for p in check_objects(objs, require_digests=False))


def test_context_resolves_selectors_and_coverage_without_being_checked() -> None:
    objs = _good()
    job, policies = objs[0], [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert check_objects([job]) == []  # a lone Job: no NetworkPolicy to be covered by
    assert check_objects([job], context=policies) == []
    job["spec"]["template"]["metadata"]["labels"]["mlprov.io/component"] = "server"
    narrow = copy.deepcopy(policies[1])
    assert any("selected by no NetworkPolicy" in p for p in check_objects([job], context=[narrow]))
    bad_context = copy.deepcopy(objs[1])
    bad_context["spec"]["template"]["spec"]["hostNetwork"] = True
    assert check_objects([objs[2]], context=[bad_context]) == []  # the Service's pods exist; context not checked


def test_operator_pods_satisfy_selectors() -> None:
    cluster = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "pg", "namespace": "m"}}
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "pg", "namespace": "m"},
        "spec": {"podSelector": {"matchLabels": {"cnpg.io/cluster": "pg"}}, "policyTypes": ["Ingress"]},
    }
    assert check_objects([policy], context=[cluster]) == []
    assert any("matches no pod template" in p for p in check_objects([policy]))


def test_duplicates_are_reported() -> None:
    objs = _good()
    assert any("defined twice" in p for p in check_objects([*objs, copy.deepcopy(objs[2])]))


def test_validate_schema_reports_builtin_and_custom_problems() -> None:
    objs = _good()
    objs[0]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"  # unknown field: strict
    objs[1]["spec"]["replicas"] = "one"
    topic = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "mlprov.task-events"},
        "spec": {"partitions": 3},
    }
    peer = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default"},
        "spec": {"mtls": {"mode": "STRICTER"}},
    }
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    problems = validate_schema([*objs, topic, peer, unknown])
    joined = "\n".join(problems)
    assert "Job/mlprov-t-1-1: spec.template.spec.containers.0" in joined
    assert "Deployment/mlprov-controller: spec.replicas" in joined
    assert "KafkaTopic/mlprov.task-events: spec.replicas is required" in joined
    assert "strimzi.io/cluster" in joined
    assert "PeerAuthentication/default: spec.mtls.mode 'STRICTER'" in joined
    assert "Widget/w: example.com/v1 Widget is not a Kubernetes 1.33 kind" in joined
    assert len(problems) == 6, problems


def test_validate_schema_agrees_with_kubernetes_validate() -> None:
    """validate_schema builds kubernetes-validate's strict schema once per kind; the verdicts are the same."""
    import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information

    good = _good()
    broken = copy.deepcopy(good)
    broken[0]["spec"]["backoffLimit"] = "zero"
    broken[1]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    broken[2]["spec"]["extra"] = True
    del broken[3]["spec"]["selector"]["matchLabels"]
    broken[5]["spec"]["policyTypes"] = "Ingress"
    for obj in [*good, *broken]:
        try:
            kubernetes_validate.validate(obj, "1.33", strict=True)
            expected = True
        except kubernetes_validate.ValidationError:
            expected = False
        assert (validate_schema([obj]) == []) is expected, obj["kind"]
