"""infra/helm/airflow-values.yaml: the official Airflow chart's values agree with the repository and the mlprov chart.

The Airflow chart is not vendored here (it is installed from its Helm repository), so its templates are not
rendered; these checks hold the values to the repository's layout, the plugin's connection id and the
mlprov chart's NetworkPolicy/Istio expectations.
"""

from __future__ import annotations

import ast
from typing import Any

import yaml

from tests.unit.infra.chart_support import CHART, ROOT, values_of

VALUES = ROOT / "infra" / "helm" / "airflow-values.yaml"


def _values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return data


def _hook_default_connection() -> str:
    """ControllerHook.default_conn_name, read from plugins/hooks.py without importing Airflow."""
    tree = ast.parse((ROOT / "plugins" / "hooks.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "default_conn_name" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    raise AssertionError("plugins/hooks.py defines no default_conn_name")


def test_dags_and_plugins_come_from_this_repository_through_git_sync() -> None:
    values = _values()
    sync = values["dags"]["gitSync"]
    assert sync["enabled"] is True
    assert sync["subPath"] == "dags"
    assert (ROOT / sync["subPath"] / "demo_lifecycle.py").is_file()
    env = {e["name"]: e["value"] for e in values["env"]}
    repo = env["PYTHONPATH"]
    assert repo == "/opt/airflow/dags/repo"  # the chart's git-sync checkout; the DAGs import `plugins.operators`
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == f"{repo}/plugins"
    assert (ROOT / "plugins" / "plugin.py").is_file()


def test_the_controller_connection_comes_from_a_secret() -> None:
    (secret,) = _values()["secret"]
    assert secret["envName"] == f"AIRFLOW_CONN_{_hook_default_connection().upper()}"
    assert secret["secretName"]
    assert secret["secretKey"]


def test_airflow_pods_meet_pod_security_restricted() -> None:
    contexts = _values()["securityContexts"]
    pod, container = contexts["pod"], contexts["container"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    sync = _values()["dags"]["gitSync"]["securityContexts"]["container"]
    assert sync["readOnlyRootFilesystem"] is True
    assert sync["capabilities"] == {"drop": ["ALL"]}


def test_the_mlprov_chart_lets_these_airflow_pods_reach_the_controller() -> None:
    mlprov = yaml.safe_load((CHART / "values.yaml").read_text())
    # The official chart labels every Airflow pod tier=airflow; the controller's NetworkPolicy selects that.
    assert mlprov["airflow"]["podLabels"] == {"tier": "airflow"}
    assert mlprov["airflow"]["namespace"] == "airflow"
    assert _values()["networkPolicies"]["enabled"] is True
    accounts = mlprov["istio"]["airflowServiceAccounts"]
    assert {"airflow-worker", "airflow-triggerer"} <= set(accounts)  # the operator defers to the triggerer
    assert _values()["triggerer"]["enabled"] is True
    assert values_of("prod")["istio"]["enabled"] is True


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {str(k).lower() for k in node} | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_no_secret_in_values() -> None:
    values = _values()
    assert not {k for k in _keys(values) if k in {"password", "token", "fernetkey", "webserversecretkey"}}
    assert values["postgresql"]["enabled"] is False  # the metadata database comes from a Secret
    assert values["data"]["metadataSecretName"]
    assert values["fernetKeySecretName"]
    assert values["webserverSecretKeySecretName"]
