"""A bounded on-disk FIFO of Kafka messages the producer could not hand to the broker.

One append-only file ``spill.jsonl`` (one message per line: topic, key, value, headers, all UTF-8
text) and ``spill.head``, the byte offset of the first message not yet re-sent. ``append`` fsyncs, so a
spilled line survives a crash; ``peek`` reads from the head; ``advance`` moves the head once the broker
acknowledged what was peeked, and removes both files when everything was drained. A crash between a
re-send and ``advance`` re-sends those messages again (at-least-once; the consumer side is idempotent
on the broker position, so a duplicate is a second copy in Kafka, never a lost line).

Bounded: ``max_bytes`` of pending data; beyond it ``append`` refuses and returns how many it refused,
so the caller can count and report drops instead of blocking a job. Not thread-safe: the bus locks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.logs.base import LogError

__all__ = ["DiskSpill", "SpillEntry"]

_DATA = "spill.jsonl"
_HEAD = "spill.head"


@dataclass(frozen=True, slots=True)
class SpillEntry:
    topic: str
    key: str
    value: str
    headers: tuple[tuple[str, str], ...] = ()

    def to_line(self) -> bytes:
        data = {"t": self.topic, "k": self.key, "v": self.value, "h": [list(h) for h in self.headers]}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> SpillEntry:
        data = json.loads(line)
        return cls(data["t"], data["k"], data["v"], tuple((str(k), str(v)) for k, v in data["h"]))


class DiskSpill:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LogError(f"cannot create the Kafka spill directory {self.directory}: {exc}") from exc
        self._data = self.directory / _DATA
        self._head_file = self.directory / _HEAD
        self._head = int(self._head_file.read_text() or 0) if self._head_file.is_file() else 0
        self._size = self._data.stat().st_size if self._data.is_file() else 0
        if self._head > self._size:  # the data file was lost: nothing to drain
            self._head = self._size

    @property
    def pending_bytes(self) -> int:
        return self._size - self._head

    @property
    def empty(self) -> bool:
        return self._size <= self._head

    def append(self, entries: Sequence[SpillEntry]) -> int:
        """Write ``entries`` durably (in order); returns how many were refused because the spill is full."""
        lines: list[bytes] = []
        room = self.max_bytes - self.pending_bytes
        for i, entry in enumerate(entries):
            line = entry.to_line()
            if len(line) > room:
                refused = len(entries) - i
                break
            lines.append(line)
            room -= len(line)
        else:
            refused = 0
        if lines:
            blob = b"".join(lines)
            try:
                with self._data.open("ab") as handle:
                    handle.write(blob)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise LogError(f"cannot spill Kafka messages to {self._data}: {exc}") from exc
            self._size += len(blob)
        return refused

    def peek(self, max_entries: int) -> tuple[list[SpillEntry], int]:
        """Up to ``max_entries`` from the head, and the offset to :meth:`advance` to once they are sent."""
        if self.empty:
            return [], self._head
        out: list[SpillEntry] = []
        with self._data.open("rb") as handle:
            handle.seek(self._head)
            position = self._head
            while len(out) < max_entries:
                line = handle.readline()
                if not line.endswith(b"\n"):  # end of file (or a torn last line from a crash: skipped)
                    break
                out.append(SpillEntry.from_line(line))
                position += len(line)
        return out, position

    def advance(self, offset: int) -> None:
        """The messages before ``offset`` reached the broker; forget them (files go when all are)."""
        try:
            if offset >= self._size:
                self._data.unlink(missing_ok=True)
                self._head_file.unlink(missing_ok=True)
                self._head = self._size = 0
                return
            tmp = self._head_file.with_suffix(".tmp")
            tmp.write_text(f"{offset}\n")
            os.replace(tmp, self._head_file)
            self._head = offset
        except OSError as exc:
            raise LogError(f"cannot record the Kafka spill position in {self.directory}: {exc}") from exc
