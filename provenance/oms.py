"""Real OpenSSF Model Signing (OMS) bundles, made and checked by the ``model-signing`` library.

The signature is model_signing's own (certificate method, offline): a Sigstore bundle
(``application/vnd.dev.sigstore.bundle.v0.3+json``) whose DSSE envelope carries an in-toto
statement listing every file of the model with its sha256, signed by the mlprov signing
certificate, with the certificate chain inside the bundle. Anyone can check it without mlprov::

    model_signing verify certificate MODEL --signature model.sig --certificate_chain ca.pem

Hashing uses model_signing's default configuration (per-file sha256, git paths ignored, symlinks
refused): the bundle's subject digest of a directory equals :func:`provenance.hashing.hash_directory`'s
root. For a single-file model the subject is the sha256 of that file's raw digest (model_signing
treats the file as a one-entry manifest named ``.``), *not* the file's plain digest.

The library takes file paths for keys and certificates, so key material is written, mode 0600, into
a private (0700) temporary directory that is removed afterwards. ``model_signing`` is imported inside
the functions: importing this module stays cheap.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provenance.errors import (
    DigestMismatchError,
    InvalidInputError,
    KeyMaterialError,
    SignatureError,
    UntrustedSignerError,
    VerificationError,
)

__all__ = ["bundle_subject_digest", "sign_model", "verify_model_bundle"]

_PEM_CERT_END = b"-----END CERTIFICATE-----"


@contextmanager
def _private_dir(workdir: Path | None) -> Iterator[Path]:
    """A 0700 temporary directory (under ``workdir`` if given), removed with its contents on exit."""
    path = Path(tempfile.mkdtemp(prefix="mlprov-oms-", dir=workdir))
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def _split_chain(chain_pem: bytes) -> tuple[bytes, bytes]:
    """(leaf PEM, rest of the chain PEM) from a leaf-first PEM chain."""
    end = chain_pem.find(_PEM_CERT_END)
    if end < 0:
        raise KeyMaterialError("the certificate chain holds no PEM certificate; OMS signing needs the signer's")
    end += len(_PEM_CERT_END)
    return chain_pem[:end] + b"\n", chain_pem[end:].strip() + b"\n"


def _check_model(model_path: Path) -> Path:
    model_path = Path(model_path)
    if not model_path.exists():
        raise InvalidInputError(f"cannot read {model_path}: No such file or directory")
    if model_path.is_symlink():
        raise InvalidInputError(f"{model_path} is a symbolic link; OpenSSF Model Signing refuses symlinks")
    return model_path


def sign_model(
    model_path: Path,
    *,
    private_key_pem: bytes,
    chain_pem: bytes,
    workdir: Path | None = None,
    ignore: Iterable[str] = (),
) -> bytes:
    """Sign a model file or directory; return the Sigstore bundle JSON bytes.

    ``chain_pem`` is leaf first (the signer's certificate, then its CA), as ``keys/chain.pem``.
    ``ignore`` names paths relative to a model directory to leave out (model_signing's ``ignore_paths``,
    recorded in the bundle), e.g. a completion marker ``_SUCCESS``: pass the same names as
    ``exclude_top_level`` to :func:`provenance.hashing.hash_directory` and both root digests agree.
    Raises :class:`KeyMaterialError` if the key is not an EC key or does not match the certificate,
    :class:`InvalidInputError` if the model cannot be read or contains a symlink.
    """
    model_path = _check_model(model_path)
    leaf_pem, rest_pem = _split_chain(chain_pem)
    from model_signing import hashing, signing  # heavy: keep it out of module import

    with _private_dir(workdir) as tmp:
        key = _write_private(tmp / "signer.key", private_key_pem)
        leaf = _write_private(tmp / "signer.pem", leaf_pem)
        chain = [_write_private(tmp / "chain.pem", rest_pem)] if rest_pem.strip() else []
        out = tmp / "model.sig"
        try:
            config = signing.Config().use_certificate_signer(  # type: ignore[no-untyped-call]  # untyped library
                private_key=key, signing_certificate=leaf, certificate_chain=chain
            )
        except (ValueError, TypeError) as exc:
            raise KeyMaterialError(f"cannot sign with this key and certificate: {exc}") from None
        ignored = sorted(set(ignore))
        if ignored:
            config.set_hashing_config(hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True))  # type: ignore[no-untyped-call]  # untyped library
        try:
            config.sign(model_path, out)
        except ValueError as exc:
            raise InvalidInputError(f"cannot hash model {model_path}: {exc}") from None
        except OSError as exc:
            raise InvalidInputError(f"cannot read model {model_path}: {exc.strerror or exc}") from None
        return out.read_bytes()


def _map_verify_error(exc: Exception, model_path: Path) -> VerificationError | InvalidInputError:
    from cryptography.exceptions import InvalidSignature
    from OpenSSL import crypto

    if isinstance(exc, crypto.X509StoreContextError):
        return UntrustedSignerError(f"OMS bundle signer is not trusted: {exc}")
    if isinstance(exc, InvalidSignature):
        return SignatureError("OMS bundle signature does not verify over its payload")
    message = str(exc)
    if isinstance(exc, ValueError) and message.startswith("Signature mismatch"):
        return DigestMismatchError(f"model {model_path} differs from its OMS bundle: {message[20:]}")
    if isinstance(exc, ValueError) and message.startswith("Cannot use '"):
        return InvalidInputError(message)
    if isinstance(exc, ValueError) and "cannot be used for signing" in message:
        return UntrustedSignerError(f"OMS bundle signer: {message}")
    return SignatureError(f"OMS bundle is malformed or not signed as expected: {type(exc).__name__}: {message}")


def verify_model_bundle(model_path: Path, bundle: bytes, ca_chain_pem: bytes, *, ignore: Iterable[str] = ()) -> None:
    """Verify an OMS bundle over a model with model_signing's certificate verifier.

    ``ca_chain_pem`` holds the trusted CA certificate(s). ``ignore``: paths (relative to a model
    directory) left out of the re-hash, as given to :func:`sign_model`; model_signing also re-applies
    the ``ignore_paths`` the bundle records. Raises :class:`DigestMismatchError` (the model
    changed; the message names the files), :class:`SignatureError` (bundle altered or malformed),
    :class:`UntrustedSignerError` (chain does not lead to a given CA), :class:`InvalidInputError`.
    """
    model_path = _check_model(model_path)
    if b"CERTIFICATE" not in ca_chain_pem:
        raise InvalidInputError("no trusted CA certificate given to verify the OMS bundle against")
    from model_signing import hashing, verifying

    with _private_dir(None) as tmp:
        ca = tmp / "ca.pem"
        ca.write_bytes(ca_chain_pem)
        sig = tmp / "model.sig"
        sig.write_bytes(bundle)
        try:
            config = verifying.Config().use_certificate_verifier(certificate_chain=[ca])  # type: ignore[no-untyped-call]  # untyped
        except ValueError as exc:
            raise InvalidInputError(f"cannot load the trusted CA certificates: {exc}") from None
        ignored = sorted(set(ignore))
        if ignored:
            config.set_hashing_config(hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True))  # type: ignore[no-untyped-call]  # untyped library
        try:
            config.verify(model_path, sig)
        except OSError as exc:
            raise InvalidInputError(f"cannot read model {model_path}: {exc.strerror or exc}") from None
        except Exception as exc:  # the library raises many types; map each to our tree
            raise _map_verify_error(exc, model_path) from None


def _statement(bundle: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(bundle)
        payload = base64.b64decode(doc["dsseEnvelope"]["payload"], validate=True)
        statement = json.loads(payload)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidInputError(f"not an OMS Sigstore bundle with a DSSE payload: {exc}") from None
    if not isinstance(statement, dict):
        raise InvalidInputError("the OMS bundle's payload is not an in-toto statement")
    return statement


def bundle_subject_digest(bundle: bytes) -> str:
    """The sha256 (hex) of the in-toto subject in an OMS bundle (not verified: call verify first)."""
    statement = _statement(bundle)
    try:
        (subject,) = statement["subject"]
        digest = subject["digest"]["sha256"]
    except (KeyError, TypeError, ValueError):
        raise InvalidInputError("the OMS bundle's statement does not have exactly one sha256 subject") from None
    if not isinstance(digest, str):
        raise InvalidInputError("the OMS bundle's subject digest is not a string")
    return digest
