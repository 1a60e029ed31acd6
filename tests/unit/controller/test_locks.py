"""Lock planning (pure) and its persistence: FIFO, all-or-nothing, no deadlock, GPUs, run slots."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.services.locks import LockRequest, LockService, plan_grants
from controller.store.db import make_engine, make_session_factory, session_scope
from controller.store.models import Base, Lock, LockQueueEntry, Task


def req(task: str, ticket: int, *locks: str, gpus: int = 0) -> LockRequest:
    return LockRequest(task, ticket, frozenset(locks), gpus)


def granted(plan_result: object) -> list[str]:
    return [g.task_id for g in plan_result.grants]  # type: ignore[attr-defined]


def test_free_locks_are_granted_in_ticket_order() -> None:
    plan = plan_grants([req("b", 2, "y"), req("a", 1, "x")], {}, 0, 10)
    assert granted(plan) == ["a", "b"]
    assert plan.grants[0].locks == ("x",)


def test_a_held_lock_blocks_only_tasks_that_need_it() -> None:
    plan = plan_grants([req("a", 1, "x"), req("b", 2, "y"), req("c", 3)], {"x": "holder"}, 0, 10)
    assert granted(plan) == ["b", "c"]
    assert plan.waiting_for_lock == {"a": ["x"]}


def test_fifo_a_later_task_never_overtakes_an_earlier_one_on_an_overlapping_lock() -> None:
    # b waits for x (held); c only needs y, which is free, but b (earlier) also wants y.
    plan = plan_grants([req("b", 2, "x", "y"), req("c", 3, "y"), req("d", 4, "z")], {"x": "a"}, 0, 10)
    assert granted(plan) == ["d"]
    assert plan.waiting_for_lock == {"b": ["x"], "c": ["y"]}


def test_all_or_nothing_means_no_partial_holds_and_no_deadlock() -> None:
    # Classic deadlock shape: p needs x then y, q needs y then x. Only one gets both; the other holds nothing.
    plan = plan_grants([req("p", 1, "x", "y"), req("q", 2, "y", "x")], {}, 0, 10)
    assert granted(plan) == ["p"]
    assert plan.grants[0].locks == ("x", "y")
    assert plan.waiting_for_lock == {"q": ["x", "y"]}


def test_run_slots_bound_concurrency_without_breaking_lock_order() -> None:
    plan = plan_grants([req("a", 1), req("b", 2), req("c", 3, "x")], {}, 0, 1)
    assert granted(plan) == ["a"]
    assert plan.waiting_for_slot == ["b", "c"]


def test_gpu_slots_are_named_locks_and_served_fifo() -> None:
    plan = plan_grants([req("a", 1, gpus=2), req("b", 2, gpus=1), req("c", 3, gpus=1)], {"gpu:0": "z"}, 2, 10)
    # a needs 2, only gpu:1 is free -> a waits, and b/c must not overtake it on GPUs.
    assert granted(plan) == []
    assert plan.waiting_for_lock == {"a": ["gpu"], "b": ["gpu"], "c": ["gpu"]}
    plan = plan_grants([req("a", 1, gpus=1), req("b", 2, gpus=1)], {}, 2, 10)
    assert [g.gpu_indices for g in plan.grants] == [[0], [1]]


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine)
    return make_session_factory(engine)


def _task(session: Session, task_id: str) -> None:
    session.add(Task(id=task_id, service="s"))
    session.flush()


def test_grants_persist_and_release_frees_the_locks(factory: sessionmaker[Session]) -> None:
    service = LockService(gpu_count=1)
    with session_scope(factory) as s:
        for tid, locks, gpus in (("a", ["x"], 1), ("b", ["x"], 0), ("c", [], 1)):
            _task(s, tid)
            service.enqueue(s, tid, locks, gpus)
    with session_scope(factory) as s:
        plan = service.schedule(s, max_slots=4)
        assert granted(plan) == ["a"]
    with session_scope(factory) as s:  # a new session (a restarted controller) sees the same holders
        assert {row.name: row.holder_task_id for row in s.scalars(select(Lock))} == {"x": "a", "gpu:0": "a"}
        assert service.active_count(s) == 1
        assert service.is_granted(s, "a")
        assert not service.is_granted(s, "b")
        assert service.schedule(s, max_slots=4).grants == []  # nothing changes while a holds x and gpu:0
    with session_scope(factory) as s:
        assert service.release(s, "a") == ["gpu:0", "x"]
    with session_scope(factory) as s:
        assert granted(service.schedule(s, max_slots=4)) == ["b", "c"]
        assert s.scalar(select(LockQueueEntry).where(LockQueueEntry.task_id == "a")) is None


def test_ungrant_puts_a_grant_back_at_its_ticket(factory: sessionmaker[Session]) -> None:
    service = LockService()
    with session_scope(factory) as s:
        for tid in ("a", "b"):
            _task(s, tid)
            service.enqueue(s, tid, ["x"], 0)
    with session_scope(factory) as s:
        assert granted(service.schedule(s, max_slots=4)) == ["a"]
    with session_scope(factory) as s:
        service.ungrant(s, "a")
    with session_scope(factory) as s:
        assert service.active_count(s) == 0
        assert granted(service.schedule(s, max_slots=4)) == ["a"]  # still ahead of b
