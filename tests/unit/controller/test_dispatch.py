"""The dispatcher with in-memory fakes of the Runtime, ArtifactStore and LogBus (honouring their Protocols)
on a real SQLite store: refs, inputs, params, locks, concurrency, cancel, outputs, lineage, reconcile."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.artifacts.base import ArtifactStore, StoredArtifact
from controller.catalog import ServiceSpec
from controller.errors import ArtifactNotFoundError, InvalidNameError, JobLaunchError, UnknownArtifactError
from controller.logs.base import LogBus, LogRecord
from controller.runtime.base import JobHandle, JobSpec, JobState, JobStatus, OutputLine, OutputSink, Runtime
from controller.services.dispatch import Dispatcher
from controller.services.tasks import RunIdentity, TaskService, TaskSubmission
from controller.store.db import make_engine, make_session_factory, session_scope
from controller.store.models import ApiToken, Artifact, Base, Job, LineageEdge, Lock, LockQueueEntry, Task
from controller.store.services_repo import upsert_services
from provenance.hashing import format_digest, hash_path

# --- fakes ------------------------------------------------------------------------------------


class FakeJob:
    def __init__(self, spec: JobSpec, sink: OutputSink) -> None:
        self.spec, self.sink = spec, sink
        self.done = threading.Event()
        self.status = JobStatus(JobState.RUNNING, started_at=time.time())


class FakeRuntime:
    """Jobs are scripted by their argv: ``["ok", "out:NAME=TEXT", "say:TEXT", "exit:N", "block"]``."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.order: list[str] = []
        self._lock = threading.Lock()

    def launch(self, spec: JobSpec, on_output: OutputSink) -> JobHandle:
        assert spec.command is not None
        if spec.command[0] == "missing":
            raise JobLaunchError("cannot start 'missing': not found on PATH")
        job = FakeJob(spec, on_output)
        handle = JobHandle(spec.task_id, spec.attempt, f"fake:{spec.task_id}:{spec.attempt}")
        with self._lock:
            self.jobs[handle.ref] = job
            self.running.add(spec.task_id)
            self.max_running = max(self.max_running, len(self.running))
            self.order.append(spec.task_id)
        code = 0
        for arg in spec.command[1:]:
            if arg.startswith("out:"):
                name, _, text = arg[4:].partition("=")
                (spec.workspace / "outputs" / name).write_text(text)
            elif arg.startswith("say:"):
                on_output(OutputLine("stdout", "job", time.time(), arg[4:]))
            elif arg.startswith("exit:"):
                code = int(arg[5:])
        if "block" not in spec.command:
            self._end(job, JobState.SUCCEEDED if code == 0 else JobState.FAILED, code)
        return handle

    def _end(self, job: FakeJob, state: JobState, code: int | None) -> None:
        with self._lock:
            self.running.discard(job.spec.task_id)
        job.status = JobStatus(state, exit_code=code, started_at=job.status.started_at, finished_at=time.time())
        job.done.set()

    def release(self, task_id: str, code: int = 0) -> None:
        job = next(j for j in self.jobs.values() if j.spec.task_id == task_id)
        self._end(job, JobState.SUCCEEDED if code == 0 else JobState.FAILED, code)

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        job = self.jobs[handle.ref]
        job.done.wait(timeout)
        return job.status

    def status(self, handle: JobHandle) -> JobStatus:
        return self.jobs[handle.ref].status

    def cancel(self, handle: JobHandle) -> None:
        job = self.jobs.get(handle.ref)
        if job is not None and not job.done.is_set():
            self._end(job, JobState.CANCELLED, 143)

    def reattach(self, handle: JobHandle, on_output: OutputSink) -> JobStatus:
        job = self.jobs.get(handle.ref)
        if job is None:
            return JobStatus(JobState.LOST, reason="gone")
        job.sink = on_output
        return job.status


class FakeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects: dict[str, Path] = {}

    def put(self, path: Path, digest: str | None = None) -> StoredArtifact:
        actual = format_digest(hash_path(path))
        assert digest in (None, actual)
        dest = self.root / actual.replace(":", "_")
        if not dest.exists():
            (shutil.copytree if path.is_dir() else shutil.copyfile)(path, dest)
        self.objects[actual] = dest
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) if dest.is_dir() else dest.stat().st_size
        return StoredArtifact(actual, size, dest.as_uri(), dest.is_dir())

    def get(self, digest: str, dest: Path) -> Path:
        if digest not in self.objects:
            raise ArtifactNotFoundError(digest)
        shutil.copyfile(self.objects[digest], dest)
        return dest

    def exists(self, digest: str) -> bool:
        return digest in self.objects

    def open(self, digest: str) -> bytes:
        return self.objects[digest].read_bytes()


class FakeBus:
    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self._lock = threading.Lock()

    def publish(self, record: LogRecord) -> None:
        self.publish_many([record])

    def publish_many(self, records: Iterable[LogRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def close(self) -> None:
        pass

    def events(self, task_id: str) -> list[str]:
        return [r.event for r in self.records if r.task_id == task_id and r.event]


# --- fixtures ---------------------------------------------------------------------------------


class Env:
    def __init__(self, tmp: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp / 'c.db'}")
        Base.metadata.create_all(engine)
        self.factory: sessionmaker[Session] = make_session_factory(engine)
        self.runtime = FakeRuntime()
        self.store = FakeStore(tmp / "store")
        self.store.root.mkdir()
        self.bus = FakeBus()
        self.work = tmp / "work"
        self.dispatcher: Dispatcher | None = None

    def make(self, **kw: object) -> Dispatcher:
        self.dispatcher = Dispatcher(
            session_factory=self.factory, runtime=self.runtime, artifact_store=self.store, log_bus=self.bus,
            work_dir=self.work, git_timeout=10, **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        return self.dispatcher

    def services(self, *specs: dict[str, object]) -> None:
        with session_scope(self.factory) as s:
            upsert_services(s, [ServiceSpec.model_validate(spec) for spec in specs])

    def submit(self, service: str, **body: object) -> str:
        with self.factory() as s:
            return (
                TaskService(s, self.dispatcher).submit(TaskSubmission.model_validate({"service": service, **body})).id
            )

    def task(self, task_id: str) -> Task:
        with self.factory() as s:
            task = s.get(Task, task_id)
            assert task is not None
            return task

    def wait_state(self, task_id: str, *states: str, timeout: float = 5) -> Task:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task.state in states:
                return task
            time.sleep(0.01)
        raise AssertionError(f"task {task_id} is {self.task(task_id).state}, not {states}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.services(
        {
            "name": "train",
            "command": ["ok"],
            "params": {"lr": 0.1, "opt": {"name": "sgd", "m": 0.9}},
            "env": {"A": "1"},
        },
        {"name": "gpu", "command": ["ok"], "resources": {"gpus": 1}},
        {"name": "locked", "command": ["ok"], "locks": ["db"]},
        {"name": "both", "command": ["ok"], "locks": ["db", "net"]},
        {"name": "net", "command": ["ok"], "locks": ["net"]},
    )
    yield e
    if e.dispatcher is not None:
        e.dispatcher.stop()


def _with_command(e: Env, name: str, command: list[str], **extra: object) -> None:
    e.services({"name": name, "command": command, **extra})


# --- tests ------------------------------------------------------------------------------------


def test_fakes_honour_the_protocols(env: Env) -> None:
    assert isinstance(env.runtime, Runtime)
    assert isinstance(env.store, ArtifactStore)
    assert isinstance(env.bus, LogBus)


def test_a_task_runs_and_everything_is_recorded(env: Env, tmp_path: Path) -> None:
    _with_command(env, "produce", ["ok", "say:hello", "out:model.pt=weights", "out:metrics.json={\"acc\": 0.9}"],
                  params={"lr": 0.1, "opt": {"name": "sgd", "m": 0.9}}, env={"A": "1"})  # fmt: skip
    d = env.make()
    d.start()
    tid = env.submit(
        "produce",
        params={"opt": {"m": 0.5}, "epochs": 2},
        run=RunIdentity(dag_id="d", run_id="r1", task_id="train", try_number=1),
    )
    task = env.wait_state(tid, "succeeded")
    assert task.exit_code == 0
    params = json.loads((env.work / tid / "params.json").read_text())
    assert params == {"lr": 0.1, "opt": {"name": "sgd", "m": 0.5}, "epochs": 2}
    job = env.runtime.jobs[f"fake:{tid}:1"]
    assert job.spec.env["A"] == "1"
    assert job.spec.env["MLPROV_TASK_ID"] == tid
    assert job.spec.env["MLPROV_TASK_TOKEN"].startswith("mlpt_")
    expected = format_digest(hash_path(env.work / tid / "outputs" / "model.pt"))
    outputs = {o["name"]: o for o in task.outputs}
    assert outputs["model.pt"] == {
        "name": "model.pt",
        "digest": expected,
        "size": 7,
        "kind": "model",
        "manifest_id": None,  # no sidecar in this test: hashed and stored, not signed
    }
    task_file = json.loads((env.work / tid / ".mlprov" / "task.json").read_text())
    assert task_file["task_id"] == tid
    assert outputs["metrics.json"]["kind"] == "evaluation"
    with env.factory() as s:
        assert s.get(Artifact, expected) is not None
        edges = {(e.src_type, e.src_id, e.role, e.dst_id) for e in s.scalars(select(LineageEdge))}
        assert ("task", tid, "produced", expected) in edges
        assert s.scalars(select(Lock)).all() == []
        assert s.scalars(select(LockQueueEntry)).all() == []
        assert all(t.revoked_at is not None for t in s.scalars(select(ApiToken).where(ApiToken.task_id == tid)))
        assert s.scalar(select(Job).where(Job.task_id == tid)).state == "succeeded"  # type: ignore[union-attr]
    events = env.bus.events(tid)
    assert events[0] == "submitted"
    assert events[-1] == "finished"
    assert "started" in events
    lines = [r for r in env.bus.records if r.task_id == tid and r.component == "job"]
    assert [(r.message, r.stream, r.run_id, r.dag_id, r.attempt) for r in lines] == [("hello", "stdout", "r1", "d", 1)]


def test_the_same_run_identity_gives_the_same_task(env: Env) -> None:
    d = env.make()
    run = RunIdentity(dag_id="d", run_id="r", task_id="t", try_number=1)
    with env.factory() as s:
        first = TaskService(s, d).submit(TaskSubmission(service="train", run=run))
    with env.factory() as s:
        second = TaskService(s, d).submit(TaskSubmission(service="train", run=run))
    assert (first.id, first.created, second.id, second.created) == (first.id, True, first.id, False)
    with env.factory() as s:
        assert len(s.scalars(select(Task)).all()) == 1


def test_concurrent_duplicate_submissions_make_one_task(env: Env) -> None:
    d = env.make()
    run = RunIdentity(dag_id="d", run_id="r", task_id="t", try_number=1)
    ids: list[str] = []

    def go() -> None:
        with env.factory() as s:
            ids.append(TaskService(s, d).submit(TaskSubmission(service="train", run=run)).id)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert len(ids) == 6


def test_a_command_that_cannot_start_fails_the_task_with_the_reason(env: Env) -> None:
    _with_command(env, "broken", ["missing"], locks=["db"])
    env.make().start()
    task = env.wait_state(env.submit("broken"), "failed")
    assert "cannot start 'missing'" in (task.reason or "")
    assert "failed" in env.bus.events(task.id)
    with env.factory() as s:
        assert s.scalars(select(Lock)).all() == []


def test_nonzero_exit_fails_and_outputs_are_not_recorded(env: Env) -> None:
    _with_command(env, "bad", ["ok", "out:x=1", "exit:2"])
    env.make().start()
    task = env.wait_state(env.submit("bad"), "failed")
    assert task.exit_code == 2
    assert task.outputs == []


def _git_repo(path: Path) -> str:
    path.mkdir()
    run = {"cwd": path, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q", "-b", "main"], **run)  # type: ignore[call-overload]
    (path / "f").write_text("x")
    subprocess.run(["git", "add", "f"], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"], **run)  # type: ignore[call-overload]
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()  # type: ignore[call-overload, no-any-return]


def test_refs_are_resolved_and_both_recorded_and_inputs_materialised(env: Env, tmp_path: Path) -> None:
    commit = _git_repo(tmp_path / "repo")
    src = tmp_path / "data.csv"
    src.write_text("a,b\n1,2\n")
    stored = env.store.put(src)
    with session_scope(env.factory) as s:
        s.add(Artifact(digest=stored.digest, kind="dataset", name="data.csv", size=stored.size, uris=[stored.uri]))
    env.make().start()
    tid = env.submit("train", inputs=["data.csv@latest"], code={"repo": str(tmp_path / "repo"), "ref": "main"})
    task = env.wait_state(tid, "succeeded")
    assert task.code == {"repo": str(tmp_path / "repo"), "ref": "main", "commit": commit}
    assert task.inputs == [{"ref": "data.csv@latest", "digest": stored.digest, "name": "data.csv", "size": 8}]
    assert (env.work / tid / "inputs" / "data.csv").read_text() == "a,b\n1,2\n"
    with env.factory() as s:
        edges = {
            (e.src_type, e.src_id, e.role) for e in s.scalars(select(LineageEdge).where(LineageEdge.dst_id == tid))
        }
    assert edges == {("artifact", stored.digest, "consumed"), ("code", f"{tmp_path / 'repo'}@{commit}", "code")}


def test_an_unresolvable_code_ref_fails_the_task(env: Env, tmp_path: Path) -> None:
    _git_repo(tmp_path / "repo")
    env.make().start()
    task = env.wait_state(env.submit("train", code={"repo": str(tmp_path / "repo"), "ref": "nope"}), "failed")
    assert "nope" in (task.reason or "")


def test_bad_inputs_are_refused_at_submission(env: Env) -> None:
    env.make()
    with pytest.raises(UnknownArtifactError, match="no artifact named 'ghost'"):
        env.submit("train", inputs=["ghost"])
    with pytest.raises(InvalidNameError, match="not allowed"):
        env.submit("train", inputs=["../../etc/passwd"])
    with env.factory() as s:
        assert s.scalars(select(Task)).all() == []  # nothing half-recorded


def test_tasks_sharing_a_lock_run_one_at_a_time_in_order(env: Env) -> None:
    _with_command(env, "locked", ["ok", "block"], locks=["db"])
    _with_command(env, "free", ["ok", "block"])
    env.make().start()
    a, b, c = env.submit("locked"), env.submit("locked"), env.submit("free")
    env.wait_state(a, "running")
    env.wait_state(b, "waiting_for_lock")
    env.wait_state(c, "running")  # an unrelated task is not blocked by the queue head
    assert "lock_waiting" in env.bus.events(b)
    env.runtime.release(a)
    env.wait_state(a, "succeeded")
    env.wait_state(b, "running")
    env.runtime.release(b)
    env.runtime.release(c)
    env.wait_state(b, "succeeded")
    env.wait_state(c, "succeeded")


def test_concurrency_is_bounded(env: Env) -> None:
    _with_command(env, "slow", ["ok", "block"])
    env.make(max_concurrent_jobs=2).start()
    ids = [env.submit("slow") for _ in range(4)]
    env.wait_state(ids[0], "running")
    env.wait_state(ids[1], "running")
    time.sleep(0.2)
    assert [env.task(i).state for i in ids[2:]] == ["queued", "queued"]
    for tid in ids:
        env.wait_state(tid, "running")
        env.runtime.release(tid)
    for tid in ids:
        env.wait_state(tid, "succeeded")
    assert env.runtime.max_running == 2


def test_gpu_slots(env: Env) -> None:
    _with_command(env, "gpu", ["ok", "block"], resources={"gpus": 1})
    env.make(gpu_count=1).start()
    a, b = env.submit("gpu"), env.submit("gpu")
    env.wait_state(a, "running")
    env.wait_state(b, "waiting_for_lock")
    assert env.runtime.jobs[f"fake:{a}:1"].spec.env["CUDA_VISIBLE_DEVICES"] == "0"
    env.runtime.release(a)
    env.wait_state(b, "running")
    env.runtime.release(b)
    env.wait_state(b, "succeeded")


def test_cancel_waiting_and_running_tasks_is_idempotent_and_frees_locks(env: Env) -> None:
    _with_command(env, "locked", ["ok", "block"], locks=["db"])
    d = env.make()
    d.start()
    a, b = env.submit("locked"), env.submit("locked")
    env.wait_state(b, "waiting_for_lock")
    d.cancel(b)
    assert env.task(b).state == "cancelled"
    d.cancel(a)
    env.wait_state(a, "cancelled")
    d.cancel(a)
    assert env.task(a).state == "cancelled"
    with env.factory() as s:
        assert s.scalars(select(Lock)).all() == []
    c = env.submit("locked")
    env.wait_state(c, "running")  # the lock is usable again
    env.runtime.release(c)
    env.wait_state(c, "succeeded")


def test_restart_reattaches_running_jobs_and_records_lost_ones(env: Env) -> None:
    _with_command(env, "locked", ["ok", "block"], locks=["db"])
    _with_command(env, "other", ["ok", "block"], locks=["net"])
    d = env.make()
    d.start()
    a, b = env.submit("locked"), env.submit("other")
    env.wait_state(a, "running")
    env.wait_state(b, "running")
    waiting = env.submit("locked")
    env.wait_state(waiting, "waiting_for_lock")
    d.stop()
    del env.runtime.jobs[f"fake:{b}:1"]  # b's process vanished while no controller watched
    d2 = env.make()
    d2.start()
    assert env.wait_state(b, "lost").reason == "gone"
    assert env.task(a).state == "running"
    env.runtime.release(a, code=0)
    env.wait_state(a, "succeeded")
    env.wait_state(waiting, "running")  # the lock was held across the restart, then handed on
    env.runtime.release(waiting)
    env.wait_state(waiting, "succeeded")


def test_restart_requeues_a_grant_that_never_launched(env: Env) -> None:
    d = env.make()
    tid = env.submit("locked")
    d.locks.schedule  # noqa: B018 - the scheduling pass below runs without starting threads
    with session_scope(env.factory) as s:
        d.locks.schedule(s, 4)  # granted, but the controller "stops" before launching
    d2 = env.make()
    d2.start()
    env.wait_state(tid, "succeeded")
