"""The local runtime against real processes: output, exit codes, timeouts, cancel, sidecar, re-attach."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import JobLaunchError
from controller.runtime.base import JobSpec, JobState, OutputLine, Runtime
from controller.runtime.local import LocalRuntime


class Sink:
    def __init__(self) -> None:
        self.lines: list[OutputLine] = []
        self._lock = threading.Lock()

    def __call__(self, line: OutputLine) -> None:
        with self._lock:
            self.lines.append(line)

    def texts(self, component: str = "job", stream: str | None = None) -> list[str]:
        return [ln.text for ln in self.lines if ln.component == component and (stream is None or ln.stream == stream)]


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _spec(tmp_path: Path, command: list[str], **kw: object) -> JobSpec:
    ws = tmp_path / "work" / "t1"
    ws.mkdir(parents=True, exist_ok=True)
    return JobSpec(task_id="t1", attempt=1, workspace=ws, command=command, **kw)  # type: ignore[arg-type]


@pytest.fixture
def runtime() -> Iterator[LocalRuntime]:
    rt = LocalRuntime(grace=0.5, sidecar_grace=5.0)
    yield rt
    rt.close()


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_honours_the_protocol(runtime: LocalRuntime) -> None:
    assert isinstance(runtime, Runtime)


def test_success_captures_lines_in_order_with_streams_and_the_workspace_env(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    spec = _spec(
        tmp_path,
        _py(
            """
            import os, sys, json
            print("hello"); print("oops", file=sys.stderr); print("world")
            print("cwd", os.getcwd())
            print("ws", os.environ["MLPROV_WORKSPACE"])
            print("token", os.environ.get("MLPROV_TASK_TOKEN"))
            print("admin", os.environ.get("MLPROV_ADMIN_TOKEN"))
            print("path0", os.environ["PATH"].split(":")[0])
            open("outputs/x.txt", "w").write("x")
            """
        ),
        env={"MLPROV_TASK_TOKEN": "secret-task-token"},
    )
    os.environ["MLPROV_ADMIN_TOKEN"] = "must-not-leak"
    sink = Sink()
    before = time.time()
    try:
        handle = runtime.launch(spec, sink)
    finally:
        del os.environ["MLPROV_ADMIN_TOKEN"]
    status = runtime.wait(handle, timeout=10)
    assert status.state is JobState.SUCCEEDED
    assert status.exit_code == 0
    out = sink.texts(stream="stdout")
    assert out[:2] == ["hello", "world"]
    assert sink.texts(stream="stderr") == ["oops"]
    assert f"cwd {spec.workspace}" in out
    assert f"ws {spec.workspace}" in out
    assert "token None" in out  # the task token is for the sidecar only
    assert "admin None" in out
    assert f"path0 {Path(sys.executable).parent}" in out
    assert all(before <= ln.timestamp <= time.time() for ln in sink.lines)
    assert (spec.workspace / "outputs" / "x.txt").read_text() == "x"
    assert status.started_at is not None
    assert status.finished_at is not None
    assert status.started_at <= status.finished_at


def test_nonzero_exit_fails_with_the_code(runtime: LocalRuntime, tmp_path: Path) -> None:
    handle = runtime.launch(_spec(tmp_path, _py("import sys; sys.exit(3)")), Sink())
    status = runtime.wait(handle, timeout=10)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert status.reason == "exit code 3"


def test_a_command_that_cannot_start_raises_job_launch_error(runtime: LocalRuntime, tmp_path: Path) -> None:
    with pytest.raises(JobLaunchError, match="no-such-program-xyz"):
        runtime.launch(_spec(tmp_path, ["no-such-program-xyz", "--flag"]), Sink())
    with pytest.raises(JobLaunchError, match="command"):
        runtime.launch(_spec(tmp_path, []), Sink())


def _spawns_grandchild() -> list[str]:
    return _py(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open("grandchild.pid", "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(60)
        """
    )


def _wait_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def test_timeout_kills_the_whole_group(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = _spec(tmp_path, _spawns_grandchild(), timeout=0.8)
    handle = runtime.launch(spec, Sink())
    grandchild = int(_wait_file(spec.workspace / "grandchild.pid"))
    status = runtime.wait(handle, timeout=10)
    assert status.state is JobState.TIMED_OUT
    assert status.exit_code == 128 + signal.SIGTERM
    time.sleep(0.1)
    assert not _pid_alive(grandchild)


def test_cancel_kills_the_whole_group_and_is_idempotent(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = _spec(tmp_path, _spawns_grandchild())
    handle = runtime.launch(spec, Sink())
    grandchild = int(_wait_file(spec.workspace / "grandchild.pid"))
    runtime.cancel(handle)
    status = runtime.wait(handle, timeout=10)
    runtime.cancel(handle)
    assert status.state is JobState.CANCELLED
    time.sleep(0.1)
    assert not _pid_alive(grandchild)


def test_sidecar_shares_workspace_and_env_and_the_job_ends_after_it(runtime: LocalRuntime, tmp_path: Path) -> None:
    sidecar = _py(
        """
        import os, sys, time, json
        done = []
        print("sidecar token", os.environ.get("MLPROV_TASK_TOKEN"), flush=True)
        while not os.path.exists(".mlprov/job-exit"):  # the launcher's "the job is done" marker
            time.sleep(0.01)
        done.append(time.time())
        time.sleep(0.3)  # finishing its work after the job ended
        json.dump({"term": done[0], "end": time.time(), "cwd": os.getcwd()}, open("sidecar.json", "w"))
        """
    )
    spec = _spec(
        tmp_path,
        _py("import time; time.sleep(0.2); print('job done')"),
        sidecar_command=sidecar,
        env={"MLPROV_TASK_TOKEN": "tok-123"},
    )
    sink = Sink()
    handle = runtime.launch(spec, sink)
    status = runtime.wait(handle, timeout=10)
    assert status.state is JobState.SUCCEEDED
    record = json.loads((spec.workspace / "sidecar.json").read_text())
    assert record["cwd"] == str(spec.workspace)
    assert status.finished_at is not None
    assert status.finished_at >= record["end"]
    assert sink.texts("sidecar") == ["sidecar token tok-123"]
    assert sink.texts("job") == ["job done"]


def test_a_sidecar_killed_during_the_job_is_restarted(runtime: LocalRuntime, tmp_path: Path) -> None:
    sidecar = _py(
        """
        import os, signal, time
        starts = len(open("starts").read()) if os.path.exists("starts") else 0
        open("starts", "a").write("x")
        if starts == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # the first sidecar dies mid-job
        while not os.path.exists(".mlprov/job-exit"):
            time.sleep(0.01)
        """
    )
    spec = _spec(tmp_path, _py("import time; time.sleep(1.0)"), sidecar_command=sidecar)
    sink = Sink()
    status = runtime.wait(runtime.launch(spec, sink), timeout=20)
    assert status.state is JobState.SUCCEEDED, status.reason
    assert (spec.workspace / "starts").read_text() == "xx"
    assert any("restarting it (1/" in line for line in sink.texts("sidecar"))


def test_a_failing_sidecar_fails_the_task(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = _spec(tmp_path, _py("import time; time.sleep(0.5)"), sidecar_command=_py("import sys; sys.exit(4)"))
    status = runtime.wait(runtime.launch(spec, Sink()), timeout=10)
    assert status.state is JobState.FAILED
    assert "sidecar exited with 4" in (status.reason or "")


def test_reattach_after_restart_follows_the_rest_and_reads_the_exit_code(tmp_path: Path) -> None:
    first = LocalRuntime()
    spec = _spec(
        tmp_path,
        _py(
            """
            import time
            print("before", flush=True)
            while not __import__("os").path.exists("go"):
                time.sleep(0.01)
            print("after"); raise SystemExit(5)
            """
        ),
    )
    sink1 = Sink()
    handle = first.launch(spec, sink1)
    deadline = time.monotonic() + 10
    while "before" not in sink1.texts() and time.monotonic() < deadline:
        time.sleep(0.01)
    first.close()  # the controller stops; the job keeps running
    second = LocalRuntime()
    sink2 = Sink()
    assert second.status(handle).state is JobState.RUNNING
    assert second.reattach(handle, sink2).state is JobState.RUNNING
    (spec.workspace / "go").touch()
    status = second.wait(handle, timeout=10)
    second.close()
    assert (status.state, status.exit_code) == (JobState.FAILED, 5)
    assert sink1.texts() == ["before"]
    assert sink2.texts() == ["after"]  # nothing delivered twice, nothing lost


def test_reattach_reports_lost_when_the_process_vanished(tmp_path: Path) -> None:
    first = LocalRuntime()
    spec = _spec(tmp_path, _spawns_grandchild())
    handle = first.launch(spec, Sink())
    grandchild = int(_wait_file(spec.workspace / "grandchild.pid"))
    first.close()
    pgid = int(handle.ref.split(":")[1])
    pids = json.loads(_wait_file(spec.workspace / ".job-1" / "pids.json"))
    os.killpg(pgid, signal.SIGKILL)  # the launcher first, or it may record its job's death
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pids["job"]), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (_pid_alive(pgid) or _pid_alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.02)
    status = LocalRuntime().reattach(handle, Sink())
    assert status.state is JobState.LOST
    assert "no exit record" in (status.reason or "")


def test_warm_launchers_run_later_jobs_identically_and_close_retires_the_spare(tmp_path: Path) -> None:
    rt = LocalRuntime()
    results = []
    for i in range(3):
        ws = tmp_path / f"w{i}"
        ws.mkdir()
        spec = JobSpec(
            task_id=f"t{i}", attempt=1, workspace=ws, env={"MLPROV_TASK_TOKEN": "tok", "X": str(i)},
            command=_py("import os; print(os.getcwd(), os.environ['X'], os.environ.get('MLPROV_TASK_TOKEN'))"),
        )  # fmt: skip
        sink = Sink()
        status = rt.wait(rt.launch(spec, sink), timeout=10)
        results.append((status.state, sink.texts()))
        deadline = time.monotonic() + 5
        while rt._spare is None and time.monotonic() < deadline:  # the next one is warmed in the background
            time.sleep(0.01)
    assert results == [(JobState.SUCCEEDED, [f"{tmp_path / f'w{i}'} {i} None"]) for i in range(3)]
    spare = rt._spare
    assert spare is not None
    assert spare.ready.wait(5)  # without a standby sidecar the spare launcher says it is ready at once
    rt.close()
    assert spare.proc.returncode == 0
    assert rt._spare is None
