"""The sidecar's durable outbox (retries, back-off, restarts, dead letters) and its artifact ledger."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from pathlib import Path

import pytest

from provenance.errors import StorageError
from provenance.sidecar.completion import FinishedArtifact
from provenance.sidecar.spool import (
    ArtifactLedger,
    Backoff,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Spool,
    SpoolItem,
    write_json_atomic,
)

QUICK = Backoff(initial=0.02, maximum=0.08, multiplier=2.0, jitter=0.0)


class FakeController:
    """Fails the first ``failures`` attempts per key, then accepts; records every call."""

    def __init__(self, failures: int = 0, permanent: set[str] | None = None) -> None:
        self.failures = failures
        self.permanent = permanent or set()
        self.calls: list[tuple[str, float]] = []
        self.accepted: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, item: SpoolItem) -> None:
        with self._lock:
            self.calls.append((item.key, time.monotonic()))
            tries = sum(1 for k, _ in self.calls if k == item.key)
        if item.key in self.permanent:
            raise PermanentDeliveryError(f"422 manifest {item.key} refused: bad signature")
        if tries <= self.failures:
            raise RetryableDeliveryError("controller unreachable")
        with self._lock:
            self.accepted.append(item.key)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_put_is_durable_and_delivery_removes_it(tmp_path: Path) -> None:
    delivered: list[str] = []
    ctl = FakeController()
    spool = Spool(tmp_path, ctl, backoff=QUICK, on_delivered=lambda i: delivered.append(i.key))
    item = spool.put("urn:c2pa:1", {"manifest": {"title": "m"}}, meta={"n": 1})
    (stored,) = (tmp_path / "pending").iterdir()
    assert json.loads(stored.read_text())["key"] == "urn:c2pa:1"
    assert spool.put("urn:c2pa:1", {"other": True}) == item  # idempotent on the key
    assert spool.drain(time.monotonic() + 2) == []
    assert ctl.accepted == delivered == ["urn:c2pa:1"]
    assert _files(tmp_path / "pending") == []


def test_retries_with_exponential_back_off(tmp_path: Path) -> None:
    ctl = FakeController(failures=3)
    spool = Spool(tmp_path, ctl, backoff=QUICK)
    spool.put("k", {})
    assert spool.drain(time.monotonic() + 3) == []
    times = [t for _, t in ctl.calls]
    assert len(times) == 4
    assert ctl.accepted == ["k"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, (0.02, 0.04, 0.08), strict=True):
        assert gap >= expected * 0.95


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(7)
    b = Backoff(initial=1.0, maximum=10.0, multiplier=3.0, jitter=0.5)
    delays = [b.delay(n, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        base = min(10.0, 3.0 ** (n - 1))
        assert base * 0.5 <= d <= base
    assert max(delays) <= 10.0
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jitter: capped delays still differ


def test_items_survive_a_restart(tmp_path: Path) -> None:
    down = FakeController(failures=10**6)
    first = Spool(tmp_path, down, backoff=QUICK)
    first.put("urn:a", {"n": 1}, kind="manifest")
    first.put("urn:a#upload", {"n": 2}, kind="upload")
    assert len(first.drain(time.monotonic() + 0.1)) == 2
    del first  # SIGKILL: nothing flushed on purpose beyond what put() made durable
    (tmp_path / "pending" / ".leftover.json.123.tmp").write_text("{half")
    up = FakeController()
    second = Spool(tmp_path, up, backoff=QUICK)
    pending = second.pending()
    assert [i.key for i in pending] == ["urn:a", "urn:a#upload"]  # oldest first
    assert all(i.attempts >= 1 and i.last_error for i in pending)
    assert second.drain(time.monotonic() + 2) == []
    assert up.accepted == ["urn:a", "urn:a#upload"]
    assert _files(tmp_path / "pending") == []


def test_permanent_failure_goes_to_dead_letters_and_is_not_retried(tmp_path: Path) -> None:
    ctl = FakeController(permanent={"bad"})
    spool = Spool(tmp_path, ctl, backoff=QUICK)
    spool.put("bad", {"x": 1})
    spool.put("good", {"x": 2})
    assert spool.drain(time.monotonic() + 1) == []
    assert [k for k, _ in ctl.calls].count("bad") == 1
    (dead,) = spool.dead()
    assert dead.item.key == "bad"
    assert "bad signature" in dead.reason
    assert Spool(tmp_path, ctl, backoff=QUICK).pending() == []  # not resurrected by a restart


def test_max_attempts_dead_letters(tmp_path: Path) -> None:
    ctl = FakeController(failures=10**6)
    spool = Spool(tmp_path, ctl, backoff=QUICK, max_attempts=3)
    spool.put("k", {})
    assert spool.drain(time.monotonic() + 2) == []
    assert len(ctl.calls) == 3
    assert "gave up after 3 attempts" in spool.dead()[0].reason


def test_drain_returns_what_could_not_be_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path, FakeController(failures=10**6), backoff=QUICK)
    spool.put("k1", {})
    spool.put("k2", {})
    t0 = time.monotonic()
    left = spool.drain(t0 + 0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.0
    assert [i.key for i in left] == ["k1", "k2"]


def test_a_failing_on_delivered_keeps_the_item(tmp_path: Path) -> None:
    calls: list[str] = []

    def on_delivered(item: SpoolItem) -> None:
        calls.append(item.key)
        if len(calls) == 1:
            raise OSError("disk full")

    ctl = FakeController()
    spool = Spool(tmp_path, ctl, backoff=QUICK, on_delivered=on_delivered)
    spool.put("k", {})
    assert spool.drain(time.monotonic() + 2) == []
    assert calls == ["k", "k"]
    assert ctl.accepted == ["k", "k"]


def test_at_most_one_attempt_in_flight_per_key(tmp_path: Path) -> None:
    in_flight: dict[str, int] = {}
    worst = 0
    lock = threading.Lock()
    attempts = 0

    def slow_flaky(item: SpoolItem) -> None:
        nonlocal worst, attempts
        with lock:
            in_flight[item.key] = in_flight.get(item.key, 0) + 1
            worst = max(worst, in_flight[item.key])
            attempts += 1
            n = attempts
        time.sleep(0.03)
        with lock:
            in_flight[item.key] -= 1
        if n < 4:
            raise RetryableDeliveryError("busy")

    spool = Spool(tmp_path, slow_flaky, backoff=Backoff(initial=0.001, maximum=0.002, jitter=0.0))
    spool.start()
    try:
        spool.put("k", {})
        drains = [threading.Thread(target=spool.drain, args=(time.monotonic() + 2,)) for _ in range(3)]
        for t in drains:
            t.start()
        for t in drains:
            t.join()
    finally:
        spool.stop()
    assert attempts >= 4
    assert len(spool) == 0
    assert worst == 1


def test_background_thread_delivers_and_stops(tmp_path: Path) -> None:
    ctl = FakeController(failures=1)
    with Spool(tmp_path, ctl, backoff=QUICK) as spool:
        spool.put("k", {})
        deadline = time.monotonic() + 2
        while len(spool) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert ctl.accepted == ["k"]
    assert "mlprov-spool" not in {t.name for t in threading.enumerate()}


def test_write_json_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    write_json_atomic(target, {"c": 3})
    assert json.loads(target.read_text()) == {"c": 3}
    assert _files(target.parent) == ["state.json"]


def _artifact(name: str, generation: int = 1, fp: str = "fp1") -> FinishedArtifact:
    return FinishedArtifact(Path("/w/outputs") / name, name, False, 1, 0.0, "stable", generation, fp)


def test_ledger_records_dedupes_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ledger = ArtifactLedger(path)
    rec = ledger.record_signed(_artifact("a.csv"), digest="sha256:11", manifest_id="urn:1")
    assert ledger.record_signed(_artifact("a.csv", 2, "fp2"), digest="sha256:11", manifest_id="urn:2") == rec
    assert ledger.find("a.csv", "sha256:11") == rec
    assert ledger.find("a.csv", "sha256:22") is None
    assert ledger.mark_delivered("urn:1")
    assert not ledger.mark_delivered("urn:unknown")
    ledger.record_signed(_artifact("b.csv"), digest="sha256:33", manifest_id="urn:3")
    again = ArtifactLedger(path)
    latest = again.latest("a.csv")
    assert latest is not None
    assert latest.delivered
    assert [r.manifest_id for r in again.undelivered()] == ["urn:3"]


def test_ledger_reconciles_spooled_manifests(tmp_path: Path) -> None:
    ledger = ArtifactLedger(tmp_path / "state.json")
    spool = Spool(tmp_path / "spool", FakeController(failures=10**6), backoff=QUICK)
    art = _artifact("m.pt", 1, "fpm")
    spool.put("urn:m", {}, meta=ArtifactLedger.spool_meta(art, "sha256:mm"))
    spool.put("urn:other", {})  # no artifact meta: ignored
    # killed here: the ledger never heard of urn:m
    added = ledger.reconcile(spool.pending())
    assert [(r.name, r.manifest_id, r.fingerprint) for r in added] == [("m.pt", "urn:m", "fpm")]
    assert ledger.reconcile(spool.pending()) == []


def test_unreadable_ledger_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(StorageError, match=r"state\.json"):
        ArtifactLedger(path)


def test_a_signed_record_is_written_without_fsync_and_a_delivery_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "state.json"
    ledger = ArtifactLedger(path)
    ledger.record_signed(_artifact("a.csv"), digest="sha256:11", manifest_id="urn:1")
    assert synced == []  # the spool item put before it is the durable copy (reconcile rebuilds it)
    assert ArtifactLedger(path).find("a.csv", "sha256:11") is not None  # still written: survives a kill
    assert ledger.mark_delivered("urn:1")
    assert len(synced) == 2  # file and directory: durable before the spool forgets the item
    reloaded = ArtifactLedger(path).latest("a.csv")
    assert reloaded is not None
    assert reloaded.delivered
