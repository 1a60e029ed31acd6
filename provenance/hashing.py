"""Content digests of files and directories: the identity of every artifact.

* A **file**'s digest is the plain digest of its bytes (``hash_file(p) == sha256sum p``). A single
  file is never split: splitting would change the digest.
* A **directory**'s digest is the OpenSSF Model Signing (OMS) *root digest* of its default
  serialisation (``model_signing.hashing.Config()``: per-file sha256, no shards): every file is
  hashed, the files are ordered as model_signing orders them (by path components, i.e.
  ``PurePosixPath`` order, which is not plain string order: ``a/b`` sorts before ``a.txt``), and
  the root is the SHA-256 of the concatenated raw file digests. It equals the in-toto subject
  digest model_signing writes into a signature bundle of that directory (tested against
  model_signing itself), so our artifact digest and the OMS bundle name the same thing.

Which files a directory digest covers follows model_signing's defaults exactly:

* every regular file below the directory, hidden files included (``.env``, ``.cache/x``);
* **except** the git paths at the top level: ``.git/``, ``.github/``, ``.gitattributes``,
  ``.gitignore`` (model_signing's ``ignore_git_paths=True``); the same names deeper down are kept;
* empty directories contribute nothing;
* a **symbolic link** anywhere (the directory itself included) is refused with
  :class:`~provenance.errors.InvalidInputError`, as model_signing refuses it
  (``allow_symlinks=False``); so are sockets, FIFOs and devices.

With ``alg`` other than sha256 the same construction is applied with that algorithm throughout;
that root is mlprov's own (model_signing's subject digest is always sha256).

Performance: SHA-256 is the cost, and copying bytes out of the page cache adds ~10 % to it (a core
copies ~13 GB/s and hashes ~1.5 GB/s here). So a file of 8 MiB or more on a local filesystem is hashed
straight from a read-only mapping while we hold a *read lease* on it (``F_SETLEASE``): opening it for
writing or truncating it by path then waits for us, so the mapping neither changes nor shrinks (a
mapped read of a truncated file is a SIGBUS that kills the process). Every 4 MiB step is faulted in
with ``MADV_POPULATE_READ`` (an I/O error, or a file that shrank after all, comes back as an error, not
as SIGBUS) and the lease is polled; when a writer asks for the file we stop touching the mapping,
release the lease within that step and read the rest, which gives what reading would have given.
Elsewhere (the file open for writing, another user's file, FUSE/NFS/overlay, ``SIGURG`` handled by the
program, ``MLPROV_HASH_MMAP=false``) the file is read into reused 1 MiB buffers with
``posix_fadvise(SEQUENTIAL)``; hashlib releases the GIL on large updates. There a big single file is
read by one thread while another hashes (the digest is still the plain one: a file is never split).
A directory's files are hashed by a thread pool, largest first, two threads per core by default. ADR
0007 gives the reasons and the cases a lease cannot cover. This module imports nothing heavy (``mlprov
hash`` start-up): only the standard library and ``provenance.errors``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import re
import signal
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal, get_args

from provenance.errors import InvalidInputError

if TYPE_CHECKING:
    from provenance.keys import HashName as HashName
else:  # keep `cryptography` (imported by provenance.keys) out of `mlprov hash` start-up
    HashName = Literal["sha256", "sha384", "sha512"]

__all__ = [
    "OMS_IGNORED_TOP_LEVEL",
    "DirectoryDigest",
    "HashName",
    "format_digest",
    "hash_directory",
    "hash_file",
    "hash_path",
    "parse_digest",
]

Progress = Callable[[int], None]

_ALGORITHMS: tuple[str, ...] = get_args(HashName) or ("sha256", "sha384", "sha512")
_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")

#: Top-level names model_signing ignores by default (``hashing.Config(ignore_git_paths=True)``).
OMS_IGNORED_TOP_LEVEL: frozenset[str] = frozenset({".git", ".github", ".gitattributes", ".gitignore"})

#: Read size. 1 MiB measured as good as anything larger on this machine (bench/bench_hashing.py):
#: per-call overhead is already negligible and the buffers stay cache-friendly.
_CHUNK = 1024 * 1024
#: Buffers in flight between the reader thread and the hasher when a big file is pipelined. 16 MiB
#: in flight absorbs scheduling delays when other processes contend for the cores (with 4, a loaded
#: machine made pipelining slower than one thread; with 16 it is on par there and ~15 % faster idle).
_PIPELINE_BUFFERS = 16
#: Files at least this large are read by a second thread while the first hashes (see _hash_fd_pipelined).
_PIPELINE_MIN_SIZE = 8 * _CHUNK
#: Files at least this large are hashed straight out of the page cache when a read lease can be taken
#: (see _hash_fd_mapped); smaller ones are not worth the mapping and the lease's system calls.
_MAP_MIN_SIZE = 8 * _CHUNK
#: Bytes populated, lease-checked and hashed per step of _hash_fd_mapped: one step is also the longest a
#: writer waits for us (~3 ms at 1.5 GB/s) once it asked for the lease.
_MAP_STEP = 4 * _CHUNK
#: madvise(MADV_POPULATE_READ) (Linux 5.14): faults a range in and *returns* an I/O error, where a plain
#: access to a mapping would raise SIGBUS.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
#: Signal the kernel sends on a lease break. Its default disposition is "ignore", so nobody needs a
#: handler; the worker polls F_GETLEASE instead (a signal handler would only run in the main thread).
_LEASE_SIGNAL = signal.SIGURG
#: A lease break times out after /proc/sys/fs/lease-break-time seconds: the writer then goes ahead and
#: could truncate what is mapped. One step takes milliseconds; below this many seconds, do not map.
_MIN_LEASE_BREAK_SECONDS = 1
#: Local filesystems, where the lease sees every writer. Not FUSE (s3fs, gcsfuse, sshfs, virtiofs), NFS,
#: SMB, overlay or anything unknown: there a lease may be granted while the file changes elsewhere.
_MAPPABLE_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})
#: ``MLPROV_HASH_MMAP=false`` turns the mapped path off (every file is read).
_MMAP_ENV = "MLPROV_HASH_MMAP"
_fs_types: dict[int, str | None] = {}
"""``st_dev`` -> filesystem type, from /proc/self/mountinfo; ``None`` remembers a device not found there
(e.g. a btrfs subvolume's anonymous device), so it is not looked up again for every file."""


def _check_alg(alg: str) -> None:
    if alg not in _HEX_LENGTH:
        raise InvalidInputError(f"unsupported hash algorithm {alg!r}; use one of {', '.join(_ALGORITHMS)}")


def _os_error(path: Path, exc: OSError) -> InvalidInputError:
    reason = exc.strerror or type(exc).__name__
    return InvalidInputError(f"cannot read {path}: {reason}")


def _lease_break_seconds() -> int:
    try:
        with open("/proc/sys/fs/lease-break-time", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _fs_type(dev: int) -> str | None:
    """The filesystem type of device ``dev`` (``st_dev``), from /proc/self/mountinfo; ``None`` if unknown."""
    if dev not in _fs_types:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    mount, _, fs = line.partition(" - ")
                    fields, fs_fields = mount.split(), fs.split()
                    if len(fields) > 2 and fs_fields and ":" in fields[2]:
                        major, _, minor = fields[2].partition(":")
                        with contextlib.suppress(ValueError):
                            _fs_types[os.makedev(int(major), int(minor))] = fs_fields[0]
        except OSError:
            return None
        _fs_types.setdefault(dev, None)
    return _fs_types[dev]


def _mapping_allowed(st: os.stat_result) -> bool:
    if os.environ.get(_MMAP_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not hasattr(fcntl, "F_SETLEASE") or signal.getsignal(_LEASE_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN):
        return False  # no leases here, or someone handles SIGURG and would be woken by our lease breaks
    if _lease_break_seconds() < _MIN_LEASE_BREAK_SECONDS:
        return False
    return _fs_type(st.st_dev) in _MAPPABLE_FS


def _take_read_lease(fd: int, st: os.stat_result) -> bool:
    """Take a read lease on ``fd`` if every condition for hashing it from a mapping holds (ADR 0007).

    While we hold it, opening the file for writing and truncating it by path or through a writable
    descriptor wait until we release it (or until lease-break-time passes), so the mapping neither
    shrinks (the SIGBUS a mapped read risks) nor changes. It is refused (EAGAIN) while anyone has the
    file open for writing, and (EACCES) on another user's file without CAP_LEASE: the caller then reads.
    What it cannot stop is in ADR 0007 (an ``O_RDONLY|O_TRUNC`` open, a process stopped past the
    lease-break time).
    """
    if not _mapping_allowed(st):
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    return True


def _release_lease(fd: int) -> None:
    with contextlib.suppress(OSError):  # the lease is ours; closing the fd drops it anyway
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def _hash_fd_mapped(fd: int, size: int, hasher: hashlib._Hash, progress: Progress | None) -> int:
    """Hash ``size`` bytes straight out of the page cache (no copy into a buffer); return bytes hashed.

    The caller holds a read lease on ``fd``. Copying out of the page cache costs a core ~10 % of its
    SHA-256 time (13 GB/s copy vs 1.5 GB/s hashing), which a mapping avoids. Step by step: fault the
    step in with MADV_POPULATE_READ (an I/O error is raised here, not as SIGBUS on access), check the
    lease is intact (a writer asking for the file breaks it and waits), hash it. On a break it stops
    touching the mapping and returns short; the caller releases the lease and reads the rest, so the
    result is what reading would have given. Returns 0 at once where the mapping cannot be used safely.
    """
    try:
        mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return 0
    view = memoryview(mapping)
    done = 0
    try:
        with contextlib.suppress(OSError):
            mapping.madvise(mmap.MADV_SEQUENTIAL)
        while done < size:
            n = min(_MAP_STEP, size - done)
            try:
                mapping.madvise(_MADV_POPULATE_READ, done, n)
            except OSError as exc:
                if exc.errno == errno.EINVAL and done == 0:
                    return 0  # kernel older than 5.14: an I/O error would be a SIGBUS, so read instead
                if exc.errno in (errno.EFAULT, errno.EINTR):
                    break  # EFAULT: the file shrank after all (see ADR 0007); read the rest
                raise
            if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
                break  # a writer is waiting for the file: let it have it, read the rest
            hasher.update(view[done : done + n])
            done += n
            if progress is not None:
                progress(n)
    finally:
        view.release()
        mapping.close()
    return done


def _hash_fd(fd: int, hasher: hashlib._Hash, progress: Progress | None) -> bytes:
    """Read into one reused buffer and hash it: no allocation per chunk, one thread."""
    view = memoryview(bytearray(_CHUNK))
    while n := os.readv(fd, [view]):
        hasher.update(view[:n])
        if progress is not None:
            progress(n)
    return hasher.digest()


def _hash_fd_pipelined(fd: int, hasher: hashlib._Hash, progress: Progress | None) -> bytes:
    """Overlap reading (a kernel copy out of the page cache) with hashing, on two threads.

    Both release the GIL, so a single big file hashes at the core's SHA speed instead of
    SHA speed minus the copy (measured 1.73 vs 1.50 GB/s for a cached 1 GiB file). The
    digest is still the plain digest of the bytes in order: only the reading runs ahead.
    """
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[memoryview, int] | OSError] = queue.SimpleQueue()
    for _ in range(_PIPELINE_BUFFERS):
        free.put(memoryview(bytearray(_CHUNK)))
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            buf = free.get()
            try:
                n = os.readv(fd, [buf])
            except OSError as exc:
                full.put(exc)
                return
            full.put((buf, n))
            if not n:
                return

    reader = threading.Thread(target=read, name="mlprov-hash-read", daemon=True)
    reader.start()
    try:
        while True:
            item = full.get()
            if isinstance(item, OSError):
                raise item
            buf, n = item
            if not n:
                break
            hasher.update(buf[:n])
            free.put(buf)
            if progress is not None:
                progress(n)
    finally:
        stop.set()
        free.put(memoryview(bytearray(0)))  # unblock a reader waiting for a buffer
        reader.join()
    return hasher.digest()


def _hash_file_raw(path: Path, alg: str, progress: Progress | None, *, pipelined: bool = True) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer (it is refused just below).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInputError(f"{path} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"{path} is not a regular file")
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        hasher = hashlib.new(alg)
        try:
            if st.st_size >= _MAP_MIN_SIZE and _take_read_lease(fd, st):
                try:
                    size = os.fstat(fd).st_size  # under the lease: no one can change it any more
                    done = _hash_fd_mapped(fd, size, hasher, progress)
                finally:
                    _release_lease(fd)
                if done == size:
                    return hasher.digest()
                os.lseek(fd, done, os.SEEK_SET)
            if pipelined and st.st_size >= _PIPELINE_MIN_SIZE:
                return _hash_fd_pipelined(fd, hasher, progress)
            return _hash_fd(fd, hasher, progress)
        except OSError as exc:
            raise _os_error(path, exc) from None
    finally:
        os.close(fd)


def hash_file(path: Path, alg: HashName = "sha256", progress: Progress | None = None) -> str:
    """The hex digest of a file's bytes (the same as ``sha256sum``), streamed.

    ``progress`` is called with the number of bytes hashed since its previous call. It must not wait
    for a writer of the file being hashed: that writer may be waiting for us (ADR 0007).
    Raises :class:`InvalidInputError` for a missing, unreadable or non-regular path.
    """
    _check_alg(alg)
    return _hash_file_raw(Path(path), alg, progress).hex()


@dataclass(frozen=True)
class DirectoryDigest:
    """A directory's root digest and the digest of each file it covers.

    ``files`` maps the relative POSIX path of each file to its hex digest, in model_signing's order
    (path components compared one by one), which is the order the root digest concatenates them in.
    """

    root: str
    files: dict[str, str] = field(default_factory=dict)


def _oms_sort_key(relative: str) -> tuple[str, ...]:
    return PurePosixPath(relative).parts


def _collect(root: Path, exclude_top_level: frozenset[str] = frozenset()) -> list[tuple[str, Path, int]]:
    """Every file the OMS default serialisation covers: (relative posix path, path, size)."""
    found: list[tuple[str, Path, int]] = []
    skipped = OMS_IGNORED_TOP_LEVEL | exclude_top_level

    def walk(directory: Path, prefix: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise _os_error(directory, exc) from None
        for entry in entries:
            if not prefix and entry.name in skipped:
                continue
            rel = f"{prefix}{entry.name}"
            full = Path(entry.path)
            try:
                if entry.is_symlink():
                    raise InvalidInputError(
                        f"{full} is a symbolic link; model directories may not contain symlinks "
                        "(as OpenSSF Model Signing refuses them by default)"
                    )
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise _os_error(full, exc) from None
            if stat.S_ISDIR(st.st_mode):
                walk(full, f"{rel}/")
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, full, st.st_size))
            else:
                raise InvalidInputError(f"{full} is neither a regular file nor a directory")

    walk(root, "")
    return found


def _locked(progress: Progress | None) -> Progress | None:
    if progress is None:
        return None
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    return report


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def hash_directory(
    path: Path,
    alg: HashName = "sha256",
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    exclude_top_level: frozenset[str] = frozenset(),
) -> DirectoryDigest:
    """Hash every file of a directory in parallel; the root is the OMS root digest (see module doc).

    ``workers`` is the number of hashing threads; it defaults to twice the usable cores. Files hashed
    from a mapping keep one thread per core busy either way (2 and 4 threads measured equal on 2
    cores); files that have to be read alternate between copying a chunk and hashing it (both release
    the GIL), and there the second thread per core keeps the core busy during the other's copy.
    ``progress`` receives byte counts, possibly from worker threads (calls are serialised by a lock; as
    for :func:`hash_file`, it must not wait for a writer of a file being hashed). ``exclude_top_level``
    names more top-level entries to leave out, as the git paths are (the sidecar passes a directory's
    completion marker, ``_SUCCESS``; give the same names as ``ignore`` to :func:`provenance.oms.sign_model`
    so the OMS subject digest equals this root). Raises :class:`InvalidInputError` for a
    missing path, a file, a symlink or special file inside, or an unreadable file (naming it).
    """
    _check_alg(alg)
    path = Path(path)
    if path.is_symlink():
        raise InvalidInputError(f"{path} is a symbolic link; give the directory it points to")
    if not path.is_dir():
        if path.exists():
            raise InvalidInputError(f"{path} is not a directory")
        raise InvalidInputError(f"cannot read {path}: No such file or directory")
    entries = _collect(path, frozenset(exclude_top_level))
    report = _locked(progress)
    digests: dict[str, bytes] = {}
    cores = _default_workers()
    threads = min(workers or 2 * cores, len(entries))
    # Fewer files than cores: give each file a reader thread too (see _hash_fd_pipelined).
    pipelined = len(entries) < cores
    largest_first = sorted(entries, key=lambda e: e[2], reverse=True)
    if threads <= 1:
        for rel, full, _ in largest_first:
            digests[rel] = _hash_file_raw(full, alg, report, pipelined=pipelined)
    else:
        from concurrent.futures import ThreadPoolExecutor  # lazy: keeps `mlprov hash` start-up small

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mlprov-hash") as pool:
            futures = {
                rel: pool.submit(_hash_file_raw, full, alg, report, pipelined=pipelined)
                for rel, full, _ in largest_first
            }
            for rel, future in futures.items():
                digests[rel] = future.result()
    ordered = sorted(digests, key=_oms_sort_key)
    root = hashlib.new(alg)
    for rel in ordered:
        root.update(digests[rel])
    return DirectoryDigest(root=root.hexdigest(), files={rel: digests[rel].hex() for rel in ordered})


def hash_path(path: Path, alg: HashName = "sha256", progress: Progress | None = None) -> str:
    """The hex digest of an artifact: :func:`hash_file` for a file, the root of :func:`hash_directory`."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return hash_directory(path, alg, progress=progress).root
    return hash_file(path, alg, progress)


def format_digest(hex_digest: str, alg: HashName = "sha256") -> str:
    """``"sha256:<hex>"``; refuses a value that is not a well-formed digest of ``alg``."""
    _check_alg(alg)
    if len(hex_digest) != _HEX_LENGTH[alg] or not _HEX.fullmatch(hex_digest):
        raise InvalidInputError(f"{hex_digest!r} is not a lowercase hex {alg} digest")
    return f"{alg}:{hex_digest}"


def parse_digest(digest: str) -> tuple[HashName, str]:
    """Split ``"sha256:<hex>"`` into ``("sha256", "<hex>")``; :class:`InvalidInputError` if malformed."""
    alg, sep, hex_digest = digest.partition(":")
    if not sep or alg not in _HEX_LENGTH:
        raise InvalidInputError(f"{digest!r} is not a digest; expected <alg>:<hex> with alg one of {_ALGORITHMS}")
    if len(hex_digest) != _HEX_LENGTH[alg] or not _HEX.fullmatch(hex_digest):
        raise InvalidInputError(f"{digest!r} is not a digest: expected {_HEX_LENGTH[alg]} lowercase hex digits")
    return alg, hex_digest  # type: ignore[return-value]  # alg checked against HashName's members above
