"""Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

A checkpoint note::

    <origin>\\n
    <tree size, decimal>\\n
    <base64 root hash>\\n
    [extension lines]\\n
    \\n
    — <key name> <base64(4-byte key hash || signature)>\\n

Key type: **Ed25519** (signed-note signature type 0x01), the one algorithm every signed-note
verifier (Go's ``sumdb/note``, witnesses, transparency-dev) accepts. Its key hash is
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`` and the keys travel as text:

- verifier key (``vkey``, what clients pin): ``<name>+<8 hex key hash>+<base64(0x01 || public key)>``
- signer key (``skey``, kept secret beside the log): ``PRIVATE+KEY+<name>+<8 hex>+<base64(0x01 || seed)>``

Rekor signs its checkpoints with ECDSA P-256 instead (key hash = ``SHA-256(DER SPKI)[:4]``,
signature = ASN.1 ECDSA over the note text): :class:`EcdsaNoteVerifier` checks those.

Verification follows the spec: signatures by unknown keys are ignored, a signature by a known key
that does not verify rejects the whole note, and a note with no signature by a known key is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from provenance.errors import KeyMaterialError, ProofError
from provenance.tlog.merkle import HASH_SIZE, ConsistencyProof, verify_consistency

__all__ = [
    "Checkpoint",
    "EcdsaNoteVerifier",
    "Ed25519NoteVerifier",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedCheckpoint",
    "open_note",
    "parse_note",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
    "verify_checkpoint_consistency",
]

_ED25519 = 0x01
_EM_DASH = "\u2014"
_MAX_NOTE = 1 << 20
_MAX_SIGNATURES = 100
_NAME_RE = re.compile(r"^[^\s+]+$")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise KeyMaterialError(f"invalid note key name {name!r}: it must be non-empty, without spaces or '+'")


def _ed25519_key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ED25519]) + public_key).digest()[:4]


@runtime_checkable
class NoteVerifier(Protocol):
    """A public key that checks note signatures under one key name."""

    @property
    def name(self) -> str: ...

    @property
    def key_hash(self) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` (without the 4-byte key hash) is valid over ``message``."""
        ...


@dataclass(frozen=True)
class Ed25519NoteVerifier:
    """An Ed25519 signed-note verifier key (what a client pins)."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.public_key) != 32:
            raise KeyMaterialError(f"an Ed25519 public key is 32 bytes, not {len(self.public_key)}")

    @property
    def key_hash(self) -> bytes:
        return _ed25519_key_hash(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """The verifier key string: ``<name>+<hex key hash>+<base64(0x01 || key)>``."""
        encoded = base64.b64encode(bytes([_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, vkey: str) -> Ed25519NoteVerifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise KeyMaterialError("a verifier key has the form <name>+<hex key hash>+<base64 key>")
        name, hash_hex, key_b64 = parts
        try:
            raw = base64.b64decode(key_b64, validate=True)
            expected = bytes.fromhex(hash_hex)
        except (binascii.Error, ValueError):
            raise KeyMaterialError("verifier key: the key hash must be hex and the key base64") from None
        if len(raw) != 33 or raw[0] != _ED25519:
            raise KeyMaterialError("verifier key: only Ed25519 keys (type 0x01, 32 bytes) are supported")
        verifier = cls(name, raw[1:])
        if verifier.key_hash != expected:
            raise KeyMaterialError(f"verifier key for {name}: the key hash {hash_hex} does not match the key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class EcdsaNoteVerifier:
    """An ECDSA (P-256, SHA-256) note verifier as Rekor uses: key hash = SHA-256(DER SPKI)[:4]."""

    name: str
    public_key: ec.EllipticCurvePublicKey

    @classmethod
    def from_pem(cls, name: str, pem: bytes) -> EcdsaNoteVerifier:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise KeyMaterialError(f"cannot load the log's public key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise KeyMaterialError("the log's public key is not an elliptic-curve key")
        return cls(name, key)

    @property
    def key_hash(self) -> bytes:
        der = self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).digest()[:4]

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class NoteSigner:
    """An Ed25519 signed-note signer: the log's own key."""

    def __init__(self, name: str, private_key: ed25519.Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._key = private_key
        self.verifier = Ed25519NoteVerifier(name, private_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise KeyMaterialError("a signer key has the form PRIVATE+KEY+<name>+<hex key hash>+<base64 key>")
        name, hash_hex, key_b64 = parts[2:]
        try:
            raw = base64.b64decode(key_b64, validate=True)
        except binascii.Error:
            raise KeyMaterialError("signer key: the key is not base64") from None
        if len(raw) != 33 or raw[0] != _ED25519:
            raise KeyMaterialError("signer key: only Ed25519 keys (type 0x01, 32-byte seed) are supported")
        signer = cls(name, ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_hash.hex() != hash_hex.lower():
            raise KeyMaterialError(f"signer key for {name}: the key hash {hash_hex} does not match the key")
        return signer

    @property
    def key_hash(self) -> bytes:
        return self.verifier.key_hash

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    @property
    def skey(self) -> str:
        seed = self._key.private_bytes_raw()
        encoded = base64.b64encode(bytes([_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash.hex()}+{encoded}"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_EM_DASH} {self.name} {base64.b64encode(self.key_hash + self.signature).decode()}\n"


@dataclass(frozen=True)
class Note:
    """A note's text (ending in a newline) and its signature lines, verified or not."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_text(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_note(note: str) -> Note:
    """Split a signed note into text and signatures, checking syntax only (``ProofError`` if malformed)."""
    if len(note.encode()) > _MAX_NOTE:
        raise ProofError("signed note is larger than 1 MiB")
    split = note.rfind("\n\n")
    if split < 0:
        raise ProofError("signed note has no blank line between the text and the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block.endswith("\n"):
        raise ProofError("signed note: the signature block must end with a newline")
    signatures = []
    for line in sig_block[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH:
            raise ProofError(f"signed note: malformed signature line {line[:60]!r}")
        name, sig_b64 = parts[1], parts[2]
        try:
            raw = base64.b64decode(sig_b64, validate=True)
        except binascii.Error:
            raise ProofError(f"signed note: the signature by {name} is not base64") from None
        if len(raw) < 5 or not _NAME_RE.match(name):
            raise ProofError(f"signed note: malformed signature by {name!r}")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    if len(signatures) > _MAX_SIGNATURES:
        raise ProofError(f"signed note has more than {_MAX_SIGNATURES} signatures")
    return Note(text, tuple(signatures))


def sign_note(text: str, signer: NoteSigner) -> str:
    """Sign ``text`` (non-empty, ending in a newline, no blank line) and return the signed note."""
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise ProofError("note text must be non-empty lines each ending in a newline, without blank lines")
    sig = NoteSignature(signer.name, signer.key_hash, signer.sign(text.encode()))
    return Note(text, (sig,)).to_text()


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> Note:
    """Parse and verify a signed note; return it with only the signatures that verified.

    Raises ``ProofError`` when a signature by a known key fails (altered text or forged signature)
    or when no signature is by a known key (wrong key or unknown key name).
    """
    parsed = parse_note(note)
    body = parsed.text.encode()
    good: list[NoteSignature] = []
    for sig in parsed.signatures:
        for v in verifiers:
            if v.name == sig.name and v.key_hash == sig.key_hash:
                if not v.verify(body, sig.signature):
                    raise ProofError(f"the signature by {sig.name} does not verify: the note text was altered")
                good.append(sig)
                break
    if good:
        return Note(parsed.text, tuple(good))
    names = {v.name for v in verifiers}
    same_name = [s for s in parsed.signatures if s.name in names]
    if same_name:
        raise ProofError(
            f"the note is signed as {same_name[0].name} with key hash {same_name[0].key_hash.hex()}, "
            "which is not the pinned key (wrong key)"
        )
    signers = ", ".join(sorted({s.name for s in parsed.signatures})) or "none"
    raise ProofError(f"the note has no signature by a known key name (signed by: {signers})")


@dataclass(frozen=True)
class Checkpoint:
    """The body of a checkpoint: origin, tree size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise ProofError("checkpoint body must have an origin, a size and a root hash line")
        origin, size_text, root_b64, *extensions = lines[:-1]
        if not origin:
            raise ProofError("checkpoint has an empty origin line")
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            raise ProofError(f"checkpoint tree size {size_text[:30]!r} is not a decimal number")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except binascii.Error:
            raise ProofError("checkpoint root hash is not base64") from None
        if len(root) != HASH_SIZE:
            raise ProofError(f"checkpoint root hash is {len(root)} bytes, expected {HASH_SIZE}")
        if any(not e for e in extensions):
            raise ProofError("checkpoint extension lines must not be empty")
        return cls(origin, int(size_text), root, tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint and the signed note that carries it."""

    checkpoint: Checkpoint
    note: str
    """The whole signed note text, as served to clients."""

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        return self.checkpoint.root_hash

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "treeSize": self.size, "rootHash": self.root_hash.hex(), "note": self.note}


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> SignedCheckpoint:
    return SignedCheckpoint(checkpoint, sign_note(checkpoint.body(), signer))


def _verifiers(keys: str | NoteVerifier | Sequence[NoteVerifier]) -> list[NoteVerifier]:
    if isinstance(keys, str):
        return [Ed25519NoteVerifier.from_vkey(keys)]
    if isinstance(keys, NoteVerifier):
        return [keys]
    return list(keys)


def verify_checkpoint(
    note: str, keys: str | NoteVerifier | Sequence[NoteVerifier], *, origin: str | None = None
) -> SignedCheckpoint:
    """Verify a checkpoint note against a pinned ``vkey`` string or verifier(s); return it parsed.

    ``origin`` (when given) must equal the checkpoint's origin line: a checkpoint of another log fails.
    """
    opened = open_note(note, _verifiers(keys))
    checkpoint = Checkpoint.from_body(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise ProofError(f"checkpoint is for origin {checkpoint.origin!r}, expected {origin!r}")
    return SignedCheckpoint(checkpoint, note)


def verify_checkpoint_consistency(old: SignedCheckpoint, new: SignedCheckpoint, proof: ConsistencyProof) -> None:
    """Check that ``new`` extends ``old`` (the log did not rewrite history); raise ``ProofError`` if not.

    Both checkpoints must already be signature-verified (:func:`verify_checkpoint`).
    """
    if old.origin != new.origin:
        raise ProofError(f"checkpoints are from different logs: {old.origin!r} and {new.origin!r}")
    if old.size > new.size:
        raise ProofError(f"the log shrank from {old.size} to {new.size} entries: history was rewritten")
    if (proof.old_size, proof.new_size) != (old.size, new.size):
        raise ProofError(
            f"the consistency proof is from {proof.old_size} to {proof.new_size}, "
            f"not between the checkpoints' sizes {old.size} and {new.size}"
        )
    verify_consistency(old.root_hash, new.root_hash, proof)
