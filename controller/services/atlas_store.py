"""The Atlas storage service (reference/atlas-compat.md section 4) over the controller's provenance store.

Entries are the ``manifests`` rows (whoever registered them: the sidecar, ``mlprov``/atlas-cli through
this API, an admin): ``{manifest_id, manifest_type, manifest: <the POST body>, created_at}``. For a
manifest stored through ``POST /manifests/{id}`` the POST body is served back as it was sent (its extra
fields kept in ``Manifest.meta``); for one registered otherwise it is rebuilt in the same shape, with
mlprov's ``mlprov_c2pa`` / ``mlprov_oms_bundle`` fields when there are signatures beside it.

Stores go through :class:`~controller.services.ingest.ManifestIngest` (role ``atlas``): the signature is
verified against the trust store (400 naming why otherwise; atlas-cli's own unsigned or bare-key
manifests are refused unless their key is pinned in the trust store), the manifest is appended to the
transparency log and its cross-references become lineage edges.

**DELETE is a tombstone.** Atlas deletes entries; a provenance store that forgets would break every
manifest that links to the deleted one and the history the log attests. So ``DELETE`` (admin only)
sets ``deleted_at``: the entry leaves ``GET /manifests`` and ``GET /manifests/{id}`` (404, as Atlas
answers), but the row, its lineage edges and its log entry stay, ``GET /api/v1/manifests/{id}`` still
serves it (``deleted: true``) and verification of its descendants still works. Posting the same
manifest again makes it visible again; other content under that ID stays a 409.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.auth import Principal
from controller.errors import InvalidInputError, NotFoundError
from controller.services.ingest import ManifestIngest, Registration, StoreResult, decode_b64
from controller.store.models import Manifest, utcnow
from provenance.manifest import manifest_type

__all__ = [
    "ATLAS_TYPES",
    "C2PA_FIELD",
    "OMS_BUNDLE_FIELD",
    "atlas_entry",
    "delete_entry",
    "get_entry",
    "list_entries",
    "post_entry",
]

C2PA_FIELD = "mlprov_c2pa"
OMS_BUNDLE_FIELD = "mlprov_oms_bundle"
ATLAS_TYPES = frozenset({"Model", "Dataset", "Software", "Unknown"})
_ENVELOPE = frozenset({"manifest_id", "manifest_type", "manifest", "created_at", C2PA_FIELD, OMS_BUNDLE_FIELD})


def _timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def atlas_entry(row: Manifest) -> dict[str, Any]:
    meta = row.meta or {}
    kind = meta.get("manifest_type") or manifest_type(row.manifest)
    kind = kind if kind in ATLAS_TYPES else "Unknown"
    created = meta.get("created_at") or _timestamp(row.created_at)
    body: dict[str, Any] = {
        "manifest_id": row.id,
        "manifest_type": kind,
        "manifest": row.manifest,
        "created_at": created,
        **(meta.get("extra") or {}),
    }
    if row.c2pa is not None:
        body[C2PA_FIELD] = base64.b64encode(row.c2pa).decode()
    if row.oms_bundle is not None:
        body[OMS_BUNDLE_FIELD] = base64.b64encode(row.oms_bundle).decode()
    return {"manifest_id": row.id, "manifest_type": kind, "manifest": body, "created_at": created}


def list_entries(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Manifest).where(Manifest.deleted_at.is_(None)).order_by(Manifest.created_at, Manifest.id)
    ).all()
    return [atlas_entry(r) for r in rows]


def _live(session: Session, manifest_id: str) -> Manifest:
    row = session.get(Manifest, manifest_id)
    if row is None or row.deleted_at is not None:
        raise NotFoundError(f"Manifest not found: {manifest_id}")
    return row


def get_entry(session: Session, manifest_id: str) -> dict[str, Any]:
    return atlas_entry(_live(session, manifest_id))


def delete_entry(session: Session, manifest_id: str) -> None:
    row = _live(session, manifest_id)
    row.deleted_at = utcnow()
    session.commit()


def post_entry(
    ingest: ManifestIngest, manifest_id: str, body: dict[str, Any], principal: Principal | None
) -> StoreResult:
    """Validate the Atlas envelope, then store through ingestion (see the module docstring)."""
    manifest = body.get("manifest")
    if not isinstance(manifest, dict):
        raise InvalidInputError("body.manifest must be the Atlas manifest (a JSON object)")
    if body.get("manifest_id", manifest_id) != manifest_id or manifest.get("instance_id") != manifest_id:
        raise InvalidInputError(
            f"manifest ID mismatch: path {manifest_id!r}, body.manifest_id {body.get('manifest_id')!r}, "
            f"manifest.instance_id {manifest.get('instance_id')!r}"
        )
    kind = body.get("manifest_type", "Unknown")
    if kind not in ATLAS_TYPES:
        raise InvalidInputError(f"manifest_type must be one of {sorted(ATLAS_TYPES)}, not {kind!r}")
    created = body.get("created_at")
    extra = {k: v for k, v in body.items() if k not in _ENVELOPE}
    meta: dict[str, Any] = {"manifest_type": kind, "created_at": created if isinstance(created, str) else None}
    if extra:
        meta["extra"] = extra
    registration = Registration(
        manifest=manifest,
        role="atlas",
        c2pa=decode_b64(body.get(C2PA_FIELD), C2PA_FIELD),
        oms_bundle=decode_b64(body.get(OMS_BUNDLE_FIELD), OMS_BUNDLE_FIELD),
        meta=meta,
    )
    return ingest.store(registration, principal)
