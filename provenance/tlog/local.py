"""The embedded transparency log: an append-only RFC 6962 Merkle log kept in a directory.

Layout (``root``, e.g. ``$MLPROV_HOME/tlog``)::

    entries.log    the source of truth: one record per entry, appended only
                   u32 length | 32-byte leaf hash | data | u32 CRC-32 of the preceding bytes
    offsets.bin    u64 offset of each record in entries.log              (derived)
    level-NN.bin   32-byte hashes of the complete subtrees of 2**NN leaves (derived; level-00 = leaf hashes)
    log.key        the log's Ed25519 signed-note key (skey text, mode 0600), made on first use
    log.vkey       its verifier key, the string clients pin
    lock           flock()ed while a process has the log open (others wait ``lock_timeout`` s, then fail)

Proofs read O(log n) complete-subtree hashes with ``pread`` from the level files, so an inclusion
proof at a million entries costs a few dozen 32-byte reads, never a rehash of the log.

Durability (``durability=``):

- ``"sync"`` (default): ``append``/``append_many`` return after the record is fsynced (fdatasync) in
  ``entries.log``. Concurrent appenders share one fsync (group commit); ``append_many`` writes a whole
  batch with one fsync. The derived files are fsynced every ``_MAX_UNSYNCED // 2`` entries (and on
  ``close``): they can always be rebuilt from ``entries.log``.
- ``"interval"``: ``append`` returns once the record is written to the OS (it survives a crash of this
  process, not a power loss); the log fsyncs on the first append once ``sync_interval`` seconds have
  passed since the last fsync, whenever ``_MAX_UNSYNCED`` entries are pending, before signing any
  checkpoint, on ``sync()`` and on ``close()`` (there is no background thread). A power loss can drop
  acknowledged appends not yet fsynced, but never an entry a signed checkpoint covers, so the log
  never has to sign a fork.

In both modes at most ``_MAX_UNSYNCED`` entries are ever written but not yet fsynced in every file.
Recovery on open relies on it: everything more than that window behind the end is durable in every
file, so only the window is re-read from ``entries.log`` (CRC checked); the first torn or corrupt
record there is a write cut by a crash and is truncated, and the derived files are rebuilt from that
point. A record that fails its checksum before the window is corruption, not a crash: ``entry()``
raises ``TransparencyLogError`` naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog

from provenance.errors import ProofError, TransparencyLogError
from provenance.tlog.base import LogEntry
from provenance.tlog.checkpoint import Checkpoint, NoteSigner, SignedCheckpoint, sign_checkpoint
from provenance.tlog.merkle import (
    HASH_SIZE,
    ConsistencyProof,
    InclusionProof,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
    subtree_root,
)

__all__ = ["DEFAULT_ORIGIN", "Durability", "LocalTransparencyLog"]

_log = structlog.get_logger(__name__)

DEFAULT_ORIGIN = "mlprov.local/tlog"
Durability = Literal["sync", "interval"]

_MAX_UNSYNCED = 4096
_MAX_DATA = 16 << 20
_HEAD = struct.Struct(">I")
_OFF = struct.Struct(">Q")
_REC_OVERHEAD = 4 + HASH_SIZE + 4


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _record(data: bytes, h: bytes) -> bytes:
    body = _HEAD.pack(len(data)) + h + data
    return body + _HEAD.pack(zlib.crc32(body))


class LocalTransparencyLog:
    """An append-only Merkle log in a directory; implements :class:`~provenance.tlog.base.TransparencyLog`."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        signer: NoteSigner | None = None,
        origin: str = DEFAULT_ORIGIN,
        durability: Durability = "sync",
        sync_interval: float = 0.05,
        lock_timeout: float = 0.0,
    ) -> None:
        if durability not in ("sync", "interval"):
            raise TransparencyLogError(f"unknown durability {durability!r}; use 'sync' or 'interval'")
        self.root = Path(root)
        self.durability: Durability = durability
        self.sync_interval = sync_interval
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._closed = False
        self._released = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise TransparencyLogError(f"cannot open the transparency log at {self.root}: {exc.strerror}") from None
        deadline = time.monotonic() + lock_timeout  # wait up to lock_timeout s for another process to close it
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                os.close(self._lock_fd)
                raise TransparencyLogError(f"the transparency log at {self.root} is open in another process") from None
        try:
            self.signer = signer or self._load_or_create_key(origin)
            self._open_files()
            self._recover()
        except BaseException:
            self._close_fds()
            raise
        self._synced = self._derived_synced = self._size
        self._last_sync = time.monotonic()
        self._checkpoint: SignedCheckpoint | None = None

    # ------------------------------------------------------------------ set-up

    def _load_or_create_key(self, origin: str) -> NoteSigner:
        key_path, vkey_path = self.root / "log.key", self.root / "log.vkey"
        try:
            if key_path.exists():
                return NoteSigner.from_skey(key_path.read_text())
            signer = NoteSigner.generate(origin)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(signer.skey + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            vkey_path.write_text(signer.vkey + "\n")
            self._fsync_dir()
            _log.info("tlog.key_created", root=str(self.root), vkey=signer.vkey)
            return signer
        except OSError as exc:
            raise TransparencyLogError(f"cannot read or create the log key in {self.root}: {exc.strerror}") from None

    def _fsync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open(self, name: str) -> int:
        return os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def _open_files(self) -> None:
        self._level_fds: list[int] = []
        self._log_fd = self._open("entries.log")
        self._off_fd = self._open("offsets.bin")
        self._level_fds.append(self._open("level-00.bin"))
        level = 1
        while (self.root / f"level-{level:02d}.bin").exists():
            self._level_fds.append(self._open(f"level-{level:02d}.bin"))
            level += 1
        self._fsync_dir()

    def _level_fd(self, level: int) -> int:
        while level >= len(self._level_fds):
            self._level_fds.append(self._open(f"level-{len(self._level_fds):02d}.bin"))
            self._fsync_dir()
        return self._level_fds[level]

    def _recover(self) -> None:
        """Re-read the possibly-unsynced tail of entries.log and rebuild the derived files from it."""
        n_off = os.fstat(self._off_fd).st_size // _OFF.size
        n_leaf = os.fstat(self._level_fds[0]).st_size // HASH_SIZE
        start = max(0, min(n_off, n_leaf) - _MAX_UNSYNCED)
        pos = 0
        if start:
            pos = _OFF.unpack(os.pread(self._off_fd, 8, start * 8))[0]
            prev = self._read_record(start - 1, _OFF.unpack(os.pread(self._off_fd, 8, (start - 1) * 8))[0])
            if prev[2] != pos or prev[1] != os.pread(self._level_fds[0], HASH_SIZE, (start - 1) * HASH_SIZE):
                raise TransparencyLogError(
                    f"the transparency log at {self.root} is corrupt before entry {start}: its files disagree"
                )
        os.ftruncate(self._off_fd, start * 8)
        os.ftruncate(self._level_fds[0], start * HASH_SIZE)
        log_size = os.fstat(self._log_fd).st_size
        offsets, leaves = bytearray(), bytearray()
        count = start
        while pos < log_size:
            try:
                _data, h, end = self._read_record(count, pos)
            except TransparencyLogError:
                _log.warning("tlog.torn_record_truncated", root=str(self.root), index=count, offset=pos,
                             dropped_bytes=log_size - pos)  # fmt: skip
                os.ftruncate(self._log_fd, pos)
                break
            offsets += _OFF.pack(pos)
            leaves += h
            pos, count = end, count + 1
        _write_all(self._off_fd, offsets)
        _write_all(self._level_fds[0], leaves)
        self._log_end = pos
        self._size = count
        # Rebuild the upper levels from the first node the window can have touched.
        level = 1
        while (count >> level) or level < len(self._level_fds):
            fd = self._level_fd(level)
            keep = start >> level
            os.ftruncate(fd, keep * HASH_SIZE)
            lower = os.pread(self._level_fds[level - 1], (count >> (level - 1)) * HASH_SIZE, 2 * keep * HASH_SIZE)
            out = bytearray()
            for i in range(0, len(lower) - HASH_SIZE, 2 * HASH_SIZE):
                out += node_hash(lower[i : i + HASH_SIZE], lower[i + HASH_SIZE : i + 2 * HASH_SIZE])
            _write_all(fd, out)
            level += 1
        self._frontier: list[bytes | None] = []
        for lvl in range(len(self._level_fds)):
            n = count >> lvl
            self._frontier.append(self._node(lvl, n - 1) if n & 1 else None)
        for fd in (self._log_fd, self._off_fd, *self._level_fds):
            os.fdatasync(fd)
        all_leaves = os.pread(self._level_fds[0], count * HASH_SIZE, 0)
        self._index = {all_leaves[i * HASH_SIZE : (i + 1) * HASH_SIZE]: i for i in range(count)}
        if count - start or start:
            _log.info("tlog.opened", root=str(self.root), size=count, rescanned=count - start)

    def _read_record(self, index: int, pos: int) -> tuple[bytes, bytes, int]:
        """(data, leaf hash, end offset) of the record at ``pos``; ``TransparencyLogError`` if torn or corrupt."""
        head = os.pread(self._log_fd, 4 + HASH_SIZE, pos)
        if len(head) < 4 + HASH_SIZE:
            raise TransparencyLogError(f"entry {index}: record at offset {pos} is cut short")
        length = _HEAD.unpack(head[:4])[0]
        rest = os.pread(self._log_fd, length + 4, pos + 4 + HASH_SIZE) if length <= _MAX_DATA else b""
        if len(rest) != length + 4:
            raise TransparencyLogError(f"entry {index}: record at offset {pos} is cut short")
        data, crc = rest[:length], _HEAD.unpack(rest[length:])[0]
        h = head[4:]
        if zlib.crc32(head + data) != crc or leaf_hash(data) != h:
            raise TransparencyLogError(f"entry {index}: record at offset {pos} fails its checksum")
        return data, h, pos + _REC_OVERHEAD + length

    # ------------------------------------------------------------------ writing

    def append(self, data: bytes) -> LogEntry:
        return self.append_many([data])[0]

    def append_many(self, items: list[bytes]) -> list[LogEntry]:
        """Append several entries with one write per file and (in ``sync`` mode) one fsync per batch."""
        results: list[LogEntry] = []
        for first in range(0, len(items), _MAX_UNSYNCED):
            chunk = items[first : first + _MAX_UNSYNCED]
            with self._lock:
                self._check_open()
                results += self._write_chunk(chunk)
                target = self._size
                if self.durability == "interval" and time.monotonic() - self._last_sync >= self.sync_interval:
                    self._sync_to(target)
            if self.durability == "sync":
                self._sync_to(target)
        return results

    def _write_chunk(self, chunk: list[bytes]) -> list[LogEntry]:
        if self._size - self._derived_synced + len(chunk) > _MAX_UNSYNCED:
            self._sync_to(self._size, derived=True)
        records, offsets = bytearray(), bytearray()
        levels: list[bytearray] = []
        out: list[LogEntry] = []
        fresh: dict[bytes, int] = {}
        size, end = self._size, self._log_end
        for data in chunk:
            if len(data) > _MAX_DATA:
                raise TransparencyLogError(f"a log entry is at most {_MAX_DATA} bytes, got {len(data)}")
            h = leaf_hash(data)
            known = self._index.get(h, fresh.get(h))
            if known is not None:
                out.append(LogEntry(known, data, h))
                continue
            rec = _record(data, h)
            offsets += _OFF.pack(end + len(records))
            records += rec
            fresh[h] = size
            out.append(LogEntry(size, data, h))
            size += 1
            node, level = h, 0
            while True:
                if level == len(levels):
                    levels.append(bytearray())
                if level == len(self._frontier):
                    self._frontier.append(None)
                levels[level] += node
                left = self._frontier[level]
                if left is None:
                    self._frontier[level] = node
                    break
                self._frontier[level] = None
                node, level = node_hash(left, node), level + 1
        if not records:
            return out
        try:
            _write_all(self._log_fd, records)
            _write_all(self._off_fd, offsets)
            for level, buf in enumerate(levels):
                _write_all(self._level_fd(level), buf)
        except OSError as exc:
            self._closed = True  # files may now be inconsistent: reopening recovers them
            msg = f"cannot append to the transparency log at {self.root}: {exc.strerror}"
            raise TransparencyLogError(msg) from None
        self._index.update(fresh)
        self._log_end = end + len(records)
        self._size = size
        return out

    def _sync_to(self, target: int, *, derived: bool = False) -> None:
        """Make entries below ``target`` durable in entries.log (and the derived files every half window, or
        when ``derived``); concurrent callers share one fsync (group commit)."""
        # Lock order is _lock -> _sync_lock, so this never takes _lock. Every write below _size happened
        # before _size was raised, to a descriptor already in the lists: read the size first, then the fds.
        with self._sync_lock:
            upto = self._size
            with_derived = derived or upto - self._derived_synced >= _MAX_UNSYNCED // 2
            if self._synced >= target and not with_derived:
                return
            fds = [self._log_fd, self._off_fd, *list(self._level_fds)] if with_derived else [self._log_fd]
            try:
                for fd in fds:
                    os.fdatasync(fd)
            except OSError as exc:
                msg = f"cannot fsync the transparency log at {self.root}: {exc.strerror}"
                raise TransparencyLogError(msg) from None
            self._synced = max(self._synced, upto)
            if with_derived:
                self._derived_synced = max(self._derived_synced, upto)
            self._last_sync = time.monotonic()

    def sync(self) -> None:
        """Make every appended entry durable now."""
        self._sync_to(self._size)

    # ------------------------------------------------------------------ reading

    def size(self) -> int:
        return self._size

    @property
    def origin(self) -> str:
        return self.signer.name

    @property
    def verifier_key(self) -> str:
        """The note verifier key (``vkey``) clients pin to check this log's checkpoints."""
        return self.signer.vkey

    def _check_open(self) -> None:
        if self._closed:
            raise TransparencyLogError(f"the transparency log at {self.root} is closed")

    def _node(self, level: int, index: int) -> bytes:
        h = os.pread(self._level_fds[level], HASH_SIZE, index * HASH_SIZE)
        if len(h) != HASH_SIZE:
            raise TransparencyLogError(f"the transparency log at {self.root} lacks node {index} of level {level}")
        return h

    def entry(self, index: int) -> LogEntry:
        with self._lock:
            self._check_open()
            if not 0 <= index < self._size:
                raise TransparencyLogError(f"no log entry {index}: the log has {self._size} entries")
            pos = _OFF.unpack(os.pread(self._off_fd, 8, index * 8))[0]
            data, h, _end = self._read_record(index, pos)
        return LogEntry(index, data, h)

    def find(self, leaf_hash: bytes) -> LogEntry | None:
        index = self._index.get(bytes(leaf_hash))
        return None if index is None else self.entry(index)

    def root_hash(self, tree_size: int | None = None) -> bytes:
        with self._lock:
            self._check_open()
            size = self._checked_size(tree_size)
            return subtree_root(self._node, 0, size)

    def _checked_size(self, tree_size: int | None) -> int:
        size = self._size if tree_size is None else tree_size
        if not 0 <= size <= self._size:
            raise ProofError(f"tree size {size} is beyond the log's {self._size} entries")
        return size

    def checkpoint(self) -> SignedCheckpoint:
        with self._lock:
            self._check_open()
            self._sync_to(self._size)  # never sign over entries a power loss could still drop
            if self._checkpoint is None or self._checkpoint.size != self._size:
                body = Checkpoint(self.origin, self._size, subtree_root(self._node, 0, self._size))
                self._checkpoint = sign_checkpoint(body, self.signer)
            return self._checkpoint

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        with self._lock:
            self._check_open()
            size = self._checked_size(tree_size)
            return InclusionProof(index, size, tuple(inclusion_path(self._node, index, size)))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        with self._lock:
            self._check_open()
            size = self._checked_size(new_size)
            return ConsistencyProof(old_size, size, tuple(consistency_path(self._node, old_size, size)))

    # ------------------------------------------------------------------ lifecycle

    def _close_fds(self) -> None:
        for fd in (getattr(self, "_log_fd", None), getattr(self, "_off_fd", None), *getattr(self, "_level_fds", [])):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)  # closing the descriptor releases the flock

    def close(self) -> None:
        """Fsync what is pending and release the directory."""
        with self._lock:
            if self._released:
                return
            try:
                if not self._closed:
                    self._sync_to(self._size, derived=True)
            finally:
                self._closed = self._released = True
                self._close_fds()

    def __enter__(self) -> LocalTransparencyLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
