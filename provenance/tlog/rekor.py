"""A Rekor (v1 API) client: submit DSSE / hashedrekord entries, fetch them, verify their proofs.

Wire format (sigstore/rekor ``openapi.yaml``, as sigstore-python speaks it):

- ``POST /api/v1/log/entries`` with a proposed entry, e.g.
  ``{"kind": "dsse", "apiVersion": "0.0.1", "spec": {"proposedContent": {"envelope": "<DSSE JSON as a
  string>", "verifiers": ["<base64 PEM>"]}}}``; 201 answers ``{uuid: LogEntry}``, 409 means the entry
  exists (its URL is in ``Location``).
- ``GET /api/v1/log/entries/{uuid}``, ``GET /api/v1/log/entries?logIndex=N``: ``{uuid: LogEntry}``.
- ``LogEntry = {body: base64(canonical entry JSON), integratedTime, logID: hex, logIndex,
  verification: {inclusionProof: {hashes: [hex], logIndex, rootHash: hex, treeSize, checkpoint},
  signedEntryTimestamp: base64}}``.
- ``GET /api/v1/log`` (tree head), ``GET /api/v1/log/proof?firstSize=&lastSize=`` (consistency).

Every entry returned is verified before it is handed back: the UUID ends with the RFC 6962 leaf hash
of the body, the inclusion proof (shard-local ``inclusionProof.logIndex``) leads to ``rootHash``, and
the checkpoint commits to the same root and size. With the log's public key (``public_key_pem``) the
checkpoint's ECDSA signature, the ``logID`` and the signed entry timestamp are checked too.
Errors are ``TransparencyLogError`` (transport, HTTP, malformed answers) or ``ProofError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provenance.errors import ProofError, TransparencyLogError
from provenance.tlog.checkpoint import Checkpoint, EcdsaNoteVerifier, SignedCheckpoint, parse_note, verify_checkpoint
from provenance.tlog.merkle import ConsistencyProof, InclusionProof, leaf_hash, verify_inclusion

__all__ = [
    "RekorClient",
    "RekorEntry",
    "RekorLogInfo",
    "dsse_proposed_entry",
    "hashedrekord_proposed_entry",
]

_API = "/api/v1"


def dsse_proposed_entry(envelope: str | Mapping[str, Any], verifiers: Sequence[bytes]) -> dict[str, Any]:
    """The body Rekor expects to log a DSSE envelope (kind ``dsse`` 0.0.1).

    ``envelope`` is the DSSE envelope JSON (sent as a string, as Rekor requires); ``verifiers`` are the
    PEM public keys or certificates that verify its signatures.
    """
    if not verifiers:
        raise TransparencyLogError("a Rekor DSSE entry needs at least one verifier (PEM key or certificate)")
    text = envelope if isinstance(envelope, str) else json.dumps(envelope, separators=(",", ":"))
    return {
        "kind": "dsse",
        "apiVersion": "0.0.1",
        "spec": {
            "proposedContent": {
                "envelope": text,
                "verifiers": [base64.b64encode(v).decode() for v in verifiers],
            }
        },
    }


def hashedrekord_proposed_entry(sha256_digest: bytes, signature: bytes, public_key_pem: bytes) -> dict[str, Any]:
    """The body Rekor expects for a signature over a SHA-256 digest (kind ``hashedrekord`` 0.0.1)."""
    if len(sha256_digest) != 32:
        raise TransparencyLogError(f"hashedrekord needs a 32-byte SHA-256 digest, got {len(sha256_digest)} bytes")
    return {
        "kind": "hashedrekord",
        "apiVersion": "0.0.1",
        "spec": {
            "signature": {
                "content": base64.b64encode(signature).decode(),
                "publicKey": {"content": base64.b64encode(public_key_pem).decode()},
            },
            "data": {"hash": {"algorithm": "sha256", "value": sha256_digest.hex()}},
        },
    }


@dataclass(frozen=True)
class RekorEntry:
    """An integrated Rekor entry, as returned by the API (already verified by the client)."""

    uuid: str
    body: bytes
    """The canonicalized entry, decoded from base64: its RFC 6962 leaf hash is what the log holds."""
    integrated_time: int
    log_id: str
    log_index: int
    inclusion_proof: InclusionProof
    root_hash: bytes
    checkpoint: str
    signed_entry_timestamp: bytes

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.body)

    def body_json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        if not isinstance(value, dict):
            raise TransparencyLogError("the Rekor entry body is not a JSON object")
        return value

    def set_payload(self) -> bytes:
        """The bytes the signed entry timestamp covers: RFC 8785 JSON of body, integratedTime, logID, logIndex."""
        payload = {
            "body": base64.b64encode(self.body).decode(),
            "integratedTime": self.integrated_time,
            "logID": self.log_id,
            "logIndex": self.log_index,
        }
        # Keys sorted, no whitespace; values are ASCII strings and integers, so this is the JCS form.
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RekorLogInfo:
    root_hash: bytes
    tree_size: int
    signed_tree_head: str
    tree_id: str


def _parse_entry(answer: Any) -> RekorEntry:
    if not isinstance(answer, dict) or len(answer) != 1:
        raise TransparencyLogError("Rekor answered with something other than exactly one entry")
    ((uuid, raw),) = answer.items()
    try:
        proof = raw["verification"]["inclusionProof"]
        return RekorEntry(
            uuid=str(uuid),
            body=base64.b64decode(raw["body"], validate=True),
            integrated_time=int(raw["integratedTime"]),
            log_id=str(raw["logID"]),
            log_index=int(raw["logIndex"]),
            inclusion_proof=InclusionProof(
                int(proof["logIndex"]), int(proof["treeSize"]), tuple(bytes.fromhex(h) for h in proof["hashes"])
            ),
            root_hash=bytes.fromhex(proof["rootHash"]),
            checkpoint=str(proof["checkpoint"]),
            signed_entry_timestamp=base64.b64decode(raw["verification"]["signedEntryTimestamp"], validate=True),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise TransparencyLogError(f"Rekor returned a malformed entry: {type(exc).__name__} {exc}") from None


class RekorClient:
    """A client of one Rekor instance; every call has a timeout and every entry is verified."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        public_key_pem: bytes | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._key: ec.EllipticCurvePublicKey | None = None
        if public_key_pem is not None:
            self._key = EcdsaNoteVerifier.from_pem("rekor", public_key_pem).public_key
        self._http = httpx.Client(
            base_url=self.url + _API,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "mlprov-tlog"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RekorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise TransparencyLogError(
                f"Rekor at {self.url} did not answer {method} {path} within {self.timeout}s"
            ) from None
        except httpx.HTTPError as exc:
            raise TransparencyLogError(f"cannot reach Rekor at {self.url}: {type(exc).__name__} {exc}") from None
        return response

    def _json(self, response: httpx.Response, what: str) -> Any:
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message", ""))
            except (ValueError, AttributeError):
                message = response.text[:200]
            detail = " ".join(message.split())[:200]
            raise TransparencyLogError(f"Rekor refused {what}: HTTP {response.status_code} {detail}".rstrip())
        try:
            return response.json()
        except ValueError:
            raise TransparencyLogError(f"Rekor answered {what} with something that is not JSON") from None

    # ------------------------------------------------------------------ API

    def submit(self, proposed_entry: Mapping[str, Any]) -> RekorEntry:
        """POST a proposed entry; return the integrated (or already existing) entry, verified."""
        response = self._request("POST", "/log/entries", json=dict(proposed_entry))
        if response.status_code == 409 and response.headers.get("Location"):
            uuid = urlsplit(response.headers["Location"]).path.rstrip("/").rsplit("/", 1)[-1]
            return self.get_by_uuid(uuid)
        entry = _parse_entry(self._json(response, "the new entry"))
        self.verify_entry(entry)
        return entry

    def get_by_uuid(self, uuid: str) -> RekorEntry:
        if not uuid or not all(c in "0123456789abcdefABCDEF" for c in uuid):
            raise TransparencyLogError(f"a Rekor entry UUID is hex, got {uuid[:80]!r}")
        entry = _parse_entry(self._json(self._request("GET", f"/log/entries/{uuid}"), f"entry {uuid}"))
        if entry.uuid.lower()[-64:] != uuid.lower()[-64:]:
            raise ProofError(f"Rekor answered entry {entry.uuid} when asked for {uuid}")
        self.verify_entry(entry)
        return entry

    def get_by_index(self, log_index: int) -> RekorEntry:
        answer = self._json(
            self._request("GET", "/log/entries", params={"logIndex": log_index}), f"entry index {log_index}"
        )
        entry = _parse_entry(answer)
        if entry.log_index != log_index:
            raise ProofError(f"Rekor answered log index {entry.log_index} when asked for {log_index}")
        self.verify_entry(entry)
        return entry

    def log_info(self) -> RekorLogInfo:
        raw = self._json(self._request("GET", "/log"), "the log info")
        try:
            info = RekorLogInfo(
                bytes.fromhex(raw["rootHash"]), int(raw["treeSize"]), str(raw["signedTreeHead"]), str(raw["treeID"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TransparencyLogError(f"Rekor returned malformed log info: {type(exc).__name__} {exc}") from None
        checkpoint = self.verify_checkpoint_note(info.signed_tree_head)
        if (checkpoint.size, checkpoint.root_hash) != (info.tree_size, info.root_hash):
            raise ProofError("Rekor's signed tree head does not match the tree size and root it reports")
        return info

    def consistency_proof(self, first_size: int, last_size: int, tree_id: str | None = None) -> ConsistencyProof:
        params: dict[str, Any] = {"firstSize": first_size, "lastSize": last_size}
        if tree_id:
            params["treeID"] = tree_id
        raw = self._json(self._request("GET", "/log/proof", params=params), "a consistency proof")
        try:
            return ConsistencyProof(first_size, last_size, tuple(bytes.fromhex(h) for h in raw.get("hashes") or []))
        except (AttributeError, TypeError, ValueError) as exc:
            raise TransparencyLogError(f"Rekor returned a malformed consistency proof: {exc}") from None

    # ------------------------------------------------------------------ verification

    def verify_checkpoint_note(self, note: str) -> SignedCheckpoint:
        """Parse a Rekor checkpoint; with the log's key, verify its signature too."""
        parsed = parse_note(note)
        checkpoint = Checkpoint.from_body(parsed.text)
        if self._key is None:
            return SignedCheckpoint(checkpoint, note)
        name = checkpoint.origin.split(" ", 1)[0]
        return verify_checkpoint(note, EcdsaNoteVerifier(name, self._key))

    def verify_entry(self, entry: RekorEntry) -> None:
        """Check the entry's UUID, inclusion proof and checkpoint (and signatures when the key is known)."""
        leaf = entry.leaf_hash
        if entry.uuid.lower()[-64:] != leaf.hex():
            raise ProofError(f"Rekor entry {entry.uuid[:24]}…: the UUID is not the leaf hash of its body")
        verify_inclusion(leaf, entry.inclusion_proof, entry.root_hash)
        checkpoint = self.verify_checkpoint_note(entry.checkpoint)
        if checkpoint.size != entry.inclusion_proof.tree_size or checkpoint.root_hash != entry.root_hash:
            raise ProofError(
                f"Rekor entry {entry.log_index}: the checkpoint (size {checkpoint.size}) does not commit to the "
                f"proof's root at tree size {entry.inclusion_proof.tree_size}"
            )
        if self._key is None:
            return
        der = self._key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if entry.log_id.lower() != hashlib.sha256(der).hexdigest():
            raise ProofError(f"Rekor entry {entry.log_index} names log ID {entry.log_id[:16]}…, not the pinned log")
        try:
            self._key.verify(entry.signed_entry_timestamp, entry.set_payload(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ProofError(f"Rekor entry {entry.log_index}: the signed entry timestamp does not verify") from None
