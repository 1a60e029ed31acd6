"""The ``mlprov`` click group: sub-command registration and the one place errors become exit codes.

Every command raises the domain exceptions of :mod:`provenance.errors`; :class:`MlprovGroup` turns
them (and click's usage errors) into one ``error: ...`` line on stderr and a distinct exit code, and
never shows a traceback unless ``--debug`` is given. Modules imported here import only ``click``:
heavy libraries load inside the commands that need them (``mlprov hash`` and ``--help`` stay fast).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Final

import click

from provenance.errors import (
    InvalidInputError,
    KeyMaterialError,
    ManifestNotFoundError,
    ProofError,
    ProvenanceError,
    StorageError,
    VerificationError,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "EXIT_VERIFICATION",
    "MlprovGroup",
    "cli",
    "exit_code_for",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_VERIFICATION: Final = 4
EXIT_STORAGE: Final = 5

EPILOG: Final = """\b
Exit codes:
  0  success (a verify printed "✓ Manifest verification successful")
  1  other failure
  2  bad usage or input: flags, missing or unreadable files, keys, malformed JSON
  3  manifest not found
  4  verification failed: signature, digest, link or transparency-log proof
  5  manifest store unreachable or refused the operation
\b
Environment: MLPROV_HOME (default ./.mlprov), MLPROV_TOKEN, MLPROV_STORAGE_TYPE,
MLPROV_STORAGE_URL, MLPROV_HTTP_TIMEOUT, MLPROV_TLOG (off: no transparency log), MLPROV_TLOG_DIR,
MLPROV_TLOG_VKEY, MLPROV_CONTROLLER_URL (`lineage`, `deployments`).
"""


def exit_code_for(error: BaseException) -> int:
    """The exit code of a domain error (documented in ``mlprov --help``)."""
    if isinstance(error, (InvalidInputError, KeyMaterialError, click.ClickException)):
        return EXIT_USAGE
    if isinstance(error, ManifestNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, (VerificationError, ProofError)):
        return EXIT_VERIFICATION
    if isinstance(error, StorageError):
        return EXIT_STORAGE
    return EXIT_FAILURE


def _one_line(text: str) -> str:
    return " ".join(text.split())


class MlprovGroup(click.Group):
    """A group whose ``main`` maps every error to one stderr line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        debug = "--debug" in (sys.argv[1:] if args is None else list(args))
        try:
            rv = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.NoArgsIsHelpError as exc:  # `mlprov model` alone: show its help
            click.echo(exc.ctx.get_help(), err=True)
            code = EXIT_USAGE
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            click.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
            code = EXIT_USAGE
        except click.ClickException as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            code = EXIT_USAGE
        except click.Abort:
            click.echo("error: aborted", err=True)
            code = EXIT_FAILURE
        except ProvenanceError as exc:
            if debug:
                import traceback

                traceback.print_exc()
            click.echo(f"error: {_one_line(str(exc)) or type(exc).__name__}", err=True)
            code = exit_code_for(exc)
        except BrokenPipeError:  # `mlprov model list | head`
            code = EXIT_OK
        except Exception as exc:
            if debug:
                import traceback

                traceback.print_exc()
            click.echo(
                f"error: internal error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug)", err=True
            )
            code = EXIT_FAILURE
        sys.exit(code)


@click.group(
    "mlprov",
    cls=MlprovGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks of errors.")
@click.version_option(package_name="mlprov", prog_name="mlprov", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """mlprov: signed, linked, verifiable provenance for datasets, models, software and evaluations.

    Commands and flags of atlas-cli work unchanged (`model create --paths=... --ingredient-names=...`,
    `manifest link -s SRC -t TGT`, ...), plus `keys`, `hash`, a full-chain `verify` and the
    transparency `log` every stored manifest is appended to.
    """


def _register() -> None:
    from provenance.cli import (
        assets,
        attestation,
        deploymentscmd,
        hashcmd,
        keys,
        lineagecmd,
        logcmd,
        manifest,
        sidecarcmd,
        verifycmd,
    )

    for command in (
        assets.dataset,
        assets.model,
        assets.software,
        assets.evaluation,
        manifest.manifest,
        attestation.cc_attestation,
        keys.keys,
        hashcmd.hash_command,
        verifycmd.verify,
        lineagecmd.lineage,
        deploymentscmd.deployments,
        logcmd.log_group,
        sidecarcmd.sidecar,
    ):
        cli.add_command(command)


_register()
