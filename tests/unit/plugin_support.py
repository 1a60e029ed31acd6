"""Shared by the plugin tests: an isolated Airflow home, and the real controller app on a real port.

Import this module before anything that imports Airflow (``plugins`` does): Airflow reads its home
and database URL once, at import. ``AIRFLOW_HOME`` is only set when the session has none yet.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if "AIRFLOW_HOME" not in os.environ:
    _AIRFLOW_HOME = tempfile.mkdtemp(prefix="mlprov-airflow-")
    atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
    os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import httpx  # after the Airflow environment above
import uvicorn
from pydantic import SecretStr

from controller.main import create_app
from controller.settings import Settings
from tests.job_cleanup import kill_jobs

__all__ = ["ADMIN", "PY", "SERVICES", "ControllerServer", "connection_env", "running_controller"]

ADMIN = "admin-token-for-plugin-tests"
PY = sys.executable

SERVICES: list[dict[str, Any]] = [
    {
        "name": "produce",
        "command": [
            PY, "-c",
            "import json; p=json.load(open('params.json')); print('hello', p['who'], flush=True); "
            "open('outputs/result.txt','w').write('r:'+p['who'])",
        ],
        "params": {"who": "default"},
    },
    {
        "name": "consume",
        "command": [
            PY, "-c",
            "import os; names=sorted(os.listdir('inputs')); print('inputs', ','.join(names), flush=True); "
            "open('outputs/joined.txt','w').write('|'.join(open('inputs/'+n).read() for n in names))",
        ],
    },
    {
        "name": "fail",
        "command": [PY, "-c", "import sys; print('about to fail', flush=True); sys.exit(3)"],
    },
    {"name": "sleeper", "command": [PY, "-c", "import time; print('zz', flush=True); time.sleep(60)"]},
]  # fmt: skip


@dataclass
class ControllerServer:
    base_url: str
    port: int
    home: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)


def connection_env(port: int, token: str = ADMIN, **extra: Any) -> str:
    """The JSON of ``AIRFLOW_CONN_MLPROV_CONTROLLER`` for a controller on 127.0.0.1:``port``."""
    conn: dict[str, Any] = {"conn_type": "http", "host": "127.0.0.1", "port": port, "password": token}
    if extra:
        conn["extra"] = json.dumps(extra)
    return json.dumps(conn)


def _kill_jobs(home: Path) -> None:
    kill_jobs(home)


@contextlib.contextmanager
def running_controller(home: Path) -> Iterator[ControllerServer]:
    """The real controller (temp ``MLPROV_HOME``, local runtime) served by uvicorn on 127.0.0.1:<free port>."""
    saved = os.environ.get("MLPROV_HOME")
    os.environ["MLPROV_HOME"] = str(home)
    app = create_app(Settings(home=home, admin_token=SecretStr(ADMIN), max_concurrent_jobs=2))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="controller", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the controller stopped while starting"
            assert time.monotonic() < deadline, "the controller did not start in 30 s"
            time.sleep(0.02)
        port = int(server.servers[0].sockets[0].getsockname()[1])
        ctl = ControllerServer(base_url=f"http://127.0.0.1:{port}", port=port, home=home)
        with ctl.client() as client:
            for spec in SERVICES:
                answer = client.post("/api/v1/services", json=spec)
                assert answer.status_code == 201, answer.text
        yield ctl
    finally:
        _kill_jobs(home)
        server.should_exit = True
        thread.join(timeout=30)
        if saved is None:
            os.environ.pop("MLPROV_HOME", None)
        else:
            os.environ["MLPROV_HOME"] = saved
