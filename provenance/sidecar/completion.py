"""When is an artifact of ``outputs/`` complete? The sidecar's completion rules, free of threads and events.

An *artifact* is a top-level entry of ``outputs/``: a file or a directory. :class:`CompletionTracker` is a
state machine driven by hints (``observe``, ``renamed``, ``removed``, ``finish``) and by
:meth:`CompletionTracker.due`, which re-stats what is due and returns the artifacts that are complete.
It never trusts an event alone: every report is preceded by a fresh :func:`take_snapshot` that must
equal the previous one (the *re-check right before reporting*). An artifact is complete when, first of:

* ``renamed``: it was renamed into place (a ``moved_to`` of a non-temporary name; a directory renamed
  into place counts too: that is the atomic-publish idiom) and is unchanged ``recheck_interval`` later;
  with :attr:`CompletionRules.overlap_rename_recheck` it is reported at once instead, carrying
  :attr:`FinishedArtifact.confirm_at`: the consumer (the sidecar) hashes and signs meanwhile and makes
  its final fingerprint comparison no earlier than that time, so the same "unchanged ``recheck_interval``
  after the rename" holds before anything is kept, without the wait on the capture's path;
* ``marker``: it is a directory holding a completion marker (``_SUCCESS``, ``.complete``) at its top and
  is unchanged ``recheck_interval`` later; the marker itself is not part of the artifact (excluded
  from ``size``; :attr:`FinishedArtifact.marker` names it so the hasher can leave it out);
* ``stable``: its size and mtime (for a directory: every file's) did not change for
  ``stable_interval``; a directory still holding temporary files (``*.part`` ...) is not stable;
* ``job-exit``: after :meth:`CompletionTracker.finish` (the job exited), whatever is pending is
  complete once unchanged for ``exit_settle_interval`` (nothing writes any more; flush all).

**Versions.** A reported artifact stays tracked. If it changes later (rewritten in place, or another
file renamed over it), the change is not silent: once complete again it is reported anew with
``generation`` + 1. A name deleted and created again also gets the next generation.

**Restart.** :meth:`CompletionTracker.adopt` seeds the tracker from the durable ledger
(:class:`provenance.sidecar.spool.ArtifactLedger`): an artifact whose fingerprint equals the signed one is
not reported again; a different one is reported as the next generation.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "DEFAULT_MARKERS",
    "DEFAULT_TEMP_PATTERNS",
    "CompletionRules",
    "CompletionTracker",
    "FinishReason",
    "FinishedArtifact",
    "IgnoreRules",
    "Snapshot",
    "fingerprint",
    "take_snapshot",
]

FinishReason = Literal["renamed", "marker", "stable", "job-exit"]

DEFAULT_MARKERS: tuple[str, ...] = ("_SUCCESS", ".complete")
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (".*", "~*")
"""Hidden files and editor/office lock files: never artifacts."""
DEFAULT_TEMP_PATTERNS: tuple[str, ...] = ("*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp")
"""Files still being written: never artifacts at the top, and they keep a directory from being stable."""


@dataclass(frozen=True)
class IgnoreRules:
    """Which names are not artifacts (matched case-sensitively with :mod:`fnmatch` on the base name)."""

    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE_PATTERNS
    temp_patterns: tuple[str, ...] = DEFAULT_TEMP_PATTERNS

    def is_temporary(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.temp_patterns)

    def is_ignored(self, name: str) -> bool:
        """A top-level name the watcher never reports: hidden, lock or temporary."""
        return self.is_temporary(name) or any(fnmatch.fnmatchcase(name, p) for p in self.ignore_patterns)


@dataclass(frozen=True)
class CompletionRules:
    """The knobs of completion; :class:`provenance.sidecar.config.SidecarSettings` builds one."""

    stable_interval: float = 2.0
    recheck_interval: float = 0.05
    exit_settle_interval: float = 0.3
    overlap_rename_recheck: bool = False
    """Report a renamed artifact at once with ``confirm_at`` = rename + ``recheck_interval`` (see the module
    docstring); the consumer must not keep its work before comparing the fingerprint at or after that time."""
    markers: tuple[str, ...] = DEFAULT_MARKERS
    ignore: IgnoreRules = field(default_factory=IgnoreRules)


@dataclass(frozen=True)
class Snapshot:
    """What one ``stat`` pass saw of an artifact. Equal snapshots mean nothing was written in between."""

    is_dir: bool
    size: int
    """Bytes; for a directory the sum over its files, completion markers at its top excluded."""
    mtime_ns: int
    """Newest modification time (for a directory: of any file or subdirectory in it)."""
    fingerprint: str
    """SHA-256 over (path, type, size, mtime_ns, inode) of every entry (a directory's top-level completion
    markers excluded, as they are from its size and digest): identity of this version."""
    marker: str | None = None
    """The completion marker found at the directory's top, if any."""
    in_progress: bool = False
    """The directory holds files with temporary names."""


@dataclass(frozen=True)
class FinishedArtifact:
    """One complete artifact (an item of the watcher's queue)."""

    path: Path
    name: str
    is_dir: bool
    size: int
    mtime: float
    reason: FinishReason
    generation: int
    fingerprint: str
    """Compare with :func:`fingerprint` after hashing: equal means the bytes hashed are the ones reported."""
    marker: str | None = None
    """Directory only: the marker file at its top, not part of the artifact."""
    confirm_at: float | None = None
    """Reported early (``overlap_rename_recheck``): the tracker-clock time (``time.monotonic`` in the watcher)
    before which the final :func:`fingerprint` comparison must not be made. ``None``: already re-checked."""


def _line(rel: str, st: os.stat_result) -> str:
    kind = "d" if stat.S_ISDIR(st.st_mode) else "f" if stat.S_ISREG(st.st_mode) else "o"
    return f"{rel}\0{kind}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n"


def _walk(root: Path, rel: str, out: list[tuple[str, os.stat_result]]) -> None:
    try:
        with os.scandir(root / rel if rel else root) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        out.append((child, st))
        if stat.S_ISDIR(st.st_mode):
            _walk(root, child, out)


def take_snapshot(path: Path, rules: CompletionRules | None = None) -> Snapshot | None:
    """Stat ``path`` (recursively for a directory); ``None`` when it is gone or is a symlink/special file."""
    rules = rules or CompletionRules()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256(_line("", st).encode()).hexdigest()
        return Snapshot(is_dir=False, size=st.st_size, mtime_ns=st.st_mtime_ns, fingerprint=digest)
    if not stat.S_ISDIR(st.st_mode):
        return None
    entries: list[tuple[str, os.stat_result]] = []
    _walk(path, "", entries)
    entries.sort(key=lambda e: e[0])
    h = hashlib.sha256(_line("", st).encode())
    size, newest, marker, in_progress = 0, st.st_mtime_ns, None, False
    for rel, est in entries:
        base = rel.rsplit("/", 1)[-1]
        if "/" not in rel and base in rules.markers and stat.S_ISREG(est.st_mode):
            # not part of the artifact: writing into the marker after it appeared is no new version
            marker = marker or base
            continue
        h.update(_line(rel, est).encode())
        newest = max(newest, est.st_mtime_ns)
        if not stat.S_ISREG(est.st_mode):
            continue
        size += est.st_size
        in_progress = in_progress or rules.ignore.is_temporary(base)
    return Snapshot(True, size, newest, h.hexdigest(), marker, in_progress)


def fingerprint(path: Path) -> str | None:
    """The fingerprint of ``path`` as it is now (``None`` when gone): equal to the reported one means unchanged."""
    snap = take_snapshot(path)
    return snap.fingerprint if snap else None


@dataclass
class _Entry:
    generation: int
    last: Snapshot | None = None
    since: float = 0.0
    """Monotonic time of the last change seen (snapshot differed, or an event for a directory)."""
    check_at: float | None = None
    renamed: bool = False
    reported: Snapshot | None = None
    """Set once reported; the entry is then *finished* until a change is confirmed."""

    @property
    def pending(self) -> bool:
        return self.reported is None


class CompletionTracker:
    """Per-artifact completion state of one ``outputs/`` directory. Not thread-safe: one owner thread."""

    def __init__(self, outputs: Path, rules: CompletionRules | None = None) -> None:
        self.outputs = Path(outputs)
        self.rules = rules or CompletionRules()
        self._entries: dict[str, _Entry] = {}
        self._gone: dict[str, int] = {}
        """Last generation of names that were deleted, so that a re-created name gets the next one."""
        self.exiting = False

    # -- hints -------------------------------------------------------------------------------------
    def _snap(self, name: str) -> Snapshot | None:
        return take_snapshot(self.outputs / name, self.rules)

    def _new(self, name: str, generation: int | None = None) -> _Entry:
        gen = generation if generation is not None else self._gone.pop(name, 0) + 1
        entry = _Entry(generation=gen)
        self._entries[name] = entry
        return entry

    def _settle(self) -> float:
        return self.rules.exit_settle_interval if self.exiting else self.rules.stable_interval

    def _reopen(self, entry: _Entry, snap: Snapshot, now: float) -> None:
        """A reported artifact changed: it is pending again as the next generation."""
        entry.generation += 1
        entry.reported = None
        entry.last, entry.since, entry.renamed = snap, now, False
        entry.check_at = now + self._settle()

    def observe(self, name: str, now: float, *, marker: bool = False) -> None:
        """Something happened at or below ``outputs/name`` (created, written, closed, a child moved).

        ``marker``: the event's path was a completion marker at the top of the directory ``name``.
        """
        entry = self._entries.get(name)
        if entry is None:
            snap = self._snap(name)
            if snap is None:
                return
            entry = self._new(name)
            entry.last, entry.since = snap, now
            entry.check_at = now + (self.rules.recheck_interval if snap.marker else self._settle())
            return
        if entry.last is not None and not entry.last.is_dir:
            snap = self._snap(name)  # one stat: cheap enough on every event
            if snap is None:
                self.removed(name)
                return
            if entry.reported is not None:
                if snap.fingerprint != entry.reported.fingerprint:
                    self._reopen(entry, snap, now)
                return
            if snap != entry.last:
                entry.last, entry.since, entry.renamed = snap, now, False
            entry.check_at = entry.since + (self.rules.recheck_interval if entry.renamed else self._settle())
            return
        # A directory: walking it on every event would be quadratic; note the change, check later.
        soon = now + self.rules.recheck_interval
        if entry.renamed:
            return  # events of the rename itself; the due check compares the whole tree with the renamed one
        if entry.reported is not None:
            entry.check_at = soon if entry.check_at is None else min(entry.check_at, soon)
            return
        entry.since = now
        target = soon if marker else now + self._settle()
        # Never postpone a check already planned (a marker's event may be followed by its directory's).
        entry.check_at = target if entry.check_at is None else min(entry.check_at, target)

    def renamed(self, name: str, now: float) -> None:
        """``name`` was renamed into place (``moved_to``): complete once unchanged for ``recheck_interval``."""
        snap = self._snap(name)
        if snap is None:
            return
        entry = self._entries.get(name)
        if entry is None:
            entry = self._new(name)
        elif entry.reported is not None:
            if snap.fingerprint == entry.reported.fingerprint:
                return
            entry.generation += 1
            entry.reported = None
        entry.last, entry.since, entry.renamed = snap, now, True
        entry.check_at = now if self.rules.overlap_rename_recheck else now + self.rules.recheck_interval

    def removed(self, name: str) -> None:
        """``outputs/name`` is gone (deleted or renamed away)."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._gone[name] = entry.generation if entry.reported is not None else entry.generation - 1

    def adopt(self, name: str, generation: int, signed_fingerprint: str, now: float) -> None:
        """Seed from the durable ledger after a restart: ``generation`` of ``name`` was already signed."""
        snap = self._snap(name)
        if snap is None:
            self._gone[name] = generation
            return
        entry = self._new(name, generation)
        if snap.fingerprint == signed_fingerprint:
            entry.reported, entry.last = snap, snap
            return
        entry.generation += 1
        entry.last, entry.since = snap, now
        entry.check_at = now + self._settle()

    def finish(self, now: float) -> None:
        """The job exited: from now on pending artifacts complete after ``exit_settle_interval``."""
        self.exiting = True
        for entry in self._entries.values():
            if entry.pending:
                entry.check_at = min(entry.check_at or now, entry.since + self.rules.exit_settle_interval)

    # -- checks ------------------------------------------------------------------------------------
    def next_check(self) -> float | None:
        """The earliest time :meth:`due` has work; ``None`` when nothing is pending."""
        times = [e.check_at for e in self._entries.values() if e.check_at is not None]
        return min(times) if times else None

    def idle(self) -> bool:
        """Nothing pending or awaiting a check."""
        return all(e.check_at is None for e in self._entries.values())

    def pending_names(self) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.pending)

    def tracked(self) -> Iterable[str]:
        return list(self._entries)

    def due(self, now: float) -> list[FinishedArtifact]:
        """Re-stat every artifact whose check is due; return those complete now, in name order."""
        finished = []
        for name in sorted(self._entries):
            entry = self._entries.get(name)
            if entry is None or entry.check_at is None or entry.check_at > now:
                continue
            done = self._check(name, entry, now)
            if done is not None:
                finished.append(done)
        return finished

    def _check(self, name: str, entry: _Entry, now: float) -> FinishedArtifact | None:
        snap = self._snap(name)
        if snap is None:
            self.removed(name)
            return None
        if entry.reported is not None:  # finished: did it really change?
            entry.check_at = None
            if snap.fingerprint != entry.reported.fingerprint:
                self._reopen(entry, snap, now)
            return None
        if snap != entry.last:
            entry.last, entry.since, entry.renamed = snap, now, False
            entry.check_at = now + (self.rules.recheck_interval if snap.marker else self._settle())
            return None
        # Unchanged since ``entry.since``: this stat is the re-check right before reporting.
        quiet = now - entry.since + 1e-9  # float times: 0.7 - 0.6 must count as 0.1
        reason: FinishReason | None = None
        confirm_at: float | None = None
        if entry.renamed and quiet >= self.rules.recheck_interval:
            reason = "renamed"
        elif entry.renamed and self.rules.overlap_rename_recheck:
            reason, confirm_at = "renamed", entry.since + self.rules.recheck_interval
        elif snap.marker and quiet >= self.rules.recheck_interval:
            reason = "marker"
        elif self.exiting and quiet >= self.rules.exit_settle_interval:
            reason = "job-exit"
        elif quiet >= self.rules.stable_interval and not snap.in_progress:
            reason = "stable"
        if reason is None:
            wait = self.rules.recheck_interval if (entry.renamed or snap.marker) else self._settle()
            entry.check_at = max(entry.since + wait, now + (self.rules.stable_interval if quiet >= wait else 0.0))
            return None
        entry.reported, entry.check_at, entry.renamed = snap, None, False
        return FinishedArtifact(
            path=self.outputs / name,
            name=name,
            is_dir=snap.is_dir,
            size=snap.size,
            mtime=snap.mtime_ns / 1e9,
            reason=reason,
            generation=entry.generation,
            fingerprint=snap.fingerprint,
            marker=snap.marker,
            confirm_at=confirm_at,
        )
