"""What the sidecar puts in an output's manifest, and the signatures it files beside it.

:mod:`provenance.sidecar.agent` runs the capture; this module builds its parts from the task's facts
(docs/sidecar-protocol.md section 3): the manifest kind of a classified artifact, the CustomAssertions
(task, run, parameters, code, environment, artifact, inputs, OMS bundle), the cross-references to the
input and code manifests, an evaluation's links and metrics, and, through :class:`ArtifactSigner`, the
OMS bundle of a model and the C2PA sidecar of any artifact, both signed by the task's identity.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from provenance.hashing import DirectoryDigest
from provenance.keys import SigningIdentity
from provenance.manifest import AssetKind, custom_assertion
from provenance.sidecar.classify import Classification
from provenance.sidecar.completion import FinishedArtifact
from provenance.sidecar.environment import ENVIRONMENT_ASSERTION_LABEL
from provenance.sidecar.software import SoftwareRef
from provenance.sidecar.taskinfo import TaskInfo

__all__ = [
    "OMS_BUNDLE_LABEL",
    "OMS_BUNDLE_MEDIA_TYPE",
    "ArtifactChanged",
    "ArtifactSigner",
    "artifact_assertions",
    "asset_kind",
    "cross_references",
    "evaluation_links",
    "evaluation_metrics",
    "oms_bundle_assertion",
]

OMS_BUNDLE_LABEL = "mlprov.oms_bundle"
OMS_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_METRICS_MAX_BYTES = 1024 * 1024


class ArtifactChanged(Exception):
    """The artifact changed while it was being hashed or signed: drop this version."""


def asset_kind(classification: Classification) -> AssetKind:
    """The Atlas manifest kind of a classified artifact (config and other become dataset manifests)."""
    kind = classification.kind
    if kind in ("model", "dataset", "evaluation", "software"):
        return kind
    return "dataset"


def artifact_assertions(
    task: TaskInfo,
    environment: dict[str, Any] | None,
    artifact: FinishedArtifact,
    classification: Classification,
    digest: str,
    media_type: str,
    exclude: frozenset[str],
) -> list[dict[str, Any]]:
    """The mlprov CustomAssertions of one output's manifest (the OMS bundle's is added when there is one)."""
    code = task.code
    return [
        custom_assertion("mlprov.task", task.task_assertion()),
        custom_assertion("mlprov.run", task.run.model_dump()),
        custom_assertion("mlprov.parameters", task.params),
        custom_assertion("mlprov.code", code.model_dump() if code is not None else None),
        custom_assertion(ENVIRONMENT_ASSERTION_LABEL, environment or {}),
        custom_assertion(
            "mlprov.artifact",
            {
                "name": artifact.name,
                "digest": digest,
                "classification": classification.kind,
                "size": artifact.size,
                "media_type": media_type,
                "workspace_path": f"outputs/{artifact.name}",
                "excluded": sorted(exclude),
                "generation": artifact.generation,
            },
        ),
        custom_assertion(
            "mlprov.inputs",
            [{"name": i.name, "digest": i.digest, "kind": i.kind, "manifest_id": i.manifest_id} for i in task.inputs],
        ),
    ]


def oms_bundle_assertion(bundle: bytes, digest: str, exclude: frozenset[str]) -> dict[str, Any]:
    """Names the model's OMS bundle (filed beside the manifest) by its hash, inside the signed claim."""
    return custom_assertion(
        OMS_BUNDLE_LABEL,
        {
            "digest": f"sha256:{hashlib.sha256(bundle).hexdigest()}",
            "media_type": OMS_BUNDLE_MEDIA_TYPE,
            "subject": digest,
            "ignore": sorted(exclude),
        },
    )


def cross_references(task: TaskInfo, software: SoftwareRef | None) -> list[dict[str, Any]]:
    """Links to the manifests of the task's inputs and of its code, each with the linked manifest's hash."""
    refs = [
        {"manifest_url": i.manifest_id, "manifest_hash": i.manifest_hash, "media_type": "application/json"}
        for i in task.linked_inputs()
    ]
    if software is not None:
        refs.append(software.cross_reference())
    return refs


def evaluation_links(task: TaskInfo) -> dict[str, Any]:
    """An evaluation's ``model_id`` and ``dataset_id``: the first linked input of each kind."""

    def first(kind: str) -> str | None:
        return next((i.manifest_id for i in task.linked_inputs() if i.kind == kind), None)

    return {"model_id": first("model"), "dataset_id": first("dataset")}


def evaluation_metrics(path: Path) -> dict[str, Any] | None:
    """Top-level scalar values of a JSON object file (``metrics.json``-like), else ``None``."""
    try:
        if path.stat().st_size > _METRICS_MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    found = {str(k): v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and v == v}  # no NaN
    return found or None


class ArtifactSigner:
    """Signs an output's OMS bundle and C2PA sidecar with ``identity``; ``scratch`` takes temporary files.

    Both return ``None`` for an identity without a certificate chain (a bare key brought from atlas-cli):
    neither format can carry a signature without one."""

    def __init__(self, identity: SigningIdentity, scratch: Path) -> None:
        self.identity = identity
        self.scratch = scratch

    def oms_bundle(self, path: Path, hex_digest: str, exclude: frozenset[str], is_dir: bool) -> bytes | None:
        if not self.identity.chain:
            return None
        from provenance.oms import bundle_subject_digest, sign_model

        bundle = sign_model(
            path,
            private_key_pem=self.identity.private_key_pem,
            chain_pem=self.identity.chain_pem,
            workdir=self.scratch,
            ignore=sorted(exclude),
        )
        # model_signing re-hashed the model: its subject must name the bytes we hashed.
        expected = hex_digest if is_dir else hashlib.sha256(bytes.fromhex(hex_digest)).hexdigest()
        if bundle_subject_digest(bundle) != expected:
            raise ArtifactChanged("OMS subject digest differs from the artifact digest")
        return bundle

    def c2pa(self, path: Path, listing: DirectoryDigest | None, signed: dict[str, Any]) -> bytes | None:
        if not self.identity.chain:
            return None
        from provenance.c2pa_sidecar import directory_listing, sign_sidecar

        def sign(asset: Path) -> bytes:
            return sign_sidecar(
                asset,
                private_key_pem=self.identity.private_key_pem,
                chain_pem=self.identity.chain_pem,
                title=str(signed["title"]),
                manifest_id=str(signed["instance_id"]),
            )

        if listing is None:
            return sign(path)
        # The bytes c2pa_sidecar binds a directory to, without the marker: sign them as a file.
        listing_file = self.scratch / f"listing-{uuid.uuid4().hex}"
        listing_file.write_bytes(directory_listing(listing))
        try:
            return sign(listing_file)
        finally:
            listing_file.unlink(missing_ok=True)
