"""The Rekor client against a small in-test Rekor that answers in Rekor's v1 wire format.

The fake keeps its own RFC 6962 tree (provenance.tlog.merkle.MerkleTree) and signs checkpoints and
signed entry timestamps with an ECDSA P-256 key, as Rekor does; the proposed-entry bodies are checked
against sigstore-rekor-types' models (the schema sigstore-python submits with).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import rekor_types
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provenance.errors import ProofError, TransparencyLogError
from provenance.tlog.checkpoint import Checkpoint, NoteSignature
from provenance.tlog.merkle import MerkleTree, verify_consistency
from provenance.tlog.rekor import RekorClient, dsse_proposed_entry, hashedrekord_proposed_entry

SHARD_OFFSET = 5000  # Rekor's global logIndex = entries of inactive shards + the shard-local index


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class FakeRekor:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = hashlib.sha256(_der(self.key)).hexdigest()
        self.tree_id = 1193050959916656506
        self.tree = MerkleTree()
        self.bodies: list[bytes] = []
        self.tamper: str | None = None
        self.delay = 0.0

    def _sign(self, data: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        return (key or self.key).sign(data, ec.ECDSA(hashes.SHA256()))

    def checkpoint(self, size: int) -> str:
        text = Checkpoint(f"rekor.local - {self.tree_id}", size, self.tree.root(size)).body()
        key = ec.generate_private_key(ec.SECP256R1()) if self.tamper == "checkpoint-key" else self.key
        key_hash = hashlib.sha256(_der(self.key)).digest()[:4]
        return text + "\n" + NoteSignature("rekor.local", key_hash, self._sign(text.encode(), key)).line()

    def uuid(self, body: bytes) -> str:
        return f"{self.tree_id:016x}" + hashlib.sha256(b"\x00" + body).hexdigest()

    def entry(self, index: int) -> dict[str, Any]:
        size = len(self.tree)
        body = self.bodies[index]
        proof = self.tree.inclusion_proof(index, size)
        hashes_hex = [h.hex() for h in proof.hashes]
        root = self.tree.root(size).hex()
        cp_size = size
        if self.tamper == "proof" and hashes_hex:
            hashes_hex[0] = "00" * 32
        if self.tamper == "root":
            root = "11" * 32
        if self.tamper == "checkpoint-size":
            cp_size = size - 1
        raw = {
            "body": base64.b64encode(body + (b" " if self.tamper == "body" else b"")).decode(),
            "integratedTime": 1_700_000_000 + index,
            "logID": self.log_id,
            "logIndex": SHARD_OFFSET + index,
        }
        set_payload = _canonical(raw) if self.tamper != "set" else _canonical({**raw, "integratedTime": 1})
        raw["verification"] = {
            "inclusionProof": {
                "checkpoint": self.checkpoint(cp_size),
                "hashes": hashes_hex,
                "logIndex": index,
                "rootHash": root,
                "treeSize": size,
            },
            "signedEntryTimestamp": base64.b64encode(self._sign(set_payload)).decode(),
        }
        return {self.uuid(body): raw}

    @staticmethod
    def canonicalize(proposed: dict[str, Any]) -> bytes:
        if proposed.get("kind") == "dsse" and proposed.get("apiVersion") == "0.0.1":
            content = proposed["spec"]["proposedContent"]
            envelope = json.loads(content["envelope"])
            verifiers = content["verifiers"]
            assert isinstance(content["envelope"], str)
            assert verifiers
            envelope_hash = hashlib.sha256(content["envelope"].encode()).hexdigest()
            payload_hash = hashlib.sha256(base64.b64decode(envelope["payload"])).hexdigest()
            spec = {
                "envelopeHash": {"algorithm": "sha256", "value": envelope_hash},
                "payloadHash": {"algorithm": "sha256", "value": payload_hash},
                "signatures": [{"signature": s["sig"], "verifier": verifiers[0]} for s in envelope["signatures"]],
            }
            return _canonical({"apiVersion": "0.0.1", "kind": "dsse", "spec": spec})
        if proposed.get("kind") == "hashedrekord":
            return _canonical(proposed)
        raise ValueError("unsupported kind")

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            time.sleep(self.delay)
        path = request.url.path
        if request.method == "POST" and path == "/api/v1/log/entries":
            try:
                body = self.canonicalize(json.loads(request.content))
            except (ValueError, KeyError, TypeError, AssertionError):
                return httpx.Response(400, json={"code": 400, "message": "unsupported or malformed\nentry"})
            if body in self.bodies:
                location = f"/api/v1/log/entries/{self.uuid(body)}"
                return httpx.Response(409, json={"code": 409, "message": "exists"}, headers={"Location": location})
            self.bodies.append(body)
            self.tree.append(body)
            return httpx.Response(201, json=self.entry(len(self.bodies) - 1))
        if request.method == "GET" and path.startswith("/api/v1/log/entries/"):
            wanted = path.rsplit("/", 1)[-1][-64:]
            for i, body in enumerate(self.bodies):
                if self.uuid(body).endswith(wanted):
                    return httpx.Response(200, json=self.entry(i))
            return httpx.Response(404, json={"code": 404, "message": "not found"})
        if request.method == "GET" and path == "/api/v1/log/entries":
            index = int(request.url.params["logIndex"]) - SHARD_OFFSET
            if not 0 <= index < len(self.bodies):
                return httpx.Response(404, json={"code": 404, "message": "not found"})
            return httpx.Response(200, json=self.entry(index))
        if request.method == "GET" and path == "/api/v1/log":
            size = len(self.tree)
            info = {"rootHash": self.tree.root(size).hex(), "treeSize": size}
            info |= {"signedTreeHead": self.checkpoint(size), "treeID": str(self.tree_id)}
            return httpx.Response(200, json=info)
        if request.method == "GET" and path == "/api/v1/log/proof":
            first, last = int(request.url.params["firstSize"]), int(request.url.params["lastSize"])
            proof = self.tree.consistency_proof(first, last)
            return httpx.Response(
                200, json={"rootHash": self.tree.root(last).hex(), "hashes": [h.hex() for h in proof.hashes]}
            )
        return httpx.Response(404, json={"code": 404, "message": "no route"})


@pytest.fixture
def fake() -> FakeRekor:
    return FakeRekor()


@pytest.fixture
def client(fake: FakeRekor) -> Iterator[RekorClient]:
    with RekorClient(
        "https://rekor.test", public_key_pem=_pem(fake.key), transport=httpx.MockTransport(fake.handle)
    ) as c:
        yield c


SIGNER = ec.generate_private_key(ec.SECP256R1())


def _envelope(payload: bytes) -> str:
    payload_type = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)
    sig = SIGNER.sign(pae, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
                       "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}]})  # fmt: skip


def test_proposed_dsse_entry_is_what_sigstore_submits() -> None:
    envelope = _envelope(b'{"_type": "https://in-toto.io/Statement/v1"}')
    ours = dsse_proposed_entry(envelope, [_pem(SIGNER)])
    theirs = rekor_types.Dsse(
        spec=rekor_types.dsse.DsseSchema(
            proposed_content=rekor_types.dsse.ProposedContent(  # pydantic accepts the field name
                envelope=envelope, verifiers=[base64.b64encode(_pem(SIGNER)).decode()]
            )
        )
    ).model_dump(mode="json", by_alias=True, exclude_none=True)  # sigstore also sends the unset fields as null
    assert ours == theirs
    with pytest.raises(TransparencyLogError, match="verifier"):
        dsse_proposed_entry(envelope, [])


def test_proposed_hashedrekord_entry_is_what_sigstore_submits() -> None:
    digest = hashlib.sha256(b"artifact").digest()
    sig = SIGNER.sign(b"artifact", ec.ECDSA(hashes.SHA256()))
    ours = hashedrekord_proposed_entry(digest, sig, _pem(SIGNER))
    hr = rekor_types.hashedrekord
    theirs = rekor_types.Hashedrekord(
        spec=hr.HashedrekordV001Schema(
            signature=hr.Signature(
                content=base64.b64encode(sig).decode(),
                public_key=hr.PublicKey(content=base64.b64encode(_pem(SIGNER)).decode()),
            ),
            data=hr.Data(hash=hr.Hash(algorithm=hr.Algorithm.SHA256, value=digest.hex())),
        )
    ).model_dump(mode="json", by_alias=True)
    assert ours == theirs


def test_submit_get_by_uuid_and_by_index(client: RekorClient, fake: FakeRekor) -> None:
    entries = [client.submit(dsse_proposed_entry(_envelope(b"payload-%d" % i), [_pem(SIGNER)])) for i in range(7)]
    last = entries[-1]
    assert last.log_index == SHARD_OFFSET + 6
    assert last.inclusion_proof.leaf_index == 6
    assert last.inclusion_proof.tree_size == 7
    assert last.body_json()["spec"]["payloadHash"]["value"] == hashlib.sha256(b"payload-6").hexdigest()
    again = client.get_by_uuid(entries[2].uuid)
    assert again.body == entries[2].body
    assert again.inclusion_proof.tree_size == 7
    assert client.get_by_index(SHARD_OFFSET + 3).uuid == entries[3].uuid
    assert client.get_by_uuid(entries[3].uuid[-64:]).uuid == entries[3].uuid  # the short UUID works too


def test_a_duplicate_submission_returns_the_existing_entry(client: RekorClient) -> None:
    proposed = dsse_proposed_entry(_envelope(b"same"), [_pem(SIGNER)])
    first = client.submit(proposed)
    client.submit(dsse_proposed_entry(_envelope(b"other"), [_pem(SIGNER)]))
    again = client.submit(proposed)
    assert again.uuid == first.uuid
    assert again.log_index == first.log_index


def test_log_info_and_consistency(client: RekorClient) -> None:
    for i in range(3):
        client.submit(dsse_proposed_entry(_envelope(b"%d" % i), [_pem(SIGNER)]))
    old = client.log_info()
    for i in range(3, 11):
        client.submit(dsse_proposed_entry(_envelope(b"%d" % i), [_pem(SIGNER)]))
    new = client.log_info()
    proof = client.consistency_proof(old.tree_size, new.tree_size, tree_id=new.tree_id)
    verify_consistency(old.root_hash, new.root_hash, proof)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("proof", "not the expected root"),
        ("root", "not the expected root"),
        ("body", "UUID is not the leaf hash"),
        ("checkpoint-size", "does not commit"),
        ("checkpoint-key", "does not verify"),
        ("set", "signed entry timestamp"),
    ],
)
def test_a_dishonest_answer_fails_naming_why(client: RekorClient, fake: FakeRekor, tamper: str, reason: str) -> None:
    for i in range(5):
        client.submit(dsse_proposed_entry(_envelope(b"%d" % i), [_pem(SIGNER)]))
    fake.tamper = tamper
    with pytest.raises(ProofError, match=reason):
        client.get_by_index(SHARD_OFFSET + 2)


def test_without_the_log_key_the_proofs_are_still_checked(fake: FakeRekor) -> None:
    with RekorClient("https://rekor.test", transport=httpx.MockTransport(fake.handle)) as client:
        client.submit(dsse_proposed_entry(_envelope(b"a"), [_pem(SIGNER)]))
        client.submit(dsse_proposed_entry(_envelope(b"b"), [_pem(SIGNER)]))
        fake.tamper = "set"  # not checkable without the key
        client.get_by_index(SHARD_OFFSET + 1)
        fake.tamper = "proof"
        with pytest.raises(ProofError):
            client.get_by_index(SHARD_OFFSET)


def test_http_errors_become_one_line_transparency_log_errors(client: RekorClient) -> None:
    with pytest.raises(
        TransparencyLogError, match=r"^Rekor refused the new entry: HTTP 400 unsupported or malformed entry$"
    ):
        client.submit({"kind": "rekord", "apiVersion": "0.0.1", "spec": {}})
    with pytest.raises(TransparencyLogError, match="HTTP 404"):
        client.get_by_uuid("ab" * 32)
    with pytest.raises(TransparencyLogError, match="hex"):
        client.get_by_uuid("../admin")


def test_malformed_answers_are_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/log"):
            return httpx.Response(200, text="<html>")
        return httpx.Response(200, json={"u": {"body": "!!", "logIndex": 1}})

    with RekorClient("https://rekor.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TransparencyLogError, match="malformed entry"):
            client.get_by_index(1)
        with pytest.raises(TransparencyLogError, match="not JSON"):
            client.log_info()


@pytest.fixture
def served(fake: FakeRekor) -> Iterator[str]:
    """The fake behind a real HTTP server on 127.0.0.1 (a free port), for the socket paths."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(self.command, f"http://x{self.path}", content=self.rfile.read(length))
            response = fake.handle(request)
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_over_a_real_socket(served: str, fake: FakeRekor) -> None:
    with RekorClient(served, timeout=5, public_key_pem=_pem(fake.key)) as client:
        entry = client.submit(dsse_proposed_entry(_envelope(b"socket"), [_pem(SIGNER)]))
        assert client.get_by_uuid(entry.uuid).body == entry.body
        fake.delay = 0.5
        client.timeout = 0.1
        client._http.timeout = httpx.Timeout(0.1)
        with pytest.raises(TransparencyLogError, match=r"did not answer GET .* within 0\.1s"):
            client.get_by_uuid(entry.uuid)
        fake.delay = 0


def test_an_unreachable_rekor_is_a_transparency_log_error() -> None:
    with (
        RekorClient("http://127.0.0.1:9", timeout=2) as client,
        pytest.raises(TransparencyLogError, match="cannot reach"),
    ):
        client.log_info()
