"""Atlas-style signatures: what is signed, who signed, and linking."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from provenance.errors import InvalidInputError, SignatureError, UntrustedSignerError
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, find_assertion, make_ingredient, manifest_hash
from provenance.signing import (
    SignatureVerifier,
    claim_signing_bytes,
    link_manifests,
    sign_manifest,
    verify_manifest_signature,
)


def found(manifest: dict[str, Any], label: str) -> Any:
    """find_assertion, asserting the assertion is there."""
    value = find_assertion(manifest, label)
    assert value is not None, label
    return value


@pytest.fixture(scope="module")
def identity_and_trust(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningIdentity, TrustStore]:
    home = tmp_path_factory.mktemp("id")
    paths = init_identity(home)
    return load_identity(home), TrustStore.load(paths.trust_dir)


@pytest.fixture
def unsigned(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "w.pt").write_bytes(b"w")
    return build_manifest(kind="model", title="m", ingredients=[make_ingredient(tmp_path / "w.pt", "w", kind="model")])


@pytest.mark.parametrize("hash_alg", ["sha256", "sha384", "sha512"])
def test_sign_and_verify(
    unsigned: dict[str, Any], identity_and_trust: tuple[SigningIdentity, TrustStore], hash_alg: Any
) -> None:
    identity, trust = identity_and_trust
    before = copy.deepcopy(unsigned)
    signed = sign_manifest(unsigned, identity, hash_alg=hash_alg)
    assert unsigned == before  # a new dict; the input is untouched
    assert signed["c2pa.claim.v2"] == signed["claim"]
    signer = found(signed, "mlprov.signer")
    assert signer["key_id"] == identity.key_id
    assert signer["hash_alg"] == hash_alg
    assert signer["algorithm"] == "ecdsa-p256"
    assert len(signer["chain"]) == 2
    info = verify_manifest_signature(signed, trust)
    assert info.key_id == identity.key_id
    assert info.subject is not None
    assert "signer" in info.subject
    assert info.chain_pem == identity.chain_pem
    # the signature is over the CBOR of the claim with signature null, exactly as Atlas signs
    sig = base64.b64decode(signed["claim"]["signature"])
    assert isinstance(identity.public_key, ec.EllipticCurvePublicKey)
    from cryptography.hazmat.primitives import hashes

    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[hash_alg]
    identity.public_key.verify(sig, claim_signing_bytes(signed["claim"]), ec.ECDSA(algorithm))


def test_signing_twice_replaces_the_signer(
    unsigned: dict[str, Any], identity_and_trust: tuple[SigningIdentity, TrustStore]
) -> None:
    identity, trust = identity_and_trust
    twice = sign_manifest(sign_manifest(unsigned, identity), identity)
    labels = [a["CustomAssertion"]["label"] for a in twice["claim"]["created_assertions"] if "CustomAssertion" in a]
    assert labels == ["mlprov.manifest", "mlprov.signer"]
    verify_manifest_signature(twice, trust)


def test_rsa_bare_key_is_pkcs1v15_and_needs_a_pin(unsigned: dict[str, Any]) -> None:
    bare = SigningIdentity(private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    signed = sign_manifest(unsigned, bare)
    assert found(signed, "mlprov.signer")["chain"] == []
    with pytest.raises(UntrustedSignerError, match="not in the trust store"):
        verify_manifest_signature(signed, TrustStore())
    trust = TrustStore()
    trust.pin(bare.public_key)
    info = verify_manifest_signature(signed, trust)
    assert info.subject is None
    assert info.algorithm == "rsa-pkcs1v15"
    from cryptography.hazmat.primitives import hashes

    assert isinstance(bare.public_key, rsa.RSAPublicKey)
    bare.public_key.verify(
        base64.b64decode(signed["claim"]["signature"]),
        claim_signing_bytes(signed["claim"]),
        padding.PKCS1v15(),
        hashes.SHA384(),
    )


def test_unsigned_and_broken_manifests_raise(
    unsigned: dict[str, Any], identity_and_trust: tuple[SigningIdentity, TrustStore]
) -> None:
    identity, trust = identity_and_trust
    with pytest.raises(SignatureError, match="not signed"):
        verify_manifest_signature(unsigned, trust)
    with pytest.raises(SignatureError, match="cannot be encoded"):
        verify_manifest_signature({"title": "x"}, trust)
    signed = sign_manifest(unsigned, identity)
    signed["claim"]["signature"] = "!!notbase64"
    signed["c2pa.claim.v2"]["signature"] = "!!notbase64"
    with pytest.raises(SignatureError, match="not base64"):
        verify_manifest_signature(signed, trust)
    with pytest.raises(InvalidInputError, match="unsupported hash"):
        sign_manifest(unsigned, identity, hash_alg="md5")  # type: ignore[arg-type]  # the point of the test


def test_verifier_resolves_a_chain_once(
    unsigned: dict[str, Any], identity_and_trust: tuple[SigningIdentity, TrustStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, trust = identity_and_trust
    signed = sign_manifest(unsigned, identity)
    calls = []
    original = trust.resolve

    def counting(chain: Any, key_id: str) -> Any:
        calls.append(key_id)
        return original(chain, key_id)

    monkeypatch.setattr(trust, "resolve", counting)
    verifier = SignatureVerifier(trust)
    for _ in range(3):
        verifier.verify(signed)
    assert calls == [identity.key_id]


def test_link_manifests(
    tmp_path: Path, unsigned: dict[str, Any], identity_and_trust: tuple[SigningIdentity, TrustStore]
) -> None:
    identity, trust = identity_and_trust
    source = sign_manifest(unsigned, identity, hash_alg="sha512")
    (tmp_path / "d.csv").write_text("a\n")
    target = sign_manifest(
        build_manifest(
            kind="dataset", title="d", ingredients=[make_ingredient(tmp_path / "d.csv", "d", kind="dataset")]
        ),
        identity,
    )
    linked = link_manifests(source, target, identity)
    assert linked["instance_id"] != source["instance_id"]
    assert linked["claim"]["instance_id"] != source["claim"]["instance_id"]
    assert linked["cross_references"] == [
        {
            "manifest_url": target["instance_id"],
            "manifest_hash": manifest_hash(target),
            "media_type": "application/json",
        }
    ]
    assert found(linked, "mlprov.signer")["hash_alg"] == "sha512"
    assert found(linked, "mlprov.manifest")["cross_references"] == linked["cross_references"]
    verify_manifest_signature(linked, trust)
    again = link_manifests(linked, target, identity)  # linking twice keeps one reference
    assert len(again["cross_references"]) == 1
