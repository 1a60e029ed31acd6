"""The plugin's public names are exported on purpose: this test locks them (change it with the API)."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

from tests.unit import plugin_support  # noqa: F401 - sets AIRFLOW_HOME before Airflow is imported

# isort: split
from airflow.sdk import BaseHook, BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger

import plugins

PUBLIC = {
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
}


def test_the_public_names_are_exactly_these() -> None:
    assert set(plugins.__all__) == PUBLIC
    assert len(plugins.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert getattr(plugins, name) is not None


def test_the_import_path_the_dags_use_keeps_working() -> None:
    from plugins.operators import ControllerTaskOperator

    assert ControllerTaskOperator is plugins.ControllerTaskOperator
    assert issubclass(ControllerTaskOperator, BaseOperator)
    assert issubclass(plugins.ControllerHook, BaseHook)
    assert issubclass(plugins.ControllerTaskTrigger, BaseTrigger)
    for link in ("ControllerTaskLink", "MlflowRunLink", "ControllerLogsLink"):
        assert issubclass(getattr(plugins, link), BaseOperatorLink)


def test_every_exception_is_a_named_airflow_exception() -> None:
    names = [n for n in PUBLIC if n.endswith(("Error", "Unreachable", "Failed", "Cancelled", "Lost"))]
    assert len(names) == 8
    for name in names:
        kind = getattr(plugins, name)
        assert issubclass(kind, plugins.ControllerError)
        assert issubclass(kind, AirflowException)
    assert str(plugins.ControllerTaskFailed("a\n  b")) == "a b"  # one line, always


def test_operator_signature() -> None:
    params = inspect.signature(plugins.ControllerTaskOperator.__init__).parameters
    for name in ("service", "params", "inputs", "code", "resources", "timeout", "deferrable", "poll_interval"):
        assert name in params
    assert set(plugins.ControllerTaskOperator.template_fields) == {
        "service",
        "service_params",
        "inputs",
        "code",
        "job_resources",
    }


def test_airflow_finds_the_plugin_through_its_entry_point() -> None:
    found = [ep for ep in entry_points(group="airflow.plugins") if ep.name == "mlprov"]
    assert [ep.value for ep in found] == ["plugins.plugin:MlprovPlugin"]
    plugin = found[0].load()
    assert plugin is plugins.MlprovPlugin
    assert {type(link).__name__ for link in plugin.operator_extra_links} == {
        "ControllerTaskLink",
        "MlflowRunLink",
        "ControllerLogsLink",
    }
