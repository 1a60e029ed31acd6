"""Links between stored manifests: ``manifest link`` (and the ``link-*`` shortcuts),
``manifest validate`` and ``manifest verify-link``, with atlas-cli's output lines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from provenance.cli.runtime import load_signer, open_cli_store
from provenance.errors import InvalidInputError, LinkError, ManifestNotFoundError, ProvenanceError

__all__ = ["link", "validate_links", "verify_link"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def link(
    source_id: str,
    target_id: str,
    *,
    key: Path | None,
    storage_type: str | None,
    storage_url: str | None,
    target_kind: str | None = None,
) -> str:
    """Store a new, re-signed version of ``source`` that cross-references ``target``; return its ID.

    Both must exist (``ManifestNotFoundError`` names the missing one). Signatures kept beside the source
    (its asset's C2PA sidecar, its OMS bundle) are kept beside the new version too. The new version is
    appended to the transparency log (:mod:`provenance.cli.tlogging`).
    """
    from provenance.manifest import manifest_type
    from provenance.signing import link_manifests

    store = open_cli_store(storage_type, storage_url)
    try:
        source = store.get(source_id)
    except ManifestNotFoundError as exc:
        raise ManifestNotFoundError(f"source manifest not found: {exc}") from None
    try:
        target = store.get(target_id)
    except ManifestNotFoundError as exc:
        raise ManifestNotFoundError(f"target manifest not found: {exc}") from None
    if target_kind is not None and (found := manifest_type(target.manifest)) != target_kind:
        raise InvalidInputError(f"manifest {target_id} is a {found} manifest, not a {target_kind} manifest")
    identity = load_signer(key)
    linked = link_manifests(source.manifest, target.manifest, identity)
    from provenance.cli.tlogging import log_stored, open_cli_log

    tlog = open_cli_log(create=True)  # before storing: a log that cannot be opened stores nothing
    stored = store.put(linked, c2pa=source.c2pa, oms_bundle=source.oms_bundle)
    if tlog is not None:
        log_stored(tlog, stored, store)
    return stored.id


def _check_reference(store: Any, ref: dict[str, Any]) -> list[str]:
    """Problems with one cross-reference (empty when it resolves and its hash matches)."""
    from provenance.manifest import manifest_hash

    url = str(ref.get("manifest_url", ""))
    stored_hash = str(ref.get("manifest_hash", ""))
    if not _HEX64.fullmatch(stored_hash) and len(stored_hash) not in (96, 128):
        return [f"Invalid hash format for {url}: {stored_hash!r}"]
    try:
        referenced = store.get(url)
    except ManifestNotFoundError:
        return [f"Failed to retrieve referenced manifest {url}: not found"]
    alg = {64: "sha256", 96: "sha384", 128: "sha512"}[len(stored_hash)]
    try:
        calculated = manifest_hash(referenced.manifest, alg)  # type: ignore[arg-type]  # alg is a HashName literal
    except ProvenanceError as exc:
        return [f"Manifest structure validation failed for {url}: {exc}"]
    if calculated != stored_hash.lower():
        return [f"Hash mismatch for manifest {url}: stored={stored_hash}, calculated={calculated}"]
    return []


def validate_links(manifest_id: str, *, storage_type: str | None, storage_url: str | None) -> None:
    """atlas-cli's ``manifest validate``: every cross-reference resolves and its hash matches."""
    store = open_cli_store(storage_type, storage_url)
    manifest = store.get(manifest_id).manifest
    refs = [r for r in manifest.get("cross_references") or [] if isinstance(r, dict)]
    click.echo(f"Validating cross-references for manifest: {manifest_id}")
    if not refs:
        click.echo("No cross-references found in manifest")
        return
    click.echo(f"Found {len(refs)} cross-references")
    errors: list[str] = []
    for index, ref in enumerate(refs, start=1):
        click.echo(f"\nValidating cross-reference #{index}: {ref.get('manifest_url')}")
        problems = _check_reference(store, ref)
        for problem in problems:
            click.echo(f"  ❌ {problem}")
        if not problems:
            click.echo("  ✓ Hash verification successful")
            click.echo("  ✓ Manifest structure validation successful")
        errors.extend(problems)
    if errors:
        click.echo(f"\nValidation failed with {len(errors)} errors:")
        for i, problem in enumerate(errors, start=1):
            click.echo(f"  {i}. {problem}")
        raise LinkError(f"cross-reference validation of {manifest_id} failed: {errors[0]}")
    click.echo("\nAll cross-references validated successfully")


def verify_link(source_id: str, target_id: str, *, storage_type: str | None, storage_url: str | None) -> None:
    """atlas-cli's ``manifest verify-link``: ``source`` references ``target`` with the right hash."""
    store = open_cli_store(storage_type, storage_url)
    source = store.get(source_id).manifest
    wanted = {target_id, target_id if target_id.startswith("urn:c2pa:") else f"urn:c2pa:{target_id}"}
    ref = next(
        (r for r in source.get("cross_references") or [] if isinstance(r, dict) and r.get("manifest_url") in wanted),
        None,
    )
    if ref is None:
        click.echo(f"No link found from {source_id} to {target_id}")
        raise LinkError(f"manifest {source_id} has no link to {target_id}")
    store.get(target_id)  # a missing target is "not found" (exit 3), not a hash mismatch
    problems = _check_reference(store, ref)
    if problems:
        click.echo(f"Hash mismatch for linked manifest: {target_id}")
        raise LinkError(f"link {source_id} -> {target_id} does not verify: {problems[0]}")
    click.echo(f"Manifest link verified: {source_id} -> {target_id}")
    click.echo("Hash verification successful")
    click.echo("Link verification successful")
