"""The sidecar watcher against a real directory, with inotify and with the polling fallback (short intervals)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provenance.sidecar.completion import CompletionRules, FinishedArtifact
from provenance.sidecar.spool import ArtifactLedger
from provenance.sidecar.watcher import ObserverLike, WatchConfig, Watcher

FAST = CompletionRules(stable_interval=0.4, recheck_interval=0.05, exit_settle_interval=0.1)
SLOW_STABLE = CompletionRules(stable_interval=30.0, recheck_interval=0.05, exit_settle_interval=0.1)


def _config(rules: CompletionRules = FAST, *, polling: bool = False) -> WatchConfig:
    return WatchConfig(rules=rules, use_polling=polling, poll_interval=0.1, rescan_interval=5.0)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "workspace" / "outputs"
    out.mkdir(parents=True)
    return out


@pytest.fixture
def watcher_factory(outputs: Path) -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop()


def _start(started: list[Watcher], outputs: Path, config: WatchConfig, **kw: object) -> Watcher:
    w = Watcher(outputs, config, **kw)  # type: ignore[arg-type]  # kw are the keyword-only options
    started.append(w)
    return w.start()


def _next(w: Watcher, timeout: float = 5.0) -> FinishedArtifact:
    item = w.get(timeout=timeout)
    assert item is not None, f"no artifact reported within {timeout} s (pending: {w.pending()})"
    return item


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def test_file_renamed_into_place_is_reported_without_waiting_for_stability(
    outputs: Path, watcher_factory: list[Watcher]
) -> None:
    w = _start(watcher_factory, outputs, _config(SLOW_STABLE))
    tmp = outputs / ".model.safetensors.tmp"
    _write(tmp, b"weights" * 1000)
    t0 = time.monotonic()
    os.replace(tmp, outputs / "model.safetensors")
    item = _next(w)
    assert time.monotonic() - t0 < 2.0  # far below the 30 s stable interval
    assert (item.name, item.reason, item.generation, item.is_dir) == ("model.safetensors", "renamed", 1, False)
    assert item.size == 7000
    assert item.path == outputs / "model.safetensors"
    assert w.get(timeout=0.3) is None  # exactly once; the temporary name never reported


def test_file_moved_in_from_outside_counts_as_renamed(outputs: Path, watcher_factory: list[Watcher]) -> None:
    w = _start(watcher_factory, outputs, _config(SLOW_STABLE))
    staging = outputs.parent / "staging.csv"
    _write(staging, b"a,b\n1,2\n")
    os.replace(staging, outputs / "data.csv")
    item = _next(w)
    assert (item.name, item.reason) == ("data.csv", "renamed")


def test_directory_with_marker_is_reported_and_marker_excluded(outputs: Path, watcher_factory: list[Watcher]) -> None:
    w = _start(watcher_factory, outputs, _config(SLOW_STABLE))
    model = outputs / "model"
    model.mkdir()
    (model / "config.json").write_text('{"layers": 2}')
    (model / "sub").mkdir()
    (model / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    assert w.get(timeout=0.5) is None  # no marker yet, and far from stable
    (model / "_SUCCESS").write_bytes(b"marker-bytes")
    item = _next(w)
    assert (item.name, item.reason, item.is_dir, item.marker) == ("model", "marker", True, "_SUCCESS")
    assert item.size == len('{"layers": 2}') + 100  # the marker is not part of the artifact
    assert w.get(timeout=0.3) is None


def test_writing_into_the_marker_after_the_report_is_no_new_version(
    outputs: Path, watcher_factory: list[Watcher]
) -> None:
    w = _start(watcher_factory, outputs, _config(SLOW_STABLE))
    model = outputs / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"w" * 64)
    marker = model / "_SUCCESS"
    marker.touch()  # the marker appears empty (open, then write later: a writer under load does this)
    item = _next(w)
    assert (item.name, item.reason, item.generation) == ("model", "marker", 1)
    marker.write_bytes(b"job-id=42\n")
    assert w.get(timeout=0.5) is None
    assert w.pending() == []  # not reopened as a new generation waiting to become stable
    assert w.finish(timeout=5)
    assert list(w) == []  # so the job's exit signs nothing more


def test_slow_writer_is_reported_once_with_its_final_content(outputs: Path, watcher_factory: list[Watcher]) -> None:
    rules = CompletionRules(stable_interval=0.8, recheck_interval=0.05, exit_settle_interval=0.1)
    w = _start(watcher_factory, outputs, _config(rules))
    target = outputs / "train.jsonl"
    chunks = [f'{{"row": {i}, "pad": "{"x" * 500}"}}\n'.encode() for i in range(10)]
    done_at: list[float] = []

    def writer() -> None:
        with open(target, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                fh.flush()
                time.sleep(0.22)  # pauses well below the stable interval (margin for a loaded machine)
        done_at.append(time.monotonic())

    thread = threading.Thread(target=writer)
    thread.start()
    item = _next(w, timeout=10)
    reported_at = time.monotonic()
    thread.join()
    final = b"".join(chunks)
    assert done_at
    assert reported_at >= done_at[0]
    assert (item.name, item.reason, item.generation) == ("train.jsonl", "stable", 1)
    assert item.size == len(final)
    assert hashlib.sha256(item.path.read_bytes()).digest() == hashlib.sha256(final).digest()
    assert w.get(timeout=0.8) is None  # exactly one event


def test_hidden_and_temporary_files_are_ignored(outputs: Path, watcher_factory: list[Watcher]) -> None:
    w = _start(watcher_factory, outputs, _config())
    for name in (".hidden", "~lock.docx", "a.tmp", "b.part", "c.partial", "d.crdownload", "e.swp", ".cache"):
        _write(outputs / name, b"ignore me")
    _write(outputs / "real.csv", b"x,y\n")
    assert w.finish(timeout=5)
    assert [a.name for a in w] == ["real.csv"]


def test_job_exit_flushes_pending_artifacts(outputs: Path, watcher_factory: list[Watcher]) -> None:
    w = _start(watcher_factory, outputs, _config(SLOW_STABLE))
    _write(outputs / "metrics.json", b'{"acc": 0.9}')
    (outputs / "shards").mkdir()
    _write(outputs / "shards" / "part-0.parquet", b"PAR1")
    assert w.get(timeout=0.5) is None  # 30 s stable interval: nothing yet
    t0 = time.monotonic()
    assert w.finish(timeout=5) is True
    assert time.monotonic() - t0 < 2.0
    items = sorted(w, key=lambda a: a.name)
    assert [(a.name, a.reason, a.is_dir) for a in items] == [
        ("metrics.json", "job-exit", False),
        ("shards", "job-exit", True),
    ]
    assert w.get(timeout=0.1) is None  # the iterator ended and stays ended


def test_job_exit_waits_until_a_file_is_no_longer_written(outputs: Path, watcher_factory: list[Watcher]) -> None:
    rules = CompletionRules(stable_interval=30.0, recheck_interval=0.05, exit_settle_interval=0.4)
    w = _start(watcher_factory, outputs, _config(rules))
    target = outputs / "late.csv"
    stop_writing = threading.Event()

    def writer() -> None:
        with open(target, "wb") as fh:
            for i in range(12):
                fh.write(f"{i},{'y' * 100}\n".encode())
                fh.flush()
                time.sleep(0.04)  # pauses far below the exit settle interval
        stop_writing.set()

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.1)
    assert w.finish(timeout=5) is True
    thread.join()
    assert stop_writing.is_set()
    (item,) = list(w)
    assert item.reason == "job-exit"
    assert item.size == target.stat().st_size == sum(len(f"{i},{'y' * 100}\n") for i in range(12))


def test_rewrite_after_report_is_a_new_generation(outputs: Path, watcher_factory: list[Watcher]) -> None:
    w = _start(watcher_factory, outputs, _config())
    target = outputs / "model.pkl"
    _write(target, b"v1")
    first = _next(w)
    assert (first.generation, first.reason) == (1, "stable")
    _write(target, b"version two")  # rewritten in place
    second = _next(w)
    assert (second.name, second.generation, second.size) == ("model.pkl", 2, len(b"version two"))
    assert second.fingerprint != first.fingerprint
    tmp = outputs / ".model.pkl.tmp"
    _write(tmp, b"version three")
    os.replace(tmp, target)  # a new version renamed over the old one
    third = _next(w)
    assert (third.generation, third.reason) == (3, "renamed")


def test_restart_rescans_without_reporting_signed_artifacts_again(
    outputs: Path, tmp_path: Path, watcher_factory: list[Watcher]
) -> None:
    state = tmp_path / "workspace" / ".mlprov-sidecar" / "state.json"
    ledger = ArtifactLedger(state)
    first = _start(watcher_factory, outputs, _config(), ledger=ledger)
    _write(outputs / "a.csv", b"a")
    _write(outputs / "b.csv", b"b")
    got = {_next(first).name: None for _ in range(2)}
    assert set(got) == {"a.csv", "b.csv"}
    first.stop()  # the sidecar dies: a.csv was signed before, b.csv not
    signed_a = FinishedArtifactLike.for_path(outputs / "a.csv")
    ledger.record_signed(signed_a, digest="sha256:aa", manifest_id="urn:c2pa:a")

    second = _start(watcher_factory, outputs, _config(), ledger=ArtifactLedger(state))
    assert second.finish(timeout=5)
    assert [(x.name, x.generation) for x in second] == [("b.csv", 1)]


def test_artifact_changed_while_down_is_reported_as_next_generation(
    outputs: Path, tmp_path: Path, watcher_factory: list[Watcher]
) -> None:
    state = tmp_path / "state.json"
    _write(outputs / "a.csv", b"a")
    ledger = ArtifactLedger(state)
    ledger.record_signed(FinishedArtifactLike.for_path(outputs / "a.csv"), digest="sha256:aa", manifest_id="urn:c2pa:a")
    _write(outputs / "a.csv", b"changed while the sidecar was down")
    w = _start(watcher_factory, outputs, _config(), ledger=ArtifactLedger(state))
    item = _next(w)
    assert (item.name, item.generation) == ("a.csv", 2)


class FinishedArtifactLike:
    """What the assembly passes to ``record_signed``: the watcher's report for a path as it is now."""

    @staticmethod
    def for_path(path: Path) -> FinishedArtifact:
        from provenance.sidecar.completion import take_snapshot

        snap = take_snapshot(path)
        assert snap is not None
        return FinishedArtifact(
            path, path.name, snap.is_dir, snap.size, snap.mtime_ns / 1e9, "stable", 1, snap.fingerprint
        )


def _scenario(outputs: Path, w: Watcher) -> list[tuple[str, int, bool, int]]:
    tmp = outputs / ".weights.tmp"
    _write(tmp, b"w" * 4096)
    os.replace(tmp, outputs / "weights.onnx")
    d = outputs / "ckpt"
    d.mkdir()
    _write(d / "a.safetensors", b"s" * 10)
    _write(d / ".complete", b"")
    _write(outputs / "plain.csv", b"1,2,3\n")
    _write(outputs / ".ignored", b"")
    reported = [_next(w) for _ in range(3)]
    assert w.finish(timeout=5)
    reported += list(w)
    return sorted((a.name, a.size, a.is_dir, a.generation) for a in reported)


def test_polling_fallback_produces_the_same_artifacts(tmp_path: Path, watcher_factory: list[Watcher]) -> None:
    results = []
    for polling in (False, True):
        out = tmp_path / f"polling-{polling}"
        out.mkdir()
        w = _start(watcher_factory, out, _config(polling=polling))
        assert w.mode == ("polling" if polling else "inotify")
        results.append(_scenario(out, w))
    assert (
        results[0]
        == results[1]
        == [
            ("ckpt", 10, True, 1),
            ("plain.csv", 6, False, 1),
            ("weights.onnx", 4096, False, 1),
        ]
    )


class _NoInotify:
    """An observer whose watch cannot be added, as when the inotify watch limit is reached."""

    def schedule(self, event_handler: object, path: str, *, recursive: bool = False) -> object:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def start(self) -> None:
        raise AssertionError("never started")

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


def test_inotify_failure_falls_back_to_polling(outputs: Path, watcher_factory: list[Watcher]) -> None:
    def factory() -> ObserverLike:
        return _NoInotify()  # a duck-typed stand-in for a watchdog observer

    w = _start(watcher_factory, outputs, _config(), observer_factory=factory)
    assert w.mode == "polling"
    _write(outputs / "x.npy", b"\x93NUMPY")
    item = _next(w)
    assert (item.name, item.reason) == ("x.npy", "stable")


def test_existing_files_at_start_are_not_reported_before_stable(outputs: Path, watcher_factory: list[Watcher]) -> None:
    _write(outputs / "early.csv", b"1\n")
    w = _start(watcher_factory, outputs, _config())
    t0 = time.monotonic()
    item = _next(w)
    assert item.name == "early.csv"
    assert time.monotonic() - t0 >= FAST.stable_interval * 0.9


def test_stop_ends_iteration_and_joins_threads(outputs: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    w = Watcher(outputs, _config()).start()
    assert "mlprov-sidecar-watcher" in {t.name for t in threading.enumerate()}
    w.stop()
    assert list(w) == []
    assert "mlprov-sidecar-watcher" not in {t.name for t in threading.enumerate()} - before
