"""provenance.c2pa_sidecar: real C2PA sidecar manifests, validated by c2pa-python's Reader."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from provenance.c2pa_sidecar import C2paReport, directory_listing, sign_sidecar, verify_sidecar
from provenance.errors import (
    DigestMismatchError,
    InvalidInputError,
    KeyMaterialError,
    SignatureError,
    UntrustedSignerError,
)
from provenance.hashing import DirectoryDigest, hash_directory
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity

ASSERTION = {"label": "org.mlprov.artifact", "data": {"kind": "model", "digest": "sha256:" + "0" * 64}}


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningIdentity, bytes]:
    home = tmp_path_factory.mktemp("c2pa-home")
    init_identity(home)
    return load_identity(home), TrustStore.load(home / "trust").anchors_pem


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    home = tmp_path_factory.mktemp("c2pa-other")
    init_identity(home, organisation="someone else")
    return TrustStore.load(home / "trust").anchors_pem


@pytest.fixture
def asset(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(100_000))
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "shards").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "shards" / "00.bin").write_bytes(os.urandom(5000))
    (root / "shards" / "01.bin").write_bytes(os.urandom(5000))
    return root


def _sign(path: Path, identity: tuple[SigningIdentity, bytes], **kwargs: object) -> bytes:
    ident, _ = identity
    return sign_sidecar(
        path,
        private_key_pem=ident.private_key_pem,
        chain_pem=ident.chain_pem,
        title=str(kwargs.pop("title", path.name)),
        **kwargs,  # type: ignore[arg-type]
    )


def _flip(path: Path, offset: int = 0) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_file_sidecar_is_trusted(asset: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    manifest_id = f"urn:c2pa:{uuid.uuid4()}"
    sidecar = _sign(asset, identity, title="weights", assertions=[ASSERTION], manifest_id=manifest_id)
    report = verify_sidecar(asset, sidecar, identity[1])
    assert isinstance(report, C2paReport)
    assert report.validation_state == "Trusted"
    assert report.active_manifest == manifest_id
    assert report.title == "weights"
    assert "org.mlprov.artifact" in report.assertions
    assert "c2pa.actions.v2" in report.assertions
    assert "assertion.dataHash.match" in report.codes
    assert "signer" in report.signer


def test_tampered_file_fails(asset: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    sidecar = _sign(asset, identity)
    _flip(asset, 4242)
    with pytest.raises(DigestMismatchError, match=r"dataHash\.mismatch"):
        verify_sidecar(asset, sidecar, identity[1])


def test_other_ca_as_anchor_fails(asset: Path, identity: tuple[SigningIdentity, bytes], other_ca: bytes) -> None:
    sidecar = _sign(asset, identity)
    with pytest.raises(UntrustedSignerError):
        verify_sidecar(asset, sidecar, other_ca)
    # and no trust configuration leaked from that call into the next one, either way
    assert verify_sidecar(asset, sidecar, identity[1]).validation_state == "Trusted"
    with pytest.raises(UntrustedSignerError):
        verify_sidecar(asset, sidecar, other_ca)


def test_altered_signature_bytes_fail(asset: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    sidecar = bytearray(_sign(asset, identity))
    sidecar[-20] ^= 0x01  # inside the COSE signature at the end of the store
    with pytest.raises(SignatureError):
        verify_sidecar(asset, bytes(sidecar), identity[1])


@pytest.mark.parametrize(
    ("marker", "skip"),
    [
        (b"c2pa.claim.v2", 40),  # inside the signed claim
        (b"0000000000", 2),  # inside our assertion's data (its digest string)
        (b"c2pa.signature", 60),  # inside the protected header: the certificate chain
    ],
)
def test_altered_signed_bytes_fail(
    asset: Path, identity: tuple[SigningIdentity, bytes], marker: bytes, skip: int
) -> None:
    """Every signed byte counts. (C2PA leaves the COSE ``pad`` and JUMBF framing unsigned by design.)"""
    sidecar = bytearray(_sign(asset, identity, assertions=[ASSERTION]))
    at = sidecar.index(marker) + skip
    sidecar[at] ^= 0x01
    with pytest.raises(SignatureError):
        verify_sidecar(asset, bytes(sidecar), identity[1])


@pytest.mark.parametrize("garbage", [b"", b"not a manifest store"])
def test_garbage_sidecar_fails(asset: Path, identity: tuple[SigningIdentity, bytes], garbage: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_sidecar(asset, garbage, identity[1])


def test_directory_sidecar_is_trusted_and_bound_to_every_file(
    model_dir: Path, identity: tuple[SigningIdentity, bytes]
) -> None:
    sidecar = _sign(model_dir, identity, assertions=[ASSERTION])
    assert verify_sidecar(model_dir, sidecar, identity[1]).validation_state == "Trusted"
    _flip(model_dir / "shards" / "01.bin", 17)
    with pytest.raises(DigestMismatchError):
        verify_sidecar(model_dir, sidecar, identity[1])


def test_directory_with_an_added_file_fails(model_dir: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    sidecar = _sign(model_dir, identity)
    (model_dir / "shards" / "02.bin").write_bytes(b"new")
    with pytest.raises(DigestMismatchError):
        verify_sidecar(model_dir, sidecar, identity[1])


def test_directory_sidecar_validates_against_its_listing_file(
    model_dir: Path, identity: tuple[SigningIdentity, bytes], tmp_path: Path
) -> None:
    """What a third-party validator does: check the sidecar against the listing bytes."""
    sidecar = _sign(model_dir, identity)
    listing = tmp_path / "model.sha256"
    listing.write_bytes(directory_listing(hash_directory(model_dir)))
    assert verify_sidecar(listing, sidecar, identity[1]).validation_state == "Trusted"


def test_listing_is_sha256sum_format() -> None:
    digest = DirectoryDigest(root="r", files={"a/b": "1" * 64, "a.txt": "2" * 64})
    assert directory_listing(digest) == f"{'1' * 64}  a/b\n{'2' * 64}  a.txt\n".encode()
    with pytest.raises(InvalidInputError):
        directory_listing(DirectoryDigest(root="r", files={"bad\nname": "1" * 64}))


def test_listing_lines_are_the_files_digests(model_dir: Path) -> None:
    lines = directory_listing(hash_directory(model_dir)).decode().splitlines()
    for line in lines:
        hex_digest, rel = line.split("  ", 1)
        assert hashlib.sha256((model_dir / rel).read_bytes()).hexdigest() == hex_digest
    assert len(lines) == 3


@pytest.mark.parametrize("bad_id", ["urn:c2pa:not-a-uuid", "urn:c2pa:12345678-1234-1234-1234-123456789abc", "x"])
def test_bad_manifest_id_is_refused(asset: Path, identity: tuple[SigningIdentity, bytes], bad_id: str) -> None:
    with pytest.raises(InvalidInputError):
        _sign(asset, identity, manifest_id=bad_id)


def test_a_self_signed_or_missing_chain_is_refused(asset: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    with pytest.raises(KeyMaterialError):
        sign_sidecar(asset, private_key_pem=identity[0].private_key_pem, chain_pem=b"", title="x")
    with pytest.raises(KeyMaterialError):
        sign_sidecar(asset, private_key_pem=b"not a key", chain_pem=identity[0].chain_pem, title="x")


def test_missing_asset(tmp_path: Path, identity: tuple[SigningIdentity, bytes]) -> None:
    with pytest.raises(InvalidInputError, match=r"gone\.bin"):
        _sign(tmp_path / "gone.bin", identity)
    with pytest.raises(InvalidInputError, match="trust anchor"):
        verify_sidecar(tmp_path / "gone.bin", b"x", b"")
