"""The embedded ``LogBus``: a durable append-only log in segment files, with committed consumer offsets.

Layout under ``directory`` (``$MLPROV_HOME/logs/bus/``)::

    00000000000000000000.log     segments: JSON lines, each a record plus ``"o"``, its offset;
    00000000000000512000.log     a segment is named by the offset of its first line
    consumer-index.offset        per consumer group: the next offset to deliver (atomic rename)

Durability policy (documented trade-off, as Kafka's ``log.flush.*`` settings are):

* every ``publish``/``publish_many`` call hands its lines to the kernel with one ``write`` before it
  returns, so a crash of the controller process loses nothing it accepted;
* ``fsync`` is batched: a background thread syncs the active segment at most every
  ``fsync_interval`` seconds (default 1 s) when something was written, and ``flush``/``close`` sync at
  once. A power loss can lose at most the last ``fsync_interval`` of lines.
* on open, a torn last line (a crash mid-write) is cut off, and offsets resume after the last whole
  line, or after the highest committed consumer offset if a power loss lost lines a consumer had
  already processed (offsets are never reused, so the index's idempotency keys stay unique).

Consumers read recent records from an in-memory tail (the last ``tail_records`` published by this
process, no JSON decoding) and fall back to the segment files when behind it (after a restart, or
when the index lags by more than the tail).

Delivery is at-least-once: a :class:`LocalLogConsumer` commits its offset only when asked, after
the index accepted the batch; after a crash it redelivers from the committed offset.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO, Any

from controller.logs.base import LogError, LogRecord

__all__ = ["LocalLogBus", "LocalLogConsumer"]

_SUFFIX = ".log"
_READ_CHUNK = 1 << 20
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _line_encoder() -> Callable[[dict[str, Any]], str]:
    """``_ENCODER.encode`` without its per-call set-up: the C encoder built once (measured 1.5x faster per
    record; ``to_dict`` output is plain JSON data, so its circular-reference check is not needed)."""
    make = getattr(json.encoder, "c_make_encoder", None)  # private to json; not in typeshed
    if make is None:  # an interpreter without the C accelerator
        return _ENCODER.encode
    encoder = make(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True)
    return lambda data: "".join(encoder(data, 0))


_ENCODE = _line_encoder()


def _segment_name(base: int) -> str:
    return f"{base:020d}{_SUFFIX}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class LocalLogBus:
    """Segments of JSON lines under ``directory``; thread-safe; one writer process at a time."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync_interval: float = 1.0,
        keep_consumed_segments: int = 2,
        tail_records: int = 100_000,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._fsync_interval = fsync_interval
        self._keep_consumed = keep_consumed_segments
        self._lock = threading.Lock()
        self._data = threading.Condition(self._lock)
        self._closed = False
        self._dirty = False
        self._bases: list[int] = []
        self._next = 0
        self._size = 0
        self._fh: IO[bytes] = self._recover()
        self._tail_cap = tail_records
        self._tail: list[LogRecord] = []
        self._tail_base = self._next  # offset of self._tail[0]
        self._consumers: list[LocalLogConsumer] = []
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="mlprov-logbus-fsync", daemon=True)
        self._flusher.start()

    # -- recovery -----------------------------------------------------------------------------
    def _recover(self) -> IO[bytes]:
        self._bases = sorted(int(p.name[: -len(_SUFFIX)]) for p in self.directory.glob(f"*{_SUFFIX}"))
        committed = max((self._read_offset_file(p) for p in self.directory.glob("consumer-*.offset")), default=0)
        if not self._bases:
            self._bases = [committed]
            self._next = committed
            return self._open_segment(committed)
        last = self.directory / _segment_name(self._bases[-1])
        data = last.read_bytes()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):  # a torn line from a crash mid-write: cut it off
            with last.open("r+b") as fh:
                fh.truncate(whole)
        self._next = self._bases[-1] + data.count(b"\n", 0, whole)
        if committed > self._next:  # lines a consumer processed were lost (power loss): never reuse offsets
            self._next = committed
            self._bases.append(committed)
            return self._open_segment(committed)
        self._size = whole
        return last.open("ab", buffering=0)

    @staticmethod
    def _read_offset_file(path: Path) -> int:
        try:
            return int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _open_segment(self, base: int) -> IO[bytes]:
        self._size = 0
        fh = (self.directory / _segment_name(base)).open("ab", buffering=0)
        self._fsync_dir()
        return fh

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- producing ----------------------------------------------------------------------------
    def publish(self, record: LogRecord) -> None:
        self.publish_many((record,))

    def publish_many(self, records: Iterable[LogRecord]) -> None:
        """Append ``records`` (one ``write``); raises :class:`LogError` if the bus is closed or the disk fails."""
        batch = [r if r.id is None else replace(r, id=None) for r in records]
        encoded = [_ENCODE(r.to_dict()) for r in batch]
        if not encoded:
            return
        with self._lock:
            if self._closed:
                raise LogError("the log bus is closed")
            first = self._next
            buf = "".join(f'{{"o":{first + i},{line[1:]}\n' for i, line in enumerate(encoded)).encode()
            try:
                self._fh.write(buf)
                self._size += len(buf)
                self._next = first + len(encoded)
                self._dirty = True
                for i, r in enumerate(batch):
                    # The bus owns a record once published: it stamps the record's position into it
                    # (records are frozen for their users; this one write happens before anyone reads
                    # it back). A record that already had an id was copied above, never re-stamped.
                    object.__setattr__(r, "id", f"local:{first + i}")
                self._remember(batch)
                if self._size >= self._segment_bytes:
                    self._rotate()
            except OSError as exc:
                raise LogError(f"cannot append to the log bus in {self.directory}: {exc}") from exc
            self._data.notify_all()

    def _remember(self, batch: list[LogRecord]) -> None:
        self._tail.extend(batch)
        excess = len(self._tail) - self._tail_cap
        if excess > self._tail_cap // 4:  # trim in steps: amortised O(1) per record
            del self._tail[:excess]
            self._tail_base += excess

    def _from_tail(self, offset: int, max_records: int) -> list[LogRecord] | None:
        """Records from ``offset`` out of memory, or None when ``offset`` is older than the tail."""
        with self._lock:
            if offset < self._tail_base:
                return None
            start = offset - self._tail_base
            return self._tail[start : start + max_records]

    def _rotate(self) -> None:
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._bases.append(self._next)
        self._fh = self._open_segment(self._next)
        self._dirty = False

    @property
    def end_offset(self) -> int:
        """The offset the next published record will get."""
        with self._lock:
            return self._next

    def flush(self) -> None:
        """``fsync`` the active segment now."""
        with self._lock:
            if not self._closed and self._dirty:
                os.fsync(self._fh.fileno())
                self._dirty = False

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._fsync_interval):
            try:
                self.flush()
            except OSError:  # the next publish reports a failing disk to its caller
                continue

    def close(self) -> None:
        self._stop.set()
        if self._flusher.is_alive() and threading.current_thread() is not self._flusher:
            self._flusher.join(timeout=5)
        with self._lock:
            if self._closed:
                return
            if self._dirty:
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._closed = True
            self._data.notify_all()
            consumers, self._consumers = self._consumers, []
        for reader in consumers:
            reader.close()

    # -- consuming ----------------------------------------------------------------------------
    def consumer(self, group: str = "index") -> LocalLogConsumer:
        """A reader for ``group`` from its committed offset; closed with the bus at the latest."""
        reader = LocalLogConsumer(self, group)
        with self._lock:
            self._consumers.append(reader)
        return reader

    def wait_for(self, offset: int, timeout: float) -> bool:
        """Wait until a record at ``offset`` exists (True) or ``timeout`` passes / the bus closes (False)."""
        with self._data:
            return self._data.wait_for(lambda: self._next > offset or self._closed, timeout) and self._next > offset

    def _segments(self) -> list[int]:
        with self._lock:
            return list(self._bases)

    def prune(self, consumed: int) -> None:
        """Delete segments entirely below ``consumed``, keeping the newest ``keep_consumed_segments`` of them."""
        with self._lock:
            # segment i ends where segment i+1 begins; the active (last) segment is never deleted
            done = [b for i, b in enumerate(self._bases[:-1]) if self._bases[i + 1] <= consumed]
            doomed = done[: max(0, len(done) - self._keep_consumed)]
            for base in doomed:
                (self.directory / _segment_name(base)).unlink(missing_ok=True)
            self._bases = [b for b in self._bases if b not in set(doomed)]


class LocalLogConsumer:
    """Reads a :class:`LocalLogBus` from the group's committed offset; see :class:`controller.logs.base.LogConsumer`."""

    def __init__(self, bus: LocalLogBus, group: str) -> None:
        if not group.replace("-", "").replace("_", "").isalnum():
            raise LogError(f"consumer group {group!r}: use letters, digits, '-' and '_'")
        self._bus = bus
        self._offset_file = bus.directory / f"consumer-{group}.offset"
        self._committed = LocalLogBus._read_offset_file(self._offset_file)
        self._position = self._committed  # next offset to read
        self._fh: IO[bytes] | None = None
        self._base = -1  # base offset of the open segment
        self._pending = b""

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def position(self) -> int:
        return self._position

    def _open_at(self, offset: int) -> None:
        """Open the segment holding ``offset`` and skip to its line (or the next segment after a gap)."""
        if self._fh is not None:
            self._fh.close()
        bases = self._bus._segments()
        i = bisect.bisect_right(bases, offset) - 1
        if i < 0:  # pruned history: resume at the oldest kept line
            i, offset = 0, bases[0]
            self._position = offset
        self._base = bases[i]
        self._fh = (self._bus.directory / _segment_name(self._base)).open("rb")
        self._pending = b""
        skip = offset - self._base
        while skip > 0:
            line = self._fh.readline()
            if not line.endswith(b"\n"):  # fewer lines than expected: a gap left by a power loss
                self._position = self._base + (offset - self._base - skip)
                break
            skip -= 1

    def poll(self, max_records: int, timeout: float) -> Sequence[LogRecord]:
        if not self._bus.wait_for(self._position, timeout):
            return []
        recent = self._bus._from_tail(self._position, max_records)
        if recent is not None:
            self._position += len(recent)
            if self._fh is not None:  # the file position is stale now; reopen if we ever fall behind
                self._fh.close()
                self._fh = None
            return recent
        if self._fh is None:
            self._open_at(self._position)
        out: list[LogRecord] = []
        while len(out) < max_records:
            assert self._fh is not None
            chunk = self._fh.read(_READ_CHUNK)
            if not chunk:
                bases = self._bus._segments()
                later = [b for b in bases if b > self._base]
                if not later or self._pending:
                    break
                # the writer moved on: the current segment is complete (read it dry above)
                self._position = max(self._position, later[0])
                self._open_at(self._position)
                continue
            data = self._pending + chunk
            end = data.rfind(b"\n") + 1
            self._pending = data[end:]
            lines = data[: end - 1].split(b"\n") if end else []
            room = max_records - len(out)
            if len(lines) > room:  # give the rest back to the file for the next poll
                unread = sum(len(line) + 1 for line in lines[room:]) + len(self._pending)
                self._fh.seek(-unread, os.SEEK_CUR)
                self._pending = b""
                lines = lines[:room]
            for line in lines:
                data_dict = json.loads(line)
                offset = data_dict.pop("o")
                data_dict["id"] = f"local:{offset}"
                out.append(LogRecord.from_dict(data_dict))
                self._position = offset + 1
        return out

    def commit(self) -> None:
        if self._position == self._committed:
            return
        try:
            _write_atomic(self._offset_file, f"{self._position}\n")
        except OSError as exc:
            raise LogError(f"cannot commit the consumer offset {self._offset_file}: {exc}") from exc
        self._committed = self._position
        self._bus.prune(self._committed)

    def rewind(self) -> None:
        """Go back to the committed offset (after the index refused a batch, to redeliver it)."""
        self._position = self._committed
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
