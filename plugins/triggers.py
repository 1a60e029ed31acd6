"""``ControllerTaskTrigger``: waits in the triggerer for a controller task to end, holding no worker slot.

It long-polls ``GET /api/v1/tasks/{id}?wait=`` (``long_poll`` s; ``0``: plain polls every ``poll_interval``)
with an ``httpx.AsyncClient`` and fires one event:

* ``{"status": "done", "task": <task JSON>}`` when the task reaches a terminal state
  (succeeded, failed, cancelled, lost): the operator decides what that means;
* ``{"status": "error", "error": <exception class name>, "message": <one line>, "task_id": ...}`` when
  the controller refuses the token, no longer knows the task, or stays unreachable longer than
  ``unreachable_timeout`` seconds (short outages, e.g. a controller restart, are waited out).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from plugins.exceptions import ControllerError, ControllerUnreachable, one_line
from plugins.hooks import TERMINAL_STATES, ControllerHook

__all__ = ["ControllerTaskTrigger"]


class ControllerTaskTrigger(BaseTrigger):
    def __init__(
        self,
        controller_task_id: str,
        conn_id: str = ControllerHook.default_conn_name,
        poll_interval: float = 5.0,
        unreachable_timeout: float = 600.0,
        long_poll: float = 5.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # airflow.triggers.base is untyped
        # not ``task_id``: BaseTrigger's ``task_id`` is the Airflow task's, set by the triggerer
        self.controller_task_id = controller_task_id
        self.conn_id = conn_id
        self.poll_interval = float(poll_interval)
        self.unreachable_timeout = float(unreachable_timeout)
        self.long_poll = float(long_poll)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "controller_task_id": self.controller_task_id,
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "unreachable_timeout": self.unreachable_timeout,
                "long_poll": self.long_poll,
            },
        )

    def _error(self, exc: Exception) -> TriggerEvent:
        return TriggerEvent(  # type: ignore[no-untyped-call]  # pydantic model with an untyped __init__
            {
                "status": "error",
                "error": type(exc).__name__,
                "message": one_line(str(exc)),
                "controller_task_id": self.controller_task_id,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        loop = asyncio.get_running_loop()
        hook = ControllerHook(self.conn_id)
        last_answer = loop.time()
        seen: str | None = None
        try:
            while True:
                asked = loop.time()
                try:
                    task = await hook.aget_task(self.controller_task_id, wait=self.long_poll, state=seen)
                except ControllerUnreachable as exc:
                    if loop.time() - last_answer >= self.unreachable_timeout:
                        yield self._error(exc)
                        return
                    self.log.warning(
                        "controller unreachable, still waiting for task %s: %s", self.controller_task_id, exc
                    )
                except ControllerError as exc:
                    yield self._error(exc)
                    return
                else:
                    last_answer = loop.time()
                    state = task.get("state")
                    if state in TERMINAL_STATES:
                        yield TriggerEvent({"status": "done", "task": task})  # type: ignore[no-untyped-call]
                        return
                    changed, seen = state != seen, state
                    answered_late = last_answer - asked >= min(self.long_poll, self.poll_interval)
                    if self.long_poll > 0 and (changed or answered_late):
                        continue  # a long poll answered (see ControllerTaskOperator._poll)
                await asyncio.sleep(self.poll_interval)
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """The user killed the deferred Airflow task (mark failed/success, clear): cancel the controller task."""
        hook = ControllerHook(self.conn_id, retries=1, timeout=10.0)
        try:
            await hook.acancel_task(self.controller_task_id)
            self.log.info("cancelled controller task %s", self.controller_task_id)
        finally:
            await hook.aclose()
