"""Settings: MLPROV_ prefix, placeholder secrets refused outside development, embedded defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from controller.api.deps import get_app_settings
from controller.main import create_app
from controller.settings import Settings, get_settings


def test_reads_the_mlprov_prefix(mlprov_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPROV_PORT", "9123")
    monkeypatch.setenv("MLPROV_RUNTIME", "kubernetes")
    monkeypatch.setenv("MLPROV_MAX_CONCURRENT_JOBS", "7")
    settings = Settings()
    assert settings.home == mlprov_home.resolve()
    assert (settings.port, settings.runtime, settings.max_concurrent_jobs) == (9123, "kubernetes", 7)


def test_unset_means_embedded(mlprov_home: Path) -> None:
    settings = Settings()
    assert settings.effective_database_url == f"sqlite:///{mlprov_home.resolve() / 'controller.db'}"
    assert settings.effective_mlflow_tracking_uri == f"sqlite:///{mlprov_home.resolve() / 'mlflow.db'}"
    assert settings.artifact_dir == mlprov_home.resolve() / "artifacts"
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.environment == "development"


@pytest.mark.parametrize("token", [None, "", "changeme", "CHANGEME", "secret"])
def test_production_refuses_missing_or_placeholder_admin_token(
    mlprov_home: Path, monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    monkeypatch.setenv("MLPROV_ENVIRONMENT", "production")
    if token is not None:
        monkeypatch.setenv("MLPROV_ADMIN_TOKEN", token)
    with pytest.raises(ValidationError, match="MLPROV_ADMIN_TOKEN"):
        Settings()


def test_production_accepts_a_real_token(mlprov_home: Path) -> None:
    settings = Settings(environment="production", admin_token=SecretStr("a" * 40))
    assert settings.admin_token_value == "a" * 40
    assert not (mlprov_home / "admin-token").exists()


def test_development_allows_a_placeholder(mlprov_home: Path) -> None:
    assert Settings(admin_token=SecretStr("changeme")).admin_token_value == "changeme"


def test_development_generates_a_private_token_once(mlprov_home: Path) -> None:
    first = Settings()
    path = mlprov_home / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.admin_token_value
    assert len(first.admin_token_value) >= 32
    assert Settings().admin_token_value == first.admin_token_value  # reused after a restart


@pytest.mark.parametrize("raw", ['["r1-token-aaaa", "r2-token-bbbb"]', "r1-token-aaaa, r2-token-bbbb"])
def test_read_tokens_from_json_or_commas(mlprov_home: Path, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("MLPROV_READ_TOKENS", raw)
    assert [t.get_secret_value() for t in Settings().read_tokens] == ["r1-token-aaaa", "r2-token-bbbb"]


def test_placeholder_read_token_is_refused(mlprov_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPROV_READ_TOKENS", "changeme")
    with pytest.raises(ValidationError, match="read token"):
        Settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('["mlprov", "sidecar", "--x"]', ["mlprov", "sidecar", "--x"]),
        ("mlprov sidecar '--a b'", ["mlprov", "sidecar", "--a b"]),
    ],
)
def test_sidecar_command(mlprov_home: Path, monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    monkeypatch.setenv("MLPROV_SIDECAR_COMMAND", raw)
    assert Settings().sidecar_command == expected


def test_artifact_store_forms(mlprov_home: Path, tmp_path: Path) -> None:
    assert Settings(artifact_store="s3://bucket/prefix").artifact_dir is None
    assert Settings(artifact_store=str(tmp_path)).artifact_dir == tmp_path.resolve()
    with pytest.raises(ValidationError, match="bucket"):
        Settings(artifact_store="s3://")
    with pytest.raises(ValidationError, match="s3://bucket"):
        Settings(artifact_store="gs://bucket")


def test_serve_defaults_to_cwd_services_yaml_but_the_app_does_not(
    mlprov_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.cli import serve_settings

    monkeypatch.chdir(tmp_path)
    assert serve_settings(Settings()).services_file is None
    (tmp_path / "services.yaml").write_text("[]\n")
    assert Settings().services_file is None  # library use and tests stay hermetic
    assert serve_settings(Settings()).services_file == (tmp_path / "services.yaml").resolve()
    assert serve_settings(Settings(), port=9999).port == 9999


def test_get_settings_is_cached(mlprov_home: Path) -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


async def _status(app_settings: Settings, override: Settings | None, token: str) -> int:
    app = create_app(app_settings)
    if override is not None:
        app.dependency_overrides[get_app_settings] = lambda: override
    async with app.router.lifespan_context(app), _client(app) as client:
        response = await client.get("/api/v1/services", headers={"Authorization": f"Bearer {token}"})
        return response.status_code


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")  # type: ignore[arg-type]


@pytest.fixture
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the whole session: creating one costs seconds (its own migrations)."""
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'shared-mlflow.db'}"


async def test_tests_override_the_settings_dependency(mlprov_home: Path, mlflow_uri: str) -> None:
    base = Settings(admin_token=SecretStr("base-token-1234567890"), mlflow_tracking_uri=mlflow_uri)
    other = Settings(admin_token=SecretStr("other-token-1234567890"), mlflow_tracking_uri=mlflow_uri)
    assert await _status(base, None, "base-token-1234567890") == 200
    assert await _status(base, other, "other-token-1234567890") == 200
    assert await _status(base, other, "base-token-1234567890") == 401


async def test_lifespan_yields(mlprov_home: Path, mlflow_uri: str) -> None:
    app = create_app(Settings(mlflow_tracking_uri=mlflow_uri))
    async with app.router.lifespan_context(app):
        assert app.state.mlprov is not None
    assert app.state.mlprov is None
