"""Bad input gives one ``error: ...`` line on stderr, a distinct exit code, no traceback, nothing half-written."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provenance.cli import EXIT_NOT_FOUND, EXIT_STORAGE, EXIT_USAGE, EXIT_VERIFICATION, cli
from provenance.cli.main import exit_code_for
from provenance.errors import ProofError, ProvenanceError, TransparencyLogError
from provenance.keys import init_identity


@pytest.fixture
def home(mlprov_home: Path) -> Path:
    init_identity(mlprov_home)
    return mlprov_home


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    path.write_text("a\n1\n")
    return path


def mlprov(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def fails(code: int, *args: str) -> str:
    """Run, expect exit ``code`` and exactly one ``error:`` line on stderr; return that line."""
    result = mlprov(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def store_args(tmp_path: Path) -> list[str]:
    return ["--storage-type", "local-fs", "--storage-url", str(tmp_path / "store")]


def stored_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "store"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def test_mismatched_paths_and_names(home: Path, data: Path, tmp_path: Path) -> None:
    line = fails(
        EXIT_USAGE,
        "dataset",
        "create",
        f"--paths={data},{data}",
        "--ingredient-names=one",
        "--name=x",
        *store_args(tmp_path),
    )
    assert "--paths has 2 item(s) but --ingredient-names has 1" in line
    assert stored_files(tmp_path) == []


def test_missing_file(home: Path, tmp_path: Path) -> None:
    line = fails(
        EXIT_USAGE, "model", "create", "--paths=nope.bin", "--ingredient-names=m", "--name=x", *store_args(tmp_path)
    )
    assert "nope.bin" in line
    assert "no such file" in line


def test_missing_option_is_one_line_usage_error(home: Path) -> None:
    line = fails(EXIT_USAGE, "dataset", "create", "--paths=a", "--ingredient-names=a")
    assert "--name" in line
    assert "mlprov dataset create --help" in line


def test_unreadable_and_wrong_keys(home: Path, data: Path, tmp_path: Path) -> None:
    args = ["dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=x", *store_args(tmp_path)]
    assert "cannot read key file" in fails(EXIT_USAGE, *args, "--key", str(tmp_path / "missing.pem"))
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("hello")
    assert "is not a PEM private key" in fails(EXIT_USAGE, *args, "--key", str(not_a_key))
    assert stored_files(tmp_path) == []


def test_no_identity_says_run_keys_init(mlprov_home: Path, data: Path, tmp_path: Path) -> None:
    line = fails(
        EXIT_USAGE, "dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=x", *store_args(tmp_path)
    )
    assert "mlprov keys init" in line


def test_unknown_id(home: Path, tmp_path: Path) -> None:
    for args in (
        ("manifest", "show", "-i", "urn:c2pa:00000000-0000-4000-8000-000000000000"),
        ("model", "verify", "--id", "urn:c2pa:00000000-0000-4000-8000-000000000000"),
        ("verify", "urn:c2pa:00000000-0000-4000-8000-000000000000"),
        ("manifest", "export", "-i", "urn:c2pa:00000000-0000-4000-8000-000000000000"),
    ):
        assert "urn:c2pa:00000000" in fails(EXIT_NOT_FOUND, *args, *store_args(tmp_path))


def test_link_to_a_missing_manifest_stores_nothing(home: Path, data: Path, tmp_path: Path) -> None:
    result = mlprov("dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=x", *store_args(tmp_path))
    ds = result.stdout.split("ID: ")[1].strip()
    before = stored_files(tmp_path)
    line = fails(EXIT_NOT_FOUND, "manifest", "link", "-s", ds, "-t", "urn:c2pa:missing", *store_args(tmp_path))
    assert line.startswith("error: target manifest not found")
    assert "urn:c2pa:missing" in line
    fails(EXIT_NOT_FOUND, "dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=y",
          "--linked-manifests=urn:c2pa:missing", *store_args(tmp_path))  # fmt: skip
    assert stored_files(tmp_path) == before


def test_link_dataset_refuses_a_non_dataset(home: Path, data: Path, tmp_path: Path) -> None:
    out = mlprov("model", "create", f"--paths={data}", "--ingredient-names=m", "--name=m", *store_args(tmp_path)).stdout
    model = out.split("ID: ")[1].strip()
    line = fails(EXIT_USAGE, "model", "link-dataset", "--model-id", model, "--dataset-id", model, *store_args(tmp_path))
    assert "is a Model manifest, not a Dataset manifest" in line


def test_malformed_manifest_file(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json" in fails(EXIT_USAGE, "verify", str(bad), *store_args(tmp_path))
    bad.write_text('{"title": "no claim"}')
    fails(EXIT_USAGE, "verify", str(bad), *store_args(tmp_path))


def test_storage_unreachable(home: Path, data: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    line = fails(
        EXIT_STORAGE, "dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=x", "--storage-url", url
    )
    assert "cannot reach the manifest store" in line
    fails(EXIT_STORAGE, "model", "list", "--storage-url", url)


def test_verification_failure_after_tampering(home: Path, data: Path, tmp_path: Path) -> None:
    out = mlprov(
        "dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=x", *store_args(tmp_path)
    ).stdout
    ds = out.split("ID: ")[1].strip()
    data.write_text("changed\n")
    result = mlprov("dataset", "verify", "--id", ds, *store_args(tmp_path))
    assert result.exit_code == EXIT_VERIFICATION
    assert "✓ Manifest verification successful" not in result.stdout
    assert result.stderr.startswith(f"error: manifest {ds} failed verification: first broken at {ds}")


def test_validate_and_verify_link_fail_on_a_broken_link(home: Path, data: Path, tmp_path: Path) -> None:
    from provenance.storage.local_fs import LocalFsStore

    store = LocalFsStore(tmp_path / "store")
    ds = (
        mlprov("dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=d", *store_args(tmp_path))
        .stdout.split("ID: ")[1]
        .strip()
    )
    model = mlprov("model", "create", f"--paths={data}", "--ingredient-names=m", "--name=m",
                   f"--linked-manifests={ds}", *store_args(tmp_path)).stdout.split("ID: ")[1].strip()  # fmt: skip
    path = store.manifest_path(ds)
    path.write_text(path.read_text().replace('"title": "d"', '"title": "forged"', 1))
    assert "Hash mismatch" in fails(EXIT_VERIFICATION, "manifest", "validate", "-i", model, *store_args(tmp_path))
    fails(EXIT_VERIFICATION, "manifest", "verify-link", "-s", model, "-t", ds, *store_args(tmp_path))
    assert "has no link" in fails(
        EXIT_VERIFICATION, "manifest", "verify-link", "-s", ds, "-t", model, *store_args(tmp_path)
    )


def test_bad_metrics_and_bad_env(home: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = fails(EXIT_USAGE, "evaluation", "create", "--path", str(data), "--name", "e", "--model-id", "a",
                 "--dataset-id", "b", "--metrics", "accuracy", *store_args(tmp_path))  # fmt: skip
    assert "key=value" in line
    monkeypatch.setenv("MLPROV_STORAGE_TYPE", "floppy")
    assert "MLPROV_STORAGE_TYPE" in fails(EXIT_USAGE, "model", "list")


def test_export_to_an_unwritable_place(home: Path, data: Path, tmp_path: Path) -> None:
    ds = (
        mlprov("dataset", "create", f"--paths={data}", "--ingredient-names=d", "--name=d", *store_args(tmp_path))
        .stdout.split("ID: ")[1]
        .strip()
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write" in fails(
        EXIT_USAGE, "manifest", "export", "-i", ds, "-o", str(blocker / "x.json"), *store_args(tmp_path)
    )


def test_keys_init_twice_needs_force(mlprov_home: Path) -> None:
    assert mlprov("keys", "init").exit_code == 0
    assert "--force" in fails(EXIT_USAGE, "keys", "init")
    assert mlprov("keys", "init", "--force").exit_code == 0


def test_an_unexpected_bug_is_one_line_too(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import provenance.cli.assets as assets

    def boom(*args: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(assets, "_list", boom)
    assert (
        fails(1, "model", "list", *store_args(tmp_path))
        == "error: internal error: RuntimeError: kaput (rerun with --debug)"
    )


def test_exit_code_mapping() -> None:
    assert exit_code_for(ProofError("x")) == EXIT_VERIFICATION
    assert exit_code_for(TransparencyLogError("x")) == 1
    assert exit_code_for(ProvenanceError("x")) == 1


def test_cli_logging_config_does_not_leak_into_the_process(home: Path, tmp_path: Path) -> None:
    import structlog

    before = structlog.get_config()
    assert mlprov("model", "list", *store_args(tmp_path)).exit_code == 0
    assert structlog.get_config() == before
