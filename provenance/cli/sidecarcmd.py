"""``mlprov sidecar``: run the provenance sidecar beside a job (the runtime starts it; see docs/sidecar-protocol.md).

Reads ``MLPROV_TASK_ID``, ``MLPROV_TASK_TOKEN``, ``MLPROV_WORKSPACE``, ``MLPROV_CONTROLLER_URL``
(``--workspace`` / ``--controller`` override the last two), the signing identity from ``MLPROV_HOME``
and ``<workspace>/.mlprov/task.json``. Logs are JSON lines on stderr; at exit one JSON summary line
goes to stdout. Exit 0 when every artifact was captured and delivered, 5 when something is left
undelivered or was refused, 2 for bad input (task.json, settings, identity).

``SIGTERM`` (and ``SIGINT``) mean "the job exited": the sidecar flushes, drains and exits.

``--standby`` (the local runtime's launcher uses it): import and warm up first (at nice +10: the work is
speculative and runs beside the current job), then read the job's working directory and environment
from stdin (NUL-separated ``cwd`` and ``KEY=VALUE`` s; EOF without them: exit 0 at once), and go on as
above; the process ends with ``os._exit`` once its summary is out (nothing is left to clean up: the
ledger and spool are on disk), sparing the interpreter's teardown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import click

__all__ = ["configure_sidecar_logging", "sidecar", "warm_up_for_fork"]


def configure_sidecar_logging(task_id: str | None, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """structlog JSON lines on ``stream`` (stderr), ``task_id`` on every line, whichever thread logs."""
    import structlog

    def add_task(_: Any, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        if task_id is not None:
            event.setdefault("task_id", task_id)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_task,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.command("sidecar")
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The job's workspace (default $MLPROV_WORKSPACE, else the current directory).",
)
@click.option(
    "--controller", "controller_url", default=None, help="Controller base URL (default $MLPROV_CONTROLLER_URL)."
)
@click.option("--once", is_flag=True, help="Capture what outputs/ holds now, deliver, and exit (no watching).")
@click.option("--standby", is_flag=True, hidden=True, help="Warm up, then take the job's cwd and env on stdin.")
def sidecar(workspace: Path | None, controller_url: str | None, once: bool, standby: bool) -> int:
    """Watch outputs/, sign every finished artifact and deliver its manifest to the controller."""
    if standby:
        if not _await_job(sys.stdin.buffer):
            os._exit(0)
        code = _run(workspace, controller_url, once)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return _run(workspace, controller_url, once)


def _await_job(stdin: Any) -> bool:
    """Standby: the imports and warm-up a sidecar needs, then block for the job on ``stdin``; adopt its
    working directory and environment. False on EOF without a job."""
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    os.nice(10)  # speculative work: yield the CPU to the jobs running now
    import provenance.c2pa_sidecar  # signing paths import these lazily: warm them now
    import provenance.oms  # noqa: F401
    from provenance.sidecar.agent import Sidecar

    Sidecar._warm_up()
    request = stdin.read()
    if not request:
        return False
    with contextlib.suppress(OSError):  # back to the runtime's priority where allowed (else it stays nicer)
        os.setpriority(os.PRIO_PROCESS, 0, priority)
    fields = [f.decode("utf-8", "surrogateescape") for f in request.split(b"\0")]
    os.chdir(fields[0])
    os.environ.clear()
    os.environ.update(item.split("=", 1) for item in fields[1:] if "=" in item)
    return True


def warm_up_for_fork() -> None:
    """The sidecar fork server's warm-up (``controller/runtime/forkserver.py``): what :func:`_await_job` and
    :func:`_run` import, and the standby warm-up, once for all the sidecars it forks; starts no thread."""
    import importlib

    for module in (
        "provenance.c2pa_sidecar",
        "provenance.oms",
        "provenance.cli.main",
        "provenance.config",
        "provenance.keys",
        "provenance.sidecar.config",
        "provenance.sidecar.delivery",
        "provenance.sidecar.taskinfo",
    ):
        importlib.import_module(module)
    from provenance.sidecar.agent import Sidecar

    Sidecar._warm_up(for_fork=True)


def _run(workspace: Path | None, controller_url: str | None, once: bool) -> int:
    from pydantic import ValidationError

    from provenance.config import load_settings
    from provenance.errors import InvalidInputError
    from provenance.keys import load_identity
    from provenance.sidecar.agent import Sidecar
    from provenance.sidecar.config import SidecarSettings
    from provenance.sidecar.delivery import ControllerClient, TokenFile
    from provenance.sidecar.taskinfo import load_task_info

    overrides: dict[str, Any] = {}
    if workspace is not None:
        overrides["workspace"] = workspace
    if controller_url is not None:
        overrides["controller_url"] = controller_url
    try:
        settings = SidecarSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise InvalidInputError(f"sidecar settings: {where}: {first['msg']}") from None
    configure_sidecar_logging(settings.task_id)
    missing = [
        name
        for name, value in (
            ("MLPROV_TASK_ID", settings.task_id),
            ("MLPROV_TASK_TOKEN (or MLPROV_TASK_TOKEN_FILE)", settings.task_token or settings.task_token_file),
            ("MLPROV_CONTROLLER_URL (or --controller)", settings.controller_url),
        )
        if not value
    ]
    if missing:
        raise InvalidInputError(f"the sidecar needs {', '.join(missing)}; the runtime sets them")
    assert settings.task_id
    assert settings.controller_url
    task = load_task_info(settings.workspace, expected_task_id=settings.task_id)
    if not settings.effective_outputs_dir.is_dir():
        raise InvalidInputError(f"{settings.effective_outputs_dir} is not a directory; the job's outputs/ must exist")
    identity = load_identity(load_settings().home)
    token: str | TokenFile
    if settings.task_token is not None:
        token = settings.task_token.get_secret_value()
    else:
        assert settings.task_token_file is not None
        if not settings.task_token_file.is_file():
            raise InvalidInputError(f"MLPROV_TASK_TOKEN_FILE {settings.task_token_file} is not a file")
        token = TokenFile(settings.task_token_file)
    client = ControllerClient(settings.controller_url, token, task.task_id, timeout=settings.http_timeout)
    with client:
        agent = Sidecar(settings, task, identity, client)

        def on_signal(signum: int, _: FrameType | None) -> None:
            agent.request_exit()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        summary = agent.run(once=once)
    click.echo(summary.to_json())
    from provenance.cli.main import EXIT_OK, EXIT_STORAGE

    return EXIT_OK if summary.ok else EXIT_STORAGE
