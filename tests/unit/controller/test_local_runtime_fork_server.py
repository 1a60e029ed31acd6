"""The local runtime's sidecar fork server (ADR 0006): one warm process forks every job's launcher, and the
launcher forks the sidecar from that warm state; a dead server falls back to the spare or a cold launcher."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.runtime.base import JobHandle, JobSpec, JobState, OutputLine
from controller.runtime.forkserver import claim, forkable
from controller.runtime.local import LocalRuntime

# A stand-in for `python -m provenance.cli sidecar` (same interpreter, so the server runs it in-process). It
# records whether it found the sidecar's libraries already imported (a warm fork) and who its parent is,
# waits for the job-exit marker, and writes what it saw into the workspace.
_SIDECAR_CODE = textwrap.dedent(
    """
    import json, os, sys, time
    warm = "c2pa" in sys.modules and "provenance.sidecar.agent" in sys.modules
    standby = sys.argv[-1] == "--standby"
    if standby:  # the spare launcher's sidecar (fallback path): the job's cwd and env on stdin
        fields = sys.stdin.buffer.read().decode().split("\\0")
        if len(fields) < 2:
            sys.exit(0)
        os.chdir(fields[0])
        os.environ.clear()
        os.environ.update(f.split("=", 1) for f in fields[1:] if "=" in f)
    open(f"sidecar-up-{os.getpid()}", "w").close()
    print("sidecar up", flush=True)
    while not os.path.exists(".mlprov/job-exit"):
        time.sleep(0.01)
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        parent = fh.read().replace(b"\\0", b" ").decode()
    record = {"warm": warm, "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "cwd": os.getcwd(),
              "token": os.environ.get("MLPROV_TASK_TOKEN"), "x": os.environ.get("X"), "parent": parent,
              "argv": sys.argv, "standby": standby}
    json.dump(record, open("sidecar.json", "w"))
    print("sidecar done", flush=True)
    """
)
SIDECAR = [sys.executable, "-c", _SIDECAR_CODE, "provenance.cli", "sidecar"]


class Sink:
    def __init__(self) -> None:
        self.lines: list[OutputLine] = []

    def __call__(self, line: OutputLine) -> None:
        self.lines.append(line)


def _job(tmp_path: Path, i: int, code: str = "import time; time.sleep(0.2)") -> JobSpec:
    ws = tmp_path / f"w{i}"
    ws.mkdir()
    return JobSpec(
        task_id=f"t{i}", attempt=1, workspace=ws, env={"MLPROV_TASK_TOKEN": f"tok-{i}", "X": str(i)},
        command=[sys.executable, "-c", f"{code}; open('outputs/o.txt', 'w').write('o')"], sidecar_command=SIDECAR,
    )  # fmt: skip


def _server_pid(rt: LocalRuntime) -> int:
    server = rt._server
    assert server is not None, "the runtime did not start its fork server"
    return server.pid


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _pids(spec: JobSpec) -> dict[str, int | None]:
    data: dict[str, int | None] = json.loads((spec.workspace / ".job-1" / "pids.json").read_text())
    return data


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def rt() -> Iterator[LocalRuntime]:
    runtime = LocalRuntime(grace=1.0, sidecar_grace=5.0, standby_sidecar=SIDECAR)
    yield runtime
    runtime.close()


def test_which_sidecar_commands_the_server_runs_in_process() -> None:
    assert forkable([sys.executable, "-m", "provenance.cli", "sidecar"], sys.executable)
    assert forkable([sys.executable, "-c", "pass", "sidecar"], sys.executable)
    assert not forkable(["/other/python", "-m", "provenance.cli", "sidecar"], sys.executable)
    assert not forkable([sys.executable, "-I", "-m", "provenance.cli", "sidecar"], sys.executable)
    assert not forkable(["/venv/bin/mlprov", "sidecar"], sys.executable)


def test_a_job_runs_with_a_warm_sidecar_forked_by_its_launcher_which_the_server_forked(
    rt: LocalRuntime, tmp_path: Path
) -> None:
    server = _server_pid(rt)
    launchers = []
    for i in range(2):
        spec, sink = _job(tmp_path, i), Sink()
        handle = rt.launch(spec, sink)
        status = rt.wait(handle, timeout=30)
        assert status.state is JobState.SUCCEEDED, status.reason
        record = json.loads((spec.workspace / "sidecar.json").read_text())
        assert record["warm"] is True  # forked from the warm server: no imports of its own
        assert (record["cwd"], record["token"], record["x"]) == (str(spec.workspace), f"tok-{i}", str(i))
        assert record["argv"] == ["-c", "provenance.cli", "sidecar"]
        pids = _pids(spec)
        launcher_pid = int(handle.ref.split(":")[1])
        assert pids["launcher"] == launcher_pid == record["ppid"]  # the sidecar is the launcher's child
        assert pids["sidecar"] == record["pid"] == record["pgid"]  # in its own process group
        assert "controller.runtime.forkserver" in record["parent"]  # the launcher is a fork of the server
        texts = [(line.component, line.text) for line in sink.lines]
        assert ("sidecar", "sidecar done") in texts
        exit_record = json.loads((spec.workspace / ".job-1" / "exit.json").read_text())
        assert exit_record["sidecar_exit_code"] == 0
        assert exit_record["sidecar_cpu_s"] < 0.5  # no interpreter start-up, no imports
        launchers.append(launcher_pid)
    assert _server_pid(rt) == server  # one server for every launch
    assert rt._spare is None  # no standby sidecar warms up beside the jobs
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in launchers))  # reaped: no zombies
    children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    assert children == []


def test_a_forked_sidecar_killed_with_sigkill_is_forked_again(rt: LocalRuntime, tmp_path: Path) -> None:
    spec = _job(tmp_path, 0, "import os, time\nwhile not os.path.exists('go'): time.sleep(0.02)")
    handle = rt.launch(spec, Sink())
    _wait_for(lambda: any(spec.workspace.glob("sidecar-up-*")))
    first = _pids(spec)["sidecar"]
    assert first is not None
    os.kill(first, signal.SIGKILL)

    def restarted() -> bool:
        pid = _pids(spec)["sidecar"]
        return pid != first and (spec.workspace / f"sidecar-up-{pid}").exists()

    _wait_for(restarted)
    (spec.workspace / "go").write_text("")
    status = rt.wait(handle, timeout=30)
    assert status.state is JobState.SUCCEEDED, status.reason
    record = json.loads((spec.workspace / "sidecar.json").read_text())
    assert record["pid"] == _pids(spec)["sidecar"] != first
    assert record["ppid"] == _pids(spec)["launcher"]
    assert record["warm"] is True
    exit_record = json.loads((spec.workspace / ".job-1" / "exit.json").read_text())
    assert (exit_record["sidecar_restarts"], exit_record["sidecar_exit_code"]) == (1, 0)


def test_cancel_stops_the_job_and_its_forked_sidecar(rt: LocalRuntime, tmp_path: Path) -> None:
    spec = _job(tmp_path, 0, "import time; time.sleep(60)")
    handle = rt.launch(spec, Sink())
    _wait_for(lambda: any(spec.workspace.glob("sidecar-up-*")) and _pids(spec)["job"] is not None)
    pids = _pids(spec)
    started = time.monotonic()
    rt.cancel(handle)
    status = rt.wait(handle, timeout=30)
    assert status.state is JobState.CANCELLED
    assert time.monotonic() - started < 10
    assert (spec.workspace / "sidecar.json").exists()  # told by the job-exit marker, it finished its work
    for pid in pids.values():
        assert pid is not None
        _wait_for(lambda: not _alive(pid), timeout=5)  # noqa: B023  # called before the loop moves on


def test_the_server_gets_the_allow_listed_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPROV_ADMIN_TOKEN", "controller-secret-1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-5678")
    runtime = LocalRuntime(standby_sidecar=SIDECAR)
    try:
        environ = Path(f"/proc/{_server_pid(runtime)}/environ").read_bytes()
        assert b"PATH=" in environ
        assert b"controller-secret-1234" not in environ
        assert b"aws-secret-5678" not in environ
        assert b"MLPROV_" not in environ
    finally:
        runtime.close()


def test_a_dead_server_falls_back_to_a_cold_launch_then_to_the_spare_launcher(rt: LocalRuntime, tmp_path: Path) -> None:
    server = _server_pid(rt)
    os.kill(server, signal.SIGKILL)
    _wait_for(lambda: not _alive(server))
    first = _job(tmp_path, 0)
    assert rt.wait(rt.launch(first, Sink()), timeout=30).state is JobState.SUCCEEDED
    assert rt._server is None
    cold = json.loads((first.workspace / "sidecar.json").read_text())
    assert cold["warm"] is False  # a fresh interpreter ran the sidecar command
    assert "controller.runtime.forkserver" not in cold["parent"]
    _wait_for(lambda: rt._spare is not None)
    second = _job(tmp_path, 1)
    assert rt.wait(rt.launch(second, Sink()), timeout=30).state is JobState.SUCCEEDED
    spare = json.loads((second.workspace / "sidecar.json").read_text())
    assert (spare["standby"], spare["warm"], spare["x"]) == (True, False, "1")  # the spare's standby sidecar


def test_close_stops_the_server_and_running_jobs_outlive_it(tmp_path: Path) -> None:
    runtime = LocalRuntime(sidecar_grace=5.0, standby_sidecar=SIDECAR)
    server = _server_pid(runtime)
    spec = _job(tmp_path, 0, "import time; time.sleep(1.0)")
    handle = runtime.launch(spec, Sink())
    runtime.close()
    assert not Path(f"/proc/{server}").exists()  # exited and reaped
    assert _alive(int(handle.ref.split(":")[1]))  # the job's launcher is still running (ADR 0003)
    again = LocalRuntime(warm=False)
    try:
        reattached = JobHandle(handle.task_id, handle.attempt, handle.ref)
        again.reattach(reattached, Sink())
        assert again.wait(reattached, timeout=30).state is JobState.SUCCEEDED
    finally:
        again.close()
    assert json.loads((spec.workspace / "sidecar.json").read_text())["warm"] is True


def test_an_attempt_is_claimed_once(tmp_path: Path) -> None:
    assert claim(str(tmp_path), 4242) is None
    assert claim(str(tmp_path), None) == 4242  # the runtime's fallback finds the forked launcher's claim
    other = tmp_path / "other"
    other.mkdir()
    assert claim(str(other), None) is None
    assert claim(str(other), 4242) == 0  # a late forked launcher finds the runtime's claim and backs off


def test_warmed_says_when_the_server_finished_its_warm_up_without_waiting_for_it() -> None:
    runtime = LocalRuntime(standby_sidecar=SIDECAR)
    try:
        server = runtime._server
        assert server is not None
        assert runtime.warmed() is False  # it imports the sidecar's libraries first (~0.7 s of CPU)
        with server._lock:  # a launch in flight holds the lock: the answer is the last one seen, at once
            started = time.monotonic()
            assert server.is_ready() is False
            assert time.monotonic() - started < 0.5
        _wait_for(runtime.warmed, timeout=60)
        assert server.is_ready() is True
    finally:
        runtime.close()


def test_a_dead_server_counts_as_warmed_since_launches_fall_back() -> None:
    runtime = LocalRuntime(standby_sidecar=SIDECAR)
    try:
        os.kill(_server_pid(runtime), signal.SIGKILL)
        _wait_for(runtime.warmed)
    finally:
        runtime.close()


def test_without_a_fork_server_launches_are_warm_at_once() -> None:
    runtime = LocalRuntime(standby_sidecar=SIDECAR, fork_server=False)
    try:
        assert runtime.warmed() is True
    finally:
        runtime.close()
