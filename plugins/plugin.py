"""The Airflow plugin: registers the operator's extra links with Airflow 3.

Loaded through the ``airflow.plugins`` entry point in ``pyproject.toml`` (installing mlprov is enough;
nothing to copy into ``$AIRFLOW_HOME/plugins``). The operator declares the same links itself, which is
what Airflow 3 uses to compute them on the worker; the registration lists them in ``airflow plugins``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.links import ControllerLogsLink, ControllerTaskLink, MlflowRunLink

__all__ = ["MlprovPlugin"]


class MlprovPlugin(AirflowPlugin):
    name = "mlprov"
    # A plain list, as AirflowPlugin declares it (an instance-variable annotation on the base class).
    operator_extra_links = [ControllerTaskLink(), MlflowRunLink(), ControllerLogsLink()]  # noqa: RUF012
