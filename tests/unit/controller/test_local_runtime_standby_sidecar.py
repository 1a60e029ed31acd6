"""The local runtime's standby sidecar (the fork server off): started ahead with the spare launcher, handed
the next job's cwd and environment on stdin, dropped when unused; other sidecar commands always start cold."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

from controller.runtime.base import JobSpec, JobState
from controller.runtime.local import LocalRuntime, _has_standby

# A stand-in for `mlprov sidecar`: "provenance.cli" and "sidecar" in its argv make the runtime treat it
# as mlprov's own. In standby it records when it started, "warms up" (sleeps), says it is ready on the
# descriptor MLPROV_SIDECAR_READY_FD names (unless told never to), waits for its job on stdin, adopts it,
# and then behaves as a sidecar: waits for the job-exit marker and writes what it saw into the workspace.
_FAKE_SIDECAR_CODE = textwrap.dedent(
    """
    import json, os, sys, time
    born = time.time()
    standby = sys.argv[-1] == "--standby"
    ready_at = None
    if standby:
        time.sleep(WARM_UP)  # the imports of a real sidecar
        ready_fd = os.environ.pop("MLPROV_SIDECAR_READY_FD", None)
        if ready_fd and not NEVER_READY:
            ready_at = time.time()
            os.write(int(ready_fd), b"\\n")
            os.close(int(ready_fd))
        request = sys.stdin.buffer.read()
        if not request:
            sys.exit(0)
        fields = request.decode().split("\\0")
        os.chdir(fields[0])
        os.environ.clear()
        os.environ.update(f.split("=", 1) for f in fields[1:] if "=" in f)
    while not os.path.exists(".mlprov/job-exit"):
        time.sleep(0.01)
    record = {"standby": standby, "born": born, "cwd": os.getcwd(), "token": os.environ.get("MLPROV_TASK_TOKEN"),
              "x": os.environ.get("X"), "ready_at": ready_at}
    json.dump(record, open("sidecar.json", "w"))
    print("sidecar done", flush=True)
    """
)


def fake_sidecar(warm_up: float = 0.0, never_ready: bool = False) -> list[str]:
    code = f"WARM_UP = {warm_up!r}\nNEVER_READY = {never_ready!r}\n{_FAKE_SIDECAR_CODE}"
    return [sys.executable, "-c", code, "provenance.cli", "sidecar"]


FAKE_SIDECAR = fake_sidecar()


def _job(tmp_path: Path, i: int, sidecar: list[str] | None) -> JobSpec:
    ws = tmp_path / f"w{i}"
    ws.mkdir()
    return JobSpec(
        task_id=f"t{i}", attempt=1, workspace=ws, env={"MLPROV_TASK_TOKEN": f"tok-{i}", "X": str(i)},
        command=[sys.executable, "-c", "import time; time.sleep(0.2); open('outputs/o.txt', 'w').write('o')"],
        sidecar_command=sidecar,
    )  # fmt: skip


def _wait_spare(rt: LocalRuntime, *, with_sidecar: bool = False) -> None:
    """Until the spare launcher runs (and, ``with_sidecar``, its standby sidecar is past start-up)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spare = rt._spare
        if spare is not None and not with_sidecar:
            return
        if spare is not None:
            pid = spare.proc.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children and "provenance.cli" in Path(f"/proc/{children[0]}/cmdline").read_text():
                time.sleep(0.3)  # its interpreter up
                return
        time.sleep(0.01)
    raise AssertionError("no spare launcher (with a standby sidecar) in 10 s")


def test_mlprovs_own_sidecar_command_is_recognised() -> None:
    assert _has_standby([sys.executable, "-m", "provenance.cli", "sidecar"])
    assert _has_standby(["/venv/bin/mlprov", "sidecar"])
    assert not _has_standby(["/opt/my-sidecar", "run"])
    assert not _has_standby([sys.executable, "-m", "provenance.cli", "sidecar", "--once"])
    assert not _has_standby([])


def test_every_job_gets_a_sidecar_started_before_it_with_its_own_cwd_and_environment(tmp_path: Path) -> None:
    rt = LocalRuntime(sidecar_grace=5.0, standby_sidecar=FAKE_SIDECAR, fork_server=False)
    try:
        _wait_spare(rt, with_sidecar=True)  # the first job's sidecar is warm too
        for i in range(2):
            spec = _job(tmp_path, i, FAKE_SIDECAR)
            submitted = time.time()
            status = rt.wait(rt.launch(spec, lambda line: None), timeout=20)
            assert status.state is JobState.SUCCEEDED, status.reason
            record = json.loads((spec.workspace / "sidecar.json").read_text())
            assert record["standby"] is True
            assert record["born"] < submitted  # started ahead, off the job's path
            assert (record["cwd"], record["token"], record["x"]) == (str(spec.workspace), f"tok-{i}", str(i))
            exit_record = json.loads((spec.workspace / ".job-1" / "exit.json").read_text())
            assert exit_record["sidecar_exit_code"] == 0
            _wait_spare(rt, with_sidecar=True)
    finally:
        rt.close()


def test_a_job_without_a_sidecar_or_with_another_one_drops_the_standby_sidecar(tmp_path: Path) -> None:
    other = [*FAKE_SIDECAR[:-2], "other-sidecar"]
    rt = LocalRuntime(sidecar_grace=5.0, standby_sidecar=FAKE_SIDECAR, fork_server=False)
    try:
        _wait_spare(rt)
        plain = _job(tmp_path, 0, None)
        assert rt.wait(rt.launch(plain, lambda line: None), timeout=20).state is JobState.SUCCEEDED
        assert not (plain.workspace / "sidecar.json").exists()
        _wait_spare(rt)
        custom = _job(tmp_path, 1, other)
        assert rt.wait(rt.launch(custom, lambda line: None), timeout=20).state is JobState.SUCCEEDED
        assert json.loads((custom.workspace / "sidecar.json").read_text())["standby"] is False  # cold
    finally:
        rt.close()


def _job_started_at(spec: JobSpec) -> float:
    return float((spec.workspace / "outputs" / "started").read_text())


def _timed_job(tmp_path: Path, i: int, sidecar: list[str] | None) -> JobSpec:
    spec = _job(tmp_path, i, sidecar)
    assert spec.command is not None
    spec.command[:] = [sys.executable, "-c", "import time; open('outputs/started', 'w').write(repr(time.time()))"]
    return spec


def test_the_first_job_starts_once_the_standby_sidecar_started_with_the_runtime_is_warm(tmp_path: Path) -> None:
    sidecar = fake_sidecar(warm_up=0.5)
    rt = LocalRuntime(sidecar_grace=5.0, standby_sidecar=sidecar, fork_server=False)
    try:
        first = _timed_job(tmp_path, 0, sidecar)  # launched at once: its sidecar is still warming up
        assert rt.wait(rt.launch(first, lambda line: None), timeout=20).state is JobState.SUCCEEDED
        record = json.loads((first.workspace / "sidecar.json").read_text())
        assert record["standby"] is True
        assert record["ready_at"] is not None
        assert _job_started_at(first) >= record["ready_at"]
    finally:
        rt.close()


def test_the_first_launch_waits_a_bounded_time_for_a_sidecar_that_never_says_it_is_warm(tmp_path: Path) -> None:
    sidecar = fake_sidecar(never_ready=True)
    rt = LocalRuntime(sidecar_grace=5.0, standby_sidecar=sidecar, first_warm_wait=0.5, fork_server=False)
    try:
        spec = _timed_job(tmp_path, 0, sidecar)
        launched = time.monotonic()
        handle = rt.launch(spec, lambda line: None)
        assert 0.4 <= time.monotonic() - launched < 5
        assert rt.wait(handle, timeout=20).state is JobState.SUCCEEDED
        assert json.loads((spec.workspace / "sidecar.json").read_text())["standby"] is True
    finally:
        rt.close()
