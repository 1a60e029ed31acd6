"""Shared fixtures: an isolated HOME for every test run, the golden-file flag, a fresh PostgreSQL database,
an S3 server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get("MLPROV_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    """Process-wide settings read once at import by the tools under test, set before any test module
    imports them: Airflow reads AIRFLOW_HOME when first imported; no example DAGs."""
    import tempfile

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="mlprov-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # Jobs in tests run without the provenance sidecar (it costs about a second per job) unless a test
    # turns it on (tests/e2e and the sidecar integration tests set MLPROV_SIDECAR=true themselves).
    os.environ.setdefault("MLPROV_SIDECAR", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/data instead of comparing against them",
    )


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tools that write to $HOME (MLflow telemetry, sigstore's TUF cache) write to a temporary folder."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    os.environ["HOME"] = str(home)
    for sub in ("CACHE", "CONFIG", "DATA"):
        os.environ[f"XDG_{sub}_HOME"] = str(home / sub.lower())
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ.pop("MLPROV_HOME", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def mlprov_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $MLPROV_HOME for one test."""
    home = tmp_path / "mlprov-home"
    home.mkdir()
    monkeypatch.setenv("MLPROV_HOME", str(home))
    return home


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database on the machine's server, dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    name = f"mlprov_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - the machine provides PostgreSQL
        pytest.fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (moto's, on a free 127.0.0.1 port) for one test module: ``host:port``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()
