"""``mlprov keys``: create the local signing identity, show it, and manage the trust store."""

from __future__ import annotations

from pathlib import Path

import click

from provenance.cli.runtime import settings

__all__ = ["keys"]


@click.group("keys")
def keys() -> None:
    """The signing identity in $MLPROV_HOME and the trust store verification uses."""


@keys.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to create it.  [default: $MLPROV_HOME, ./.mlprov]",
)
@click.option("--force", is_flag=True, help="Replace an existing identity (old signatures stop verifying).")
@click.option(
    "--org", "organisation", default="mlprov local", show_default=True, help="Organisation in the certificates."
)
def init(directory: Path | None, force: bool, organisation: str) -> None:
    """Create a local CA, a P-256 signing certificate, and a trust store holding the CA."""
    from provenance.keys import init_identity, load_identity

    home = directory if directory is not None else settings().home
    paths = init_identity(home, organisation=organisation, force=force)
    identity = load_identity(home)
    click.echo(f"Created signing identity in {paths.signer_key.parent}")
    click.echo(f"  key ID:      {identity.key_id}")
    click.echo(f"  certificate: {paths.signer_cert}")
    click.echo(f"  chain:       {paths.chain}")
    click.echo(f"  trust store: {paths.trust_dir}")


@keys.command("show")
def show() -> None:
    """Print the signing identity and the trust store's anchors and pinned keys."""
    from provenance.keys import TrustStore, identity_paths, load_identity

    home = settings().home
    identity = load_identity(home)
    paths = identity_paths(home)
    click.echo(f"Identity:    {paths.signer_key.parent}")
    click.echo(f"Key ID:      {identity.key_id}")
    click.echo(f"Algorithm:   {identity.algorithm}")
    for i, cert in enumerate(identity.chain):
        role = "Certificate" if i == 0 else "Issuer"
        click.echo(f"{role + ':':<12} {cert.subject.rfc4514_string()}")
        click.echo(f"             valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}")
    trust = TrustStore.load(paths.trust_dir)
    click.echo(f"Trust store: {paths.trust_dir}")
    for anchor in trust.anchors:
        click.echo(f"  CA:     {anchor.subject.rfc4514_string()}")
    for kid in sorted(trust.pinned):
        click.echo(f"  pinned: {kid}")
    if not trust.anchors and not trust.pinned:
        click.echo("  (empty: nothing verifies)")


@keys.command("trust")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def trust(file: Path) -> None:
    """Add FILE to the trust store: a CA certificate (PEM) becomes an anchor; a public key is pinned.

    A private key (atlas-cli's --key) is accepted too: only its public key is pinned, the private key
    is never copied.
    """
    from provenance.cli.trusting import add_to_trust_store

    name, what = add_to_trust_store(file, settings().trust_dir)
    click.echo(f"Trusted {what}: {name}")
