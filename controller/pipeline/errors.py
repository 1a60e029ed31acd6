"""The exceptions of ``mlprov deploy`` and ``mlprov pipeline``; the CLI maps them to exit codes.

::

    PipelineError                 1   anything else (a step failed for a reason not below)
     ├── BadInputError            2   what the user gave is wrong: a DAG that does not import, a
     │                                services.yaml entry the controller refuses, bad flags or paths
     ├── CheckFailedError         4   ``mlprov pipeline test``: a check failed
     └── UnreachableError         5   Airflow, the controller or the deploy target did not answer

Every message is one line that says what to fix.
"""

from __future__ import annotations

__all__ = ["BadInputError", "CheckFailedError", "PipelineError", "UnreachableError"]


class PipelineError(Exception):
    """Base of the errors of ``controller.pipeline``."""

    exit_code: int = 1


class BadInputError(PipelineError):
    exit_code = 2


class CheckFailedError(PipelineError):
    exit_code = 4


class UnreachableError(PipelineError):
    exit_code = 5
