"""The controller's exception tree; translated to HTTP only at the edge (``controller.api.errors``).

Raise these from services, stores and runtimes; never ``HTTPException`` below a route. Each
message is one line and says what to fix. ``status_code`` and ``code`` are what the single HTTP
handler puts on the wire: ``{"error": code, "detail": message}``.

::

    ControllerError                         500 internal_error
     ├── InvalidInputError                  400 invalid_input
     │    ├── InvalidNameError              400 invalid_name        (path traversal, bad characters)
     │    └── UnknownArtifactError          400 unknown_artifact    (a task input no store knows)
     ├── UnauthorizedError                  401 unauthorized        (missing or unknown token)
     ├── ForbiddenError                     403 forbidden           (valid token, wrong scope)
     ├── NotFoundError                      404 not_found
     │    ├── ServiceNotFoundError
     │    ├── TaskNotFoundError
     │    ├── RunNotFoundError
     │    ├── ArtifactNotFoundError
     │    └── ServerNotFoundError           404 server_not_found    (a run's server by name)
     ├── ConflictError                      409 conflict
     ├── PayloadTooLargeError               413 payload_too_large
     ├── CatalogError                       500 catalog_invalid     (services.yaml; raised at start-up)
     ├── JobLaunchError                     500 job_launch_failed   (recorded on the task, not an HTTP answer)
     ├── ServerUnreachableError             502 server_unreachable  (proxying to a run's server)
     ├── ServerTimeoutError                 504 server_timeout
     └── UnavailableError                   503 unavailable         (database or a backend down)

``provenance.errors.ProvenanceError`` subclasses are mapped too, see :func:`status_for`.
"""

from __future__ import annotations

from provenance.errors import (
    InvalidInputError as ProvenanceInvalidInputError,
)
from provenance.errors import (
    KeyMaterialError,
    ManifestNotFoundError,
    ProvenanceError,
    StorageError,
    TransparencyLogError,
    VerificationError,
)

__all__ = [
    "ArtifactNotFoundError",
    "CatalogError",
    "ConflictError",
    "ControllerError",
    "ForbiddenError",
    "InvalidInputError",
    "InvalidNameError",
    "JobLaunchError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RunNotFoundError",
    "ServerNotFoundError",
    "ServerTimeoutError",
    "ServerUnreachableError",
    "ServiceNotFoundError",
    "TaskNotFoundError",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownArtifactError",
    "status_for",
]


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"


class InvalidInputError(ControllerError):
    status_code = 400
    code = "invalid_input"


class InvalidNameError(InvalidInputError):
    """A name that could escape its directory or is not in the allowed alphabet."""

    code = "invalid_name"


class UnknownArtifactError(InvalidInputError):
    """A task input names an artifact (digest, name or alias) that no store knows."""

    code = "unknown_artifact"


class UnauthorizedError(ControllerError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(ControllerError):
    status_code = 403
    code = "forbidden"


class NotFoundError(ControllerError):
    status_code = 404
    code = "not_found"


class ServiceNotFoundError(NotFoundError):
    code = "service_not_found"


class TaskNotFoundError(NotFoundError):
    code = "task_not_found"


class RunNotFoundError(NotFoundError):
    code = "run_not_found"


class ArtifactNotFoundError(NotFoundError):
    code = "artifact_not_found"


class ConflictError(ControllerError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(ControllerError):
    status_code = 413
    code = "payload_too_large"


class CatalogError(ControllerError):
    """``services.yaml`` is unreadable or an entry is invalid; the message names the entry and field."""

    code = "catalog_invalid"


class JobLaunchError(ControllerError):
    """A runtime could not start a job (command not found, image missing, ...)."""

    code = "job_launch_failed"


class UnavailableError(ControllerError):
    status_code = 503
    code = "unavailable"


class ServerNotFoundError(NotFoundError):
    code = "server_not_found"


class ServerUnreachableError(ControllerError):
    status_code = 502
    code = "server_unreachable"


class ServerTimeoutError(ControllerError):
    status_code = 504
    code = "server_timeout"


# Most specific first: the first isinstance match wins.
_PROVENANCE_STATUS: tuple[tuple[type[ProvenanceError], int, str], ...] = (
    (ProvenanceInvalidInputError, 400, "invalid_input"),
    (ManifestNotFoundError, 404, "manifest_not_found"),
    (VerificationError, 422, "verification_failed"),
    (StorageError, 503, "storage_unavailable"),
    (TransparencyLogError, 503, "transparency_log_unavailable"),
    (KeyMaterialError, 500, "key_material"),
    (ProvenanceError, 500, "provenance_error"),
)


def status_for(exc: Exception) -> tuple[int, str]:
    """HTTP status and error code for a controller or provenance exception (500 otherwise)."""
    if isinstance(exc, ControllerError):
        return exc.status_code, exc.code
    for kind, status, code in _PROVENANCE_STATUS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"
