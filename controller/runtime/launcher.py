"""The tiny wrapper every local job runs under: it outlives the controller and leaves evidence on disk.

A process that is not our child cannot be waited for, so a restarted controller could never learn how
a job ended (ADR 0003). The local runtime therefore starts this wrapper as a new session (its pid is
the process group the handle names), in the workspace, and the wrapper does what needs a parent:

* spawns the sidecar (if any) first, then the job, each in its own process group; the job does not
  see ``MLPROV_TASK_TOKEN`` nor ``MLPROV_HOME`` (only the sidecar needs them: its token and identity);
* reads both processes' stdout and stderr and appends every line, timestamped, to ``output.jsonl``
  in its state directory, one line per record: ``<epoch seconds> <component> <stream> <text>``
  (the controller tails that file, also after a restart);
* enforces the timeout and turns ``SIGTERM`` into a cancel: ``SIGTERM`` to the job's group, a grace
  period, then ``SIGKILL``; when the job leader exits, stray processes left in its group are killed;
* keeps the sidecar running while the job runs, as a Kubernetes native sidecar is: a sidecar that
  exits before its work is done (a crash, an OOM kill, ``SIGKILL``) is started again, up to
  ``MAX_SIDECAR_RESTARTS`` times; it resumes from its own state in the workspace;
* once the job has ended, writes the job-exit marker ``.mlprov/job-exit`` in the workspace ("the job is
  done: finish your work and exit"; a file, not a signal, so a sidecar still starting cannot miss it),
  waits up to ``sidecar_grace`` (``grace`` after a cancel) for the sidecar, then ``SIGTERM``, then
  ``SIGKILL``;
* writes ``exit.json`` atomically: state, exit code (128 + signal when killed), reason, timings, CPU
  seconds of the job and of the sidecar (``job_cpu_s``, ``sidecar_cpu_s``; ``sidecar_standby_cpu_s``: the
  part a standby sidecar spent warming up before the job).

Start-up is on the dispatch path, so this runs as a script (``python -I -S launcher.py ...``), is one
thread with a ``poll`` loop, and imports only ``os``, ``sys``, ``time``, ``select`` and ``_signal``
(``subprocess``, ``json`` and ``threading`` would double its start-up). The runtime also keeps one
launcher started ahead (``--standby``, see :func:`standby`) and hands it the next job on stdin, so
interpreter start-up is off the path altogether. Arguments::

    launcher.py STATE_DIR TIMEOUT|- GRACE SIDECAR_GRACE N_SIDECAR_ARGS [SIDECAR_ARGV...] COMMAND_ARGV...
    launcher.py --standby [N_SIDECAR_ARGS SIDECAR_ARGV...]     (request on stdin)

A standby launcher given a sidecar command also starts that sidecar at once with ``--standby``: it
imports and warms up while the launcher waits, then takes the job's cwd and environment on its stdin
(:func:`_hand_to_sidecar`). The sidecar's start-up (a few seconds of imports on 2 busy cores) is thus
neither on the job's path nor competing with the job for the CPU. When its warm-up is done it writes one
byte to the standby launcher's stdout (a pipe from the runtime, see :func:`_standby_sidecar`). A request
for another sidecar command (or none) drops the standby one and starts cold; restarts after a crash are
always cold.

Fork server (ADR 0006, :mod:`controller.runtime.forkserver`): the runtime's warm server forks a child that
runs :func:`main` in-process with ``sidecar_runner``; the sidecar and its restarts are then forks of this
launcher that run the sidecar command in-process (:func:`_fork_runner`), not new interpreters. Nothing else
changes (pids.json, exit.json, output.jsonl, signals, restarts).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C core: `signal` itself imports enum (start-up)
import contextlib
import os
import select
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    SidecarRunner = Callable[[list[str], dict[str, str]], int]
    """Runs a sidecar command inside a forked child (its stdio, cwd and process group already set); returns
    the exit code."""

__all__ = [
    "EXIT_FILE",
    "JOB_EXIT_MARKER",
    "LAUNCH_FILE",
    "MAX_SIDECAR_RESTARTS",
    "OUTPUT_FILE",
    "PIDS_FILE",
    "main",
    "parse_line",
]

LAUNCH_FILE = "launch.json"
OUTPUT_FILE = "output.jsonl"
PIDS_FILE = "pids.json"
EXIT_FILE = "exit.json"
READY_FD_ENV = "MLPROV_SIDECAR_READY_FD"  # provenance.sidecar.agent.READY_FD_ENV (not imported: start-up)
SIDECAR_ONLY_ENV = ("MLPROV_TASK_TOKEN", "MLPROV_HOME")  # the task token and the signing identity
JOB_EXIT_MARKER = os.path.join(".mlprov", "job-exit")  # relative to the workspace, the launcher's cwd
MAX_SIDECAR_RESTARTS = 5
_MAX_LINE = 64 * 1024
_PIPE_DRAIN = 2.0  # a grandchild that escaped the group may hold a pipe open: stop reading after this
_SIGNAMES = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM"}
_IN = select.POLLIN | select.POLLHUP | select.POLLERR


def parse_line(line: str) -> tuple[float, str, str, str]:
    """``(timestamp, component, stream, text)`` of one ``output.jsonl`` line (without its newline)."""
    stamp, component, stream, text = line.split(" ", 3)
    return float(stamp), component, stream, text


def _json(value: object) -> str:
    """Just enough JSON for ``exit.json``/``pids.json`` (None, numbers, strings, flat dicts)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value).__name__)


def _write_atomic(path: str, data: Mapping[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(_json(data))
    os.replace(tmp, path)


def _write_marker(path: str, result: Mapping[str, object]) -> None:
    """The job-exit marker for the sidecar; a failure to write it only delays the sidecar until SIGTERM."""
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomic(path, {"state": result.get("state"), "exit_code": result.get("exit_code")})


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live child has used so far (``/proc/<pid>/stat``), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 4)
    except (OSError, ValueError, IndexError):
        return None


def _killpg(pgid: int | None, signum: int) -> None:
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _exit_code(status: int) -> tuple[int, str | None]:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return 128 - code, f"killed by signal {_SIGNAMES.get(-code, str(-code))}"
    return code, None


class _Proc:
    """A spawned child in its own process group, with its two pipes (and ``stdin``, a pipe, when asked).

    With ``runner`` (the sidecar fork server's in-process sidecar, see :mod:`controller.runtime.forkserver`)
    the child is a fork of this launcher that calls ``runner(argv, env)`` instead of executing ``argv``;
    ``close_in_child`` lists this launcher's own descriptors, which the child closes first."""

    def __init__(
        self,
        component: str,
        argv: list[str],
        env: dict[str, str],
        *,
        stdin_pipe: bool = False,
        runner: SidecarRunner | None = None,
        close_in_child: Callable[[], list[int]] | None = None,
    ) -> None:
        self.component = component
        self.argv = argv
        self.stdin: int | None = None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        if stdin_pipe:
            in_r, self.stdin = os.pipe()
            os.close(null)
            null = in_r
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        try:
            if runner is not None:
                own = [out_r, err_r, *([self.stdin] if self.stdin is not None else [])]
                own += close_in_child() if close_in_child is not None else []
                self.pid = _fork_runner(runner, argv, env, (null, out_w, err_w), own)
            else:
                self.pid = os.posix_spawnp(
                    argv[0], argv, env, file_actions=actions, setpgroup=0,
                    setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGTERM, _signal.SIGINT, _signal.SIGCHLD),
                )  # fmt: skip
        except OSError:
            for fd in (out_r, err_r, self.stdin):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, null):
                os.close(fd)
        self.pipes = {out_r: "stdout", err_r: "stderr"}
        self.status: int | None = None

    def drop(self) -> None:
        """Stop a standby sidecar that will not be used (its group killed, reaped, pipes closed)."""
        _killpg(self.pid, _signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        for fd in (*self.pipes, self.stdin):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _fork_runner(
    runner: SidecarRunner, argv: list[str], env: dict[str, str], stdio: tuple[int, int, int], own: list[int]
) -> int:
    """Fork a child in its own process group with ``stdio`` as its fds 0-2, this launcher's signal handling
    undone and its descriptors ``own`` closed, that runs ``runner(argv, env)`` and exits with its code."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in {*stdio, *own} - {0, 1, 2}:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = runner(argv, env)
    except BaseException as exc:  # never return into the launcher's loop from the child
        with contextlib.suppress(BaseException):
            os.write(2, f"mlprov: the forked sidecar failed: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


def _standby_sidecar(sidecar_argv: list[str]) -> _Proc | None:
    """Start the next job's sidecar now (``--standby``: it imports and warms up, then waits on stdin for the
    job's working directory and environment), so its start-up is off the job's path; None if it cannot.

    It inherits a copy of this launcher's stdout as ``MLPROV_SIDECAR_READY_FD`` and writes one byte there
    when its warm-up is done (the runtime waits for that before the first job after its start)."""
    if not sidecar_argv:
        return None
    ready = os.dup(1)
    os.set_inheritable(ready, True)
    try:
        env = {**os.environ, READY_FD_ENV: str(ready)}
        return _Proc("sidecar", [*sidecar_argv, "--standby"], env, stdin_pipe=True)
    except OSError:
        return None
    finally:
        os.close(ready)


def _release_stdout(ready: bool) -> None:
    """Standby: write the readiness byte (``ready``: no sidecar will), then point stdout at /dev/null, so the
    runtime's pipe is held by the standby sidecar alone (EOF there: it died before it was ready)."""
    with contextlib.suppress(OSError):
        if ready:
            os.write(1, b"\n")
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)


def _hand_to_sidecar(warm: _Proc, cwd: str, env: Mapping[str, str]) -> bool:
    """Give the standby sidecar its job (NUL-separated ``cwd`` and ``KEY=VALUE`` s, then EOF); False if it died."""
    assert warm.stdin is not None
    request = "\0".join([cwd, *(f"{k}={v}" for k, v in env.items())]).encode("utf-8", "surrogateescape")
    try:
        while request:
            request = request[os.write(warm.stdin, request) :]
        return True
    except OSError:
        return False
    finally:
        os.close(warm.stdin)
        warm.stdin = None


def standby(sidecar_argv: list[str]) -> int:
    """Warm start: wait (already started, imports done) for one job on stdin, then run it.

    The request is NUL-separated: ``cwd``, ``n_env``, ``KEY=VALUE`` x n_env, then the usual arguments
    (``STATE_DIR TIMEOUT GRACE SIDECAR_GRACE N_SIDECAR_ARGS ...``). EOF without a request (the
    controller stopped or closed the runtime) exits quietly.

    ``sidecar_argv`` (``--standby N_SIDECAR_ARGS SIDECAR_ARGV...``): the sidecar the next job most likely
    runs with, started now in standby; used when the request names the same command, else dropped."""
    warm = _standby_sidecar(sidecar_argv)
    _release_stdout(ready=warm is None)
    chunks = []
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        chunks.append(data)
    request = b"".join(chunks)
    if not request:
        if warm is not None:
            warm.drop()
        return 0
    fields = [f.decode("utf-8", "surrogateescape") for f in request.split(b"\0")]
    cwd, n_env = fields[0], int(fields[1])
    env = dict(item.split("=", 1) for item in fields[2 : 2 + n_env])
    args = ["launcher", *fields[2 + n_env :]]
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)  # posix_spawnp searches the PATH of this process
    log_fd = os.open(os.path.join(args[1], "launcher.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return main(args, warm_sidecar=warm)


def main(argv: list[str], *, warm_sidecar: _Proc | None = None, sidecar_runner: SidecarRunner | None = None) -> int:
    """Run one job (arguments in the module docstring). ``sidecar_runner``: start the sidecar (and its
    restarts) as a fork of this process that runs it in-process (the fork server's launchers) instead of
    executing its command."""
    if argv[1:2] == ["--standby"]:
        return standby(argv[3 : 3 + int(argv[2])] if len(argv) > 2 else [])
    state = argv[1]
    timeout = None if argv[2] == "-" else float(argv[2])
    grace, sidecar_grace = float(argv[3]), float(argv[4])
    n_side = int(argv[5])
    sidecar_argv, command = argv[6 : 6 + n_side], argv[6 + n_side :]
    env = dict(os.environ)
    job_env = {k: v for k, v in env.items() if k not in SIDECAR_ONLY_ENV}

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w)
    cancelled = [False]

    def on_term(signum: int, frame: object) -> None:
        cancelled[0] = True

    _signal.signal(_signal.SIGTERM, on_term)
    _signal.signal(_signal.SIGINT, on_term)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)  # a handler, so SIGCHLD wakes the poll

    out_fd = os.open(os.path.join(state, OUTPUT_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def emit(component: str, stream: str, texts: list[str]) -> None:
        stamp = f"{time.time():.6f}"
        os.write(out_fd, "".join(f"{stamp} {component} {stream} {t}\n" for t in texts).encode("utf-8", "replace"))

    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    readers: dict[int, tuple[str, str]] = {}
    partial: dict[int, bytes] = {}
    started_at = time.time()
    result: dict[str, object] = {"started_at": started_at}

    def watch(proc: _Proc) -> None:
        for fd, stream in proc.pipes.items():
            readers[fd] = (proc.component, stream)
            partial[fd] = b""
            poller.register(fd, _IN)

    def own_fds() -> list[int]:
        return [out_fd, wake_r, wake_w, *readers]

    sidecar: _Proc | None = None
    warm = warm_sidecar
    if warm is not None and (warm.argv != [*sidecar_argv, "--standby"] or not _hand_to_sidecar(warm, os.getcwd(), env)):
        warm.drop()
        warm = None
    if warm is not None:
        sidecar = warm
        watch(sidecar)
        result["sidecar_standby_cpu_s"] = _cpu_seconds(warm.pid)  # its warm-up, before this job: not the job's
    elif sidecar_argv:
        try:
            sidecar = _Proc("sidecar", sidecar_argv, env, runner=sidecar_runner, close_in_child=own_fds)
            watch(sidecar)
        except OSError as exc:
            emit("sidecar", "stderr", [f"cannot start the sidecar {sidecar_argv[0]!r}: {exc.strerror or exc}"])
    job: _Proc | None = None
    try:
        job = _Proc("job", command, job_env)
        watch(job)
    except OSError as exc:
        failure = f"cannot start {command[0]!r}: {exc.strerror or exc}"
        emit("job", "stderr", [failure])
        result.update(state="failed", exit_code=127, reason=failure)
    pids = {"launcher": os.getpid(), "job": job.pid if job else None, "sidecar": sidecar.pid if sidecar else None}
    _write_atomic(os.path.join(state, PIDS_FILE), pids)
    sidecar_restarts = 0
    cpu: dict[str, float] = {}
    sidecar_final = sidecar is None  # its exit status is the one recorded (no more restarts)
    sidecar_term_at: float | None = None  # SIGTERM the sidecar at this time if it has not finished
    sidecar_signalled = False

    deadline = None if timeout is None else started_at + timeout
    timed_out = False
    kill_at: float | None = None  # SIGKILL the job's group at this time (after SIGTERM)
    sidecar_kill_at: float | None = None
    job_done_at: float | None = None if job is not None else time.time()
    drain_until: float | None = None

    while True:
        now = time.time()
        # --- reap -----------------------------------------------------------------------------
        for proc in (job, sidecar):
            if proc is not None and proc.status is None:
                try:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status, usage = proc.pid, 0, None
                if pid == proc.pid:
                    proc.status = status
                    if usage is not None:  # CPU seconds per component (a restarted sidecar's add up)
                        cpu[proc.component] = cpu.get(proc.component, 0.0) + usage.ru_utime + usage.ru_stime
                        result[f"{proc.component}_cpu_s"] = round(cpu[proc.component], 4)
        # --- the job ----------------------------------------------------------------------------
        if job is not None and job.status is None:
            if kill_at is None and (cancelled[0] or (deadline is not None and now >= deadline)):
                timed_out = not cancelled[0]
                _killpg(job.pid, _signal.SIGTERM)
                kill_at = now + grace
            elif kill_at is not None and now >= kill_at:
                _killpg(job.pid, _signal.SIGKILL)
                kill_at = now + 3600.0
        elif job_done_at is None and job is not None and job.status is not None:
            job_done_at = now
            _killpg(job.pid, _signal.SIGKILL)  # strays left in the job's group do not outlive it
            code, reason = _exit_code(job.status)
            if timed_out:
                result.update(state="timed_out", reason=f"timed out after {timeout} s")
            elif cancelled[0]:
                result.update(state="cancelled", reason="cancelled")
            elif code == 0:
                result.update(state="succeeded", reason=None)
            else:
                result.update(state="failed", reason=reason or f"exit code {code}")
            result["exit_code"] = code
            result["job_finished_at"] = now
        # --- the sidecar: restarted when it dies early, told when the job is done -----------------
        if sidecar is not None and sidecar.status is not None and not sidecar_final:
            code, why = _exit_code(sidecar.status)
            finished = job_done_at is not None and (code == 0 or sidecar_signalled)
            if finished or cancelled[0] or sidecar_restarts >= MAX_SIDECAR_RESTARTS:
                sidecar_final = True
            else:
                sidecar_restarts += 1
                emit(
                    "sidecar",
                    "stderr",
                    [
                        f"mlprov: sidecar ended early ({why or f'exit code {code}'}); "
                        f"restarting it ({sidecar_restarts}/{MAX_SIDECAR_RESTARTS})"
                    ],
                )
                try:
                    sidecar = _Proc("sidecar", sidecar_argv, env, runner=sidecar_runner, close_in_child=own_fds)
                    watch(sidecar)
                    pids["sidecar"] = sidecar.pid
                    _write_atomic(os.path.join(state, PIDS_FILE), pids)
                except OSError:
                    sidecar_final = True
        if job_done_at is not None and sidecar is not None and sidecar.status is None:
            if sidecar_term_at is None:
                _write_marker(JOB_EXIT_MARKER, result)  # "the job is done: finish your work and exit"
                sidecar_term_at = now + (grace if cancelled[0] else sidecar_grace)
            elif not sidecar_signalled and now >= sidecar_term_at:
                _killpg(sidecar.pid, _signal.SIGTERM)
                sidecar_signalled = True
                sidecar_kill_at = now + grace
            elif sidecar_kill_at is not None and now >= sidecar_kill_at:
                _killpg(sidecar.pid, _signal.SIGKILL)
                sidecar_kill_at = now + 3600.0
        all_exited = job_done_at is not None and (sidecar is None or (sidecar.status is not None and sidecar_final))
        if all_exited:
            drain_until = drain_until or now + _PIPE_DRAIN
            if not readers or now >= drain_until:
                break
        # --- wait for output, a signal or the next deadline --------------------------------------
        sidecar_next = sidecar_kill_at if sidecar_signalled else sidecar_term_at
        waits = [t for t in (deadline if kill_at is None else kill_at, sidecar_next, drain_until) if t is not None]
        wait_ms = max(0, min(int((min(waits) - now) * 1000) + 1, 500)) if waits else 500
        for fd, _event in poller.poll(wait_ms):
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                continue
            data = os.read(fd, 65536)
            component, stream = readers[fd]
            if not data:
                if partial[fd]:
                    emit(component, stream, [partial[fd].decode("utf-8", "replace").rstrip("\r")])
                poller.unregister(fd)
                os.close(fd)
                del readers[fd], partial[fd]
                continue
            chunks = (partial[fd] + data).split(b"\n")
            partial[fd] = chunks.pop()
            if len(partial[fd]) > _MAX_LINE:
                chunks.append(partial[fd])
                partial[fd] = b""
            if chunks:
                emit(component, stream, [c.decode("utf-8", "replace").rstrip("\r") for c in chunks])

    if sidecar is not None and sidecar.status is not None:
        sidecar_code, _ = _exit_code(sidecar.status)
        result["sidecar_exit_code"] = sidecar_code
        result["sidecar_restarts"] = sidecar_restarts
        if result.get("state") == "succeeded" and sidecar_code != 0:
            result.update(state="failed", reason=f"the job succeeded but the sidecar exited with {sidecar_code}")
    result.setdefault("job_finished_at", time.time())
    os.close(out_fd)
    result["finished_at"] = time.time()
    _write_atomic(os.path.join(state, EXIT_FILE), result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
