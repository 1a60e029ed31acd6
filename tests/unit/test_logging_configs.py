"""infra/logging/: the Fluent Bit DaemonSet and the Logstash pipeline agree with the controller's Kafka bus."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.logs.base import LogRecord
from controller.logs.es_index import MAPPINGS
from controller.runtime import k8s_objects
from controller.settings import Settings

INFRA = Path(__file__).resolve().parents[2] / "infra" / "logging"
FLUENT_BIT = INFRA / "fluent-bit.yaml"
LOGSTASH = INFRA / "logstash-mlprov.conf"
RECORD_FIELDS = {f.name for f in dataclasses.fields(LogRecord)}
# What the KubernetesRuntime puts on its pods (labels and annotations), plus the chart's own component label.
RUNTIME_META = {
    k8s_objects.LABEL_TASK,
    k8s_objects.LABEL_ATTEMPT,
    k8s_objects.LABEL_KIND,
    k8s_objects.ANNOTATION_RUN_ID,
    k8s_objects.ANNOTATION_DAG_ID,
}
LABELS = {"mlprov.io/component"} | RUNTIME_META


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def _manifests() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(FLUENT_BIT.read_text()) if doc]


def _config_map() -> dict[str, str]:
    (cm,) = [m for m in _manifests() if m["kind"] == "ConfigMap"]
    data: dict[str, str] = cm["data"]
    return data


def _fluent_bit() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_config_map()["fluent-bit.yaml"])
    return config


def test_manifests_cover_the_daemonset_and_its_rbac() -> None:
    kinds = sorted(m["kind"] for m in _manifests())
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
    (ds,) = [m for m in _manifests() if m["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mlprov-fluent-bit"
    mounted = {v["subPath"] for c in pod["containers"] for v in c["volumeMounts"] if "subPath" in v}
    assert mounted == set(_config_map())
    (role,) = [m for m in _manifests() if m["kind"] == "ClusterRole"]
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in role["rules"])


@pytest.mark.skipif(shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) is None,
                    reason="kubernetes-validate is not installed (pip install -e '.[dev]')")  # fmt: skip
def test_manifests_pass_kubernetes_validate_strict() -> None:
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert tool is not None
    done = subprocess.run(
        [tool, "--strict", "-k", "1.33", "--no-warn", str(FLUENT_BIT)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_fluent_bit_pipeline_tails_enriches_maps_and_ships_to_the_logs_topic() -> None:
    pipeline = _fluent_bit()["pipeline"]
    (tail,) = pipeline["inputs"]
    assert tail["name"] == "tail"
    assert tail["path"] == "/var/log/containers/*.log"
    names = [f["name"] for f in pipeline["filters"]]
    assert names == ["kubernetes", "lua"]
    kube, lua = pipeline["filters"]
    assert kube["labels"] is True
    assert kube["annotations"] is True
    assert lua["script"].rsplit("/", 1)[-1] in _config_map()
    (out,) = pipeline["outputs"]
    assert out["name"] == "kafka"
    assert out["format"] == "json"
    assert out["topics"] == _default("kafka_logs_topic")
    assert out["timestamp_key"] == "timestamp"
    assert out["timestamp_format"] == "double"
    assert out["message_key_field"] == "kafka_key"
    assert str(out["rdkafka.request.required.acks"]) == "-1"
    assert out["rdkafka.enable.idempotence"] is True


def test_lua_sets_only_log_record_fields_with_the_documented_labels() -> None:
    script = _config_map()["mlprov.lua"]
    body = script[script.index("local out = {") : script.index("return 2")]
    top_level = set(re.findall(r"^ {4}(\w+) = ", body, re.MULTILINE)) | set(re.findall(r'out\["(\w+)"\]', body))
    assert "kafka_key" in top_level
    assert top_level - {"kafka_key"} <= RECORD_FIELDS
    assert {"message", "component", "level", "run_id", "task_id", "attempt", "fields"} <= top_level
    used = {f"mlprov.io/{name}" for name in re.findall(r'meta\(k8s, "([\w-]+)"\)', script)}
    assert used == LABELS  # every key the runtime sets is read, and nothing else
    assert f'container == "{k8s_objects.SIDECAR_CONTAINER}"' in script
    assert f'container == "{k8s_objects.INIT_CONTAINER}"' in script
    assert 'PREFIX = "mlprov.io/"' in script
    header = FLUENT_BIT.read_text().split("apiVersion", 1)[0]
    assert all(label in header for label in LABELS)  # documented where the manifests are


def test_lua_key_matches_the_kafka_bus_key() -> None:
    from controller.logs.kafka_bus import KafkaConfig, message_for

    script = _config_map()["mlprov.lua"]
    assert '(run or "-") .. "/" .. (task or "-")' in script
    assert '"component:" .. component' in script
    config = KafkaConfig.from_settings(Settings(kafka_bootstrap="127.0.0.1:1"))
    both = message_for(LogRecord(timestamp=1.0, message="m", component="job", run_id="r", task_id="t"), config)
    task_only = message_for(LogRecord(timestamp=1.0, message="m", component="job", task_id="t"), config)
    neither = message_for(LogRecord(timestamp=1.0, message="m", component="server"), config)
    assert (both.key, task_only.key, neither.key) == ("r/t", "-/t", "component:server")
    assert both.topic == _default("kafka_logs_topic")


def test_logstash_reads_both_topics_and_writes_idempotently_to_the_data_stream() -> None:
    text = LOGSTASH.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    topics = re.search(r"topics => \[([^\]]*)\]", code)
    assert topics is not None
    assert set(re.findall(r'"([^"]+)"', topics.group(1))) == {
        _default("kafka_events_topic"),
        _default("kafka_logs_topic"),
    }
    record_id = re.search(r'"record_id" => "([^"]+)"', code)
    assert record_id is not None
    assert record_id.group(1) == (
        "%{[@metadata][kafka][topic]}:%{[@metadata][kafka][partition]}:%{[@metadata][kafka][offset]}"
    )
    assert 'decorate_events => "basic"' in code  # without it the @metadata fields are empty
    assert 'document_id => "%{record_id}"' in code
    assert 'action => "create"' in code  # data streams accept only create; a replay answers 409
    assert f'index => "{_default("elasticsearch_data_stream")}"' in code
    written = {"record_id", "fields_text", "manifest_id", "artifact_id", "@timestamp"}
    assert written <= set(MAPPINGS["properties"])
    for name in ("fields_text", "manifest_id", "artifact_id"):
        assert f'"{name}"' in code


def test_the_docker_compose_recipe_binds_loopback_and_matches_the_live_tests() -> None:
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "infra/dev/docker-compose.logging.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "elasticsearch", "kibana"}
    ports = {name: spec["ports"] for name, spec in services.items()}
    assert all(p.startswith("127.0.0.1:") for bound in ports.values() for p in bound), ports
    assert ports["kafka"] == ["127.0.0.1:9092:9092"]
    assert ports["elasticsearch"] == ["127.0.0.1:9200:9200"]
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:9092"
    assert services["kibana"]["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    live = (Path(__file__).resolve().parents[1] / "integration").glob("test_*_live.py")
    assert {p.name for p in live} == {"test_kafka_live.py", "test_es_live.py"}
