"""atlas-cli's ``manifest`` commands: link, show, validate, verify-link, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from provenance.cli.runtime import open_cli_store, storage_options, tlog_option

__all__ = ["manifest"]


@click.group()
def manifest() -> None:
    """Inspect, link, validate and export stored manifests."""


@manifest.command("link")
@click.option("-s", "--source", required=True, help="Source manifest ID (gets a new version).")
@click.option("-t", "--target", required=True, help="Target manifest ID (referenced).")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), default=None, help="PEM key to re-sign with.")
@storage_options
@tlog_option
def link(source: str, target: str, key: Path | None, storage_type: str | None, storage_url: str | None) -> None:
    """Link SOURCE to TARGET: store a new, re-signed version of SOURCE that references TARGET."""
    from provenance.cli.linking import link as do_link

    new_id = do_link(source, target, key=key, storage_type=storage_type, storage_url=storage_url)
    click.echo(f"Successfully linked manifest {source} to {target}")
    click.echo(f"Updated manifest ID: {new_id}")


def _echo_assertion(index: int, assertion: dict[str, Any]) -> None:
    click.echo(f"\nAssertion #{index}")
    if "CreativeWork" in assertion:
        work = assertion["CreativeWork"] or {}
        click.echo("  Type: CreativeWork")
        click.echo(f"  Context: {work.get('@context')}")
        click.echo(f"  Creative Type: {work.get('@type')}")
        click.echo("  Authors:")
        for author in work.get("author") or []:
            click.echo(f"    - {author.get('name')} ({author.get('@type')})")
    elif "Action" in assertion:
        click.echo("  Type: Action")
        click.echo("  Actions:")
        for action in (assertion["Action"] or {}).get("actions") or []:
            click.echo(f"    - Action: {action.get('action')}")
            if action.get("software_agent"):
                click.echo(f"      Software Agent: {action['software_agent']}")
            if action.get("digital_source_type"):
                click.echo(f"      Digital Source Type: {action['digital_source_type']}")
            if action.get("parameters") is not None:
                click.echo(f"      Parameters: {json.dumps(action['parameters'], indent=2)}")
    elif "CustomAssertion" in assertion:
        custom = assertion["CustomAssertion"] or {}
        click.echo("  Type: CustomAssertion")
        click.echo(f"  Label: {custom.get('label')}")
        data = custom.get("data")
        text = data if isinstance(data, str) else json.dumps(data, indent=2)
        click.echo(f"  Data: {text}")
    else:
        click.echo("  Unknown assertion type")


@manifest.command("show")
@click.option("-i", "--id", "manifest_id", required=True, help="Manifest ID.")
@storage_options
def show(manifest_id: str, storage_type: str | None, storage_url: str | None) -> None:
    """Show a manifest, and where its C2PA sidecar and OMS bundle are stored."""
    stored = open_cli_store(storage_type, storage_url).get(manifest_id)
    m = stored.manifest
    claim = m.get("claim") or {}
    click.echo("============ Manifest Details ============")
    click.echo(f"ID: {m.get('instance_id')}")
    click.echo(f"Title: {m.get('title')}")
    click.echo(f"Created: {m.get('created_at')}")
    click.echo(f"Claim Generator: {m.get('claim_generator')}")
    click.echo(f"Active: {str(m.get('is_active')).lower()}")
    click.echo("\n------------ Claim Details -------------")
    click.echo(f"Claim ID: {claim.get('instance_id')}")
    click.echo(f"Claim Generated: {claim.get('created_at')}")
    click.echo(f"Claim Generator: {claim.get('claim_generator_info')}")
    signature = claim.get("signature")
    click.echo(f"\nSignature: {signature}" if signature else "\nSignature: None (unsigned)")
    click.echo("\n------------ Assertions -------------")
    for i, assertion in enumerate(claim.get("created_assertions") or [], start=1):
        if isinstance(assertion, dict):
            _echo_assertion(i, assertion)
    click.echo("\n------------ Ingredients -------------")
    for i, ingredient in enumerate(m.get("ingredients") or [], start=1):
        data = ingredient.get("data") or {}
        click.echo(f"\nIngredient #{i}: {ingredient.get('title')}")
        click.echo(f"  Document ID: {ingredient.get('document_id')}")
        click.echo(f"  Instance ID: {ingredient.get('instance_id')}")
        click.echo(f"  Format: {ingredient.get('dc:format')}")
        click.echo(f"  Relationship: {ingredient.get('relationship')}")
        click.echo("  Data:")
        click.echo(f"    URL: {data.get('url')}")
        click.echo(f"    Hash Algorithm: {data.get('alg')}")
        click.echo(f"    Hash: {data.get('hash')}")
        click.echo("    Data Types:")
        for data_type in data.get("data_types") or []:
            click.echo(f"      - {data_type}")
        if ingredient.get("linked_ingredient"):
            click.echo(f"  Linked Ingredient: {json.dumps(ingredient['linked_ingredient'])}")
    refs = m.get("cross_references") or []
    if refs:
        click.echo("\n------------ Cross References -------------")
        for i, ref in enumerate(refs, start=1):
            click.echo(f"\nReference #{i}")
            click.echo(f"  URL: {ref.get('manifest_url')}")
            click.echo(f"  Hash: {ref.get('manifest_hash')}")
    click.echo("\n------------ Stored Signatures -------------")
    click.echo(f"Manifest: {stored.locations.get('manifest', '(unknown)')}")
    c2pa = stored.locations.get("c2pa") if stored.c2pa is not None else None
    oms = stored.locations.get("oms_bundle") if stored.oms_bundle is not None else None
    click.echo(f"C2PA sidecar: {c2pa or 'none stored'}")
    click.echo(f"OMS bundle: {oms or 'none stored'}")


@manifest.command("validate")
@click.option("-i", "--id", "manifest_id", required=True, help="Manifest ID.")
@storage_options
def validate(manifest_id: str, storage_type: str | None, storage_url: str | None) -> None:
    """Check every cross-reference of a manifest resolves and its hash matches."""
    from provenance.cli.linking import validate_links

    validate_links(manifest_id, storage_type=storage_type, storage_url=storage_url)


@manifest.command("verify-link")
@click.option("-s", "--source", required=True, help="Source manifest ID.")
@click.option("-t", "--target", required=True, help="Target manifest ID.")
@storage_options
def verify_link(source: str, target: str, storage_type: str | None, storage_url: str | None) -> None:
    """Check SOURCE references TARGET with TARGET's current hash."""
    from provenance.cli.linking import verify_link as do_verify_link

    do_verify_link(source, target, storage_type=storage_type, storage_url=storage_url)


@manifest.command("export")
@click.option("-i", "--id", "manifest_id", required=True, help="Manifest ID to start from.")
@click.option("--format", "format_", type=click.Choice(["json", "yaml"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None, help="File to write.")
@click.option("--max-depth", type=click.IntRange(min=0), default=10, show_default=True, help="Links to follow.")
@storage_options
def export(
    manifest_id: str,
    format_: str,
    output: Path | None,
    max_depth: int,
    storage_type: str | None,
    storage_url: str | None,
) -> None:
    """Export the provenance graph reachable from a manifest (stdout unless -o)."""
    from provenance.cli.exporting import provenance_graph

    graph = provenance_graph(open_cli_store(storage_type, storage_url), manifest_id, max_depth)
    if format_ == "yaml":
        import yaml

        text = yaml.safe_dump(graph, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(graph, indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
        return
    from provenance.errors import InvalidInputError
    from provenance.storage.atomic import write_atomic

    try:
        write_atomic(output, text.encode() + (b"" if text.endswith("\n") else b"\n"))
    except OSError as exc:
        raise InvalidInputError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"Provenance graph exported to: {output}")
