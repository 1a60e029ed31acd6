"""Task-status reads: ``GET /api/v1/tasks/{id}`` requests/s against ``mlprov serve`` (target >= 1,000/s).

Starts ``mlprov serve`` (uvicorn, one worker) on 127.0.0.1 with a fresh ``$MLPROV_HOME``, runs one
short task so there is a real task row to read, then drives the endpoint over loopback for
``--seconds`` with ``--connections`` concurrent keep-alive connections, using ``wrk`` when it is
installed (``apt-get install -y wrk``; a C client leaves the CPU to the server) and otherwise an
httpx client on a thread pool (which competes with the server for the 2 cores, so it under-reports).
Every answer must be 200 with the task's JSON; errors are counted and reported.

Run: ``.venv/bin/python -m bench.bench_status_reads [--seconds 10] [--connections 16] [--client auto|wrk|httpx]``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["Server", "main"]

TARGET_RPS = 1000.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``mlprov serve`` in a subprocess on a fresh home; ``client`` is an authenticated httpx client."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.port = _free_port()
        self.token = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "MLPROV_HOME": str(home),
            "MLPROV_ADMIN_TOKEN": self.token,
            "MLPROV_LOG_LEVEL": "WARNING",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **env,
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def __enter__(self) -> Server:
        mlprov = Path(sys.executable).parent / "mlprov"
        self._log = (self.home / "serve.log").open("wb")
        self._proc = subprocess.Popen(
            [str(mlprov), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"mlprov serve did not become ready; see {self.home / 'serve.log'}")

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.client.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def register(self, spec: dict[str, Any]) -> None:
        r = self.client.post("/api/v1/services", json=spec)
        if r.status_code != 201:
            raise RuntimeError(f"cannot register {spec['name']}: {r.status_code} {r.text}")

    def wait_task(self, task_id: str, timeout: float = 60, poll: float = 0.05) -> dict[str, Any]:
        """Poll until the task ended (every ``poll`` s: the figures use server-side timestamps, so polling
        faster would only add load to the server being measured)."""
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.client.get(f"/api/v1/tasks/{task_id}").json()
            if body["state"] in ("succeeded", "failed", "cancelled", "lost"):
                return body
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task_id} still {body['state']}")
            time.sleep(poll)


def _with_wrk(url: str, token: str, seconds: int, connections: int) -> tuple[float, int, int]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return rps, total, failed


def _with_httpx(base: str, path: str, token: str, seconds: int, connections: int) -> tuple[float, int, int]:
    stop = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def worker() -> None:
        ok = bad = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
            while time.monotonic() < stop:
                ok, bad = (ok + 1, bad) if client.get(path).status_code == 200 else (ok, bad + 1)
        with lock:
            counts[0] += ok
            counts[1] += bad

    start = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        for _ in range(connections):
            pool.submit(worker)
    elapsed = time.monotonic() - start
    return (counts[0] + counts[1]) / elapsed, counts[0] + counts[1], counts[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto")
    args = parser.parse_args(argv)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    with tempfile.TemporaryDirectory(prefix="mlprov-bench-") as tmp, Server(Path(tmp)) as server:
        server.register({"name": "hello", "command": [sys.executable, "-c", "open('outputs/x.txt','w').write('x')"]})
        task_id = server.client.post("/api/v1/tasks", json={"service": "hello"}).json()["id"]
        task = server.wait_task(task_id)
        path = f"/api/v1/tasks/{task_id}"
        assert server.client.get(path).json()["outputs"], task
        deadline = time.monotonic() + 60  # steady state: the task's MLflow run (first use creates mlflow.db) is done
        while not server.client.get(path).json()["mlflow_run_id"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        if client == "wrk":
            rps, total, failed = _with_wrk(server.url + path, server.token, args.seconds, args.connections)
        else:
            rps, total, failed = _with_httpx(server.url, path, server.token, args.seconds, args.connections)
    verdict = "OK" if rps >= TARGET_RPS and failed == 0 else "BELOW TARGET"
    print(
        f"status reads ({client}, {args.connections} connections, {args.seconds} s): {rps:,.0f} req/s, "
        f"{total:,} requests, {failed} failed  [target >= {TARGET_RPS:,.0f}: {verdict}]"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
