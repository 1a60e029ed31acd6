"""Ready-made :data:`~provenance.report.NodeCheck` factories for :func:`provenance.verify.verify_chain`.

Each factory returns a callable ``(StoredManifest) -> Check | None``: ``None`` when the manifest
carries nothing to check (no OMS bundle, no sidecar), a failed :class:`Check` when the signature
does not hold, a *skipped* one when the artifact cannot be read here. The heavy libraries
(``model_signing``, ``c2pa``) are imported only when a check actually runs.

Transparency-log inclusion: :func:`tlog_inclusion_check` (implemented in
:mod:`provenance.tlog.verification`, which documents the causes a failure names).

Which path a bundle or sidecar signs: the artifact of the manifest, i.e. the sole ingredient's path,
or, when the ingredients are the files of a directory artifact, the directory that holds them all
(their common parent). Pass ``artifact_path`` to decide otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provenance.errors import InvalidInputError, VerificationError
from provenance.report import Check, NodeCheck
from provenance.storage.base import StoredManifest
from provenance.verify import ingredient_path

if TYPE_CHECKING:
    from provenance.tlog.base import TransparencyLog
    from provenance.tlog.checkpoint import SignedCheckpoint
    from provenance.tlog.verification import VerifierKeys

__all__ = ["artifact_path_of", "c2pa_sidecar_check", "oms_bundle_check", "tlog_inclusion_check"]

ArtifactPath = Callable[[StoredManifest], Path | None]
Resolver = Callable[[dict[str, Any]], Path | None]


def artifact_path_of(stored: StoredManifest, resolver: Resolver | None = None) -> Path | None:
    """The artifact a manifest describes: its sole ingredient, or the common parent of its ingredients."""
    claim = stored.manifest.get("claim")
    ingredients = claim.get("ingredients") if isinstance(claim, dict) else None
    if not isinstance(ingredients, list) or not ingredients:
        return None
    paths = [ingredient_path(g, resolver) for g in ingredients if isinstance(g, dict)]
    if any(p is None for p in paths) or not paths:
        return None
    found = [p for p in paths if p is not None]
    if len(found) == 1:
        return found[0]
    common = Path(os.path.commonpath([str(p) for p in found]))
    return common if common.is_dir() else None


def _named(name: str, fn: Callable[[StoredManifest], Check | None]) -> NodeCheck:
    fn.check_name = name  # type: ignore[attr-defined]  # read by verify_chain to name a crashed check
    return fn


def oms_bundle_check(ca_chain_pem: bytes, *, artifact_path: ArtifactPath | None = None) -> NodeCheck:
    """Check a stored OpenSSF Model Signing bundle against the model it signs (``model_signing`` verify)."""

    def check(stored: StoredManifest) -> Check | None:
        if stored.oms_bundle is None:
            return None
        from provenance.oms import verify_model_bundle

        path = (artifact_path or artifact_path_of)(stored)
        if path is None:
            return Check("oms bundle", True, "model not reachable here; bundle not checked", skipped=True)
        try:
            verify_model_bundle(path, stored.oms_bundle, ca_chain_pem)
        except (VerificationError, InvalidInputError) as exc:
            return Check("oms bundle", False, str(exc))
        return Check("oms bundle", True, f"model_signing bundle verifies for {path}")

    return _named("oms bundle", check)


def c2pa_sidecar_check(trust_anchors_pem: bytes, *, artifact_path: ArtifactPath | None = None) -> NodeCheck:
    """Check a stored C2PA sidecar (``.c2pa``) against its asset with the given trust anchors."""

    def check(stored: StoredManifest) -> Check | None:
        if stored.c2pa is None:
            return None
        from provenance.c2pa_sidecar import verify_sidecar

        path = (artifact_path or artifact_path_of)(stored)
        if path is None:
            return Check("c2pa sidecar", True, "asset not reachable here; sidecar not checked", skipped=True)
        try:
            found = verify_sidecar(path, stored.c2pa, trust_anchors_pem)
        except (VerificationError, InvalidInputError) as exc:
            return Check("c2pa sidecar", False, str(exc))
        return Check("c2pa sidecar", True, f"{found.validation_state} ({found.active_manifest})")

    return _named("c2pa sidecar", check)


def tlog_inclusion_check(
    log: TransparencyLog,
    *,
    verifier_keys: VerifierKeys,
    checkpoint: SignedCheckpoint | str | None = None,
) -> NodeCheck:
    """Check that every manifest is logged in ``log``, proven against a verified checkpoint (the log's
    current one, or ``checkpoint``); see :func:`provenance.tlog.verification.tlog_inclusion_check`."""
    from provenance.tlog.verification import tlog_inclusion_check as make

    return make(log, verifier_keys=verifier_keys, checkpoint=checkpoint)
