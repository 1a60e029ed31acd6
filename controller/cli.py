"""The ``mlprov`` console script: the provenance CLI's click group plus ``mlprov serve``.

``main()`` runs the group. ``serve`` starts the controller app with uvicorn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.pipeline.commands import deploy_command, pipeline_group
from provenance.cli import cli

if TYPE_CHECKING:
    from controller.settings import Settings

__all__ = ["cli", "main", "serve"]


@cli.command("serve")
@click.option("--host", default=None, help="Interface to bind (default: MLPROV_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: MLPROV_PORT or 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the ML service controller (FastAPI under /api/v1, docs at /docs)."""
    import uvicorn
    from pydantic import ValidationError

    from controller.catalog import load_services_file
    from controller.errors import ControllerError
    from controller.main import create_app
    from controller.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MLPROV_{'_'.join(str(p) for p in e['loc']).upper() or '(settings)'}: {e['msg']}" for e in exc.errors()
        )
        raise click.ClickException(f"invalid settings: {problems}") from exc
    settings = serve_settings(settings, host=host, port=port)
    try:
        if settings.services_file is not None:
            load_services_file(
                settings.services_file, runtime=settings.runtime
            )  # fail here with one line, not in the lifespan
        app = create_app(settings)
    except ControllerError as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


def serve_settings(settings: Settings, *, host: str | None = None, port: int | None = None) -> Settings:
    """The settings ``mlprov serve`` runs with: command-line host/port over the environment, and
    ``./services.yaml`` as the catalog file when none is configured and one exists there."""
    updates: dict[str, object] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if settings.services_file is None and Path("services.yaml").is_file():
        updates["services_file"] = Path("services.yaml").resolve()
    return settings.model_copy(update=updates)


cli.add_command(deploy_command)  # `mlprov deploy` (controller/pipeline/deploy.py)
cli.add_command(pipeline_group)  # `mlprov pipeline test|import-test` (controller/pipeline/checks.py)


def main() -> None:
    """Entry point of the ``mlprov`` console script."""
    cli()
