"""``mlprov hash PATH``: the content digest of a file (== sha256sum) or a directory (OMS root digest).

Imports only the standard library and :mod:`provenance.hashing` at start-up; ``rich`` is imported only
when a progress bar is shown (stderr is a terminal and the input is larger than 256 MiB).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import click

__all__ = ["PROGRESS_THRESHOLD", "hash_command"]

#: Inputs smaller than this hash in well under a second: a bar would only flicker.
PROGRESS_THRESHOLD: Final = 256 * 1024 * 1024


def _size(path: Path) -> int:
    if not path.is_dir():
        try:
            return path.stat().st_size
        except OSError:
            return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _hash_with_progress(path: Path, alg: str, total: int, run: Callable[[Callable[[int], None]], str]) -> str:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{alg} {path.name}", total=total)
        return run(lambda n: bar.advance(task, n))


@click.command("hash")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--alg",
    type=click.Choice(["sha256", "sha384", "sha512"]),
    default="sha256",
    show_default=True,
    help="Digest algorithm.",
)
def hash_command(path: Path, alg: str) -> None:
    """Print the digest of PATH as ALG:HEX (a file's equals sha256sum's; a directory's is its OMS root)."""
    from provenance.hashing import format_digest, hash_path

    def run(progress: Callable[[int], None] | None) -> str:
        return hash_path(path, alg, progress)  # type: ignore[arg-type]  # alg is one of HashName's members (click.Choice)

    hex_digest: str
    if sys.stderr.isatty() and (total := _size(path)) > PROGRESS_THRESHOLD:
        hex_digest = _hash_with_progress(path, alg, total, run)
    else:
        hex_digest = run(None)
    click.echo(format_digest(hex_digest, alg))  # type: ignore[arg-type]  # as above
