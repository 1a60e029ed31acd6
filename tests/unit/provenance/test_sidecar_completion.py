"""The completion rules on real files with a hand-driven clock (no threads, no waiting), and the sidecar settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provenance.sidecar.completion import CompletionRules, CompletionTracker, IgnoreRules, fingerprint, take_snapshot
from provenance.sidecar.config import SidecarSettings

RULES = CompletionRules(stable_interval=2.0, recheck_interval=0.1, exit_settle_interval=0.5)


def _write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.write_bytes(data)
    if mtime is not None:  # distinct mtimes make each write visible whatever the clock granularity
        os.utime(path, ns=(mtime, mtime))


@pytest.fixture
def tracker(tmp_path: Path) -> CompletionTracker:
    return CompletionTracker(tmp_path, RULES)


def test_stable_after_the_interval_and_not_before(tmp_path: Path, tracker: CompletionTracker) -> None:
    _write(tmp_path / "a.csv", b"1", mtime=10**18)
    tracker.observe("a.csv", 0.0)
    assert tracker.due(1.99) == []
    assert tracker.next_check() == pytest.approx(2.0)
    (item,) = tracker.due(2.0)
    assert (item.name, item.reason, item.generation, item.size) == ("a.csv", "stable", 1, 1)
    assert tracker.idle()


def test_each_change_restarts_the_interval(tmp_path: Path, tracker: CompletionTracker) -> None:
    _write(tmp_path / "a.csv", b"1", mtime=10**18)
    tracker.observe("a.csv", 0.0)
    _write(tmp_path / "a.csv", b"12", mtime=10**18 + 1)
    tracker.observe("a.csv", 1.5)
    assert tracker.due(2.0) == []
    _write(tmp_path / "a.csv", b"123", mtime=10**18 + 2)  # a change without an event: the re-check catches it
    assert tracker.due(3.5) == []
    assert tracker.due(5.4) == []
    (item,) = tracker.due(5.5)
    assert item.size == 3


def test_a_file_changed_after_its_rename_is_not_reported_as_renamed(tmp_path: Path, tracker: CompletionTracker) -> None:
    _write(tmp_path / "m.pt", b"x", mtime=10**18)
    tracker.renamed("m.pt", 0.0)
    _write(tmp_path / "m.pt", b"xy", mtime=10**18 + 1)
    assert tracker.due(0.1) == []  # the re-check right before reporting saw it grow
    assert tracker.due(2.0) == []
    (item,) = tracker.due(2.1)
    assert (item.reason, item.size) == ("stable", 2)


def test_renamed_is_reported_after_the_recheck(tmp_path: Path, tracker: CompletionTracker) -> None:
    _write(tmp_path / "m.pt", b"x")
    tracker.renamed("m.pt", 0.0)
    assert tracker.due(0.05) == []
    (item,) = tracker.due(0.1)
    assert item.reason == "renamed"


def test_directory_with_temp_file_is_not_stable_but_flushes_at_exit(tmp_path: Path, tracker: CompletionTracker) -> None:
    d = tmp_path / "data"
    d.mkdir()
    _write(d / "part-0.parquet", b"p")
    _write(d / "part-1.parquet.part", b"q")
    tracker.observe("data", 0.0)
    assert tracker.due(10.0) == []
    assert tracker.due(20.0) == []
    tracker.finish(20.0)
    (item,) = tracker.due(20.5)
    assert (item.reason, item.is_dir, item.size) == ("job-exit", True, 2)


def test_marker_is_found_by_the_check_and_excluded(tmp_path: Path, tracker: CompletionTracker) -> None:
    d = tmp_path / "model"
    d.mkdir()
    _write(d / "w.safetensors", b"abc")
    tracker.observe("model", 0.0)
    _write(d / "_SUCCESS", b"123456")
    tracker.observe("model", 0.5, marker=True)
    assert tracker.due(0.6) == []  # first sight of the marker: re-check once more
    (item,) = tracker.due(0.7)
    assert (item.reason, item.marker, item.size) == ("marker", "_SUCCESS", 3)


def test_job_exit_reports_pending_after_settle(tmp_path: Path, tracker: CompletionTracker) -> None:
    _write(tmp_path / "a.csv", b"1")
    tracker.observe("a.csv", 0.0)
    tracker.finish(0.2)
    assert tracker.due(0.4) == []
    (item,) = tracker.due(0.5)
    assert item.reason == "job-exit"


def test_versions_deletions_and_adoption(tmp_path: Path, tracker: CompletionTracker) -> None:
    p = tmp_path / "a.csv"
    _write(p, b"1", mtime=10**18)
    tracker.observe("a.csv", 0.0)
    (v1,) = tracker.due(2.0)
    _write(p, b"2", mtime=10**18 + 5)  # same size, new mtime: a new version
    tracker.observe("a.csv", 3.0)
    (v2,) = tracker.due(5.0)
    assert (v1.generation, v2.generation) == (1, 2)
    p.unlink()
    tracker.removed("a.csv")
    _write(p, b"3")
    tracker.observe("a.csv", 6.0)
    (v3,) = tracker.due(8.0)
    assert v3.generation == 3

    fresh = CompletionTracker(tmp_path, RULES)
    fresh.adopt("a.csv", 3, v3.fingerprint, 0.0)
    assert fresh.idle()
    assert fresh.due(100.0) == []
    changed = CompletionTracker(tmp_path, RULES)
    changed.adopt("a.csv", 3, "another-fingerprint", 0.0)
    (v4,) = changed.due(2.0)
    assert v4.generation == 4


def test_fingerprint_and_snapshot(tmp_path: Path) -> None:
    assert fingerprint(tmp_path / "missing") is None
    d = tmp_path / "d"
    d.mkdir()
    _write(d / "f", b"1", mtime=10**18)
    before = fingerprint(d)
    _write(d / "f", b"1", mtime=10**18 + 1)
    assert fingerprint(d) != before
    os.symlink(d / "f", tmp_path / "link")
    assert take_snapshot(tmp_path / "link") is None


def test_ignore_rules() -> None:
    rules = IgnoreRules()
    assert all(rules.is_ignored(n) for n in (".x", "~y", "a.tmp", "a.part", "a.partial", "a.crdownload", "a.swp"))
    assert not any(rules.is_ignored(n) for n in ("model.pt", "data.csv", "_SUCCESS", "tmp.csv"))
    assert rules.is_temporary("a.part")
    assert not rules.is_temporary(".hidden")


def test_settings_from_the_job_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLPROV_TASK_ID", "task-1")
    monkeypatch.setenv("MLPROV_TASK_TOKEN", "tok-" + "a" * 32)
    monkeypatch.setenv("MLPROV_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("MLPROV_CONTROLLER_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("MLPROV_SIDECAR_STABLE_INTERVAL", "0.25")
    monkeypatch.setenv("MLPROV_SIDECAR_MARKERS", "DONE, _SUCCESS")
    monkeypatch.setenv("MLPROV_SIDECAR_USE_POLLING", "true")
    s = SidecarSettings()
    assert (s.task_id, s.controller_url, s.workspace) == ("task-1", "http://127.0.0.1:8080", tmp_path.resolve())
    assert s.effective_outputs_dir == tmp_path.resolve() / "outputs"
    assert s.state_file == tmp_path.resolve() / ".mlprov-sidecar" / "state.json"
    assert s.effective_spool_dir == tmp_path.resolve() / ".mlprov-sidecar" / "spool"
    wc = s.watch_config()
    assert wc.use_polling
    assert wc.rules.stable_interval == 0.25
    assert wc.rules.markers == ("DONE", "_SUCCESS")


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("MLPROV_TASK_TOKEN", "changeme", "placeholder"),
        ("MLPROV_SIDECAR_BACKOFF_MAX", "0.1", "at least MLPROV_SIDECAR_BACKOFF_INITIAL"),
        ("MLPROV_SIDECAR_STABLE_INTERVAL", "0", "stable_interval"),
    ],
)
def test_settings_refuse_bad_values(monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=message):
        SidecarSettings()


OVERLAP = CompletionRules(
    stable_interval=2.0, recheck_interval=0.1, exit_settle_interval=0.5, overlap_rename_recheck=True
)


def test_overlapping_rules_report_a_rename_at_once_with_the_time_of_its_recheck(tmp_path: Path) -> None:
    tracker = CompletionTracker(tmp_path, OVERLAP)
    _write(tmp_path / "m.pt", b"x")
    tracker.renamed("m.pt", 5.0)
    assert tracker.next_check() == pytest.approx(5.0)
    (item,) = tracker.due(5.01)
    assert (item.reason, item.generation) == ("renamed", 1)
    assert item.confirm_at == pytest.approx(5.1)  # the consumer compares the fingerprint no earlier
    assert item.fingerprint == fingerprint(tmp_path / "m.pt")


def test_a_change_after_an_early_rename_report_is_the_next_generation(tmp_path: Path) -> None:
    tracker = CompletionTracker(tmp_path, OVERLAP)
    _write(tmp_path / "m.pt", b"x", mtime=10**18)
    tracker.renamed("m.pt", 0.0)
    (first,) = tracker.due(0.0)
    _write(tmp_path / "m.pt", b"xy", mtime=10**18 + 1)  # written after the rename: the first is stale
    assert fingerprint(tmp_path / "m.pt") != first.fingerprint
    tracker.observe("m.pt", 0.05)
    assert tracker.due(0.2) == []
    (second,) = tracker.due(2.05)
    assert (second.reason, second.generation, second.size, second.confirm_at) == ("stable", 2, 2, None)


def test_without_overlap_nothing_carries_a_confirm_time(tmp_path: Path, tracker: CompletionTracker) -> None:
    _write(tmp_path / "m.pt", b"x")
    tracker.renamed("m.pt", 0.0)
    (item,) = tracker.due(0.1)
    assert item.confirm_at is None
    assert SidecarSettings(workspace=tmp_path).completion_rules().overlap_rename_recheck
