"""``ControllerTaskOperator``: one Airflow task = one controller task of a registered ``job`` service.

It submits the task with the Airflow run identity (dag_id, run_id, task_id, try_number: a re-submission
of the same try returns the same controller task), waits for it (deferrable: in the triggerer, no
worker slot held; otherwise by long polls, ``long_poll`` s each, answered at every state change (``0``:
plain polls every ``poll_interval``), which is what ``airflow dags test`` / ``dag.test()`` use),
copies the task's log lines into the Airflow task log, and then either pushes the produced outputs
to XCom (return value and key ``outputs``: ``[{name, digest, size, kind, manifest_id}]``, plus
``digests``, ``manifest_ids`` and ``by_name`` = ``{name: digest}``) or fails with the controller's
reason (``ControllerTaskFailed``).
Killing the Airflow task cancels the controller task.

``params`` are the service's parameters (the job's ``params.json``) and ``resources`` its resources
(kept as ``service_params`` / ``job_resources``), not Airflow's task params and resources. ``params``
are kept apart from the DAG's params, so ``params={"lr": "{{ params.lr }}"}`` takes the
DAG param (or the run's conf). Like Airflow params they must be JSON values; pass upstream outputs
through ``inputs``. ``inputs`` takes digests, artifact names, an upstream operator's ``.output`` (its
output list), ``.output["digests"]``, templated strings, or lists of these. An upstream's
``metrics.json`` (kind ``evaluation``) is not passed on when given as an output mapping: name it by
digest to use it as an input. To take only some of an upstream's outputs, pick them by name:
``inputs=["{{ ti.xcom_pull(task_ids='prepare', key='by_name')['val.parquet'] }}"]``.
"""

from __future__ import annotations

import ast
import copy
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from airflow.sdk import BaseOperator, conf
from airflow.sdk.definitions.param import ParamsDict

from plugins import exceptions as _exceptions
from plugins.exceptions import (
    ControllerError,
    ControllerRequestError,
    ControllerTaskCancelled,
    ControllerTaskFailed,
    ControllerTaskLost,
    ControllerUnreachable,
    one_line,
)
from plugins.hooks import TERMINAL_STATES, ControllerHook, LogCursor
from plugins.links import LINKS_XCOM_KEY, ControllerLogsLink, ControllerTaskLink, MlflowRunLink, link_info
from plugins.triggers import ControllerTaskTrigger

__all__ = ["ControllerTaskOperator", "input_refs"]

_END_EVENTS = frozenset({"finished", "failed", "cancelled", "lost"})
_QUIET_FIELDS = frozenset({"outputs", "released", "attempt"})
_DRAIN_POLL = 0.05  # seconds between log reads while the task's end event is on its way (one index hop)
_MLFLOW_WAIT = 10.0  # seconds the controller may take to open a task's MLflow run (first use: MLflow start-up)


def input_refs(value: Any) -> list[str]:
    """The controller input references in ``value`` (see the module docstring), flattened, in order, unique."""
    refs: list[str] = []

    def add(item: Any) -> None:
        if item is None:
            return
        if isinstance(item, str):
            text = item.strip()
            if text.startswith("["):  # a rendered template of a list: JSON, or Python's repr of one
                try:
                    parsed = json.loads(text)
                except ValueError:
                    try:
                        parsed = ast.literal_eval(text)
                    except (ValueError, SyntaxError):
                        raise ControllerRequestError(f"inputs: {one_line(text, 120)!r} is not a list") from None
                add(parsed)
            elif text:
                refs.append(text)
        elif isinstance(item, Mapping):
            digest = item.get("digest")
            if not isinstance(digest, str) or not digest:
                raise ControllerRequestError(f"inputs: {dict(item)!r} has no 'digest': pass outputs or digests")
            if item.get("kind") == "evaluation" and item.get("name") == "metrics.json":
                return
            refs.append(digest)
        elif isinstance(item, Iterable):
            for element in item:
                add(element)
        else:
            raise ControllerRequestError(f"inputs: {item!r} is not a digest, a name or an output mapping")

    add(value)
    return list(dict.fromkeys(refs))


def _split_params(params: Any, dag: Any) -> tuple[dict[str, Any], ParamsDict | None]:
    """(the service's params, the Airflow params to keep): see the module docstring.

    Airflow's operator metaclass has already merged ``params`` into the DAG's params, marking each
    entry's source; task-sourced entries are ours, the DAG's own are restored where ours shadowed them."""
    if params is None:
        return {}, None
    if not isinstance(params, ParamsDict):
        return dict(params), None
    entries = list(params.items())  # type: ignore[no-untyped-call]  # ParamsDict.items is untyped
    ours = {key: param.value for key, param in entries if param.source == "task"}
    kept = ParamsDict({key: param for key, param in entries if param.source != "task"})
    dag_params = getattr(dag, "params", None)
    if isinstance(dag_params, ParamsDict):
        for key in ours:
            if key in dag_params:
                kept[key] = copy.copy(dag_params.get_param(key))
    return ours, kept


def _format(record: Mapping[str, Any]) -> str:
    component = record.get("component") or "?"
    message = str(record.get("message", ""))
    event = record.get("event")
    if event:
        fields = record.get("fields") or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in _QUIET_FIELDS and v not in (None, ""))
        text = message if message == event else f"{event}: {message}"
        return f"[{component}] {text}" + (f" ({extra})" if extra else "")
    stream = record.get("stream")
    return f"[{component}:{stream}] {message}" if stream else f"[{component}] {message}"


class ControllerTaskOperator(BaseOperator):
    """Run a registered ``job`` service through the mlprov controller (see the module docstring)."""

    template_fields: Sequence[str] = ("service", "service_params", "inputs", "code", "job_resources")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "service_params": "json",
        "code": "json",
        "job_resources": "json",
    }
    ui_color = "#e8f1fb"
    operator_extra_links = (ControllerTaskLink(), MlflowRunLink(), ControllerLogsLink())

    def __init__(
        self,
        *,
        service: str,
        params: Mapping[str, Any] | None = None,
        inputs: Any = None,
        code: Mapping[str, Any] | str | None = None,
        resources: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        conn_id: str = ControllerHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 5.0,
        log_settle: float = 5.0,
        unreachable_timeout: float = 600.0,
        long_poll: float = 5.0,
        **kwargs: Any,
    ) -> None:
        service_params, airflow_params = _split_params(params, kwargs.get("dag"))
        super().__init__(params=airflow_params, **kwargs)
        self.service = service
        self.service_params = service_params
        self.inputs = inputs
        self.code = code
        # not ``self.resources``/``self.params``: BaseOperator owns those names (Airflow's own meanings)
        self.job_resources = dict(resources) if resources is not None else None
        self.timeout = timeout
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.log_settle = log_settle
        self.unreachable_timeout = unreachable_timeout
        self.long_poll = long_poll
        self._controller_task_id: str | None = None
        self._log_ended = False

    def get_hook(self) -> ControllerHook:
        return ControllerHook(self.conn_id)

    # -- submit -----------------------------------------------------------------------------------

    def _code(self) -> dict[str, Any] | None:
        if self.code is None or self.code == "":
            return None
        if isinstance(self.code, str):
            return {"repo": self.code}
        return dict(self.code)

    @staticmethod
    def _run_identity(context: Any) -> dict[str, Any]:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        task_id = ti.task_id if map_index is None or map_index < 0 else f"{ti.task_id}.{map_index}"
        return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": task_id, "try_number": int(ti.try_number)}

    def execute(self, context: Any) -> list[dict[str, Any]]:
        with self.get_hook() as hook:
            return self._execute(context, hook)

    def _execute(self, context: Any, hook: ControllerHook) -> list[dict[str, Any]]:
        run = self._run_identity(context)
        answer = hook.submit_task(
            self.service,
            params=dict(self.service_params or {}),
            inputs=input_refs(self.inputs),
            code=self._code(),
            run=run,
            resources=self.job_resources,
            timeout=self.timeout,
        )
        task_id = str(answer["id"])
        self._controller_task_id = task_id
        verb = "submitted" if answer.get("created", True) else "re-attached to"
        self.log.info("%s controller task %s (service %r, state %s)", verb, task_id, self.service, answer.get("state"))
        links = link_info(task_id=task_id, mlflow_run_id=None, endpoint=hook.endpoint)
        context["ti"].xcom_push(key=LINKS_XCOM_KEY, value=links)
        if self.deferrable:
            self.defer(
                trigger=ControllerTaskTrigger(
                    controller_task_id=task_id,
                    conn_id=self.conn_id,
                    poll_interval=self.poll_interval,
                    unreachable_timeout=self.unreachable_timeout,
                    long_poll=self.long_poll,
                ),
                method_name="execute_complete",
                kwargs={"controller_task_id": task_id},
            )
        cursor = LogCursor()
        task = self._poll(hook, task_id, cursor)
        return self._finish(context, hook, task, cursor)

    def execute_complete(
        self, context: Any, event: dict[str, Any] | None = None, controller_task_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Resumed from the trigger: copy the task's log lines, then finish as in the polling mode."""
        self._controller_task_id = controller_task_id
        event = event or {}
        task_id = controller_task_id or str(event.get("controller_task_id") or (event.get("task") or {}).get("id"))
        with self.get_hook() as hook:
            if event.get("status") != "done":
                self._stream(hook, task_id, LogCursor())
                raise _error_from_event(event)
            return self._finish(context, hook, dict(event["task"]), LogCursor())

    # -- wait -------------------------------------------------------------------------------------

    def _poll(self, hook: ControllerHook, task_id: str, cursor: LogCursor) -> dict[str, Any]:
        """Until the task is terminal: long polls (answered at each state change, so the end is seen at
        once, not up to a ``poll_interval`` later), copying new log lines after each answer. A controller
        without long polls answers at once: then this polls every ``poll_interval``."""
        last_answer = time.monotonic()
        seen: str | None = None
        while True:
            asked = time.monotonic()
            try:
                task = hook.get_task(task_id, wait=self.long_poll, state=seen)
            except ControllerUnreachable as exc:
                if time.monotonic() - last_answer >= self.unreachable_timeout:
                    raise
                self.log.warning("controller unreachable, still waiting for task %s: %s", task_id, exc)
            else:
                last_answer = time.monotonic()
                self._stream(hook, task_id, cursor)
                state = task.get("state")
                if state in TERMINAL_STATES:
                    return task
                changed, seen = state != seen, state
                if self.long_poll > 0 and (changed or last_answer - asked >= min(self.long_poll, self.poll_interval)):
                    continue  # a long poll answered: ask again at once
            time.sleep(self.poll_interval)

    def _stream(self, hook: ControllerHook, task_id: str, cursor: LogCursor) -> None:
        """Log the records ``cursor`` has not seen; notes when the task's end event was among them."""
        try:
            for record in hook.iter_logs(task_id, after=cursor):
                self.log.info("%s", _format(record))
                if record.get("event") in _END_EVENTS:
                    self._log_ended = True
        except ControllerError as exc:
            self.log.warning("could not read the logs of controller task %s: %s", task_id, exc)
            self._log_ended = True  # nothing more to wait for

    def _drain(self, hook: ControllerHook, task_id: str, cursor: LogCursor) -> None:
        """The log pipeline lags the task's end slightly: read until its end event, at most ``log_settle`` s."""
        deadline = time.monotonic() + self.log_settle
        self._stream(hook, task_id, cursor)
        while not self._log_ended and time.monotonic() < deadline:
            time.sleep(_DRAIN_POLL)
            self._stream(hook, task_id, cursor)

    # -- finish -----------------------------------------------------------------------------------

    def _finish(
        self, context: Any, hook: ControllerHook, task: dict[str, Any], cursor: LogCursor
    ) -> list[dict[str, Any]]:
        task_id = str(task["id"])
        self._drain(hook, task_id, cursor)
        if task.get("mlflow_run_id") is None and hook.endpoint.mlflow_ui_url:
            task["mlflow_run_id"] = self._mlflow_run_id(hook, task_id)
        ti = context["ti"]
        ti.xcom_push(
            key=LINKS_XCOM_KEY,
            value=link_info(task_id=task_id, mlflow_run_id=task.get("mlflow_run_id"), endpoint=hook.endpoint),
        )
        state = task.get("state")
        if state != "succeeded":
            raise _error_for_task(task)
        outputs = hook.task_outputs(task)
        ti.xcom_push(key="outputs", value=outputs)
        ti.xcom_push(key="digests", value=[o["digest"] for o in outputs])
        ti.xcom_push(key="manifest_ids", value=[o["manifest_id"] for o in outputs if o["manifest_id"]])
        ti.xcom_push(key="by_name", value={o["name"]: o["digest"] for o in outputs})
        self.log.info(
            "controller task %s succeeded: %s",
            task_id,
            ", ".join(f"{o['name']} {o['digest']}" for o in outputs) or "no outputs",
        )
        return outputs

    def _mlflow_run_id(self, hook: ControllerHook, task_id: str) -> str | None:
        """The controller opens a task's MLflow run off the launch path: a short job can end first."""
        deadline = time.monotonic() + _MLFLOW_WAIT
        while True:
            try:
                run_id = hook.get_task(task_id).get("mlflow_run_id")
            except ControllerError:
                return None
            if run_id or time.monotonic() >= deadline:
                return str(run_id) if run_id else None
            time.sleep(0.2)

    def on_kill(self) -> None:
        """The Airflow task is being killed: cancel the controller task (the controller kills the job)."""
        if self._controller_task_id is None:
            return
        try:
            with ControllerHook(self.conn_id, retries=1, timeout=10.0) as hook:
                hook.cancel_task(self._controller_task_id)
            self.log.info("cancelled controller task %s", self._controller_task_id)
        except ControllerError as exc:
            self.log.warning("could not cancel controller task %s: %s", self._controller_task_id, exc)


def _error_for_task(task: Mapping[str, Any]) -> ControllerError:
    task_id, service, state = task.get("id"), task.get("service"), task.get("state")
    reason = task.get("reason") or (f"exit code {task['exit_code']}" if task.get("exit_code") is not None else None)
    what = f"controller task {task_id} (service {service!r})"
    kwargs = {"task_id": str(task_id), "reason": reason}
    if state == "cancelled":
        return ControllerTaskCancelled(f"{what} was cancelled: {reason or 'no reason given'}", **kwargs)
    if state == "lost":
        return ControllerTaskLost(f"{what} was lost by the controller: {reason or 'no reason given'}", **kwargs)
    return ControllerTaskFailed(f"{what} failed: {reason or 'no reason given'}", **kwargs)


def _error_from_event(event: Mapping[str, Any]) -> ControllerError:
    """The exception a trigger's error event stands for (same class name, same one-line message)."""
    name = str(event.get("error") or "ControllerError")
    kind = getattr(_exceptions, name, None)
    if not (isinstance(kind, type) and issubclass(kind, ControllerError)):
        kind = ControllerError
    return kind(str(event.get("message") or f"the trigger ended without an answer: {dict(event)!r}"))
