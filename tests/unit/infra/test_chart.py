"""infra/helm/mlprov: lint, Kubernetes 1.33 schema, mlprov's policy, and what each values file promises.

Every test renders the chart offline (tests/unit/infra/conftest.py) with the default values, values-dev.yaml
and values-prod.yaml; nothing here needs a cluster. What only a cluster proves: docs/kubernetes.md.
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.catalog import load_services_file
from controller.runtime.k8s_policy import check_objects, validate_schema
from controller.settings import Settings
from tests.unit.infra.chart_support import (
    CHART,
    NAMESPACE,
    find,
    objects,
    one,
    render,
    runtime_objects,
    values_of,
)

CONTROLLER = "mlprov-controller"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The Job and the server Deployment the runtime builds (its own code, controller/runtime/k8s_objects.py)."""
    return runtime_objects(tmp_path_factory.mktemp("workspace"))


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
    return labels


def _pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]) for o in objs if o["kind"] == "Deployment"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _controller(objs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(objs, "Deployment", CONTROLLER)["spec"]["template"]["spec"]["containers"][0]
    return container


# --- lint, schema, policy -----------------------------------------------------------------------


def test_chart_lints_clean_with_each_values_file(flavour: str) -> None:
    import helm_python

    report = helm_python.lint(str(CHART), values_of(flavour), strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == [], problems


def test_every_manifest_passes_the_kubernetes_133_schema_strict(rendered: list[dict[str, Any]]) -> None:
    assert validate_schema(rendered, "1.33") == []


def test_every_manifest_passes_mlprov_policy(
    flavour: str, rendered: list[dict[str, Any]], runtime: list[dict[str, Any]]
) -> None:
    # The runtime's pods exist only at run time: its own Job and server bodies resolve the policies for them.
    assert check_objects(rendered, context=runtime, require_digests=flavour == "prod") == []


def test_the_runtimes_pods_pass_with_the_charts_policies(
    rendered: list[dict[str, Any]], runtime: list[dict[str, Any]]
) -> None:
    policies = find(rendered, "NetworkPolicy")
    assert check_objects(runtime, context=policies) == []
    runtime_policy = one(rendered, "NetworkPolicy", "mlprov-runtime-pods")
    for obj in runtime:
        labels = _pod_labels(obj)
        assert all(labels.get(k) == v for k, v in runtime_policy["spec"]["podSelector"]["matchLabels"].items())
        (expr,) = runtime_policy["spec"]["podSelector"]["matchExpressions"]
        assert labels[expr["key"]] in expr["values"]


def test_policy_catches_a_broken_render() -> None:
    """The checks above can fail: a chart whose controller runs privileged, or selects nothing, is caught."""
    objs = objects(render(values_of("dev")))
    deploy = one(objs, "Deployment", CONTROLLER)
    deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    one(objs, "Service", CONTROLLER)["spec"]["selector"] = {"app.kubernetes.io/component": "nothing"}
    problems = check_objects(objs, require_digests=False)
    assert any("privileged" in p for p in problems)
    assert any(p.startswith(f"Service/{CONTROLLER}: spec.selector") for p in problems)
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    assert validate_schema([deploy]) == []  # the schema types it as a string: only the policy check sees it
    assert any("imagePullPolicy 'Sometimes'" in p for p in check_objects([deploy], require_digests=False))


# --- images -------------------------------------------------------------------------------------


def test_prod_pins_every_image_by_digest() -> None:
    objs = objects(render(values_of("prod")))
    images = [c["image"] for _, t in _pods(objs) for c in t["spec"]["containers"]]
    images.append(_env(_controller(objs))["MLPROV_KUBERNETES_SIDECAR_IMAGE"]["value"])
    catalog = yaml.safe_load(one(objs, "ConfigMap", f"{CONTROLLER}-catalog")["data"]["services.yaml"])
    images += [s["image"] for s in catalog["services"]]
    images += [o["spec"]["imageName"] for o in find(objs, "Cluster")]
    assert len(images) >= 9
    assert all("@sha256:" in i and len(i.rsplit("@sha256:", 1)[1]) == 64 for i in images), images


def test_prod_refuses_to_render_an_unpinned_image() -> None:
    import helm_python

    values = values_of("prod")
    values["images"]["stages"] = {"repository": "registry.example.com/mlprov/stages", "tag": "1.0", "digest": ""}
    with pytest.raises(helm_python.HelmError, match=r"images.stages.digest is empty"):
        render(values)
    values = values_of("prod")
    values["postgres"]["imageName"] = "ghcr.io/cloudnative-pg/postgresql:17.5"
    with pytest.raises(helm_python.HelmError, match="not pinned by digest"):
        render(values)


# --- security -----------------------------------------------------------------------------------


def test_namespace_enforces_pod_security_restricted() -> None:
    objs = objects(render({**values_of("prod"), "namespace": {"create": True, "podSecurity": "restricted"}}))
    labels = one(objs, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["istio-injection"] == "enabled"
    assert find(objects(render(values_of("prod"))), "Namespace") == []  # off by default (kind.sh labels it)


_API_GROUPS = {"job": "batch", "deployment": "apps"}
_VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete", "patch": "patch", "replace": "update"}


def _runtime_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every namespaced Kubernetes API call in controller/ (the python client's
    ``<verb>_namespaced_<kind>`` methods), plus ``watch`` wherever it lists."""
    calls: set[tuple[str, str, str]] = set()
    for path in (Path(__file__).resolve().parents[3] / "controller").rglob("*.py"):
        for verb, kind in re.findall(
            r"\b(create|read|list|delete|patch|replace)_namespaced_([a-z_]+)", path.read_text()
        ):
            resource = "pods/log" if kind == "pod_log" else kind.replace("_", "") + "s"
            group = _API_GROUPS.get(kind, "")
            calls.add((group, resource, _VERBS[verb]))
            if verb == "list":
                calls.add((group, resource, "watch"))
    return calls


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    role = one(rendered, "Role", CONTROLLER)
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    needed = _runtime_calls()
    assert ("batch", "jobs", "create") in needed  # the scan sees the runtime's calls
    assert granted == needed, (sorted(needed - granted), sorted(granted - needed))
    (cluster_role,) = find(rendered, "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    (binding,) = find(rendered, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}]
    job_sa = one(rendered, "ServiceAccount", "mlprov-job")
    assert job_sa["automountServiceAccountToken"] is False
    bound = {
        s["name"] for b in find(rendered, "RoleBinding") + find(rendered, "ClusterRoleBinding") for s in b["subjects"]
    }
    assert bound == {CONTROLLER}


def _allows(policy: dict[str, Any], direction: str, peer_labels: dict[str, str], port: int | str) -> bool:
    peers = "from" if direction == "ingress" else "to"
    for rule in policy["spec"].get(direction, []):
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get(peers, []):
            selector = peer.get("podSelector", {})
            if "namespaceSelector" in peer or "ipBlock" in peer:
                continue
            if all(peer_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
                peer_labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
            ):
                return True
    return False


def test_network_policies_deny_by_default_and_allow_the_needed_flows(
    flavour: str, runtime: list[dict[str, Any]]
) -> None:
    objs = objects(render(values_of(flavour)))
    values = values_of(flavour)
    deny = one(objs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = one(objs, "NetworkPolicy", "allow-dns")
    assert {p["port"] for r in dns["spec"]["egress"] for p in r["ports"]} >= {53}
    ctrl_pod = one(objs, "Deployment", CONTROLLER)["spec"]["template"]["metadata"]["labels"]
    ctrl = one(objs, "NetworkPolicy", CONTROLLER)
    job_pod, server_pod = (_pod_labels(o) for o in runtime)
    assert _allows(ctrl, "ingress", job_pod, "http")  # sidecar -> controller
    assert _allows(ctrl, "egress", server_pod, 8080)  # controller -> server pods
    assert not _allows(ctrl, "egress", job_pod, 8080)  # ... but not into jobs
    pods = one(objs, "NetworkPolicy", "mlprov-runtime-pods")
    assert _allows(pods, "egress", ctrl_pod, 8080)
    assert _allows(pods, "ingress", ctrl_pod, 8080)
    namespaces = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for r in ctrl["spec"]["ingress"]
        for p in r["from"]
        if "namespaceSelector" in p
    }
    assert namespaces == {"airflow", "ingress-nginx"}  # Airflow -> controller, ingress controller -> controller
    targets = {
        "postgres": ({"cnpg.io/cluster": "mlprov-pg"}, 5432),
        "kafka": ({"strimzi.io/cluster": "mlprov-kafka", "strimzi.io/kind": "Kafka"}, 9093),
        "es": ({"elasticsearch.k8s.elastic.co/cluster-name": "mlprov-es"}, 9200),
        "mlflow": ({**ctrl_pod, "app.kubernetes.io/component": "mlflow"}, 5000),
    }
    if values.get("s3", {}).get("mode", "minio") == "minio":
        targets["minio"] = ({"v1.min.io/tenant": "mlprov-minio"}, 9000)
    for name, (labels, port) in targets.items():
        assert _allows(ctrl, "egress", labels, port), name
    # ... and the other side lets the controller in.
    pg = one(objs, "NetworkPolicy", "mlprov-pg")
    assert _allows(pg, "ingress", ctrl_pod, 5432)
    assert not _allows(pg, "ingress", job_pod, 5432)  # jobs never reach the database


def test_istio_strict_mtls_and_an_authorization_policy_per_service(runtime: list[dict[str, Any]]) -> None:
    objs = objects(render(values_of("prod")))
    (peer,) = find(objs, "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    policies = {p["metadata"]["name"]: p for p in find(objs, "AuthorizationPolicy")}
    assert policies["allow-nothing"]["spec"] == {}
    services = {s["metadata"]["name"] for s in find(objs, "Service")}
    assert {CONTROLLER, "mlprov-mlflow"} <= set(policies)
    assert services <= set(policies)
    principals = policies[CONTROLLER]["spec"]["rules"][0]["from"][0]["source"]["principals"]
    assert f"cluster.local/ns/{NAMESPACE}/sa/mlprov-job" in principals
    assert "cluster.local/ns/airflow/sa/airflow-worker" in principals
    assert policies["mlprov-mlflow"]["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        f"cluster.local/ns/{NAMESPACE}/sa/{CONTROLLER}"
    ]
    server_selector = policies["mlprov-servers"]["spec"]["selector"]["matchLabels"]
    assert [all(_pod_labels(o).get(k) == v for k, v in server_selector.items()) for o in runtime] == [False, True]
    assert find(objects(render(values_of("dev"))), "PeerAuthentication") == []


def test_secrets_come_from_secret_objects_only(flavour: str, rendered: list[dict[str, Any]]) -> None:
    env = _env(_controller(rendered))
    for name in ("MLPROV_ADMIN_TOKEN", "MLPROV_S3_ACCESS_KEY", "MLPROV_S3_SECRET_KEY", "MLPROV_DATABASE_URL"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert env["MLPROV_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mlprov-pg-app", "key": "uri"}
    secrets = find(rendered, "Secret")
    if flavour == "prod":
        assert secrets == []
        external = {e["metadata"]["name"]: e for e in find(rendered, "ExternalSecret")}
        assert set(external) == {"mlprov-admin-token", "mlprov-signing-identity", "mlprov-s3"}
        signing = [d["secretKey"] for d in external["mlprov-signing-identity"]["spec"]["data"]]
        assert sorted(signing) == ["ca.pem", "chain.pem", "signer.key", "signer.pem"]  # never the CA key
    else:
        assert find(rendered, "ExternalSecret") == []
        token = base64.b64decode(one(rendered, "Secret", "mlprov-admin-token")["data"]["token"]).decode()
        assert len(token) == 48
        assert "mlprov-signing-identity" not in {s["metadata"]["name"] for s in secrets}  # made from files


def test_signing_identity_is_mounted_read_only_into_mlprov_home(rendered: list[dict[str, Any]]) -> None:
    container = _controller(rendered)
    home = _env(container)["MLPROV_HOME"]["value"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["signing"]["mountPath"] == f"{home}/keys"
    assert mounts["signing"]["readOnly"] is True
    assert mounts["trust"]["mountPath"] == f"{home}/trust"
    volumes = {v["name"]: v for v in one(rendered, "Deployment", CONTROLLER)["spec"]["template"]["spec"]["volumes"]}
    paths = {i["path"] for i in volumes["signing"]["secret"]["items"]}
    assert paths == {"signer.key", "signer.pem", "chain.pem", "ca.pem"}  # provenance.keys.identity_paths
    assert volumes["signing"]["secret"]["secretName"] == _env(container)["MLPROV_KUBERNETES_SIGNING_SECRET"]["value"]


def test_ingress_has_tls() -> None:
    objs = objects(render(values_of("prod")))
    ingress = one(objs, "Ingress", CONTROLLER)
    assert ingress["spec"]["tls"] == [{"hosts": ["mlprov.example.com"], "secretName": "mlprov-controller-tls"}]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"


# --- what the controller is given ---------------------------------------------------------------


def test_controller_env_is_valid_settings(
    flavour: str, rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The MLPROV_* env the chart sets (Secrets replaced by sample values) is accepted by controller.settings."""
    container = _controller(rendered)
    for name, entry in _env(container).items():
        if "value" in entry:
            value = str(entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            value = NAMESPACE
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = "postgresql://app:pw@mlprov-pg-rw:5432/mlprov" if ref["key"] == "uri" else "s3cr3t-" + name.lower()
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLPROV_HOME", str(tmp_path))  # the container's path would be resolved on this machine
    settings = Settings()
    assert settings.runtime == "kubernetes"
    assert settings.environment == "production"
    assert settings.artifact_store == "s3://mlprov/artifacts" or flavour == "prod"
    assert settings.artifact_dir is None
    assert settings.kafka_bootstrap == "mlprov-kafka-kafka-bootstrap.mlprov.svc:9093"
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.elasticsearch_url == "https://mlprov-es-es-http.mlprov.svc:9200"
    assert settings.mlflow_tracking_uri == "http://mlprov-mlflow.mlprov.svc.cluster.local:5000"
    assert settings.effective_controller_url == "http://mlprov-controller.mlprov.svc.cluster.local:8080"
    assert settings.kubernetes_namespace == NAMESPACE
    assert settings.kubernetes_service_account == "mlprov-job"
    assert settings.kubernetes_sidecar_image is not None
    assert settings.kubernetes_resolve_digests is (flavour != "dev")
    assert settings.kafka_events_topic in {t["metadata"]["name"] for t in find(rendered, "KafkaTopic")}
    assert settings.kafka_logs_topic in {t["metadata"]["name"] for t in find(rendered, "KafkaTopic")}


def test_catalog_is_a_valid_services_file_for_the_kubernetes_runtime(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    text = one(rendered, "ConfigMap", f"{CONTROLLER}-catalog")["data"]["services.yaml"]
    path = tmp_path / "services.yaml"
    path.write_text(text)
    specs = load_services_file(path, runtime="kubernetes")
    root = load_services_file(Path(__file__).resolve().parents[3] / "services.yaml")
    assert [s.name for s in specs] == [s.name for s in root]
    for spec, local in zip(specs, root, strict=True):
        assert spec.params == local.params, spec.name  # the same defaults as the embedded demo
        assert spec.locks == local.locks
        assert spec.timeout == local.timeout
        assert local.command is not None
        assert spec.env["STAGE_MODULE"] == local.command[-1]  # python -m stages.<name>


def test_controller_pod_meets_its_own_contract(rendered: list[dict[str, Any]]) -> None:
    deploy = one(rendered, "Deployment", CONTROLLER)
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}  # one writer of the transparency log
    hpa = one(rendered, "HorizontalPodAutoscaler", CONTROLLER)
    assert hpa["spec"]["maxReplicas"] == 1 == deploy["spec"]["replicas"]
    pdb = one(rendered, "PodDisruptionBudget", CONTROLLER)
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    container = _controller(rendered)
    assert container["args"][:1] == ["serve"]  # the image's entrypoint is `mlprov`
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_values_switch_s3_between_minio_and_an_external_bucket() -> None:
    dev = objects(render(values_of("dev")))
    assert len(find(dev, "Tenant")) == 1
    assert _env(_controller(dev))["MLPROV_S3_ENDPOINT"]["value"] == "minio.mlprov.svc:80"
    prod = objects(render(values_of("prod")))
    assert find(prod, "Tenant") == []
    assert _env(_controller(prod))["MLPROV_S3_ENDPOINT"]["value"] == "s3.eu-west-1.amazonaws.com"
    assert _env(_controller(prod))["MLPROV_ARTIFACT_STORE"]["value"] == "s3://example-mlprov-artifacts/artifacts"


def test_optional_services_can_be_external(runtime: list[dict[str, Any]]) -> None:
    values = copy.deepcopy(values_of("dev"))
    values["kafka"] = {"enabled": False, "externalBootstrap": "kafka.example:9092"}
    values["elasticsearch"] = {"enabled": False, "externalUrl": "https://es.example:9200", "externalSecret": "es-key"}
    values["kibana"] = {"enabled": False}
    objs = objects(render(values))
    assert find(objs, "Kafka") == find(objs, "Elasticsearch") == find(objs, "Kibana") == []
    env = _env(_controller(objs))
    assert env["MLPROV_KAFKA_BOOTSTRAP"]["value"] == "kafka.example:9092"
    assert "MLPROV_KAFKA_SECURITY_PROTOCOL" not in env
    assert env["MLPROV_ELASTICSEARCH_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "es-key", "key": "api-key"}
    assert check_objects(objs, context=runtime, require_digests=False) == []
    assert validate_schema(objs) == []


def test_data_services_speak_tls_and_admit_only_the_controller(rendered: list[dict[str, Any]]) -> None:
    (cluster,) = find(rendered, "Cluster")
    assert cluster["spec"]["postgresql"]["pg_hba"][0] == "hostnossl all all all reject"
    assert cluster["spec"]["enableSuperuserAccess"] is False
    ctrl_selector = one(rendered, "Deployment", CONTROLLER)["spec"]["selector"]["matchLabels"]
    (kafka,) = find(rendered, "Kafka")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        assert listener["tls"] is True
        assert listener["authentication"] == {"type": "scram-sha-512"}
        # Strimzi's own per-listener NetworkPolicy would otherwise admit every pod of the namespace.
        assert listener["networkPolicyPeers"] == [{"podSelector": {"matchLabels": ctrl_selector}}]
    (user,) = find(rendered, "KafkaUser")
    resources = {(a["resource"]["type"], a["resource"].get("name")) for a in user["spec"]["authorization"]["acls"]}
    assert resources == {("topic", "mlprov."), ("group", "mlprov-log-index"), ("cluster", None)}
    assert _env(_controller(rendered))["MLPROV_ELASTICSEARCH_URL"]["value"].startswith("https://")


@pytest.mark.parametrize(
    "overrides",
    [
        {"secrets": {"mode": "external"}, "istio": {"enabled": True}},  # MinIO keys from the store too
        {"secrets": {"mode": "none"}, "kafka": {"tls": False}, "namespace": {"create": True}},
        {"controller": {"hpa": {"enabled": False}, "pdb": {"enabled": False}, "ingress": {"enabled": False}}},
    ],
    ids=["external-secrets-istio", "plain-kafka", "bare-controller"],
)
def test_other_value_combinations_stay_valid(overrides: dict[str, Any], runtime: list[dict[str, Any]]) -> None:
    values = values_of("dev")
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value}
    objs = objects(render(values))
    assert validate_schema(objs) == []
    assert check_objects(objs, context=runtime, require_digests=False) == []
    secrets = {s["metadata"]["name"] for s in find(objs, "Secret")}
    external = {s["metadata"]["name"] for s in find(objs, "ExternalSecret")}
    assert not secrets & external
    assert ("mlprov-admin-token" in secrets | external) is (values["secrets"]["mode"] != "none")
