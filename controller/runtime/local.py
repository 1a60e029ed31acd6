"""The local ``Runtime``: a job is a process group on this machine (the embedded default).

Each attempt runs under :mod:`controller.runtime.launcher`, started as a new session in a state
directory ``<workspace>/.job-<attempt>/``. The launcher writes the job's (and sidecar's) output to
``output.jsonl`` and its ending to ``exit.json``, so this runtime never depends on being the job's
parent: it tails the file (one follower thread per job) and reads the exit record, which is exactly
what it does after a controller restart (:meth:`LocalRuntime.reattach`).

The handle ref is ``pid:<pgid>:<start-time>:<state-dir>``: the launcher's pid (= its process group)
and its start time in clock ticks from ``/proc/<pid>/stat`` (a recycled pid has another start time),
plus where its evidence lives.

Environment: the job sees an allow-list of the controller's environment (``PATH`` with the venv's
``bin`` first, ``HOME``, locale, ``XDG_*``, ...), never the controller's ``MLPROV_*`` secrets, plus
``spec.env`` and ``MLPROV_WORKSPACE``; ``MLPROV_TASK_TOKEN`` goes to the sidecar only.

Warm start: one spare launcher waits (started after each launch, and at construction when
``standby_sidecar`` is given) and takes the next job on stdin. When the last job's sidecar is mlprov's
own, the spare also starts that sidecar in standby, so the next job's sidecar has done its seconds of
imports before the job starts (see :mod:`controller.runtime.launcher`). Both wait with the allow-listed
environment only. The spare reports on its stdout when its sidecar is warm; the first launch after
construction waits for that (at most ``first_warm_wait`` seconds), so the first job after a controller
start does not run beside a sidecar still importing, i.e. with its first artifacts unsigned for seconds.
Later launches never wait: their spare had the previous job's duration to warm up.

Fork server (the default, ADR 0006): when the sidecar is this interpreter's ``-m``/``-c`` command, one warm
process (:mod:`controller.runtime.forkserver`) forks every job's launcher, which forks the sidecar from that
warm state: no per-job interpreter start-up or imports, and no spare launcher. The handle of a forked
launcher is followed as a re-attached one (``/proc`` + ``exit.json``). A server that fails is dropped for
the spare launcher; ``fork_server=False`` turns it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from controller.errors import JobLaunchError
from controller.runtime import launcher
from controller.runtime.base import JobHandle, JobSpec, JobState, JobStatus, OutputLine, OutputSink
from controller.runtime.forkserver import ForkServer, claim, forkable

__all__ = ["LocalRuntime"]

log = structlog.get_logger(__name__)

_ENV_ALLOW = ("HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM")
_CONSUMED_FILE = "consumed"


@dataclass
class _Job:
    handle: JobHandle
    state_dir: Path
    sink: OutputSink
    done: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    status: JobStatus | None = None
    cancel_requested: bool = False
    offset: int = 0
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class _Spare:
    """A standby launcher and whether it said its sidecar is warm (one byte on its stdout, or EOF)."""

    proc: subprocess.Popen[bytes]
    ready: threading.Event = field(default_factory=threading.Event)

    def watch_ready(self) -> None:
        """Set :attr:`ready` when the spare writes its byte or closes its stdout (a thread per spare)."""
        stdout = self.proc.stdout
        if stdout is None:
            self.ready.set()
            return

        def wait() -> None:
            with contextlib.suppress(OSError, ValueError):
                stdout.read(1)
            self.ready.set()
            with contextlib.suppress(OSError):
                stdout.close()

        threading.Thread(target=wait, name="spare-ready", daemon=True).start()


def _proc_start_time(pid: int) -> tuple[int, str] | None:
    """``(start time in clock ticks, state letter)`` of a live pid, from ``/proc/<pid>/stat``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19]), fields[0]


def _parse_ref(ref: str) -> tuple[int, int, Path]:
    kind, pgid, start, state_dir = ref.split(":", 3)
    if kind != "pid":
        raise ValueError(f"not a local job ref: {ref!r}")
    return int(pgid), int(start), Path(state_dir)


def _base_env() -> dict[str, str]:
    """The allow-listed part of the controller's environment (no ``MLPROV_*`` secrets), venv first on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {k: v for k, v in os.environ.items() if k in _ENV_ALLOW or k.startswith("XDG_")}
    env["PATH"] = venv_bin + os.pathsep + path
    return env


def _job_env(spec: JobSpec) -> dict[str, str]:
    env = _base_env()
    env["PYTHONUNBUFFERED"] = "1"  # stage output arrives line by line, not at exit
    env.update(spec.env)
    env["MLPROV_WORKSPACE"] = str(spec.workspace)
    env.setdefault("MLPROV_TASK_ID", spec.task_id)
    return env


def _check_command(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    exe = argv[0]
    if "/" in exe:
        target = cwd / exe
        if not (target.is_file() and os.access(target, os.X_OK)):
            raise JobLaunchError(f"cannot start {exe!r}: not an executable file; fix the service's command")
    elif shutil.which(exe, path=env["PATH"]) is None:
        raise JobLaunchError(f"cannot start {exe!r}: not found on PATH; fix the service's command or install it")


def _has_standby(sidecar: list[str]) -> bool:
    """Whether the sidecar command is mlprov's own (``... -m provenance.cli sidecar`` or ``mlprov sidecar``),
    which understands ``--standby``; another command is always started cold."""
    if not sidecar or sidecar[-1] != "sidecar":
        return False
    return "provenance.cli" in sidecar or os.path.basename(sidecar[0]) == "mlprov"


class LocalRuntime:
    """Process groups under a launcher; see the module docstring. Thread-safe."""

    def __init__(
        self,
        *,
        grace: float = 5.0,
        sidecar_grace: float = 30.0,
        poll_interval: float = 0.02,
        python: str = sys.executable,
        warm: bool = True,
        standby_sidecar: list[str] | None = None,
        first_warm_wait: float = 10.0,
        fork_server: bool = True,
    ) -> None:
        self._grace = grace
        self._sidecar_grace = sidecar_grace
        self._poll = poll_interval
        self._python = python
        self._warm = warm
        self._launcher_argv = [python, "-I", "-S", launcher.__file__]
        self._spare: _Spare | None = None
        self._spare_sidecar: list[str] = list(standby_sidecar or []) if _has_standby(standby_sidecar or []) else []
        """The sidecar command of the last launch (at first ``standby_sidecar``, the configured one): the spare
        launcher starts it in standby for the next job."""
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._first_warm_wait = first_warm_wait if warm and self._spare_sidecar else 0.0
        """The first launch waits this long at most for the spare started here to have a warm sidecar."""
        self._server: ForkServer | None = None
        """The sidecar fork server (ADR 0006): while it runs, every launch goes through it and no spare waits."""
        if warm and fork_server and self._spare_sidecar and forkable(self._spare_sidecar, python):
            try:
                self._server = ForkServer(python, self._spare_sidecar, _base_env())
            except OSError:
                log.warning("fork_server_not_started; using the spare launcher")
        if warm and self._spare_sidecar and self._server is None:  # the first job's sidecar is warm too
            self._start_spare()  # here, not on a thread: the first launch finds it (a Popen: milliseconds)

    def warmed(self) -> bool:
        """Whether launches are warm: the fork server finished its warm-up (or there is none, or it died
        and launches fall back). ``/readyz`` reports it; the first task after start-up waits for it."""
        server = self._server
        return server is None or server.is_ready() or not server.alive()

    # -- Runtime ---------------------------------------------------------------------------------

    def launch(self, spec: JobSpec, on_output: OutputSink) -> JobHandle:
        if not spec.command:
            raise JobLaunchError(
                f"task {spec.task_id}: the local runtime runs commands; give the service a `command`"
                + (f" (image {spec.image!r} needs the kubernetes runtime)" if spec.image else "")
            )
        for sub in ("inputs", "outputs"):
            (spec.workspace / sub).mkdir(parents=True, exist_ok=True)
        env = _job_env(spec)
        _check_command(spec.command, env, spec.workspace)
        state_dir = spec.workspace / f".job-{spec.attempt}"
        if state_dir.exists():
            shutil.rmtree(state_dir)
        state_dir.mkdir(parents=True)
        launch = {
            "command": spec.command,
            "sidecar": spec.sidecar_command,
            "cwd": str(spec.workspace),
            "timeout": spec.timeout,
            "grace": self._grace,
            "sidecar_grace": self._sidecar_grace,
        }
        (state_dir / launcher.LAUNCH_FILE).write_text(json.dumps(launch))  # for people; the launcher uses argv
        sidecar = spec.sidecar_command or []
        args = [
            str(state_dir), "-" if spec.timeout is None else repr(float(spec.timeout)), repr(self._grace),
            repr(self._sidecar_grace), str(len(sidecar)), *sidecar, *spec.command,
        ]  # fmt: skip
        pid = self._fork_launch(spec.workspace, env, args, state_dir)
        proc = self._hand_to_spare(spec.workspace, env, args) if self._warm and pid is None else None
        if pid is None and proc is None:
            try:
                with (state_dir / "launcher.log").open("wb") as launcher_log:
                    proc = subprocess.Popen(
                        [*self._launcher_argv, *args],
                        cwd=spec.workspace,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=launcher_log,
                        start_new_session=True,
                        close_fds=True,
                    )
            except OSError as exc:
                raise JobLaunchError(f"cannot start the job launcher: {exc}") from exc
        if self._warm and self._server is None:
            self._spare_sidecar = list(sidecar) if _has_standby(sidecar) else []
            threading.Thread(target=self._start_spare, name="spare-launcher", daemon=True).start()
        if proc is not None:
            pid = proc.pid
        assert pid is not None
        started = _proc_start_time(pid)
        handle = JobHandle(spec.task_id, spec.attempt, f"pid:{pid}:{started[0] if started else 0}:{state_dir}")
        job = _Job(handle=handle, state_dir=state_dir, sink=on_output, proc=proc)
        self._follow(job)
        log.info("job_launched", task_id=spec.task_id, attempt=spec.attempt, pgid=pid, forked=proc is None)
        return handle

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        job = self._jobs.get(handle.ref)
        if job is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                status = self.status(handle)
                if status.state not in (JobState.RUNNING, JobState.PENDING):
                    return status
                if deadline is not None and time.monotonic() >= deadline:
                    return status
                time.sleep(self._poll * 5)
        job.done.wait(timeout)
        return job.status if job.status is not None else self.status(handle)

    def status(self, handle: JobHandle) -> JobStatus:
        job = self._jobs.get(handle.ref)
        if job is not None and job.status is not None:
            return job.status
        return self._disk_status(handle, cancel_requested=job.cancel_requested if job else False)

    def cancel(self, handle: JobHandle) -> None:
        pgid, start, state_dir = _parse_ref(handle.ref)
        job = self._jobs.get(handle.ref)
        if job is not None:
            job.cancel_requested = True
        if (state_dir / launcher.EXIT_FILE).exists() or not self._alive(pgid, start):
            return
        try:
            os.kill(pgid, signal.SIGTERM)  # the launcher stops the job's group, then the sidecar
        except ProcessLookupError:
            return
        threading.Thread(target=self._backstop, args=(pgid, start, state_dir), daemon=True).start()

    def reattach(self, handle: JobHandle, on_output: OutputSink) -> JobStatus:
        _, _, state_dir = _parse_ref(handle.ref)
        status = self._disk_status(handle, cancel_requested=False)
        if status.state is JobState.LOST:
            return status
        job = _Job(handle=handle, state_dir=state_dir, sink=on_output)
        try:
            job.offset = int((state_dir / _CONSUMED_FILE).read_text())
        except (OSError, ValueError):
            job.offset = 0
        self._follow(job)
        return status

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following (the jobs keep running; a new controller re-attaches to them)."""
        self._warm = False
        with self._lock:
            jobs = list(self._jobs.values())
            spare, self._spare = self._spare, None
            server, self._server = self._server, None
        for job in jobs:
            job.stop.set()
            job.wake.set()
        if spare is not None:
            self._retire(spare.proc)
        if server is not None:
            server.close()

    # -- the fork server -------------------------------------------------------------------------

    def _fork_launch(self, cwd: Path, env: dict[str, str], args: list[str], state_dir: Path) -> int | None:
        """The launcher's pid when the fork server started it; None: launch it otherwise. A server that
        failed is stopped and replaced by the spare launcher; the attempt is claimed first
        (:func:`~controller.runtime.forkserver.claim`), so it never runs twice."""
        with self._lock:
            server = self._server
            if server is None:
                return None
            first_wait, self._first_warm_wait = self._first_warm_wait, 0.0
        pid = server.launch(str(cwd), env, args, timeout=max(first_wait, 10.0))
        if pid is not None:
            return pid
        log.warning("fork_server_failed; launching without it", alive=server.alive())
        with self._lock:
            if self._server is server:
                self._server = None
        server.close(timeout=0.5)
        holder = claim(str(state_dir), None)  # launch() starts the spare launcher for the next job
        return holder if holder is not None and holder > 0 else None

    # -- the warm launcher -----------------------------------------------------------------------

    def _start_spare(self) -> None:
        """Start the next job's launcher now, off the dispatch path (interpreter start-up is ~15 ms), with
        the last job's sidecar command: the launcher starts that sidecar in standby too (seconds of imports)."""
        sidecar = list(self._spare_sidecar)
        standby = ["--standby", str(len(sidecar)), *sidecar] if sidecar else ["--standby"]
        try:
            proc = subprocess.Popen(
                [*self._launcher_argv, *standby],
                cwd="/",
                env=_base_env(),  # it and its standby sidecar wait without the controller's secrets
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,  # one byte when its sidecar is warm (launcher._standby_sidecar)
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            log.warning("spare launcher could not start; launching cold")
            return
        spare = _Spare(proc)
        spare.watch_ready()
        with self._lock:
            keep = self._warm and self._spare is None
            if keep:
                self._spare = spare
        if not keep:
            self._retire(spare.proc)

    @staticmethod
    def _retire(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None:
            proc.stdin.close()  # EOF without a request: the standby launcher exits
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _hand_to_spare(self, cwd: Path, env: dict[str, str], args: list[str]) -> subprocess.Popen[bytes] | None:
        with self._lock:
            spare, self._spare = self._spare, None
            first_wait, self._first_warm_wait = self._first_warm_wait, 0.0
        if spare is None or spare.proc.stdin is None:
            return None
        if first_wait > 0 and not spare.ready.wait(first_wait):
            log.warning("standby_sidecar_not_ready", waited_s=first_wait)
        proc, stdin = spare.proc, spare.proc.stdin
        if proc.poll() is not None:
            return None
        fields = [str(cwd), str(len(env)), *(f"{k}={v}" for k, v in env.items()), *args]
        try:
            stdin.write(b"\0".join(f.encode("utf-8", "surrogateescape") for f in fields))
            stdin.close()
        except OSError:
            self._retire(proc)
            return None
        return proc

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _alive(pgid: int, start: int) -> bool:
        info = _proc_start_time(pgid)
        return info is not None and info[0] == start and info[1] not in ("Z", "X")

    def _disk_status(self, handle: JobHandle, *, cancel_requested: bool) -> JobStatus:
        pgid, start, state_dir = _parse_ref(handle.ref)
        try:
            record = json.loads((state_dir / launcher.EXIT_FILE).read_text())
        except FileNotFoundError:
            record = None
        if record is not None:
            return JobStatus(
                state=JobState(record["state"]),
                exit_code=record.get("exit_code"),
                reason=record.get("reason"),
                started_at=record.get("started_at"),
                finished_at=record.get("finished_at"),
            )
        if self._alive(pgid, start):
            return JobStatus(state=JobState.RUNNING, started_at=self._started_at(state_dir))
        if cancel_requested:
            return JobStatus(JobState.CANCELLED, reason="cancelled (killed before it recorded its exit)")
        return JobStatus(
            JobState.LOST,
            reason="the job's process is gone and left no exit record (killed, or the machine restarted)",
            started_at=self._started_at(state_dir),
        )

    @staticmethod
    def _started_at(state_dir: Path) -> float | None:
        try:
            return (state_dir / launcher.LAUNCH_FILE).stat().st_mtime
        except OSError:
            return None

    def _backstop(self, pgid: int, start: int, state_dir: Path) -> None:
        """If the launcher did not finish within its grace period, kill everything it started."""
        deadline = time.monotonic() + self._grace + max(self._grace, 2.0)
        while time.monotonic() < deadline:
            if not self._alive(pgid, start):
                return
            time.sleep(0.1)
        try:
            pids = json.loads((state_dir / launcher.PIDS_FILE).read_text())
        except (OSError, ValueError):
            pids = {}
        for key in ("job", "sidecar"):
            if pids.get(key):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pids[key]), signal.SIGKILL)
        if self._alive(pgid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    def _follow(self, job: _Job) -> None:
        with self._lock:
            self._jobs[job.handle.ref] = job
        if job.proc is not None:
            proc = job.proc

            def reap() -> None:
                proc.wait()
                job.wake.set()

            threading.Thread(target=reap, name=f"reap-{job.handle.task_id}", daemon=True).start()
        threading.Thread(target=self._tail, args=(job,), name=f"tail-{job.handle.task_id}", daemon=True).start()

    def _tail(self, job: _Job) -> None:
        output = job.state_dir / launcher.OUTPUT_FILE
        pgid, start, _ = _parse_ref(job.handle.ref)
        pending = b""
        while not job.stop.is_set():
            pending = self._drain(job, output, pending)
            finished = (job.state_dir / launcher.EXIT_FILE).exists()
            if not finished and job.proc is not None:
                finished = job.proc.poll() is not None
            elif not finished:
                finished = not self._alive(pgid, start)
            if finished:
                self._drain(job, output, pending)
                job.status = self._disk_status(job.handle, cancel_requested=job.cancel_requested)
                job.done.set()
                return
            job.wake.wait(self._poll)
            job.wake.clear()

    def _drain(self, job: _Job, output: Path, pending: bytes) -> bytes:
        try:
            with output.open("rb") as fh:
                fh.seek(job.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return pending
        if not chunk:
            return pending
        data = pending + chunk
        *lines, rest = data.split(b"\n")
        job.offset += len(chunk)
        for raw in lines:
            try:
                stamp, component, stream, text = launcher.parse_line(raw.decode("utf-8", "replace"))
            except ValueError:
                continue
            line = OutputLine(stream=stream, component=component, timestamp=stamp, text=text)
            try:
                job.sink(line)
            except Exception:  # a failing sink must not stop the follower; the job's evidence is on disk
                log.exception("output_sink_failed", task_id=job.handle.task_id)
        (job.state_dir / _CONSUMED_FILE).write_text(str(job.offset - len(rest)))
        return rest
