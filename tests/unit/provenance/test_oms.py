"""provenance.oms: real OpenSSF Model Signing bundles, checked by model_signing's API and CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provenance.errors import (
    DigestMismatchError,
    InvalidInputError,
    KeyMaterialError,
    SignatureError,
    UntrustedSignerError,
)
from provenance.hashing import hash_directory, hash_file
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.oms import bundle_subject_digest, sign_model, verify_model_bundle

MODEL_SIGNING_CLI = Path(sys.executable).parent / "model_signing"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningIdentity, bytes]:
    home = tmp_path_factory.mktemp("oms-home")
    init_identity(home)
    return load_identity(home), TrustStore.load(home / "trust").anchors_pem


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    home = tmp_path_factory.mktemp("other-home")
    init_identity(home, organisation="someone else")
    return TrustStore.load(home / "trust").anchors_pem


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-model"
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 2}')
    (root / "model.safetensors").write_bytes(os.urandom(200_000))
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return root


def _sign(path: Path, identity: tuple[SigningIdentity, bytes]) -> bytes:
    ident, _ = identity
    return sign_model(path, private_key_pem=ident.private_key_pem, chain_pem=ident.chain_pem)


def _cli_verify(model: Path, bundle: bytes, ca_pem: bytes, tmp: Path) -> subprocess.CompletedProcess[str]:
    sig, ca = tmp / "cli.sig", tmp / "cli-ca.pem"
    sig.write_bytes(bundle)
    ca.write_bytes(ca_pem)
    argv = [str(MODEL_SIGNING_CLI), "verify", "certificate", str(model)]
    argv += ["--signature", str(sig), "--certificate_chain", str(ca)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_directory_bundle_verifies_with_the_api_and_the_cli(
    model: Path, identity: tuple[SigningIdentity, bytes], tmp_path: Path
) -> None:
    bundle = _sign(model, identity)
    doc = json.loads(bundle)
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    verify_model_bundle(model, bundle, identity[1])

    # The library's own high-level API, as a third party would call it.
    from model_signing import verifying

    (tmp_path / "api.sig").write_bytes(bundle)
    (tmp_path / "api-ca.pem").write_bytes(identity[1])
    config = verifying.Config()  # type: ignore[no-untyped-call]  # model_signing ships untyped
    config.use_certificate_verifier(certificate_chain=[tmp_path / "api-ca.pem"]).verify(model, tmp_path / "api.sig")

    result = _cli_verify(model, bundle, identity[1], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout + result.stderr


def test_subject_digest_is_our_directory_digest(model: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    bundle = _sign(model, identity)
    assert bundle_subject_digest(bundle) == hash_directory(model).root
    payload = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    resources = {r["name"]: r["digest"] for r in payload["predicate"]["resources"]}
    assert resources == hash_directory(model).files


def test_single_file_model(model: Path, identity: tuple[SigningIdentity, bytes], tmp_path: Path) -> None:
    weights = model / "model.safetensors"
    bundle = _sign(weights, identity)
    verify_model_bundle(weights, bundle, identity[1])
    # model_signing names a single file "." and the subject is the digest of its digest.
    assert bundle_subject_digest(bundle) == hashlib.sha256(bytes.fromhex(hash_file(weights))).hexdigest()
    result = _cli_verify(weights, bundle, identity[1], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tampered_model_fails_naming_the_file(
    model: Path, identity: tuple[SigningIdentity, bytes], tmp_path: Path
) -> None:
    bundle = _sign(model, identity)
    with (model / "tokenizer" / "vocab.txt").open("ab") as f:
        f.write(b"c\n")
    with pytest.raises(DigestMismatchError, match=r"tokenizer/vocab\.txt"):
        verify_model_bundle(model, bundle, identity[1])
    result = _cli_verify(model, bundle, identity[1], tmp_path)
    assert result.returncode != 0
    assert "tokenizer/vocab.txt" in result.stdout + result.stderr


def test_added_file_fails(model: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    bundle = _sign(model, identity)
    (model / "extra.bin").write_bytes(b"smuggled")
    with pytest.raises(DigestMismatchError, match=r"extra\.bin"):
        verify_model_bundle(model, bundle, identity[1])


def test_altered_signature_fails(model: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    doc = json.loads(_sign(model, identity))
    sig = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(SignatureError):
        verify_model_bundle(model, json.dumps(doc).encode(), identity[1])


def test_altered_payload_fails(model: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    """Re-pointing a resource digest at tampered content must break the signature, not pass."""
    doc = json.loads(_sign(model, identity))
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "0" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(SignatureError):
        verify_model_bundle(model, json.dumps(doc).encode(), identity[1])


@pytest.mark.parametrize("garbage", [b"", b"not json", b'{"mediaType": "x"}'])
def test_malformed_bundle_fails(model: Path, identity: tuple[SigningIdentity, bytes], garbage: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_model_bundle(model, garbage, identity[1])


def test_untrusted_ca_fails(model: Path, identity: tuple[SigningIdentity, bytes], other_ca: bytes) -> None:
    bundle = _sign(model, identity)
    with pytest.raises(UntrustedSignerError):
        verify_model_bundle(model, bundle, other_ca)


def test_key_that_does_not_match_the_certificate(
    model: Path, identity: tuple[SigningIdentity, bytes], tmp_path: Path
) -> None:
    init_identity(tmp_path / "h2")
    stranger = load_identity(tmp_path / "h2")
    with pytest.raises(KeyMaterialError):
        sign_model(model, private_key_pem=stranger.private_key_pem, chain_pem=identity[0].chain_pem)
    with pytest.raises(KeyMaterialError):
        sign_model(model, private_key_pem=identity[0].private_key_pem, chain_pem=b"")


def test_key_material_is_not_left_behind(model: Path, identity: tuple[SigningIdentity, bytes], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sign_model(model, private_key_pem=identity[0].private_key_pem, chain_pem=identity[0].chain_pem, workdir=work)
    assert list(work.iterdir()) == []


def test_missing_model_and_bad_bundle_input(tmp_path: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    with pytest.raises(InvalidInputError, match="absent"):
        _sign(tmp_path / "absent", identity)
    with pytest.raises(InvalidInputError):
        bundle_subject_digest(b"{}")
