"""``mlprov log``: the local transparency log of stored manifests (checkpoint, proof, audit, vkey).

Failures are domain errors (:class:`~provenance.errors.ProofError`: exit 4, one ``error:`` line).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provenance.cli.runtime import open_cli_store, storage_options

__all__ = ["log_group"]


@click.group("log")
def log_group() -> None:
    """The transparency log every stored manifest is appended to ($MLPROV_HOME/tlog, $MLPROV_TLOG_DIR)."""


@log_group.command("checkpoint")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Save the note to FILE.")
def checkpoint(out: Path | None) -> None:
    """Print (or save) the log's current signed checkpoint (a C2SP signed note)."""
    from provenance.cli.tlogging import open_cli_log
    from provenance.errors import InvalidInputError

    log = open_cli_log(create=True, always=True)
    assert log is not None  # always=True, create=True
    signed = log.checkpoint()
    if out is None:
        click.echo(signed.note, nl=False)
        return
    try:
        out.write_text(signed.note)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {out}: {exc.strerror}") from None
    click.echo(f"Checkpoint of {signed.origin} at size {signed.size} saved to {out}")


@log_group.command("vkey")
def vkey() -> None:
    """Print the verifier key of the log's checkpoints (pin it as MLPROV_TLOG_VKEY)."""
    from provenance.cli.tlogging import open_cli_log

    log = open_cli_log(create=True, always=True)
    assert log is not None
    click.echo(log.verifier_key)


@log_group.command("proof")
@click.option("--id", "manifest_id", required=True, help="Manifest ID.")
@storage_options
def proof(manifest_id: str, storage_type: str | None, storage_url: str | None) -> None:
    """Print the inclusion proof of a stored manifest against the current checkpoint, as JSON (verified)."""
    from provenance.cli.tlogging import open_cli_log, verifier_keys
    from provenance.errors import ProofError
    from provenance.tlog.verification import prove_manifest

    stored = open_cli_store(storage_type, storage_url).get(manifest_id)
    log = open_cli_log(create=False, always=True)
    if log is None:
        raise ProofError(f"not logged: there is no transparency log (no entries yet) to hold {manifest_id}")
    inclusion = prove_manifest(log, stored.manifest, verifier_keys=verifier_keys(log))
    click.echo(json.dumps({"manifestId": stored.id, **inclusion.to_dict()}, indent=2))


@log_group.command("audit")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A checkpoint note saved earlier (`mlprov log checkpoint --out FILE`).",
)
@click.option("--vkey", "pinned", default=None, help="Verifier key to check both checkpoints with.")
@click.option(
    "--server",
    default=None,
    metavar="URL",
    help="Audit the controller's log at URL (/api/v1/log, token from MLPROV_TOKEN) instead of the local one.",
)
def audit(checkpoint_file: Path, pinned: str | None, server: str | None) -> None:
    """Check that the log still extends a checkpoint saved earlier (consistency proof): a log that
    rewrote, dropped or shrank its history fails with exit 4.

    With ``--server`` the checkpoint and proof come from the controller; pin its key with ``--vkey`` or
    ``MLPROV_TLOG_VKEY`` (otherwise the key the server serves is used, which only detects a changed key
    through the stored checkpoint's signature)."""
    from provenance.cli.runtime import settings
    from provenance.cli.tlogging import ServerLog, open_cli_log, verifier_keys
    from provenance.errors import InvalidInputError, ProofError
    from provenance.tlog.base import TransparencyLog, audit_checkpoint

    try:
        note = checkpoint_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {checkpoint_file}: {exc}") from None
    log: TransparencyLog | ServerLog | None
    if server is not None:
        remote = ServerLog(server)
        log, keys = remote, pinned or settings().tlog_vkey or remote.vkey()
    else:
        local = open_cli_log(create=False, always=True)
        if local is None:
            raise ProofError(f"audit failed: the transparency log at {settings().tlog_path} is gone (history deleted)")
        log, keys = local, pinned or verifier_keys(local)
    try:
        current = audit_checkpoint(log, note, keys)  # type: ignore[arg-type]  # ServerLog has what audit uses
    except ProofError as exc:
        raise ProofError(f"audit failed: {exc}") from None
    click.echo(f"✓ {current.origin} at size {current.size} extends the checkpoint in {checkpoint_file}")
