"""Resource locks: named locks and GPU slots, granted all-or-nothing in FIFO order, kept in the DB.

A task asks for a set of named locks, a number of GPUs and (implicitly) one of the
``max_concurrent_jobs`` run slots. Requests wait in ``lock_queue`` ordered by ``ticket`` (never
reused). A scheduling pass (:func:`plan_grants`) walks the queue in ticket order:

* a request whose locks are all free *and* not wanted by an earlier waiting request, whose GPUs are
  free (and no earlier request waits for GPUs), and for which a run slot is free, gets everything at
  once; otherwise it takes nothing and its lock names become "reserved" for the rest of the pass.

So each lock is served FIFO (a later task never overtakes an earlier one that needs an overlapping
lock), there is no deadlock (nobody holds some locks while waiting for others), and a blocked task at
the queue head only delays tasks that need one of its locks (or GPUs). GPU slots are locks named
``gpu:<index>``, so the job learns which devices it got (``CUDA_VISIBLE_DEVICES``).

Persistence: a held lock is a ``locks`` row (``holder_task_id``); a granted request keeps its
``lock_queue`` row with ``granted_at`` set (it holds a run slot) until :meth:`LockService.release`
deletes both, in the same transaction as the task's final state. A restarted controller therefore
finds exactly who holds what. One dispatcher per database schedules (the embedded deployment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from controller import metrics
from controller.store.models import Lock, LockQueueEntry, utcnow

__all__ = ["GPU_PREFIX", "Grant", "LockRequest", "LockService", "Plan", "gpu_lock_names", "plan_grants"]

GPU_PREFIX = "gpu:"


def gpu_lock_names(gpu_count: int) -> list[str]:
    return [f"{GPU_PREFIX}{i}" for i in range(gpu_count)]


@dataclass(frozen=True)
class LockRequest:
    task_id: str
    ticket: int
    locks: frozenset[str]
    gpus: int = 0


@dataclass(frozen=True)
class Grant:
    task_id: str
    locks: tuple[str, ...]
    """The named locks and the ``gpu:<i>`` slots granted."""

    @property
    def gpu_indices(self) -> list[int]:
        return [int(n.removeprefix(GPU_PREFIX)) for n in self.locks if n.startswith(GPU_PREFIX)]


@dataclass(frozen=True)
class Plan:
    grants: list[Grant] = field(default_factory=list)
    waiting_for_lock: dict[str, list[str]] = field(default_factory=dict)
    """Task -> what it waits for (lock names held or wanted earlier; ``gpu`` for GPU slots)."""
    waiting_for_slot: list[str] = field(default_factory=list)
    """Tasks whose locks are free but no run slot is."""


def plan_grants(queue: Sequence[LockRequest], held: Mapping[str, str], gpu_count: int, free_slots: int) -> Plan:
    """One scheduling pass over the waiting requests (pure; see the module docstring)."""
    taken = dict(held)
    reserved: set[str] = set()
    gpus_reserved = False
    plan = Plan()
    for req in sorted(queue, key=lambda r: r.ticket):
        blockers = sorted(n for n in req.locks if n in taken or n in reserved)
        free_gpus = [n for n in gpu_lock_names(gpu_count) if n not in taken]
        gpu_blocked = req.gpus > 0 and (gpus_reserved or len(free_gpus) < req.gpus)
        if blockers or gpu_blocked:
            plan.waiting_for_lock[req.task_id] = blockers + (["gpu"] if gpu_blocked else [])
            reserved |= req.locks
            gpus_reserved |= req.gpus > 0
            continue
        if free_slots <= 0:
            plan.waiting_for_slot.append(req.task_id)
            reserved |= req.locks
            gpus_reserved |= req.gpus > 0
            continue
        names = (*sorted(req.locks), *free_gpus[: req.gpus])
        for name in names:
            taken[name] = req.task_id
        free_slots -= 1
        plan.grants.append(Grant(req.task_id, names))
    return plan


class LockService:
    """The DB side of the locks; methods add to the caller's session and never commit."""

    def __init__(self, gpu_count: int = 0) -> None:
        self.gpu_count = gpu_count

    def enqueue(self, session: Session, task_id: str, locks: Iterable[str], gpus: int) -> None:
        session.add(LockQueueEntry(task_id=task_id, lock_names=sorted(set(locks)), gpus=gpus))

    def active_count(self, session: Session) -> int:
        """Granted requests: tasks holding a run slot (launching or running)."""
        count = session.scalar(
            select(func.count()).select_from(LockQueueEntry).where(LockQueueEntry.granted_at.is_not(None))
        )
        return int(count or 0)

    def schedule(self, session: Session, max_slots: int) -> Plan:
        """Grant what can be granted now: ``locks`` rows inserted, ``granted_at`` set."""
        entries = list(session.scalars(select(LockQueueEntry).order_by(LockQueueEntry.ticket)))
        waiting = [e for e in entries if e.granted_at is None]
        if not waiting:
            return Plan()
        held = {row.name: row.holder_task_id or "" for row in session.scalars(select(Lock))}
        free_slots = max_slots - (len(entries) - len(waiting))
        plan = plan_grants(
            [LockRequest(e.task_id, e.ticket, frozenset(e.lock_names), e.gpus) for e in waiting],
            held,
            self.gpu_count,
            free_slots,
        )
        by_task = {e.task_id: e for e in waiting}
        now = utcnow()
        for grant in plan.grants:
            entry = by_task[grant.task_id]
            entry.granted_at = now
            for name in grant.locks:
                session.add(Lock(name=name, holder_task_id=grant.task_id, acquired_at=now))
            metrics.LOCK_WAIT.observe(max(0.0, (now - entry.enqueued_at).total_seconds()))
        session.flush()
        return plan

    def held_by(self, session: Session, task_id: str) -> list[str]:
        return sorted(session.scalars(select(Lock.name).where(Lock.holder_task_id == task_id)))

    def is_granted(self, session: Session, task_id: str) -> bool:
        entry = session.scalar(select(LockQueueEntry).where(LockQueueEntry.task_id == task_id))
        return entry is not None and entry.granted_at is not None

    def release(self, session: Session, task_id: str) -> list[str]:
        """Drop the task's request and every lock it holds (on any ending); returns the lock names."""
        names = self.held_by(session, task_id)
        session.execute(delete(Lock).where(Lock.holder_task_id == task_id))
        session.execute(delete(LockQueueEntry).where(LockQueueEntry.task_id == task_id))
        return names

    def ungrant(self, session: Session, task_id: str) -> None:
        """Give back a grant that never launched (controller stopped in between): back in the queue
        at its original ticket, so it keeps its place."""
        session.execute(delete(Lock).where(Lock.holder_task_id == task_id))
        entry = session.scalar(select(LockQueueEntry).where(LockQueueEntry.task_id == task_id))
        if entry is not None:
            entry.granted_at = None
