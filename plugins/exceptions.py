"""What the plugin raises: one named ``AirflowException`` per way a controller task can go wrong.

Every message is one line that says which thing failed and what to do, because it is the line the
Airflow task log and UI show. Errors that a retry cannot fix (a wrong token, an unknown service, a
refused submission) also derive from ``AirflowFailException``, so Airflow fails the task at once
instead of spending its retries on them.

::

    ControllerError (AirflowException)
     ├── ControllerUnreachable        connect error / time-out / 502-503-504 after the retries
     ├── ControllerAuthError          401 or 403: wrong or missing token          (no Airflow retry)
     ├── UnknownServiceError          404 on submit: the service is not registered (no Airflow retry)
     ├── ControllerRequestError       another 4xx: the controller refused the request (no Airflow retry)
     ├── ControllerTaskFailed         the job ran and failed (exit code, launch error, time-out)
     ├── ControllerTaskCancelled      the controller task was cancelled
     └── ControllerTaskLost           the controller lost the job, or no longer knows the task
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException

__all__ = [
    "ControllerAuthError",
    "ControllerError",
    "ControllerRequestError",
    "ControllerTaskCancelled",
    "ControllerTaskFailed",
    "ControllerTaskLost",
    "ControllerUnreachable",
    "UnknownServiceError",
]


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line (whitespace runs collapsed), cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class ControllerError(AirflowException):
    """Base of everything the plugin raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ControllerUnreachable(ControllerError):
    """The controller did not answer (connection refused, time-out, 502/503/504) after the retries."""


class ControllerAuthError(ControllerError, AirflowFailException):
    """The controller refused the token (401) or its scope (403): fix the ``mlprov_controller`` connection."""


class UnknownServiceError(ControllerError, AirflowFailException):
    """The submitted service is not registered with the controller."""


class ControllerRequestError(ControllerError, AirflowFailException):
    """Another 4xx: bad input (unknown input artifact, bad name, too many GPUs ...); the message says which."""


class _TaskEnded(ControllerError):
    """A controller task that ended without succeeding; keeps the task id and the controller's reason."""

    def __init__(self, message: str, *, task_id: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.reason = reason


class ControllerTaskFailed(_TaskEnded):
    """The job ran and failed; the message carries the controller's reason."""


class ControllerTaskCancelled(_TaskEnded):
    """The controller task was cancelled (by ``on_kill``, a user or the controller)."""


class ControllerTaskLost(_TaskEnded):
    """The controller lost track of the job (state ``lost``) or no longer knows the task (404)."""
