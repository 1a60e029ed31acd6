"""C2SP signed notes and checkpoints: known answer, round trip, and every tamper rejected."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provenance.errors import KeyMaterialError, ProofError
from provenance.tlog.checkpoint import (
    Checkpoint,
    EcdsaNoteVerifier,
    Ed25519NoteVerifier,
    NoteSignature,
    NoteSigner,
    open_note,
    parse_note,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from provenance.tlog.merkle import MerkleTree

# The example key and note of Go's golang.org/x/mod/sumdb/note documentation (Ed25519 is deterministic).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="


def test_known_answer_from_go_sumdb_note() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.vkey == GO_VKEY
    assert signer.skey == GO_SKEY
    note = sign_note(GO_TEXT, signer)
    assert note == f"{GO_TEXT}\n\u2014 PeterNeumann {GO_SIG}\n"
    opened = open_note(note, [Ed25519NoteVerifier.from_vkey(GO_VKEY)])
    assert opened.text == GO_TEXT


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate("example.com/log")


@pytest.fixture
def checkpoint_note(signer: NoteSigner) -> str:
    tree = MerkleTree()
    for i in range(5):
        tree.append(bytes([i]))
    return sign_checkpoint(Checkpoint("example.com/log", 5, tree.root()), signer).note


def test_checkpoint_round_trip(signer: NoteSigner, checkpoint_note: str) -> None:
    lines = checkpoint_note.split("\n")
    assert lines[0] == "example.com/log"
    assert lines[1] == "5"
    assert len(base64.b64decode(lines[2])) == 32
    assert lines[3] == ""
    assert lines[4].startswith("\u2014 example.com/log ")
    assert checkpoint_note.endswith("\n")
    parsed = verify_checkpoint(checkpoint_note, signer.vkey, origin="example.com/log")
    assert (parsed.origin, parsed.size) == ("example.com/log", 5)
    assert parsed.note == checkpoint_note
    assert Checkpoint.from_body(parse_note(checkpoint_note).text) == parsed.checkpoint
    assert parsed.to_dict()["rootHash"] == parsed.root_hash.hex()


def test_extension_lines_survive(signer: NoteSigner) -> None:
    cp = Checkpoint("example.com/log", 0, bytes(32), ("Timestamp: 1", "other"))
    assert verify_checkpoint(sign_checkpoint(cp, signer).note, signer.vkey).checkpoint == cp


def test_altered_body_is_rejected(signer: NoteSigner, checkpoint_note: str) -> None:
    tampered = checkpoint_note.replace("\n5\n", "\n6\n", 1)
    with pytest.raises(ProofError, match="altered"):
        verify_checkpoint(tampered, signer.vkey)


def test_wrong_key_is_rejected(checkpoint_note: str) -> None:
    impostor = NoteSigner.generate("example.com/log")
    with pytest.raises(ProofError, match="wrong key"):
        verify_checkpoint(checkpoint_note, impostor.vkey)


def test_unknown_key_name_is_rejected(checkpoint_note: str) -> None:
    other = NoteSigner.generate("other.example/log")
    with pytest.raises(ProofError, match="no signature by a known key name"):
        verify_checkpoint(checkpoint_note, other.vkey)


def test_forged_signature_under_the_right_key_hash_is_rejected(signer: NoteSigner, checkpoint_note: str) -> None:
    note = parse_note(checkpoint_note)
    forged = NoteSignature(signer.name, signer.key_hash, bytes(64))
    with pytest.raises(ProofError, match="does not verify"):
        verify_checkpoint(note.text + "\n" + forged.line(), signer.vkey)


def test_unknown_extra_signatures_are_ignored(signer: NoteSigner, checkpoint_note: str) -> None:
    witness = NoteSigner.generate("witness.example")
    extra = NoteSignature(witness.name, witness.key_hash, witness.sign(parse_note(checkpoint_note).text.encode()))
    cosigned = checkpoint_note + extra.line()
    assert verify_checkpoint(cosigned, signer.vkey).size == 5
    both = open_note(cosigned, [signer.verifier, witness.verifier])
    assert [s.name for s in both.signatures] == ["example.com/log", "witness.example"]


def test_other_origin_is_rejected(signer: NoteSigner, checkpoint_note: str) -> None:
    with pytest.raises(ProofError, match="origin"):
        verify_checkpoint(checkpoint_note, signer.vkey, origin="example.com/another")


@pytest.mark.parametrize(
    "note",
    [
        "no blank line\n\u2014 a AAAAAAA=\n",
        "text\n\n\u2014 a AAAAAAAA\n\n",
        "text\n\n- a AAAAAAAA\n",
        "text\n\n\u2014 a !!!!\n",
        "text\n\n\u2014 a AAAA\n",
        "text\n\n\u2014 a AAAAAAAA",
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(ProofError):
        parse_note(note)


@pytest.mark.parametrize(
    "body",
    ["origin\n5\n", "origin\n05\nAAAA\n", "origin\nx\nAAAA\n", "\n5\nAAAA\n", "o\n1\nAAAA\n", "o\n1\n!!\n"],
)
def test_malformed_checkpoint_bodies_are_rejected(body: str) -> None:
    with pytest.raises(ProofError):
        Checkpoint.from_body(body)


@pytest.mark.parametrize(
    "vkey",
    [
        "name+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key hash
        "name+c74f20a3",
        "name+zz+AAAA",
        "PeterNeumann+c74f20a3+AhpcpcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not type 0x01
    ],
)
def test_bad_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(KeyMaterialError):
        Ed25519NoteVerifier.from_vkey(vkey)


def test_key_names_with_spaces_or_plus_are_refused() -> None:
    for name in ("", "a b", "a+b"):
        with pytest.raises(KeyMaterialError):
            NoteSigner.generate(name)


def test_ecdsa_notes_as_rekor_signs_them() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    verifier = EcdsaNoteVerifier.from_pem("rekor.example", pem)
    text = Checkpoint("rekor.example - 42", 3, bytes(32)).body()
    from cryptography.hazmat.primitives import hashes

    sig = NoteSignature("rekor.example", verifier.key_hash, key.sign(text.encode(), ec.ECDSA(hashes.SHA256())))
    assert verify_checkpoint(text + "\n" + sig.line(), verifier).size == 3
    with pytest.raises(ProofError, match="altered"):
        verify_checkpoint(text.replace("\n3\n", "\n4\n") + "\n" + sig.line(), verifier)


def test_checkpoint_consistency_detects_a_rewritten_history(signer: NoteSigner) -> None:
    tree, forked = MerkleTree(), MerkleTree()
    for i in range(10):
        tree.append(bytes([i]))
        forked.append(bytes([i if i != 2 else 99]))
    old = sign_checkpoint(Checkpoint(signer.name, 4, tree.root(4)), signer)
    new = sign_checkpoint(Checkpoint(signer.name, 10, tree.root(10)), signer)
    verify_checkpoint_consistency(old, new, tree.consistency_proof(4, 10))
    rewritten = sign_checkpoint(Checkpoint(signer.name, 10, forked.root(10)), signer)
    with pytest.raises(ProofError, match="rewritten"):
        verify_checkpoint_consistency(old, rewritten, forked.consistency_proof(4, 10))
    with pytest.raises(ProofError, match="shrank"):
        verify_checkpoint_consistency(new, old, tree.consistency_proof(4, 10))
    with pytest.raises(ProofError, match="not between"):
        verify_checkpoint_consistency(old, new, tree.consistency_proof(5, 10))
    stranger = sign_checkpoint(Checkpoint("another/log", 10, tree.root(10)), signer)
    with pytest.raises(ProofError, match="different logs"):
        verify_checkpoint_consistency(old, stranger, tree.consistency_proof(4, 10))
