"""The sidecar fork server: one warm process that forks every local job's launcher, and through it the sidecar.

A provenance sidecar started as a fresh interpreter spends ~0.7 s of CPU before its job's first artifact
(imports of c2pa, model_signing, cryptography, httpx, pydantic; the environment probe). On a small machine
that CPU is taken from the jobs, whether it is spent before the job (a standby sidecar) or beside it. The
fork server spends it once: :class:`LocalRuntime <controller.runtime.local.LocalRuntime>` starts it at
construction (``python -I -m controller.runtime.forkserver SIDECAR_ARGV...``, its own session, the
allow-listed environment only), it imports and warms up what the sidecar needs (:func:`_warm_up`, no
threads: it forks), says ``ready`` and then serves launch requests (ADR 0006):

* a request (:meth:`ForkServer.launch`) carries what a spare launcher reads on its stdin: the job's cwd,
  its environment and the launcher's arguments; the server forks a child that claims the attempt
  (:data:`CLAIM_FILE`, see below), becomes a new session in the workspace with the job's environment and
  runs :func:`launcher.main <controller.runtime.launcher.main>` in-process; the reply is its pid;
* that launcher starts the job as always (``posix_spawn``), and the sidecar, when its command is this
  interpreter's ``-m MODULE ...`` or ``-c CODE ...`` (:func:`forkable`), as a fork of itself that runs the
  command in-process (:func:`run_sidecar`): warm, so its start costs milliseconds; it is the launcher's
  child, so exit codes, CPU accounting, restarts after a crash and signals work as for a spawned one;
  another sidecar command is spawned as usual;
* the server ignores ``SIGCHLD``: the kernel reaps the launchers, no zombies; it exits on EOF of its
  stdin (the controller closed the runtime or died), leaving running launchers, jobs and sidecars alone
  (ADR 0003).

The claim: a launch whose request failed (timeout, the server died) falls back to a spare or cold launcher.
So that an attempt is never started twice, the forked launcher first creates ``<state>/launcher.claim``
exclusively and writes its pid there; the runtime creates it before a fallback, or, finding it, adopts
the pid it names (:func:`claim`).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CLAIM_FILE", "ForkServer", "claim", "forkable", "run_sidecar"]

CLAIM_FILE = "launcher.claim"
_READY = b"ready"


def forkable(sidecar: Sequence[str], python: str) -> bool:
    """Whether the fork server (running ``python``) can run ``sidecar`` in-process: ``python -m MODULE ...``
    or ``python -c CODE ...`` of the same interpreter, no other interpreter options."""
    return len(sidecar) >= 3 and sidecar[0] == python and sidecar[1] in ("-m", "-c")


def claim(state_dir: str, pid: int | None) -> int | None:
    """Claim the attempt in ``state_dir`` for the launcher ``pid`` (None: the runtime's own fallback).

    Returns None when the claim is ours, else the pid of the launcher that holds it (waiting a moment for
    it to be written), or -1 when the holder never wrote it."""
    path = os.path.join(state_dir, CLAIM_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + 2.0
        while True:
            with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as fh:
                return int(fh.read())
            if time.monotonic() >= deadline:
                return -1
            time.sleep(0.01)
    try:
        os.write(fd, str(pid if pid is not None else 0).encode())
    finally:
        os.close(fd)
    return None


# -- the server (its own process) ----------------------------------------------------------------------


def _warm_up() -> None:
    """What a standby sidecar does before its job (``mlprov sidecar --standby``), without starting threads."""
    from provenance.cli.sidecarcmd import warm_up_for_fork

    warm_up_for_fork()


def run_sidecar(argv: list[str], env: dict[str, str]) -> int:
    """In a forked launcher's child (stdio, cwd and process group set): become ``argv``, an in-process run
    of ``python -m MODULE ARGS`` or ``python -c CODE ARGS`` with ``env``; return its exit code. Like a
    standby sidecar it ends without the interpreter's teardown (the caller ``os._exit`` s)."""
    import random
    import runpy
    import signal
    import traceback

    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    random.seed()  # a fork shares its parent's random state
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in any Python interpreter
    code = 0
    try:
        if argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *argv[3:]]
            code_obj = compile(argv[2], "<string>", "exec")
            exec(code_obj, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102  # = python -c
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _launch(fields: list[str], sidecar: list[str]) -> int:
    """Fork the launcher of one request (``cwd``, ``n_env``, ``KEY=VALUE`` x n_env, launcher arguments);
    return its pid (in the parent)."""
    from controller.runtime import launcher

    cwd, n_env = fields[0], int(fields[1])
    env = dict(item.split("=", 1) for item in fields[2 : 2 + n_env])
    args = ["launcher", *fields[2 + n_env :]]
    state, n_side = args[1], int(args[5])
    runner = run_sidecar if forkable(args[6 : 6 + n_side], sys.executable) else None
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        import signal

        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        if claim(state, os.getpid()) is not None:
            code = 0  # the runtime fell back and launched this attempt itself
            return 0
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)  # posix_spawnp searches the PATH of this process
        null = os.open(os.devnull, os.O_RDWR)
        log_fd = os.open(os.path.join(state, "launcher.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for target, fd in ((0, null), (1, null), (2, log_fd)):
            os.dup2(fd, target)
        os.close(null)
        os.close(log_fd)
        code = launcher.main(args, sidecar_runner=runner)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"mlprov: the forked launcher failed: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_exactly(fd: int, size: int, buffer: bytearray) -> bytes | None:
    while len(buffer) < size:
        data = os.read(fd, 65536)
        if not data:
            return None
        buffer += data
    out = bytes(buffer[:size])
    del buffer[:size]
    return out


def serve(sidecar: list[str]) -> int:
    """The server's loop: warm up, say ``ready``, then one reply line per request until EOF on stdin.

    A request is ``<length>\\n`` then that many bytes, NUL-separated fields (see :func:`_launch`); the
    reply is ``ok <pid>`` or ``error <text>``."""
    import signal

    _warm_up()
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        os.write(1, b"error the warm-up left threads running: cannot fork safely\n")
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the launchers: no zombies
    os.write(1, _READY + b"\n")
    buffer = bytearray()
    while True:
        while b"\n" not in buffer:
            data = os.read(0, 65536)
            if not data:
                return 0  # the runtime closed or the controller died: the launchers keep running
            buffer += data
        header, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        payload = _read_exactly(0, int(header), buffer)
        if payload is None:
            return 0
        try:
            fields = [f.decode("utf-8", "surrogateescape") for f in payload.split(b"\0")]
            reply = f"ok {_launch(fields, sidecar)}"
        except Exception as exc:  # a bad request or a failed fork: the runtime falls back
            reply = f"error {type(exc).__name__}: {exc}".replace("\n", " ")
        os.write(1, reply.encode("utf-8", "replace") + b"\n")


# -- the client (in the controller) --------------------------------------------------------------------


class ForkServer:
    """The runtime's end: starts the server, sends launch requests, stops it. Thread-safe.

    ``python`` and ``env`` are the server's interpreter and (allow-listed) environment; ``sidecar`` the
    configured sidecar command (informational: each request names its own)."""

    def __init__(self, python: str, sidecar: list[str], env: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._ready = False
        self.proc = subprocess.Popen(
            [python, "-I", "-m", "controller.runtime.forkserver", *sidecar],
            cwd="/",
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _line(self, deadline: float) -> bytes | None:
        """The next reply line, None on EOF or at ``deadline``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = max(0.0, deadline - time.monotonic())  # past the deadline: one look without waiting
            if not select.select([fd], [], [], left)[0]:
                return None
            data = os.read(fd, 65536)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def wait_ready(self, timeout: float) -> bool:
        """Whether the server finished its warm-up within ``timeout`` seconds."""
        with self._lock:
            return self._await_ready(time.monotonic() + timeout)

    def is_ready(self) -> bool:
        """Whether the warm-up is done, without waiting (a launch in flight holding the lock: as last seen)."""
        if not self._lock.acquire(blocking=False):
            return self._ready
        try:
            return self._await_ready(time.monotonic())
        finally:
            self._lock.release()

    def _await_ready(self, deadline: float) -> bool:
        if not self._ready:
            self._ready = self._line(deadline) == _READY
        return self._ready

    def launch(self, cwd: str, env: dict[str, str], args: list[str], *, timeout: float) -> int | None:
        """Have the server fork the launcher of one attempt; its pid, or None if the server did not answer
        within ``timeout`` (incl. its warm-up) or failed (the caller falls back, see :func:`claim`)."""
        fields = [cwd, str(len(env)), *(f"{k}={v}" for k, v in env.items()), *args]
        payload = b"\0".join(f.encode("utf-8", "surrogateescape") for f in fields)
        deadline = time.monotonic() + timeout
        with self._lock:
            stdin = self.proc.stdin
            if stdin is None or self.proc.poll() is not None:
                return None
            try:
                stdin.write(str(len(payload)).encode() + b"\n" + payload)
                stdin.flush()
            except (OSError, ValueError):
                return None
            if not self._await_ready(deadline):
                return None
            line = self._line(deadline)
        if line is None or not line.startswith(b"ok "):
            return None
        return int(line[3:])

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server (EOF on its stdin; killed after ``timeout``); launchers it forked keep running."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
