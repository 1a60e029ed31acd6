"""The ``mlprov`` command line: atlas-cli's commands and flags, plus ``keys``, ``hash`` and ``verify``.

``cli`` is the click group (``controller.cli`` adds ``serve`` to it); ``main()`` runs it.
"""

from __future__ import annotations

from provenance.cli.main import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, EXIT_VERIFICATION, cli

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "EXIT_VERIFICATION",
    "cli",
    "main",
]


def main() -> None:
    """Run ``mlprov`` (``python -m provenance.cli``)."""
    cli(prog_name="mlprov")
