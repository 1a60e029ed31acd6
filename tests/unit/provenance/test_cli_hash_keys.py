"""``mlprov hash``, ``mlprov keys``, the help epilog, and the light start-up of ``hash``/``--help``."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provenance.cli import cli
from provenance.cli.hashcmd import PROGRESS_THRESHOLD
from provenance.hashing import hash_directory
from provenance.keys import TrustStore, identity_paths, key_id, load_identity

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("cryptography", "c2pa", "model_signing", "httpx", "rich", "pydantic", "pydantic_settings", "structlog", "yaml")


def mlprov(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_hash_file_equals_sha256sum(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello world\n" * 1000)
    result = mlprov("hash", str(path))
    assert result.exit_code == 0
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.stdout == f"sha256:{expected}\n"
    if shutil.which("sha256sum"):
        out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout
        assert out.split()[0] == expected
    assert (
        mlprov("hash", str(path), "--alg", "sha512").stdout
        == f"sha512:{hashlib.sha512(path.read_bytes()).hexdigest()}\n"
    )


def test_hash_directory_is_its_oms_root(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.bin").write_bytes(b"a")
    (tmp_path / "m" / "b.txt").write_text("b")
    result = mlprov("hash", str(tmp_path / "m"), "--alg", "sha384")
    assert result.stdout == f"sha384:{hash_directory(tmp_path / 'm', 'sha384').root}\n"


def test_hash_missing_path_is_one_line_exit_2(tmp_path: Path) -> None:
    result = mlprov("hash", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot read")
    assert result.stderr.count("\n") == 1


def test_progress_bar_only_for_a_terminal_and_large_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import provenance.cli.hashcmd as hashcmd

    shown: list[int] = []
    monkeypatch.setattr(hashcmd, "_hash_with_progress", lambda path, alg, total, run: shown.append(total) or run(None))
    path = tmp_path / "f"
    path.write_bytes(b"x")
    monkeypatch.setattr(hashcmd, "_size", lambda p: PROGRESS_THRESHOLD + 1)
    assert mlprov("hash", str(path)).exit_code == 0  # CliRunner's stderr is not a terminal
    assert shown == []

    class Terminal:
        stderr = SimpleNamespace(isatty=lambda: True)

    monkeypatch.setattr(hashcmd, "sys", Terminal)
    assert mlprov("hash", str(path)).exit_code == 0
    assert shown == [PROGRESS_THRESHOLD + 1]
    monkeypatch.setattr(hashcmd, "_size", lambda p: PROGRESS_THRESHOLD)
    assert mlprov("hash", str(path)).exit_code == 0
    assert shown == [PROGRESS_THRESHOLD + 1]  # not larger than 256 MiB: no bar


def _modules_after(args: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from provenance.cli import cli\n"
        "try:\n"
        f"    cli.main({args!r}, prog_name='mlprov')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', ' '.join(sorted(m.split('.')[0] for m in sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


def test_help_and_hash_import_nothing_heavy(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"x")
    for args in (["--help"], ["hash", str(small)], ["model", "create", "--help"]):
        loaded = _modules_after(args)
        assert not loaded & set(HEAVY), (args, loaded & set(HEAVY))


def test_help_documents_exit_codes() -> None:
    out = mlprov("--help").stdout
    for line in (
        "2  bad usage or input",
        "3  manifest not found",
        "4  verification failed",
        "5  manifest store unreachable",
    ):
        assert line in out


def test_atlas_cli_surface_is_there() -> None:
    for group, commands in {
        "model": {"create", "list", "verify", "link-dataset"},
        "dataset": {"create", "list", "verify"},
        "software": {"create", "list", "verify", "link-model", "link-dataset"},
        "evaluation": {"create", "list", "verify"},
        "manifest": {"link", "show", "validate", "verify-link", "export"},
        "cc-attestation": {"show"},
        "keys": {"init", "show", "trust"},
    }.items():
        assert commands <= set(cli.commands[group].commands), group  # type: ignore[attr-defined]
    flags = {o for p in cli.commands["model"].commands["create"].params for o in p.opts}  # type: ignore[attr-defined]
    assert {
        "--paths", "--ingredient-names", "--name", "--author-org", "--author-name", "--description",
        "--linked-manifests", "--key", "--hash-alg", "--print", "--format", "--storage-type", "--storage-url",
        "--with-tdx",
    } <= flags  # fmt: skip


def test_keys_init_show_and_trust(mlprov_home: Path, tmp_path: Path) -> None:
    result = mlprov("keys", "init")
    assert result.exit_code == 0
    identity = load_identity(mlprov_home)
    assert identity.key_id in result.stdout
    shown = mlprov("keys", "show").stdout
    assert f"Key ID:      {identity.key_id}" in shown
    assert "CA:" in shown

    other = tmp_path / "other"
    assert mlprov("keys", "init", "--dir", str(other)).exit_code == 0
    ca_pem = identity_paths(other).ca_cert
    out = mlprov("keys", "trust", str(ca_pem))
    assert out.exit_code == 0
    assert out.stdout.startswith("Trusted CA ")
    leaf = identity_paths(other).signer_cert
    refused = mlprov("keys", "trust", str(leaf))
    assert refused.exit_code == 2
    assert "not a CA certificate" in refused.stderr

    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert mlprov("keys", "trust", str(pub)).exit_code == 0
    trust = TrustStore.load(mlprov_home / "trust")
    assert key_id(key.public_key()) in trust.pinned
    assert len(trust.anchors) == 2
    assert not list((mlprov_home / "trust").glob("*PRIVATE*"))


def test_keys_trust_a_private_key_pins_only_its_public_half(mlprov_home: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    assert mlprov("keys", "trust", str(pem)).exit_code == 0
    written = list((mlprov_home / "trust").iterdir())
    assert len(written) == 1
    assert b"PRIVATE" not in written[0].read_bytes()


def test_keys_show_without_identity(mlprov_home: Path) -> None:
    result = mlprov("keys", "show")
    assert result.exit_code == 2
    assert "mlprov keys init" in result.stderr


def test_self_signed_non_ca_is_refused_by_trust(mlprov_home: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = tmp_path / "leaf.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert mlprov("keys", "trust", str(path)).exit_code == 2
    assert not (mlprov_home / "trust").exists() or not list((mlprov_home / "trust").iterdir())
