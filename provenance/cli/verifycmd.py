"""``mlprov verify ID|FILE``: full-chain verification with a readable or JSON report (``--server``: the
controller's verification service, :func:`provenance.cli.lineagecmd.run_remote_verify`)."""

from __future__ import annotations

import click

from provenance.cli.runtime import storage_options, tlog_option

__all__ = ["verify"]


@click.command("verify")
@click.argument("target", metavar="ID|FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-rehash", is_flag=True, help="Do not re-hash the assets (signatures and links only).")
@click.option(
    "--max-depth",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="How many links deep to follow.",
)
@click.option(
    "--server",
    metavar="URL",
    help="Ask the controller's verification service instead (TARGET: a manifest ID or an artifact digest).",
)
@storage_options
@tlog_option
def verify(
    target: str,
    as_json: bool,
    no_rehash: bool,
    max_depth: int,
    server: str | None,
    storage_type: str | None,
    storage_url: str | None,
) -> None:
    """Verify a manifest (by ID, or a manifest JSON FILE) and everything it links to: signatures
    against the trust store, asset digests, link hashes, and inclusion in the transparency log when
    $MLPROV_HOME/tlog exists. With --server, the controller verifies its stored chain (and the policies:
    code resolved to commits, no unsigned ancestor). Exit 0 only when everything holds."""
    if server is not None:
        from provenance.cli.lineagecmd import run_remote_verify

        run_remote_verify(target, server=server, as_json=as_json, rehash=not no_rehash, max_depth=max_depth)
        return
    from provenance.cli.verifying import run_verify

    run_verify(
        target,
        storage_type=storage_type,
        storage_url=storage_url,
        as_json=as_json,
        rehash=not no_rehash,
        max_depth=max_depth,
    )
