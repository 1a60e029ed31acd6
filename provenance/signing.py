"""Atlas-style manifest signatures, with the signer recorded where the signature covers it.

Atlas signs the CBOR of the claim with ``signature`` null (:func:`claim_signing_bytes`) with the
chosen hash (PKCS#1 v1.5 for RSA, DER ECDSA for EC) and writes the base64 into ``claim.signature``.
mlprov signs exactly those bytes the same way, and first adds two CustomAssertions to the claim so
the signature covers them:

* ``mlprov.signer``: ``{key_id, algorithm, hash_alg, chain}``: the key ID (SHA-256 of the DER
  SubjectPublicKeyInfo), a short scheme name, the hash used, and the certificate chain as PEM
  strings, leaf first (empty for a bare key, which a verifier then trusts only when pinned).
* ``mlprov.manifest``: the top-level fields Atlas leaves outside the claim (``instance_id``,
  ``title``, ``claim_generator``, ``created_at``, ``cross_references``). Without it anyone could
  re-point a cross-reference of a signed manifest to another valid manifest unnoticed. A verifier
  requires them to equal the top-level values.

``c2pa.claim.v2`` is set to the signed claim (atlas-cli 0.1.0 keeps both; 0.2 leaves the copy unsigned);
verification requires the two to be identical, and the top-level ``ingredients`` to equal the claim's.
"""

from __future__ import annotations

import base64
import binascii
import copy
from dataclasses import dataclass, field
from typing import Any, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provenance import manifest as _manifest_module
from provenance.canonical import canonical_claim, canonical_manifest, cbor_bytes
from provenance.cbor_claim import ClaimEncoder
from provenance.errors import InvalidInputError, SignatureError
from provenance.keys import HashName, PublicKey, SigningIdentity, TrustStore, verify_bytes
from provenance.manifest import custom_assertion, format_timestamp, manifest_hash, new_manifest_id

__all__ = [
    "BINDING_LABEL",
    "SIGNER_LABEL",
    "SignatureVerifier",
    "SignerInfo",
    "claim_signing_bytes",
    "link_manifests",
    "sign_manifest",
    "verify_manifest_signature",
]

SIGNER_LABEL = "mlprov.signer"
BINDING_LABEL = "mlprov.manifest"
_HASH_NAMES: tuple[str, ...] = get_args(HashName)
_BINDING_FIELDS = ("instance_id", "title", "claim_generator", "created_at", "cross_references")


def claim_signing_bytes(claim: dict[str, Any]) -> bytes:
    """The bytes Atlas signs: CBOR of the claim (as ``ClaimV2`` serialises) with ``signature`` null."""
    canonical = canonical_claim(claim)
    canonical["signature"] = None
    return cbor_bytes(canonical)


def _custom(label: str, data: Any) -> dict[str, Any]:
    return custom_assertion(label, data)


def _is_label(assertion: Any, label: str) -> bool:
    if not isinstance(assertion, dict):
        return False
    custom = assertion.get("CustomAssertion")
    return isinstance(custom, dict) and custom.get("label") == label


def _binding(manifest: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields the claim binds, in their canonical form (what a verifier compares)."""
    canonical = canonical_manifest(manifest)
    return {name: canonical[name] for name in _BINDING_FIELDS}


def sign_manifest(
    manifest: dict[str, Any], identity: SigningIdentity, *, hash_alg: HashName = "sha384"
) -> dict[str, Any]:
    """A signed copy of ``manifest`` (see the module docstring); an earlier signature is replaced."""
    if hash_alg not in _HASH_NAMES:
        raise InvalidInputError(f"unsupported hash algorithm {hash_alg!r}; use sha256, sha384 or sha512")
    signed = copy.deepcopy(manifest)
    claim = signed.get("claim")
    if not isinstance(claim, dict) or not isinstance(claim.get("created_assertions"), list):
        raise InvalidInputError("not an Atlas manifest: claim.created_assertions missing")
    kept = [a for a in claim["created_assertions"] if not (_is_label(a, SIGNER_LABEL) or _is_label(a, BINDING_LABEL))]
    signer = {
        "key_id": identity.key_id,
        "algorithm": identity.algorithm,
        "hash_alg": hash_alg,
        "chain": [c.public_bytes(serialization.Encoding.PEM).decode() for c in identity.chain],
    }
    claim["created_assertions"] = [*kept, _custom(BINDING_LABEL, _binding(signed)), _custom(SIGNER_LABEL, signer)]
    claim["signature"] = None
    data = claim_signing_bytes(claim)
    claim["signature"] = base64.b64encode(identity.sign(data, hash_alg)).decode()
    signed["c2pa.claim.v2"] = copy.deepcopy(claim)
    return signed


@dataclass(frozen=True)
class SignerInfo:
    key_id: str
    algorithm: str
    subject: str | None
    """The signing certificate's subject (RFC 4514), ``None`` for a bare key."""
    chain_pem: bytes


@dataclass
class SignatureVerifier:
    """Verifies manifest signatures against one trust store, remembering resolved signer chains.

    A chain of verifications (the same signer on every node) then parses and path-validates the
    certificate chain once. Make a new one when the trust store changes. Its ``encoder`` encodes the
    claims it checks, the signer assertion once (the chain verifier uses it for link hashes too).
    """

    trust: TrustStore
    encoder: ClaimEncoder = field(default_factory=lambda: ClaimEncoder(unique_labels=(BINDING_LABEL,)))
    _resolved: dict[tuple[str, tuple[str, ...]], tuple[PublicKey, str | None]] = field(default_factory=dict)
    _infos: dict[tuple[str, tuple[str, ...], str], SignerInfo] = field(default_factory=dict)

    def _resolve(self, key_id: str, chain_pem: tuple[str, ...]) -> tuple[PublicKey, str | None]:
        cache_key = (key_id, chain_pem)
        hit = self._resolved.get(cache_key)
        if hit is not None:
            return hit
        chain: list[x509.Certificate] = []
        try:
            for pem in chain_pem:
                chain.extend(x509.load_pem_x509_certificates(pem.encode()))
        except ValueError:
            raise SignatureError("signer assertion holds a certificate that cannot be parsed") from None
        public_key = self.trust.resolve(chain, key_id)
        subject = chain[0].subject.rfc4514_string() if chain else None
        self._resolved[cache_key] = (public_key, subject)
        return public_key, subject

    def verify(
        self, manifest: dict[str, Any], *, canonical: dict[str, Any] | None = None, signed_bytes: bytes | None = None
    ) -> SignerInfo:
        """Check one manifest's signature; see :func:`verify_manifest_signature`.

        ``canonical`` is :func:`~provenance.canonical.canonical_manifest` of ``manifest`` when the
        caller has it already (the chain verifier computes it once per node for hashing too), and
        ``signed_bytes`` the CBOR of its claim with ``signature`` null (:meth:`ClaimEncoder.encode`
        of ``canonical["claim"]``), which must then come from that same ``canonical``.
        """
        if canonical is None:
            signed_bytes = None
            try:
                canonical = canonical_manifest(manifest, share=True)
            except InvalidInputError as exc:
                raise SignatureError(f"cannot be encoded as Atlas signs it: {exc}") from None
        claim = canonical["claim"]
        # canonical_manifest shares the claim's form only when the raw copy is identical (strict).
        if canonical["c2pa.claim.v2"] is not claim:
            raise SignatureError("c2pa.claim.v2 differs from the claim")
        signature_b64 = claim["signature"]
        if not signature_b64:
            raise SignatureError("manifest is not signed (claim.signature is null)")
        customs = [a["CustomAssertion"] for a in claim["created_assertions"] if "CustomAssertion" in a]
        signers = [c["data"] for c in customs if c["label"] == SIGNER_LABEL]
        if len(signers) != 1:
            raise SignatureError(f"claim must hold exactly one {SIGNER_LABEL} assertion, found {len(signers)}")
        signer = signers[0]
        if not isinstance(signer, dict):
            raise SignatureError(f"{SIGNER_LABEL} assertion is not an object")
        key_id, hash_alg, chain_pem = signer.get("key_id"), signer.get("hash_alg"), signer.get("chain")
        if not isinstance(key_id, str) or hash_alg not in _HASH_NAMES or not isinstance(chain_pem, list):
            raise SignatureError(f"{SIGNER_LABEL} assertion lacks key_id, hash_alg or chain")
        if not all(isinstance(p, str) for p in chain_pem):
            raise SignatureError(f"{SIGNER_LABEL} chain must be a list of PEM strings")
        chain = tuple(chain_pem)
        public_key, subject = self._resolve(key_id, chain)
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("claim.signature is not base64") from None
        if signed_bytes is None:
            signed_bytes = self.encoder.encode(claim)[1]
        verify_bytes(public_key, signature, signed_bytes, hash_alg)
        self._check_binding(canonical, [c["data"] for c in customs if c["label"] == BINDING_LABEL])
        algorithm = str(signer.get("algorithm", ""))
        info_key = (key_id, chain, algorithm)
        info = self._infos.get(info_key)  # immutable, so one per signer (keyed by its whole content)
        if info is None:
            info = self._infos[info_key] = SignerInfo(
                key_id=key_id, algorithm=algorithm, subject=subject, chain_pem="".join(chain_pem).encode()
            )
        return info

    @staticmethod
    def _check_binding(canonical: dict[str, Any], bindings: list[Any]) -> None:
        if len(bindings) != 1 or not isinstance(bindings[0], dict):
            raise SignatureError(f"claim must hold exactly one {BINDING_LABEL} assertion")
        bound = bindings[0]
        for name in _BINDING_FIELDS:
            if bound.get(name) != canonical[name]:
                raise SignatureError(f"top-level {name} differs from what the signature covers")
        top = canonical["ingredients"]
        if top and top != canonical["claim"]["ingredients"]:
            raise SignatureError("top-level ingredients differ from the signed claim's")


def verify_manifest_signature(manifest: dict[str, Any], trust: TrustStore) -> SignerInfo:
    """Verify the claim signature against ``trust``; return who signed.

    Raises :class:`SignatureError` when the claim is unsigned, the signature does not verify, the
    ``mlprov.signer`` assertion is missing, ``c2pa.claim.v2`` differs from the claim, or a top-level
    field differs from what the claim binds; :class:`UntrustedSignerError` when the key is not
    anchored (a chain not ending at a trusted CA, or a bare key that is not pinned).
    """
    return SignatureVerifier(trust).verify(manifest)


def link_manifests(source: dict[str, Any], target: dict[str, Any], identity: SigningIdentity) -> dict[str, Any]:
    """A new version of ``source`` (new manifest and claim IDs, new timestamps) that cross-references
    ``target``, re-signed with the hash ``source`` was signed with (atlas ``manifest link``)."""
    linked = copy.deepcopy(source)
    claim = linked.get("claim")
    if not isinstance(claim, dict):
        raise InvalidInputError("not an Atlas manifest: no claim")
    hash_alg: HashName = "sha384"
    for assertion in claim.get("created_assertions") or []:
        if _is_label(assertion, SIGNER_LABEL):
            recorded = assertion["CustomAssertion"]["data"].get("hash_alg")
            if recorded in _HASH_NAMES:
                hash_alg = recorded
    target_id = target.get("instance_id")
    if not isinstance(target_id, str):
        raise InvalidInputError("target is not an Atlas manifest: no instance_id")
    refs = [r for r in linked.get("cross_references") or [] if r.get("manifest_url") != target_id]
    refs.append({"manifest_url": target_id, "manifest_hash": manifest_hash(target), "media_type": "application/json"})
    now = format_timestamp(_manifest_module._utcnow())  # the builder's clock seam
    linked["cross_references"] = refs
    linked["instance_id"] = new_manifest_id()
    linked["created_at"] = now
    claim["instance_id"] = new_manifest_id()
    claim["created_at"] = now
    return sign_manifest(linked, identity, hash_alg=hash_alg)
