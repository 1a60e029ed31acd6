"""The one place exceptions become HTTP answers: ``{"error": <code>, "detail": <what to fix>}``.

Domain errors (``controller.errors``, ``provenance.errors``) carry their status; request
validation failures become 422 with each bad field named; Starlette's own HTTP errors (unknown
route 404, wrong method 405) get the same body shape. Anything else is a 500 with a generic
message (the exception is logged, never sent).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.errors import ControllerError, UnauthorizedError, status_for
from controller.logging import get_logger
from provenance.errors import ProvenanceError

__all__ = ["error_response", "install_error_handlers"]

log = get_logger(__name__)


def error_response(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="mlprov"'} if status == 401 else None
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RequestValidationError):
        errors = [
            {
                "field": _field(e.get("loc", ())),
                "message": str(e.get("msg", "invalid")).removeprefix("Value error, "),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "the request is malformed"
        return error_response(422, "invalid_request", detail, errors=errors)
    if isinstance(exc, StarletteHTTPException):
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail))
    status, code = status_for(exc)
    if status >= 500:
        log.error("request failed", method=request.method, path=request.url.path, error=code, exc_info=exc)
        if code == "internal_error":
            return error_response(500, code, "internal error: see the controller log for details")
    elif isinstance(exc, UnauthorizedError):
        log.info("unauthorized request", method=request.method, path=request.url.path)
    return error_response(status, code, str(exc) or code)


def install_error_handlers(app: FastAPI) -> None:
    """Register :func:`_handle` for every exception kind the controller answers."""
    app.add_exception_handler(RequestValidationError, _handle)
    app.add_exception_handler(StarletteHTTPException, _handle)
    app.add_exception_handler(ControllerError, _handle)
    app.add_exception_handler(ProvenanceError, _handle)
    # Unexpected errors: Starlette's outermost middleware answers with this handler, then re-raises so
    # the server logs the traceback.
    app.add_exception_handler(Exception, _handle)
