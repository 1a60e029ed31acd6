"""Structured JSON logs (structlog) to stderr, with bound run_id / task_id / job_uid.

Call :func:`configure_logging` once per process (``create_app`` does). Code logs with
``log = get_logger(__name__)`` and binds identity for a block with :func:`bind_context`::

    with bind_context(run_id=task.run_id, task_id=task.id, job_uid=handle.ref):
        log.info("job started", attempt=1)

Standard-library loggers (uvicorn, alembic) go through the same JSON renderer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

__all__ = ["bind_context", "configure_logging", "get_logger"]

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines to ``stream`` (stderr by default) for structlog and the standard library alike."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            *_SHARED_PROCESSORS,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_SHARED_PROCESSORS],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mlprov", False)]:
        root.removeHandler(old)
    handler._mlprov = True  # type: ignore[attr-defined]  # marks our handler so reconfiguring replaces it
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger


@contextmanager
def bind_context(
    *, run_id: str | None = None, task_id: str | None = None, job_uid: str | None = None, **more: Any
) -> Iterator[None]:
    """Bind identity fields (only those given) to every log line in this context (thread/task local)."""
    fields = {
        k: v for k, v in {"run_id": run_id, "task_id": task_id, "job_uid": job_uid, **more}.items() if v is not None
    }
    with structlog.contextvars.bound_contextvars(**fields):
        yield
