"""Adding a CA certificate or a public key to the trust store directory (``mlprov keys trust``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provenance.errors import InvalidInputError, KeyMaterialError
from provenance.keys import key_id
from provenance.storage.atomic import write_atomic

__all__ = ["add_to_trust_store"]


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data, 0o644)
    except OSError as exc:
        raise KeyMaterialError(f"cannot write {path}: {exc.strerror}") from None


def add_to_trust_store(file: Path, trust_dir: Path) -> tuple[Path, str]:
    """Write the anchor or pinned key found in ``file`` into ``trust_dir``; return (path, description).

    Certificates must be CAs (basicConstraints CA=true): a leaf is trusted by pinning its key instead.
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {file}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise KeyMaterialError(f"{file} holds no readable PEM certificate") from None
        cert = certs[0]
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise KeyMaterialError(
                f"{file} is not a CA certificate; trust a CA, or pin the signer's public key instead"
            )
        fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        path = trust_dir / f"ca-{fingerprint[:16]}.pem"
        _write(path, cert.public_bytes(serialization.Encoding.PEM))
        return path, f"CA {cert.subject.rfc4514_string()}"
    public: object
    if b"PRIVATE KEY-----" in data:
        try:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        except (TypeError, ValueError):
            raise KeyMaterialError(f"{file} is not an unencrypted PEM private key") from None
    elif b"PUBLIC KEY-----" in data:
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyMaterialError(f"{file} is not a PEM public key") from None
    else:
        raise KeyMaterialError(f"{file} holds no PEM certificate, public key or private key")
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise KeyMaterialError(f"{file} holds a {type(public).__name__}; only EC and RSA keys can be pinned")
    kid = key_id(public)
    path = trust_dir / f"pinned-{kid[:16]}.pem"
    _write(path, public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, f"public key {kid}"
