"""Signing identities, key loading and the trust store.

One identity signs every format mlprov emits (Atlas claim signatures, C2PA sidecars, OMS bundles):
a local CA and a P-256 signing certificate whose extensions satisfy C2PA (digitalSignature, an
emailProtection/documentSigning EKU, SKI/AKI) created by :func:`init_identity`. A bare PEM private key
brought from an atlas-cli workflow (EC or RSA, no certificate) also signs; a verifier then trusts it
only if its public key is pinned in the trust store.

Layout under ``$MLPROV_HOME``::

    keys/ca.pem  keys/ca.key (0600)  keys/signer.pem  keys/signer.key (0600)  keys/chain.pem
    trust/ca.pem                     one file per anchor: certificates (CAs) or pinned public keys
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from provenance.errors import KeyMaterialError, SignatureError, UntrustedSignerError

__all__ = [
    "DOCUMENT_SIGNING_EKU",
    "HashName",
    "IdentityPaths",
    "PrivateKey",
    "PublicKey",
    "SigningIdentity",
    "TrustStore",
    "identity_paths",
    "init_identity",
    "key_id",
    "load_identity",
    "load_private_key_pem",
    "verify_bytes",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
HashName = Literal["sha256", "sha384", "sha512"]

#: id-kp-documentSigning (RFC 9336), one of the EKUs C2PA accepts for a signing certificate.
DOCUMENT_SIGNING_EKU = ObjectIdentifier("1.3.6.1.5.5.7.3.36")

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def _hash(name: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[name]()
    except KeyError:
        raise KeyMaterialError(f"unsupported hash algorithm {name!r}; use sha256, sha384 or sha512") from None


#: ``ECDSA(hash)`` objects are immutable parameter holders: made once per hash, not per signature
#: (a chain verification checks one signature per manifest).
_ECDSA: dict[str, ec.ECDSA] = {name: ec.ECDSA(alg()) for name, alg in _HASHES.items()}


def _ecdsa(name: str) -> ec.ECDSA:
    found = _ECDSA.get(name)
    return found if found is not None else ec.ECDSA(_hash(name))  # _hash raises for an unknown name


def key_id(public_key: PublicKey) -> str:
    """SHA-256 (hex) of the DER SubjectPublicKeyInfo: the key ID mlprov records and trusts by."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class SigningIdentity:
    """A private key and, when it has one, its certificate chain (leaf first)."""

    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    key_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.key_id:
            object.__setattr__(self, "key_id", key_id(self.private_key.public_key()))

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM, leaf first (empty for a bare key)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    @property
    def private_key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for libraries that take PEM bytes)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def algorithm(self) -> str:
        """A short name of the signature scheme: ``ecdsa-p256``, ``ecdsa-p384``, ``rsa-pkcs1v15``..."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}.get(
                self.private_key.curve.name, f"ecdsa-{self.private_key.curve.name}"
            )
        return "rsa-pkcs1v15"

    def sign(self, data: bytes, hash_name: HashName = "sha384") -> bytes:
        """Sign ``data`` as Atlas does: DER ECDSA for EC keys, PKCS#1 v1.5 for RSA keys."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(_hash(hash_name)))
        return self.private_key.sign(data, padding.PKCS1v15(), _hash(hash_name))


def verify_bytes(public_key: PublicKey, signature: bytes, data: bytes, hash_name: HashName = "sha384") -> None:
    """Verify a signature made by :meth:`SigningIdentity.sign`; raise :class:`SignatureError`."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, _ecdsa(hash_name))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _hash(hash_name))
        else:  # pragma: no cover - guarded by the PublicKey type
            raise SignatureError(f"unsupported public key type {type(public_key).__name__}")
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None


@dataclass(frozen=True)
class IdentityPaths:
    home: Path
    ca_cert: Path
    ca_key: Path
    signer_cert: Path
    signer_key: Path
    chain: Path
    trust_dir: Path


def identity_paths(home: Path) -> IdentityPaths:
    keys = home / "keys"
    return IdentityPaths(
        home=home,
        ca_cert=keys / "ca.pem",
        ca_key=keys / "ca.key",
        signer_cert=keys / "signer.pem",
        signer_key=keys / "signer.key",
        chain=keys / "chain.pem",
        trust_dir=home / "trust",
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the start (a key is never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_identity(home: Path, *, organisation: str = "mlprov local", force: bool = False) -> IdentityPaths:
    """Create a CA, a P-256 signing certificate and a trust store holding the CA under ``home``.

    Refuses to overwrite an existing identity unless ``force`` is set (overwriting would orphan every
    signature made so far from the trust store).
    """
    paths = identity_paths(home)
    if paths.signer_key.exists() and not force:
        raise KeyMaterialError(f"an identity already exists in {paths.signer_key.parent}; pass --force to replace it")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} signer"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING_EKU]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    _write(paths.ca_key, _pem_key(ca_key), 0o600)
    _write(paths.signer_key, _pem_key(signer_key), 0o600)
    _write(paths.ca_cert, ca_cert.public_bytes(pem), 0o644)
    _write(paths.signer_cert, signer_cert.public_bytes(pem), 0o644)
    _write(paths.chain, signer_cert.public_bytes(pem) + ca_cert.public_bytes(pem), 0o644)
    _write(paths.trust_dir / "ca.pem", ca_cert.public_bytes(pem), 0o644)
    return paths


def load_private_key_pem(path: Path) -> SigningIdentity:
    """Load a bare PEM private key (EC or RSA, as atlas-cli's ``--key``) as an identity without a chain."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyMaterialError(f"key file {path} is encrypted; give an unencrypted PEM key") from None
    except ValueError:
        raise KeyMaterialError(f"{path} is not a PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise KeyMaterialError(f"key file {path} holds a {type(key).__name__}; use an EC or RSA key")
    return SigningIdentity(private_key=key)


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise KeyMaterialError(f"cannot read certificate file {path}: {exc.strerror}") from None
    except ValueError:
        raise KeyMaterialError(f"{path} holds no PEM certificate") from None


def load_identity(home: Path) -> SigningIdentity:
    """Load the identity :func:`init_identity` created under ``home``."""
    paths = identity_paths(home)
    if not paths.signer_key.exists():
        raise KeyMaterialError(f"no signing identity in {paths.signer_key.parent}; run `mlprov keys init` first")
    identity = load_private_key_pem(paths.signer_key)
    chain = tuple(_load_certs(paths.chain))
    if key_id(chain[0].public_key()) != identity.key_id:  # type: ignore[arg-type]  # leaf is EC/RSA by construction
        raise KeyMaterialError(f"{paths.chain} does not belong to the key {paths.signer_key}")
    return SigningIdentity(private_key=identity.private_key, chain=chain)


@dataclass
class TrustStore:
    """Trust anchors (CA certificates) and pinned public keys (for bare keys from atlas-cli workflows)."""

    anchors: list[x509.Certificate] = field(default_factory=list)
    pinned: dict[str, PublicKey] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> TrustStore:
        """Read every ``*.pem`` in ``directory``: certificates become anchors, public keys are pinned."""
        store = cls()
        if not directory.is_dir():
            return store
        for path in sorted(directory.glob("*.pem")):
            data = path.read_bytes()
            if b"CERTIFICATE" in data:
                store.anchors.extend(_load_certs(path))
            elif b"PUBLIC KEY" in data:
                try:
                    pub = serialization.load_pem_public_key(data)
                except ValueError:
                    raise KeyMaterialError(f"{path} is not a PEM public key") from None
                if isinstance(pub, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
                    store.pin(pub)
        return store

    def pin(self, public_key: PublicKey) -> str:
        kid = key_id(public_key)
        self.pinned[kid] = public_key
        return kid

    @property
    def anchors_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.anchors)

    def resolve(self, chain: list[x509.Certificate] | tuple[x509.Certificate, ...], signer_key_id: str) -> PublicKey:
        """Return the public key to verify with, or raise :class:`UntrustedSignerError`.

        With a chain: every certificate must be issued (and signed) by the next one, be within its
        validity period, and the last must be an anchor or be issued by one; the leaf's key ID must be
        ``signer_key_id``. Without a chain the key ID must be pinned.
        """
        if not chain:
            if signer_key_id in self.pinned:
                return self.pinned[signer_key_id]
            raise UntrustedSignerError(f"signer key {signer_key_id[:16]}… is not in the trust store")
        leaf_key = chain[0].public_key()
        if not isinstance(leaf_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise UntrustedSignerError("signer certificate holds an unsupported key type")
        if key_id(leaf_key) != signer_key_id:
            raise UntrustedSignerError("signer certificate does not match the recorded key ID")
        now = dt.datetime.now(dt.UTC)
        anchor_ders = {a.public_bytes(serialization.Encoding.DER) for a in self.anchors}
        for i, cert in enumerate(chain):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise UntrustedSignerError(
                    f"certificate {cert.subject.rfc4514_string()} is outside its validity period"
                )
            if cert.public_bytes(serialization.Encoding.DER) in anchor_ders:
                return leaf_key
            issuers = list(chain[i + 1 : i + 2]) or [a for a in self.anchors if a.subject == cert.issuer]
            for issuer in issuers:
                try:
                    cert.verify_directly_issued_by(issuer)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                if issuer.public_bytes(serialization.Encoding.DER) in anchor_ders and i + 1 >= len(chain):
                    return leaf_key
                break
            else:
                raise UntrustedSignerError(f"certificate {cert.subject.rfc4514_string()} is not issued by a trusted CA")
        raise UntrustedSignerError("certificate chain does not end at a trusted CA")
