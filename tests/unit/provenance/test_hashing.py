"""provenance.hashing: plain file digests, OMS-compatible directory digests, digest strings."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provenance import hashing
from provenance.errors import InvalidInputError
from provenance.hashing import (
    DirectoryDigest,
    format_digest,
    hash_directory,
    hash_file,
    hash_path,
    parse_digest,
)

# Bigger than the pipelining and mapping thresholds (8 MiB), so those paths are exercised too.
BIG = 9 * 1024 * 1024 + 12345


@pytest.fixture(params=["mapped", "read"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with big files hashed from a mapping (where a lease can be taken) and by reading."""
    if request.param == "read":
        monkeypatch.setattr(hashing, "_take_read_lease", lambda fd, st: False)
    return str(request.param)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tree exercising model_signing's rules: nesting, hidden files, git paths, path ordering."""
    root = tmp_path / "model"
    _write(root / "a" / "b", os.urandom(3000))
    _write(root / "a.txt", b"x")  # string order puts a.txt before a/b; path order puts it after
    _write(root / ".hidden", b"h")
    _write(root / "empty", b"")
    _write(root / "weights.bin", os.urandom(BIG))
    _write(root / "sub" / ".git" / "kept", b"only top-level git paths are ignored")
    _write(root / ".git" / "HEAD", b"ignored")
    _write(root / ".gitignore", b"ignored")
    _write(root / ".gitattributes", b"ignored")
    _write(root / ".github" / "workflow.yml", b"ignored")
    (root / "emptydir").mkdir()
    return root


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, BIG])
@pytest.mark.parametrize("alg", ["sha256", "sha384", "sha512"])
def test_hash_file_is_the_plain_digest(tmp_path: Path, size: int, alg: str, read_path: str) -> None:
    data = os.urandom(size)
    path = _write(tmp_path / "f.bin", data)
    assert hash_file(path, alg) == hashlib.new(alg, data).hexdigest()  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_hash_file_equals_sha256sum(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.bin", os.urandom(BIG))
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout
    assert hash_file(path) == out.split()[0]


@pytest.mark.parametrize("size", [10, BIG])
def test_progress_reports_every_byte(tmp_path: Path, size: int, read_path: str) -> None:
    path = _write(tmp_path / "f.bin", os.urandom(size))
    seen: list[int] = []
    hash_file(path, progress=seen.append)
    assert sum(seen) == size
    assert all(n > 0 for n in seen)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(InvalidInputError, match=r"nope\.bin"):
        hash_file(missing)
    with pytest.raises(InvalidInputError, match=r"nope\.bin"):
        hash_path(missing)
    with pytest.raises(InvalidInputError, match=r"nope\.bin"):
        hash_directory(missing)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="directory"):
        hash_file(tmp_path)
    with pytest.raises(InvalidInputError, match="not a directory"):
        hash_directory(_write(tmp_path / "f", b"x"))


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="not a regular file"):
        hash_file(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_in_a_directory_is_named(tmp_path: Path) -> None:
    secret = _write(tmp_path / "d" / "secret.bin", b"x")
    secret.chmod(0)
    with pytest.raises(InvalidInputError, match=r"secret\.bin"):
        hash_directory(tmp_path / "d")


def _model_signing_subject(path: Path) -> tuple[str, dict[str, str]]:
    """What model_signing itself computes with its default configuration."""
    from model_signing import hashing as ms_hashing
    from model_signing._signing import signing as ms_signing  # the in-toto payload a bundle signs

    manifest = ms_hashing.hash(path)
    statement = ms_signing.Payload(manifest).statement.pb
    files = {rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    return statement.subject[0].digest["sha256"], files


def test_directory_root_is_model_signings_subject_digest(model_dir: Path, read_path: str) -> None:
    digest = hash_directory(model_dir)
    root, files = _model_signing_subject(model_dir)
    assert digest.root == root
    assert digest.files == files
    assert list(digest.files) == list(files)  # same order: the order the root concatenates


def test_directory_covers_exactly_model_signings_files(model_dir: Path) -> None:
    files = hash_directory(model_dir).files
    assert ".hidden" in files
    assert "sub/.git/kept" in files
    assert not any(p.startswith((".git/", ".github/")) or p in {".gitignore", ".gitattributes"} for p in files)
    assert list(files)[:3] == [".hidden", "a/b", "a.txt"]  # path-component order, not string order
    assert files["weights.bin"] == hash_file(model_dir / "weights.bin")


def test_directory_digest_changes_with_any_file(model_dir: Path) -> None:
    before = hash_directory(model_dir)
    with (model_dir / "a" / "b").open("r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    after = hash_directory(model_dir)
    assert after.root != before.root
    assert {p for p in after.files if after.files[p] != before.files[p]} == {"a/b"}


def test_worker_count_does_not_change_the_digest(model_dir: Path) -> None:
    assert hash_directory(model_dir, workers=1) == hash_directory(model_dir) == hash_directory(model_dir, workers=7)


def test_directory_progress_counts_all_bytes(model_dir: Path) -> None:
    seen: list[int] = []
    digest = hash_directory(model_dir, progress=seen.append)
    assert sum(seen) == sum((model_dir / p).stat().st_size for p in digest.files)


def test_empty_directory_has_the_digest_of_nothing(tmp_path: Path) -> None:
    assert hash_directory(tmp_path) == DirectoryDigest(root=hashlib.sha256().hexdigest(), files={})


def test_symlinks_are_refused_as_model_signing_refuses_them(model_dir: Path) -> None:
    (model_dir / "link").symlink_to(model_dir / "a.txt")
    with pytest.raises(InvalidInputError, match="symbolic link"):
        hash_directory(model_dir)
    from model_signing import hashing as ms_hashing

    with pytest.raises(ValueError, match="symlink"):
        ms_hashing.hash(model_dir)


def test_hash_path_dispatches(model_dir: Path) -> None:
    assert hash_path(model_dir) == hash_directory(model_dir).root
    assert hash_path(model_dir / "a.txt") == hashlib.sha256(b"x").hexdigest()
    assert hash_path(model_dir, "sha512") == hash_directory(model_dir, "sha512").root


def test_unsupported_algorithm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="md5"):
        hash_file(_write(tmp_path / "f", b"x"), "md5")  # type: ignore[arg-type]


def test_format_and_parse_round_trip() -> None:
    hex_digest = hashlib.sha384(b"x").hexdigest()
    text = format_digest(hex_digest, "sha384")
    assert text == f"sha384:{hex_digest}"
    assert parse_digest(text) == ("sha384", hex_digest)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256",
        "sha256:",
        "md5:" + "0" * 32,
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "0" * 64,
        "SHA256:" + "0" * 64,
    ],
)
def test_parse_refuses_malformed_digests(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_digest(bad)


def test_format_refuses_a_wrong_length() -> None:
    with pytest.raises(InvalidInputError):
        format_digest("0" * 64, "sha512")


def test_import_stays_light() -> None:
    """`mlprov hash` start-up: importing hashing pulls in no crypto or signing library."""
    code = (
        "import sys, provenance.hashing; "
        "heavy = [m for m in ('cryptography', 'model_signing', 'c2pa', 'sigstore') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""
