"""Full-chain verification for ``mlprov verify`` and ``model|dataset|software|evaluation verify``.

Runs :func:`provenance.verify.verify_chain` against the store the flags name and the trust store in
``$MLPROV_HOME/trust`` (plus transparency-log inclusion of every node when the log exists); prints the
report (text, or JSON with ``--json``). Exit status: 0 only when everything holds (the text report
then ends with atlas-cli's ``✓ Manifest verification successful``), 4 when something does not verify,
3 when the manifest is unknown, 5 when the store is unreachable.

The verifier is called through :func:`run_verify` only, so a later ``--server URL`` (the controller's
verification service) slots in as a second way to obtain the same report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from provenance.cli.runtime import load_trust, open_cli_store
from provenance.errors import InvalidInputError, VerificationError

if TYPE_CHECKING:
    from provenance.keys import TrustStore
    from provenance.report import NodeCheck
    from provenance.storage.base import StoredManifest

__all__ = ["SUCCESS_LINE", "run_verify"]

SUCCESS_LINE: Final = "✓ Manifest verification successful"


def _load_file(path: Path) -> StoredManifest:
    from provenance.manifest import parse_manifest
    from provenance.storage.base import StoredManifest

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        manifest = parse_manifest(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None
    sidecar = path.with_suffix(".c2pa")
    c2pa = sidecar.read_bytes() if sidecar.is_file() else None
    return StoredManifest(
        id=str(manifest.get("instance_id", path.name)),
        manifest=manifest,
        c2pa=c2pa,
        locations={"manifest": str(path), **({"c2pa": str(sidecar)} if c2pa is not None else {})},
    )


def _extra_checks(trust: TrustStore) -> tuple[NodeCheck, ...]:
    """The checks beyond the manifest's own: the stored OMS bundle and C2PA sidecar, against the trust
    store's CAs (a bare pinned key has no certificate, so those two are only made with a chain), and
    inclusion in the transparency log when one is configured and exists."""
    from provenance.checks import c2pa_sidecar_check, oms_bundle_check
    from provenance.cli.tlogging import inclusion_check

    anchors = trust.anchors_pem
    tlog = inclusion_check()
    return (oms_bundle_check(anchors), c2pa_sidecar_check(anchors), *((tlog,) if tlog is not None else ()))


def _is_path(target: str) -> bool:
    return Path(target).is_file() or target.endswith(".json") or "/" in target.removeprefix("urn:")


def run_verify(
    target: str,
    *,
    storage_type: str | None,
    storage_url: str | None,
    as_json: bool = False,
    rehash: bool = True,
    max_depth: int = 32,
) -> None:
    """Verify ``target`` (a manifest ID, or a manifest JSON file) and its chain; print the report."""
    from provenance.verify import verify_chain

    root: str | StoredManifest = _load_file(Path(target)) if _is_path(target) else target
    trust = load_trust()
    store = open_cli_store(storage_type, storage_url)
    report = verify_chain(
        root,
        store,
        trust,
        max_depth=max_depth,
        rehash=rehash,
        extra_checks=_extra_checks(trust),
    )
    label = root if isinstance(root, str) else root.id
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        text = report.to_text().rstrip("\n")
        if report.ok and not text.endswith(SUCCESS_LINE):
            text = f"{text}\n{SUCCESS_LINE}" if text else SUCCESS_LINE
        click.echo(text)
    if not report.ok:
        broken = report.first_broken
        reason = f": first broken at {broken.id}: {broken.error}" if broken is not None else " (see the report)"
        raise VerificationError(f"manifest {label} failed verification{reason}")
