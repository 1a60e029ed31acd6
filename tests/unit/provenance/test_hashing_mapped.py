"""provenance.hashing's zero-copy path: big files hashed from a mapping under a read lease.

A mapped read of a file someone truncates is a SIGBUS that kills the process; the lease makes a writer
wait while we hash, and we hand it the file as soon as it asks. These tests hold the path to that."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provenance import hashing
from provenance.hashing import hash_directory, hash_file

MIB = 1024 * 1024
SIZE = 24 * MIB + 4321  # past the mapping threshold, several steps, a partial last step


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def mapped_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (size, bytes hashed) of every mapped hashing."""
    calls: list[tuple[int, int]] = []
    real = hashing._hash_fd_mapped

    def spy(fd: int, size: int, hasher: object, progress: object) -> int:
        done = real(fd, size, hasher, progress)  # type: ignore[arg-type]
        calls.append((size, done))
        return done

    monkeypatch.setattr(hashing, "_hash_fd_mapped", spy)
    return calls


def _leases_available() -> bool:
    try:
        return Path("/proc/sys/fs/leases-enable").read_text().strip() == "1"
    except OSError:
        return False


needs_leases = pytest.mark.skipif(not _leases_available(), reason="file leases are disabled on this kernel")


@needs_leases
@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_a_big_file_is_hashed_from_the_mapping(
    big: tuple[Path, bytes], mapped_calls: list[tuple[int, int]], alg: str
) -> None:
    path, data = big
    seen: list[int] = []
    assert hash_file(path, alg, progress=seen.append) == hashlib.new(alg, data).hexdigest()  # type: ignore[arg-type]
    assert mapped_calls == [(SIZE, SIZE)]
    assert sum(seen) == SIZE


@needs_leases
def test_a_directory_of_big_files_is_hashed_from_mappings(tmp_path: Path, mapped_calls: list[tuple[int, int]]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for i in range(3):
        (model / f"part-{i}.bin").write_bytes(os.urandom(9 * MIB + i))
    (model / "config.json").write_bytes(b"{}")  # small: read, not mapped
    mapped = hash_directory(model)
    assert sorted(mapped_calls) == [(9 * MIB + i, 9 * MIB + i) for i in range(3)]
    assert mapped.files == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()}


def test_a_file_open_for_writing_is_read_not_mapped(
    big: tuple[Path, bytes], mapped_calls: list[tuple[int, int]]
) -> None:
    path, data = big
    with path.open("ab"):  # a writer holds it: no read lease can be taken
        assert hash_file(path) == hashlib.sha256(data).hexdigest()
    assert mapped_calls == []


def test_no_mapping_when_someone_handles_the_lease_signal(
    big: tuple[Path, bytes], mapped_calls: list[tuple[int, int]]
) -> None:
    path, data = big
    previous = signal.signal(signal.SIGURG, lambda *_: None)
    try:
        assert hash_file(path) == hashlib.sha256(data).hexdigest()
    finally:
        signal.signal(signal.SIGURG, previous)
    assert mapped_calls == []


def test_mapping_can_be_turned_off(
    big: tuple[Path, bytes], mapped_calls: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = big
    monkeypatch.setenv("MLPROV_HASH_MMAP", "false")
    assert hash_file(path) == hashlib.sha256(data).hexdigest()
    assert mapped_calls == []


def test_only_local_filesystems_are_mapped(
    big: tuple[Path, bytes], mapped_calls: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease on FUSE or NFS may be granted while the file changes elsewhere: those are read."""
    path, data = big
    assert hashing._fs_type(path.stat().st_dev) is not None  # found in /proc/self/mountinfo
    assert hashing._fs_type(os.stat("/proc").st_dev) == "proc"
    monkeypatch.setattr(hashing, "_MAPPABLE_FS", frozenset({"nfs", "fuse"}))
    assert hash_file(path) == hashlib.sha256(data).hexdigest()
    assert mapped_calls == []


@needs_leases
def test_a_read_only_truncating_open_between_steps_falls_back_to_reading(tmp_path: Path) -> None:
    """``open(O_RDONLY | O_TRUNC)`` truncates without breaking a read lease (ADR 0007). Landing between
    two steps, it is seen as EFAULT from MADV_POPULATE_READ: we stop mapping and read on (nothing left)."""
    path = tmp_path / "victim.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    truncated: list[bool] = []

    def progress(n: int) -> None:
        if not truncated:
            os.close(os.open(path, os.O_RDONLY | os.O_TRUNC))
            truncated.append(True)

    digest = hash_file(path, progress=progress)
    assert path.stat().st_size == 0
    assert digest == hashlib.sha256(data[: hashing._MAP_STEP]).hexdigest()


@needs_leases
def test_a_writer_truncating_the_file_mid_hash_neither_waits_nor_crashes_us(tmp_path: Path) -> None:
    """The SIGBUS case, in a child process (a SIGBUS would kill pytest): a writer truncates the file
    while it is being hashed. The writer gets the file within a step, the hasher stops touching the
    mapping and reads the rest (nothing: it was truncated), and both live."""
    path = tmp_path / "victim.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        from provenance import hashing
        writer = []
        def progress(n):
            if not writer:  # after the first step: a writer truncates the file
                code = "import time; t = time.monotonic(); open({str(path)!r}, 'r+b').truncate(0); "
                code += "print(round(time.monotonic() - t, 3))"
                writer.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
                time.sleep(1.0)  # the writer is blocked on our lease by now
        digest = hashing.hash_file({str(path)!r}, progress=progress)
        waited = float(writer[0].communicate(timeout=30)[0])
        print(digest, waited)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"the hasher died (rc {out.returncode}): {out.stderr}"
    digest, waited = out.stdout.split()
    step = hashing._MAP_STEP
    # what it hashed is a whole number of steps: the mapping up to the break, nothing after the truncation
    assert digest in {hashlib.sha256(data[: k * step]).hexdigest() for k in range(1, SIZE // step + 1)}
    assert digest != hashlib.sha256(data).hexdigest()
    assert float(waited) < 10  # it waited about one step for the lease, not lease-break-time (45 s)
    assert path.stat().st_size == 0
