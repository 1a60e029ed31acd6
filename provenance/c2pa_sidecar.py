"""Real C2PA sidecar manifests (``.c2pa``) for any artifact, made and read by c2pa-python.

A sidecar is a C2PA manifest store kept beside the asset instead of embedded in it (model and
dataset formats have no place for one); its hard binding is a ``c2pa.hash.data`` assertion over
the asset's bytes, so any C2PA validator given the asset and the ``.c2pa`` file can check it.

**Files** are signed over their own bytes.

**Directories** (a model directory, a dataset split into shards) have no byte stream of their own.
mlprov signs the sidecar over a canonical *directory listing* instead, and verification rebuilds
the same bytes by re-hashing the directory::

    <sha256 hex>  <relative posix path>\\n      one line per file

in the order and over the files of :func:`provenance.hashing.hash_directory` (OpenSSF Model Signing
order and ignore rules: hidden files included, top-level ``.git*`` paths skipped, symlinks refused).
It is exactly what ``sha256sum`` prints, so ``sha256sum -c`` checks the files against it, and its
lines are the OMS bundle's resources. A C2PA validator other than mlprov validates such a sidecar
against the listing file (:func:`directory_listing` writes it), not against the directory itself.
Paths containing a newline or a backslash are refused (they would need sha256sum's escaping).

Every signed byte of a sidecar is checked (claim, assertions, certificate chain, signature); as in
any C2PA manifest store, the COSE ``pad`` field and JUMBF box framing are not signed, so flipping one
of those bytes still validates: compare sidecars by their claim, never by their raw bytes.

Cost: c2pa hashes the asset itself, in native code through Python stream callbacks (signing is
slower than verifying: ~4 s per 256 MiB measured, verifying ~4 s per GiB). A pre-computed data hash
(``c2pa_builder_sign_data_hashed_embeddable`` in the C API) would avoid the second pass, but
c2pa-python 0.38.1 does not expose it.

Manifests carry a ``c2pa.actions.v2`` "c2pa.created" action with the IPTC digital source type
``algorithmicMedia`` (as Atlas does for models), the title, the caller's assertions, and the
``claim_generator_info`` ``mlprov``. C2PA state never leaks between calls: every call builds its own
``c2pa.Context`` (trust anchors, no network, no thumbnails) and closes it; nothing global is set.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from provenance.errors import (
    DigestMismatchError,
    InvalidInputError,
    KeyMaterialError,
    SignatureError,
    UntrustedSignerError,
    VerificationError,
)
from provenance.hashing import DirectoryDigest, hash_directory

__all__ = ["C2paReport", "directory_listing", "sign_sidecar", "verify_sidecar"]

MEDIA_TYPE = "application/octet-stream"
_CLAIM_GENERATOR = "mlprov"
_URN = re.compile(r"urn:c2pa:([0-9a-fA-F-]{36})")
# Codes that mean the manifest store itself was altered or its signature is bad.
_SIGNATURE_CODES = ("claimSignature.", "signingCredential.invalid", "assertion.hashedURI.mismatch", "manifest.")
_DATA_HASH_MISMATCH = "assertion.dataHash.mismatch"
_UNTRUSTED = "signingCredential.untrusted"


@dataclass(frozen=True)
class C2paReport:
    """What a successful verification found."""

    validation_state: str
    """``Trusted``: the signature, the data hash and the chain to a trust anchor all hold."""
    active_manifest: str
    """The active manifest's label, ``urn:c2pa:<uuid>``."""
    title: str
    assertions: tuple[str, ...] = ()
    """Labels of the active manifest's assertions."""
    signer: str = ""
    """The signing certificate's issuer and common name, as C2PA reports them."""
    codes: tuple[str, ...] = field(default=())
    """The success codes of the active manifest (e.g. ``assertion.dataHash.match``)."""


def directory_listing(digest: DirectoryDigest) -> bytes:
    """The canonical bytes a directory's sidecar is bound to (see the module docstring)."""
    lines = []
    for rel, hex_digest in digest.files.items():
        if "\n" in rel or "\\" in rel:
            raise InvalidInputError(f"cannot list {rel!r} in a C2PA directory listing: newline or backslash in name")
        lines.append(f"{hex_digest}  {rel}\n")
    return "".join(lines).encode("utf-8")


class _Discard(io.RawIOBase):
    """A seekable sink: c2pa writes a copy of the asset to ``dest`` even for sidecars; we drop it."""

    def __init__(self) -> None:
        super().__init__()
        self._pos = 0
        self._end = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


@contextmanager
def _asset_stream(asset_path: Path) -> Iterator[IO[bytes]]:
    """The bytes the sidecar binds: the file itself, or a directory's canonical listing."""
    asset_path = Path(asset_path)
    if asset_path.is_dir() and not asset_path.is_symlink():
        yield io.BytesIO(directory_listing(hash_directory(asset_path)))
        return
    try:
        f = open(asset_path, "rb")  # noqa: SIM115 - closed below; a context manager would hide the OSError mapping
    except OSError as exc:
        raise InvalidInputError(f"cannot read {asset_path}: {exc.strerror or exc}") from None
    with f:
        yield f


def _signing_alg(private_key_pem: bytes) -> Any:
    from c2pa import C2paSigningAlg
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"cannot load the C2PA signing key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": C2paSigningAlg.ES256, "secp384r1": C2paSigningAlg.ES384}
        by_curve["secp521r1"] = C2paSigningAlg.ES512
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    elif isinstance(key, rsa.RSAPrivateKey):
        return C2paSigningAlg.PS256
    raise KeyMaterialError(f"C2PA cannot sign with a {type(key).__name__}; use an EC (P-256/384/521) or RSA key")


def _label(manifest_id: str | None) -> str:
    if manifest_id is None:
        return f"urn:c2pa:{uuid.uuid4()}"
    match = _URN.fullmatch(manifest_id)
    try:
        parsed = uuid.UUID(match.group(1) if match else manifest_id)
    except ValueError:
        raise InvalidInputError(f"manifest ID {manifest_id!r} is not urn:c2pa:<uuid4>") from None
    if parsed.version != 4:
        raise InvalidInputError(f"manifest ID {manifest_id!r}: C2PA needs a version 4 UUID")
    return f"urn:c2pa:{parsed}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlprov")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0"


def sign_sidecar(
    asset_path: Path,
    *,
    private_key_pem: bytes,
    chain_pem: bytes,
    title: str,
    assertions: Sequence[dict[str, Any]] = (),
    manifest_id: str | None = None,
) -> bytes:
    """Sign a C2PA sidecar manifest for a file or directory; return the ``.c2pa`` bytes.

    ``chain_pem`` is leaf first and must reach a CA (C2PA refuses self-signed signers).
    ``assertions`` are C2PA assertion dicts, ``{"label": ..., "data": {...}}``. ``manifest_id``
    (``urn:c2pa:<uuid4>``) becomes the manifest label; a new one is made when it is ``None``.
    """
    import c2pa

    alg = _signing_alg(private_key_pem)
    definition: dict[str, Any] = {
        "claim_generator_info": [{"name": _CLAIM_GENERATOR, "version": _version()}],
        "title": title,
        "format": MEDIA_TYPE,
        "label": _label(manifest_id),
        "assertions": [dict(a) for a in assertions],
    }
    settings = {
        "verify": {"verify_after_sign": False, "remote_manifest_fetch": False, "ocsp_fetch": False},
        "builder": {"thumbnail": {"enabled": False}},
    }
    with ExitStack() as stack, _asset_stream(asset_path) as source:
        try:
            context = stack.enter_context(c2pa.Context.from_dict(settings))
            signer = stack.enter_context(
                c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg, chain_pem, private_key_pem, None))
            )
        except c2pa.C2paError as exc:
            raise KeyMaterialError(f"C2PA refuses the signing key or certificate chain: {exc}") from None
        try:
            builder = stack.enter_context(c2pa.Builder(definition, context=context))
            builder.set_no_embed()
            if not any(str(a.get("label", "")).startswith("c2pa.actions") for a in assertions):
                builder.set_intent(c2pa.C2paBuilderIntent.CREATE, c2pa.C2paDigitalSourceType.ALGORITHMIC_MEDIA)
            return bytes(builder.sign(signer, MEDIA_TYPE, source, _Discard()))
        except c2pa.C2paError as exc:
            message = str(exc)
            if "certificate" in message.lower() or "signer" in message.lower():
                raise KeyMaterialError(f"C2PA refuses the signing certificate: {message}") from None
            raise InvalidInputError(f"cannot build the C2PA manifest for {asset_path}: {message}") from None


def _codes(results: dict[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    active = (results or {}).get("activeManifest") or {}
    return list(active.get(kind) or [])


def verify_sidecar(asset_path: Path, sidecar: bytes, trust_anchors_pem: bytes) -> C2paReport:
    """Validate a sidecar against the asset with the given trust anchors (and only those).

    Returns a :class:`C2paReport` when the state is ``Trusted``. Raises :class:`SignatureError` (the
    sidecar was altered or is not a manifest store), :class:`DigestMismatchError` (the asset changed:
    ``assertion.dataHash.mismatch``), :class:`UntrustedSignerError` (valid, but no anchor trusts the
    signer) or :class:`VerificationError` (any other failure).
    """
    import c2pa

    if b"CERTIFICATE" not in trust_anchors_pem:
        raise InvalidInputError("no trust anchor given to verify the C2PA sidecar against")
    settings = {
        # trust_anchors replaces the SDK's built-in list: only the anchors given are trusted.
        "trust": {"trust_anchors": trust_anchors_pem.decode("ascii", errors="replace")},
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True},
    }
    with ExitStack() as stack, _asset_stream(asset_path) as source:
        context = stack.enter_context(c2pa.Context.from_dict(settings))
        try:
            reader = stack.enter_context(c2pa.Reader(MEDIA_TYPE, source, manifest_data=bytes(sidecar), context=context))
            state = reader.get_validation_state() or ""
            results = reader.get_validation_results()
            manifest = reader.get_active_manifest() or {}
        except c2pa.C2paError as exc:
            raise SignatureError(f"C2PA sidecar for {asset_path} cannot be read as a manifest store: {exc}") from None
    failures = _codes(results, "failure")
    failed = [str(f.get("code", "")) for f in failures]

    explained = "; ".join(f"{f.get('code')}: {f.get('explanation', '')}" for f in failures) or "no detail"
    if any(code.startswith(_SIGNATURE_CODES) for code in failed):
        raise SignatureError(f"C2PA sidecar of {asset_path} does not verify: {explained}")
    if _DATA_HASH_MISMATCH in failed:
        raise DigestMismatchError(
            f"{asset_path} differs from the content its C2PA sidecar signs ({_DATA_HASH_MISMATCH})"
        )
    if _UNTRUSTED in failed:
        raise UntrustedSignerError(f"C2PA sidecar of {asset_path} is signed by a certificate no trust anchor accepts")
    if state != "Trusted" or failed:
        raise VerificationError(f"C2PA sidecar of {asset_path} is {state or 'unvalidated'}: {explained}")
    signature_info = manifest.get("signature_info") or {}
    return C2paReport(
        validation_state=state,
        active_manifest=str(manifest.get("label") or ""),
        title=str(manifest.get("title") or ""),
        assertions=tuple(str(a.get("label", "")) for a in manifest.get("assertions") or []),
        signer=" / ".join(str(signature_info[k]) for k in ("issuer", "common_name") if signature_info.get(k)),
        codes=tuple(str(s.get("code", "")) for s in _codes(results, "success")),
    )
