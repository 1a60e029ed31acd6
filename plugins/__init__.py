"""mlprov's Airflow plugin: run registered controller services as Airflow tasks.

::

    from plugins import ControllerTaskOperator

    train = ControllerTaskOperator(task_id="train", service="fine-tune", params={"epochs": 3},
                                   inputs=prepare.output, code={"repo": ".", "ref": "HEAD"})

The names below are the public API (locked by ``tests/unit/test_plugin_public_api.py``); modules
starting with ``_`` are private.
"""

from __future__ import annotations

from plugins.exceptions import (
    ControllerAuthError,
    ControllerError,
    ControllerRequestError,
    ControllerTaskCancelled,
    ControllerTaskFailed,
    ControllerTaskLost,
    ControllerUnreachable,
    UnknownServiceError,
)
from plugins.hooks import TERMINAL_STATES, ControllerHook, LogCursor
from plugins.links import LINKS_XCOM_KEY, ControllerLogsLink, ControllerTaskLink, MlflowRunLink
from plugins.operators import ControllerTaskOperator, input_refs
from plugins.plugin import MlprovPlugin
from plugins.triggers import ControllerTaskTrigger

__all__ = [
    "LINKS_XCOM_KEY",
    "TERMINAL_STATES",
    "ControllerAuthError",
    "ControllerError",
    "ControllerHook",
    "ControllerLogsLink",
    "ControllerRequestError",
    "ControllerTaskCancelled",
    "ControllerTaskFailed",
    "ControllerTaskLink",
    "ControllerTaskLost",
    "ControllerTaskOperator",
    "ControllerTaskTrigger",
    "ControllerUnreachable",
    "LogCursor",
    "MlflowRunLink",
    "MlprovPlugin",
    "UnknownServiceError",
    "input_refs",
]
