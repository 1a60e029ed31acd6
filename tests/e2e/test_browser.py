"""Browser check: `make up`'s services, demo_lifecycle triggered over Airflow's REST API, and the
Airflow DAG grid and the MLflow run page rendered in headless Chromium.

The screenshots are CI artifacts: ``artifacts/screenshots/airflow-dag-grid.png`` and
``artifacts/screenshots/mlflow-run.png`` at the repository root (gitignored). Each is checked to be a
real rendering (decoded, many colours, not flat) of the right page (the DOM Chromium rendered names
the DAG's tasks, respectively the MLflow run the task's extra link points to).

Chromium gets the Airflow session the way the UI's own login page gives it: the simple auth manager's
JWT (from ``POST /auth/token`` with the generated admin password) in the ``_token`` cookie. A tiny
loopback server sets that cookie and redirects to the Airflow page (cookies are per host, not per port).
"""

from __future__ import annotations

import http.server
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from controller.stack import DAG_ID, Stack, airflow_token

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
TASKS = ("ingest", "preprocess", "pretrain", "finetune", "evaluate")
RUN_TIMEOUT = 420.0

pytestmark = [
    pytest.mark.integration,
    pytest.mark.airflow,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium); .ci/run installs it"
    ),
]


# -- PNG --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    colours: int
    grey_std: float


def _paeth_row(line: bytearray, prior: bytes, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prior[i]
        c = prior[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        line[i] = (line[i] + pred) & 0xFF


def decode_png(path: Path) -> Picture:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) with zlib and numpy."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, f"{path}: no IHDR"
    width, height, depth, colour_type, _, _, interlace = header
    assert (depth, interlace) == (8, 0), f"{path}: unsupported PNG {header}"
    assert colour_type in (2, 6), f"{path}: unsupported PNG colour type {header}"
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), f"{path}: truncated image data"
    pixels = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        filtered = np.frombuffer(row, dtype=np.uint8)
        if kind == 0:
            line = filtered.copy()
        elif kind == 1:  # Sub: a running sum per channel
            line = (np.cumsum(filtered.reshape(width, bpp).astype(np.int64), axis=0) % 256).astype(np.uint8).ravel()
        elif kind == 2:  # Up
            line = filtered + prior
        elif kind == 3:  # Average: sequential
            buf = bytearray(row)
            for i in range(stride):
                left = buf[i - bpp] if i >= bpp else 0
                buf[i] = (buf[i] + ((left + int(prior[i])) >> 1)) & 0xFF
            line = np.frombuffer(bytes(buf), dtype=np.uint8)
        elif kind == 4:  # Paeth: sequential
            buf = bytearray(row)
            _paeth_row(buf, prior.tobytes(), bpp)
            line = np.frombuffer(bytes(buf), dtype=np.uint8)
        else:
            raise AssertionError(f"{path}: bad filter type {kind} in row {y}")
        pixels[y] = line
        prior = line
    rgb = pixels.reshape(height, width, bpp)[:, :, :3].astype(np.int64)
    packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    grey = rgb.mean(axis=2)
    return Picture(width, height, int(np.unique(packed).size), float(grey.std()))


def assert_not_blank(path: Path) -> Picture:
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size > 10_000, f"{path} is tiny: {path.stat().st_size} bytes"
    picture = decode_png(path)
    assert (picture.width, picture.height) == (1400, 900), picture
    # A blank or single-message page has a handful of colours and little contrast; a rendered UI has
    # text, icons and charts: hundreds of colours.
    assert picture.colours >= 200, f"{path} looks blank: {picture}"
    assert picture.grey_std >= 10.0, f"{path} looks flat: {picture}"
    return picture


# -- Chromium ---------------------------------------------------------------------------------------


class _CookieRedirect:
    """A loopback server whose only answer sets the Airflow ``_token`` cookie and redirects to ``target``."""

    def __init__(self, token: str, target: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Set-Cookie", f"_token={token}; Path=/; HttpOnly; SameSite=Lax")
                self.send_header("Location", target)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _CookieRedirect:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def render(url: str, screenshot: Path, profile: Path) -> str:
    """Screenshot ``url`` in headless Chromium (fresh profile, no background network); the rendered DOM."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    profile.mkdir(parents=True, exist_ok=True)
    argv = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        "--window-size=1400,900",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-1000:]}"
    return done.stdout


# -- the check --------------------------------------------------------------------------------------


def _wait_for_run(client: httpx.Client, run_id: str) -> dict[str, object]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        try:
            answer = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
            answer.raise_for_status()
            run: dict[str, object] = answer.json()
            if run["state"] in ("success", "failed"):
                return run
        except httpx.TimeoutException:
            pass  # one API worker on a busy machine: ask again
        assert time.monotonic() < deadline, f"{DAG_ID} run {run_id} not finished after {RUN_TIMEOUT:.0f} s"
        time.sleep(2)


def test_demo_lifecycle_in_the_browser(stack: Stack, tmp_path: Path) -> None:
    config = stack.config
    token = airflow_token(config)
    client = httpx.Client(base_url=config.url("airflow"), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    with client:
        dag = client.get(f"/api/v2/dags/{DAG_ID}").json()
        assert dag["is_paused"] is False, "`up` unpauses the demo DAG"
        client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        triggered = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {}})
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["dag_run_id"]

        run = _wait_for_run(client, run_id)
        instances = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances").json()
        states = {ti["task_id"]: ti["state"] for ti in instances["task_instances"]}
        assert run["state"] == "success", f"{DAG_ID} {run_id} {run['state']}: {states}; logs in {config.home}"
        assert states == dict.fromkeys(TASKS, "success")

        links = {
            task: client.get(
                f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task}/links"
            ).json()["extra_links"]
            for task in TASKS
        }
    for task, task_links in links.items():
        assert task_links["mlprov task"].startswith(f"{config.url('controller')}/api/v1/tasks/"), (task, task_links)
        assert task_links["MLflow run"].startswith(f"{config.url('mlflow')}/#/runs/"), (task, task_links)
    mlflow_url = links["finetune"]["MLflow run"]
    mlflow_run_id = mlflow_url.rsplit("/", 1)[1]
    finished = httpx.get(
        f"{config.url('mlflow')}/api/2.0/mlflow/runs/get", params={"run_id": mlflow_run_id}, timeout=30
    )
    assert finished.json()["run"]["info"]["status"] == "FINISHED", finished.text[:500]

    grid = SCREENSHOTS / "airflow-dag-grid.png"
    grid_url = f"{config.url('airflow')}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
    with _CookieRedirect(token, grid_url) as login:
        dom = render(login.url, grid, tmp_path / "profile-airflow")
    assert_not_blank(grid)
    assert "Sign into Airflow" not in dom, "Chromium was not logged in to Airflow"
    missing = [task for task in (DAG_ID, *TASKS) if task not in dom]
    assert not missing, f"the Airflow page does not show {missing}"

    mlflow_page = SCREENSHOTS / "mlflow-run.png"
    dom = render(mlflow_url, mlflow_page, tmp_path / "profile-mlflow")
    assert_not_blank(mlflow_page)
    assert mlflow_run_id in dom, "the MLflow page does not show the run of the finetune task's extra link"
