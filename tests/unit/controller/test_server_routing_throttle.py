"""The proxy's activity throttle: one write per server per interval, memory bounded by recent servers."""

from __future__ import annotations

from controller.services.server_routing import _ActivityThrottle


def test_one_write_per_interval() -> None:
    throttle = _ActivityThrottle(every=5.0)
    assert throttle.due("a", 100.0)
    assert not throttle.due("a", 104.0)
    assert throttle.due("a", 105.5)
    assert throttle.due("b", 105.5)


def test_expired_entries_are_dropped_when_the_map_outgrows_its_limit() -> None:
    throttle = _ActivityThrottle(every=5.0, limit=10)
    for i in range(10):
        assert throttle.due(f"old-{i}", float(i))
    assert len(throttle) == 10
    assert throttle.due("new", 1000.0)  # the eleventh entry: every old one has expired
    assert len(throttle) == 1
    assert not throttle.due("new", 1001.0)  # the one that is still current was kept


def test_current_entries_survive_pruning() -> None:
    throttle = _ActivityThrottle(every=5.0, limit=3)
    for key in ("a", "b", "c", "d"):
        assert throttle.due(key, 10.0)
    assert len(throttle) == 4  # all current: nothing could be dropped
    assert not throttle.due("a", 12.0)
