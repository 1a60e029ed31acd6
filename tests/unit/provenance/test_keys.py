"""Identities, key loading and the trust store."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provenance.errors import KeyMaterialError, SignatureError, UntrustedSignerError
from provenance.keys import (
    SigningIdentity,
    TrustStore,
    identity_paths,
    init_identity,
    key_id,
    load_identity,
    load_private_key_pem,
    verify_bytes,
)


def test_key_id_is_sha256_of_spki() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_id(key.public_key()) == hashlib.sha256(der).hexdigest()
    assert SigningIdentity(private_key=key).key_id == key_id(key.public_key())


def test_init_and_load_identity(tmp_path: Path) -> None:
    paths = init_identity(tmp_path)
    assert oct(paths.signer_key.stat().st_mode & 0o777) == "0o600"
    assert oct(paths.ca_key.stat().st_mode & 0o777) == "0o600"
    identity = load_identity(tmp_path)
    assert len(identity.chain) == 2
    assert identity.algorithm == "ecdsa-p256"
    with pytest.raises(KeyMaterialError, match="already exists"):
        init_identity(tmp_path)
    trust = TrustStore.load(paths.trust_dir)
    assert trust.resolve(identity.chain, identity.key_id) == identity.chain[0].public_key()


def test_load_identity_without_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="keys init"):
        load_identity(tmp_path)


def test_load_private_key_pem(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "k.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    identity = load_private_key_pem(path)
    assert identity.chain == ()
    assert identity.algorithm == "rsa-pkcs1v15"
    signature = identity.sign(b"data", "sha256")
    verify_bytes(identity.public_key, signature, b"data", "sha256")
    with pytest.raises(SignatureError):
        verify_bytes(identity.public_key, signature, b"other", "sha256")
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(KeyMaterialError, match="not a PEM private key"):
        load_private_key_pem(tmp_path / "bad.pem")
    with pytest.raises(KeyMaterialError, match="cannot read"):
        load_private_key_pem(tmp_path / "missing.pem")


def test_trust_store_pins_public_keys(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "pinned.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    trust = TrustStore.load(tmp_path)
    kid = key_id(key.public_key())
    assert trust.resolve([], kid) is not None
    with pytest.raises(UntrustedSignerError, match="not in the trust store"):
        trust.resolve([], "00" * 32)


def test_chain_from_another_ca_is_untrusted(tmp_path: Path) -> None:
    init_identity(tmp_path / "a")
    init_identity(tmp_path / "b")
    other = load_identity(tmp_path / "b")
    trust = TrustStore.load(identity_paths(tmp_path / "a").trust_dir)
    with pytest.raises(UntrustedSignerError, match="not issued by a trusted CA"):
        trust.resolve(other.chain, other.key_id)
    with pytest.raises(UntrustedSignerError, match="does not match the recorded key ID"):
        trust.resolve(other.chain, "ab" * 32)


def test_expired_certificate_is_untrusted(tmp_path: Path) -> None:
    paths = init_identity(tmp_path)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past)
        .not_valid_after(past + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    trust = TrustStore.load(paths.trust_dir)
    with pytest.raises(UntrustedSignerError, match="validity period"):
        trust.resolve([leaf, ca], key_id(leaf_key.public_key()))
