"""The embedded Merkle log: proofs against a reference tree, persistence, crash recovery, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from provenance.errors import ProofError, TransparencyLogError
from provenance.tlog.base import TransparencyLog, audit_checkpoint
from provenance.tlog.checkpoint import NoteSigner, verify_checkpoint
from provenance.tlog.local import LocalTransparencyLog
from provenance.tlog.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion

ROOT = Path(__file__).resolve().parents[4]


def _data(i: int) -> bytes:
    return f"sha384:manifest-{i:06d}".encode()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "tlog"


def test_is_a_transparency_log(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir) as log:
        assert isinstance(log, TransparencyLog)


def test_append_find_entry_and_idempotence(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir) as log:
        first = log.append(b"alpha")
        second = log.append(b"beta")
        assert (first.index, second.index) == (0, 1)
        assert log.append(b"alpha") == first
        assert log.size() == 2
        assert log.entry(1).data == b"beta"
        assert log.find(leaf_hash(b"beta")) == second
        assert log.find(leaf_hash(b"gamma")) is None
        batch = log.append_many([b"gamma", b"alpha", b"gamma", b"", b"delta"])
        assert [e.index for e in batch] == [2, 0, 2, 3, 4]
        assert log.size() == 5
        assert log.entry(3).data == b""
        with pytest.raises(TransparencyLogError, match="no log entry 5"):
            log.entry(5)


def test_proofs_match_the_reference_tree_at_every_size(log_dir: Path) -> None:
    reference = MerkleTree()
    with LocalTransparencyLog(log_dir) as log:
        for i in range(70):
            log.append(_data(i))
            reference.append(_data(i))
        for size in range(71):
            root = log.root_hash(size)
            assert root == reference.root(size)
            for index in range(0, size, 3):
                proof = log.inclusion_proof(index, size)
                assert proof == reference.inclusion_proof(index, size)
                verify_inclusion(leaf_hash(_data(index)), proof, root)
            for old in range(0, size + 1, 4):
                proof_c = log.consistency_proof(old, size)
                assert proof_c == reference.consistency_proof(old, size)
                verify_consistency(reference.root(old), root, proof_c)
        with pytest.raises(ProofError, match="beyond"):
            log.inclusion_proof(0, 71)
        with pytest.raises(ProofError, match="no inclusion proof"):
            log.inclusion_proof(70, 70)


def test_checkpoint_is_signed_by_the_logs_own_key(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir, origin="mlprov.test/log") as log:
        log.append_many([_data(i) for i in range(9)])
        cp = log.checkpoint()
        vkey = log.verifier_key
    assert (log_dir / "log.vkey").read_text().strip() == vkey
    assert oct((log_dir / "log.key").stat().st_mode & 0o777) == "0o600"
    parsed = verify_checkpoint(cp.note, vkey, origin="mlprov.test/log")
    assert (parsed.size, parsed.root_hash) == (9, cp.root_hash)
    with LocalTransparencyLog(log_dir) as reopened:
        assert reopened.verifier_key == vkey  # the key persists; the origin comes with it
        assert reopened.checkpoint().note == cp.note  # Ed25519 is deterministic


def test_a_given_signer_is_used_and_not_written(log_dir: Path) -> None:
    signer = NoteSigner.generate("given.example/log")
    with LocalTransparencyLog(log_dir, signer=signer) as log:
        log.append(b"x")
        assert verify_checkpoint(log.checkpoint().note, signer.vkey).size == 1
    assert not (log_dir / "log.key").exists()


def test_restart_loses_nothing(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir) as log:
        log.append_many([_data(i) for i in range(5000)])
        before = log.checkpoint()
    with LocalTransparencyLog(log_dir) as log:
        assert log.size() == 5000
        assert log.checkpoint().root_hash == before.root_hash
        assert log.find(leaf_hash(_data(4321))).index == 4321  # type: ignore[union-attr]
        assert log.entry(17).data == _data(17)
        assert log.append(_data(5000)).index == 5000
        audit_checkpoint(log, before.note, log.verifier_key)


def test_a_killed_process_loses_no_acknowledged_append(log_dir: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from provenance.tlog.local import LocalTransparencyLog
        log = LocalTransparencyLog({str(log_dir)!r}, durability="interval", sync_interval=3600)
        for i in range(300):
            log.append(b"entry-%d" % i)
        print(log.size(), flush=True)
        os._exit(0)  # no close(), no fsync: the appends only reached the OS
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "300"
    with LocalTransparencyLog(log_dir) as log:
        assert log.size() == 300
        assert log.entry(299).data == b"entry-299"


def _record_bytes(log_dir: Path) -> int:
    return (log_dir / "entries.log").stat().st_size


@pytest.mark.parametrize("cut", [1, 5, 30, 37])
def test_a_torn_trailing_record_is_truncated_on_open(log_dir: Path, cut: int) -> None:
    reference = MerkleTree()
    with LocalTransparencyLog(log_dir) as log:
        for i in range(20):
            log.append(_data(i))
            if i < 19:
                reference.append(_data(i))
    full = _record_bytes(log_dir)
    last_len = 4 + 32 + len(_data(19)) + 4
    with open(log_dir / "entries.log", "r+b") as fh:
        fh.truncate(full - last_len + cut)  # the crash cut the last record after `cut` bytes
    with capture_logs() as logs, LocalTransparencyLog(log_dir) as log:
        assert log.size() == 19
        assert _record_bytes(log_dir) == full - last_len
        assert log.root_hash() == reference.root()
        assert log.append(_data(19)).index == 19
        reference.append(_data(19))
        assert log.checkpoint().root_hash == reference.root()
    assert any(e["event"] == "tlog.torn_record_truncated" and e["index"] == 19 for e in logs)


def test_a_corrupt_trailing_record_is_truncated_and_derived_files_rebuilt(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir) as log:
        log.append_many([_data(i) for i in range(50)])
        root = log.root_hash()
    with open(log_dir / "entries.log", "ab") as fh:
        fh.write(b"\x00\x00\x00\x05" + bytes(32) + b"hello" + b"\x00\x00\x00\x00")  # bad CRC
    with open(log_dir / "level-00.bin", "ab") as fh:
        fh.write(os.urandom(32 * 3))  # derived data written past the last good record
    with open(log_dir / "offsets.bin", "ab") as fh:
        fh.write(os.urandom(8))
    with LocalTransparencyLog(log_dir) as log:
        assert log.size() == 50
        assert log.root_hash() == root
    for name in ("offsets.bin", "level-00.bin", "level-01.bin", "level-05.bin"):
        (log_dir / name).unlink()
    with LocalTransparencyLog(log_dir) as log:
        assert log.size() == 50
        assert log.root_hash() == root
        assert log.inclusion_proof(33) == MerkleTree_of(50).inclusion_proof(33)


def MerkleTree_of(n: int) -> MerkleTree:
    tree = MerkleTree()
    for i in range(n):
        tree.append(_data(i))
    return tree


def test_corruption_of_an_old_record_is_reported(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir) as log:
        log.append_many([_data(i) for i in range(5000)])
    with open(log_dir / "entries.log", "r+b") as fh:
        fh.seek(4 + 32 + 3)
        fh.write(b"X")
    with LocalTransparencyLog(log_dir) as log:
        assert log.size() == 5000  # the old record is outside the recovery window
        with pytest.raises(TransparencyLogError, match=r"entry 0: .*checksum"):
            log.entry(0)


def test_only_one_process_opens_a_log(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir), pytest.raises(TransparencyLogError, match="another process"):
        LocalTransparencyLog(log_dir)
    LocalTransparencyLog(log_dir).close()  # released after close


def test_closed_log_refuses_work(log_dir: Path) -> None:
    log = LocalTransparencyLog(log_dir)
    log.close()
    log.close()
    with pytest.raises(TransparencyLogError, match="closed"):
        log.append(b"x")


def test_concurrent_appends_are_group_committed_and_consistent(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir) as log:

        def work(k: int) -> None:
            for i in range(50):
                log.append(f"{k}-{i}".encode())

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.size() == 200
        reference = MerkleTree()
        for i in range(200):
            reference.append(log.entry(i).data)
        assert log.checkpoint().root_hash == reference.root()


def test_interval_durability_syncs_before_signing(log_dir: Path) -> None:
    with LocalTransparencyLog(log_dir, durability="interval", sync_interval=3600) as log:
        log.append(b"a")
        assert log._synced == 0  # written to the OS, not yet fsynced
        cp = log.checkpoint()
        assert log._synced == 1
        assert cp.size == 1


def test_audit_detects_a_rewritten_history(tmp_path: Path) -> None:
    signer = NoteSigner.generate("audit.example/log")
    with LocalTransparencyLog(tmp_path / "a", signer=signer) as honest:
        honest.append_many([_data(i) for i in range(6)])
        stored = honest.checkpoint().note
        honest.append_many([_data(i) for i in range(6, 20)])
        assert audit_checkpoint(honest, stored, signer.vkey).size == 20
    with LocalTransparencyLog(tmp_path / "b", signer=signer) as rewritten:
        rewritten.append_many([_data(i) if i != 3 else b"evil" for i in range(20)])
        with pytest.raises(ProofError, match="rewritten"):
            audit_checkpoint(rewritten, stored, signer.vkey)
    with LocalTransparencyLog(tmp_path / "c", signer=signer) as shorter:
        shorter.append_many([_data(i) for i in range(3)])
        with pytest.raises(ProofError, match="shrank"):
            audit_checkpoint(shorter, stored, signer.vkey)
