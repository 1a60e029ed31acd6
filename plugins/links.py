"""Extra links of ``ControllerTaskOperator``: the controller task, its MLflow run, its log search.

Airflow 3 computes an operator's extra links on the worker when the task ends (``get_link(operator,
ti_key=...)``) and keeps them in XCom for the UI. The operator pushes ``LINKS_XCOM_KEY``: the
controller task id, the MLflow run id and the URLs built from the ``mlprov_controller`` Connection
(``ControllerEndpoint.task_url`` / ``mlflow_run_url`` / ``log_search_url``); each link reads it back.
A link the task has nothing for (no MLflow UI configured, the submission failed) is empty.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

__all__ = ["LINKS_XCOM_KEY", "ControllerLogsLink", "ControllerTaskLink", "MlflowRunLink", "link_info"]

LINKS_XCOM_KEY = "mlprov_task"
"""XCom key of ``{task_id, mlflow_run_id, controller_url, mlflow_url, logs_url}`` (the operator pushes it)."""


def link_info(*, task_id: str, mlflow_run_id: str | None, endpoint: Any) -> dict[str, Any]:
    """What the operator stores under :data:`LINKS_XCOM_KEY` (``endpoint``: a ``ControllerEndpoint``)."""
    return {
        "task_id": task_id,
        "mlflow_run_id": mlflow_run_id,
        "controller_url": endpoint.task_url(task_id),
        "mlflow_url": endpoint.mlflow_run_url(mlflow_run_id),
        "logs_url": endpoint.log_search_url(task_id),
    }


class _StoredLink(BaseOperatorLink):
    field: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        info = XCom.get_value(ti_key=ti_key, key=LINKS_XCOM_KEY)
        if not isinstance(info, dict):
            return ""
        return str(info.get(self.field) or "")


class ControllerTaskLink(_StoredLink):
    """The controller's record of the task (``GET /api/v1/tasks/{id}``)."""

    name = "mlprov task"
    field = "controller_url"


class MlflowRunLink(_StoredLink):
    """The task's MLflow run (needs the connection extra ``mlflow_ui_url``)."""

    name = "MLflow run"
    field = "mlflow_url"


class ControllerLogsLink(_StoredLink):
    """The task's log lines: Kibana Discover (connection extra ``kibana_url``) or the controller's search."""

    name = "Task logs"
    field = "logs_url"
