"""The dispatcher with the Kubernetes runtime (autospec'd clients) on a real SQLite store: the image is
pinned and recorded, inputs go to the pod's init step instead of the controller's disk, the Job ends the
task, and a tag or input that cannot be resolved fails the task before any object is created."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import pytest
from kubernetes.client import AppsV1Api, BatchV1Api, CoreV1Api
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import StoredArtifact
from controller.catalog import ServiceSpec
from controller.errors import ArtifactNotFoundError
from controller.logs.base import LogRecord
from controller.runtime.k8s_objects import ObjectConfig
from controller.runtime.kubernetes import KubernetesRuntime
from controller.services.dispatch import Dispatcher
from controller.services.images import ImageResolutionError, ResolvedImage
from controller.services.tasks import RunIdentity, TaskService, TaskSubmission
from controller.store.db import make_engine, make_session_factory, session_scope
from controller.store.models import Artifact, Base, Task
from controller.store.services_repo import upsert_services

NS = "ml"
DIGEST = "sha256:" + "f" * 64
PINNED_SELF = "reg.example/mlprov@sha256:" + "b" * 64


class Resp:
    def __init__(self, body: Any = None) -> None:
        self.data = json.dumps(body or {}).encode()

    def stream(self, amt: int) -> Any:
        return iter(())

    def release_conn(self) -> None:
        pass


class Store:
    def __init__(self) -> None:
        self.held: set[str] = set()
        self.gets = 0

    def put(self, path: Path, digest: str | None = None) -> StoredArtifact:
        raise AssertionError("dispatch must not upload: on Kubernetes the pod's init step fetches the inputs")

    def get(self, digest: str, dest: Path) -> Path:
        self.gets += 1
        raise ArtifactNotFoundError(digest)

    def exists(self, digest: str) -> bool:
        return digest in self.held

    def open(self, digest: str) -> bytes:
        raise AssertionError("dispatch must not read artifacts: on Kubernetes the pod's init step fetches them")


class Bus:
    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self._lock = threading.Lock()

    def publish(self, record: LogRecord) -> None:
        self.publish_many([record])

    def publish_many(self, records: Any) -> None:
        with self._lock:
            self.records.extend(records)

    def close(self) -> None:
        pass


class Env:
    def __init__(self, tmp: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp / 'c.db'}")
        Base.metadata.create_all(engine)
        self.factory: sessionmaker[Session] = make_session_factory(engine)
        self.batch = create_autospec(BatchV1Api, instance=True)
        self.core = create_autospec(CoreV1Api, instance=True)
        self.batch.create_namespaced_job.side_effect = lambda ns, body, **_: Resp(
            {**body, "metadata": {**body["metadata"], "uid": "u1"}}
        )
        for method in (self.core.create_namespaced_secret, self.core.patch_namespaced_secret,
                       self.batch.patch_namespaced_job):  # fmt: skip
            method.return_value = Resp()
        self.core.list_namespaced_pod.return_value = Resp({"items": []})
        self.apps = create_autospec(AppsV1Api, instance=True)
        self.deployments: list[dict[str, Any]] = []

        def create_deployment(ns: str, body: dict[str, Any], **_: Any) -> Resp:
            self.deployments.append({**body, "metadata": {**body["metadata"], "uid": "d1"}})
            return Resp(self.deployments[-1])

        self.apps.create_namespaced_deployment.side_effect = create_deployment
        self.apps.list_namespaced_deployment.side_effect = lambda ns, **_: Resp({"items": self.deployments})
        self.core.create_namespaced_service.return_value = Resp()
        self.core.list_namespaced_service.return_value = Resp({"items": []})
        self.resolved: list[str] = []
        config = ObjectConfig(namespace=NS, sidecar_image=PINNED_SELF, init_image=PINNED_SELF)
        self.runtime = KubernetesRuntime(
            batch=self.batch, core=self.core, apps=self.apps, config=config, start_watches=False, resolver=self.resolve
        )
        self.store = Store()
        self.bus = Bus()
        self.dispatcher = Dispatcher(
            session_factory=self.factory, runtime=self.runtime, artifact_store=self.store, log_bus=self.bus,
            work_dir=tmp / "work", runtime_name="kubernetes", sidecar_command=["mlprov", "sidecar"],
            controller_url="http://mlprov-controller.ml.svc:8080",
        )  # fmt: skip
        with session_scope(self.factory) as s:
            specs = [
                {"name": "train", "image": "reg.example/ml/train:1.0"},
                {"name": "gone", "image": "reg.example/ml/gone:1"},
                {"name": "srv", "kind": "server", "image": "reg.example/ml/srv:2", "port": 8000,
                 "health_path": "/healthz", "timeout": 0.5},
            ]  # fmt: skip
            upsert_services(s, [ServiceSpec.model_validate(spec) for spec in specs])
            s.add(Artifact(digest=DIGEST, kind="dataset", name="data.csv", size=3, uris=[]))
        self.store.held.add(DIGEST)

    def resolve(self, ref: str) -> ResolvedImage:
        self.resolved.append(ref)
        if "gone" in ref:
            raise ImageResolutionError(f"image {ref!r}: registry reg.example has no such tag")
        digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        return ResolvedImage(ref, ref.rsplit(":", 1)[0] + "@" + digest, digest)

    def submit(self, service: str, **body: Any) -> str:
        with self.factory() as s:
            submission = TaskSubmission.model_validate({"service": service, **body})
            return TaskService(s, self.dispatcher).submit(submission).id

    def wait_state(self, task_id: str, *states: str, timeout: float = 10) -> Task:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.factory() as s:
                task = s.get(Task, task_id)
                assert task is not None
                if task.state in states:
                    return task
            time.sleep(0.01)
        raise AssertionError(f"task {task_id} did not reach {states}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.dispatcher.start()
    yield e
    e.dispatcher.stop()


def test_the_job_runs_the_pinned_image_and_the_digest_is_recorded(env: Env) -> None:
    tid = env.submit("train", inputs=[DIGEST], run=RunIdentity(dag_id="d", run_id="r", task_id="t", try_number=1))
    env.wait_state(tid, "running")
    job = env.batch.create_namespaced_job.call_args.args[1]
    secret = env.core.create_namespaced_secret.call_args.args[1]
    digest = "sha256:" + hashlib.sha256(b"reg.example/ml/train:1.0").hexdigest()
    pinned = f"reg.example/ml/train@{digest}"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == pinned
    assert job["metadata"]["annotations"]["mlprov.io/image-digest"] == digest
    sidecar = job["spec"]["template"]["spec"]["initContainers"][1]
    assert {"name": "MLPROV_IMAGE_DIGEST", "value": pinned} in sidecar["env"]
    task_json = json.loads(secret["stringData"]["task.json"])
    assert task_json["environment"]["image_digest"] == digest
    assert task_json["environment"]["image"] == pinned
    inputs = json.loads(secret["stringData"]["inputs.json"])
    assert inputs == [{"name": "data.csv", "digest": DIGEST, "path": "inputs/data.csv", "auth": "bearer",
                       "url": f"http://mlprov-controller.ml.svc:8080/api/v1/artifacts/{DIGEST}/content"}]  # fmt: skip
    assert env.store.gets == 0  # the pod fetches the inputs, not the controller
    with env.factory() as s:
        task = s.get(Task, tid)
        assert task is not None
        assert task.details is not None
        assert task.details["environment"]["image_digest"] == digest
    assert "image_resolved" in [r.event for r in env.bus.records if r.task_id == tid]
    name = job["metadata"]["name"]
    complete = {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    env.runtime.on_job_event("MODIFIED", complete)
    task = env.wait_state(tid, "succeeded")
    assert task.exit_code == 0
    env.batch.patch_namespaced_job.assert_called_with(
        name, NS, {"spec": {"ttlSecondsAfterFinished": 600}}, _preload_content=False, _request_timeout=10.0
    )


def test_an_unresolvable_tag_fails_the_task_before_any_object(env: Env) -> None:
    tid = env.submit("gone")
    task = env.wait_state(tid, "failed")
    assert "has no such tag" in (task.reason or "")
    env.batch.create_namespaced_job.assert_not_called()
    env.core.create_namespaced_secret.assert_not_called()


def test_an_input_missing_from_the_store_fails_the_task(env: Env) -> None:
    env.store.held.clear()
    tid = env.submit("train", inputs=[DIGEST])
    task = env.wait_state(tid, "failed")
    assert "not in the artifact store" in (task.reason or "")
    env.batch.create_namespaced_job.assert_not_called()


def test_a_server_becomes_a_deployment_and_service_reached_by_cluster_dns(env: Env) -> None:
    tid = env.submit("srv", run=RunIdentity(dag_id="d", run_id="r", task_id="serve", try_number=1))
    task = env.wait_state(tid, "failed")  # no cluster DNS here: never healthy within 0.5 s, then stopped
    deployment = env.apps.create_namespaced_deployment.call_args.args[1]
    service = env.core.create_namespaced_service.call_args.args[1]
    name = deployment["metadata"]["name"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("reg.example/ml/srv@sha256:")
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert (env_vars["PORT"], env_vars["HOST"]) == ("8000", "0.0.0.0")  # noqa: S104 - the pod's own interfaces
    assert service["spec"]["ports"][0]["port"] == 8000
    assert f"http://{name}.{NS}.svc:8000/healthz" in (task.reason or "")
    env.apps.delete_namespaced_deployment.assert_called_once_with(
        name, NS, _preload_content=False, _request_timeout=10.0, propagation_policy="Background"
    )


def test_pod_logs_stream_into_the_log_bus_with_the_tasks_identity(env: Env) -> None:
    class Lines(Resp):
        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

        def stream(self, amt: int) -> Any:
            return iter([(line + "\n").encode() for line in self.lines])

    logs = {"job": ["2026-12-07T07:00:01Z epoch 1 loss 0.5"], "mlprov-sidecar": ['2026-12-07T07:00:02Z {"ok": true}'],
            "mlprov-init": ["2026-12-07T07:00:00Z workspace ready"]}  # fmt: skip
    env.core.read_namespaced_pod_log.side_effect = lambda pod, ns, container, **kw: Lines(logs[container])
    tid = env.submit("train", run=RunIdentity(dag_id="d", run_id="r", task_id="t", try_number=1))
    env.wait_state(tid, "running")
    job = env.batch.create_namespaced_job.call_args.args[1]
    labels = job["metadata"]["labels"]
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    pod = {"metadata": {"name": "p-1", "labels": labels},
           "status": {"initContainerStatuses": [{"name": "mlprov-init", "state": done},
                                                {"name": "mlprov-sidecar", "state": done}],
                      "containerStatuses": [{"name": "job", "state": done}]}}  # fmt: skip
    env.core.list_namespaced_pod.return_value = Resp({"items": [pod]})
    env.runtime.on_job_event("MODIFIED", {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    env.wait_state(tid, "succeeded")
    lines = {(r.component, r.message) for r in env.bus.records if r.task_id == tid and r.event is None}
    assert ("job", "epoch 1 loss 0.5") in lines
    assert ("sidecar", '{"ok": true}') in lines
    assert ("job", "workspace ready") in lines
    for container in logs:
        env.core.read_namespaced_pod_log.assert_any_call(
            "p-1", NS, container=container, follow=True, timestamps=True, _preload_content=False,
            _request_timeout=(10.0, 3600),
        )  # fmt: skip
    record = next(r for r in env.bus.records if r.message == "epoch 1 loss 0.5")
    assert (record.run_id, record.dag_id, record.stream) == ("r", "d", "stdout")
