"""The ``create`` pipeline shared by ``model|dataset|software|evaluation create``.

Order (nothing is stored unless every step succeeded; a failure leaves no trace in the store):

1. check the flags: paths and ingredient names pair one to one, every path exists;
2. load the signer (``--key`` or ``$MLPROV_HOME``) and resolve ``--linked-manifests`` in the store;
3. hash the ingredients and, for a model with a certificate chain, sign the OMS bundle, whose digest
   the manifest records (CustomAssertion ``mlprov.oms_bundle``) so the manifest signature covers it;
4. build and sign the manifest; sign the C2PA sidecar of the asset naming the manifest.
   The asset (:func:`cosigned_asset`) is the one file or directory given, or the directory whose
   files are exactly the paths given: what verification (:mod:`provenance.checks`) finds again;
5. print it (``--print``) or store manifest, sidecar and bundle together.

A bare ``--key`` has no certificate, and C2PA and OMS certificate signing need one: both are then
skipped with one ``note:`` line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from provenance.errors import InvalidInputError
from provenance.hashing import OMS_IGNORED_TOP_LEVEL

if TYPE_CHECKING:
    from provenance.keys import HashName, SigningIdentity
    from provenance.manifest import AssetKind
    from provenance.storage.base import ManifestStore

__all__ = [
    "OMS_BUNDLE_LABEL",
    "OMS_BUNDLE_MEDIA_TYPE",
    "CreateRequest",
    "CreatedManifest",
    "cosigned_asset",
    "create_manifest",
    "pair_ingredients",
    "parse_metrics",
]

OMS_BUNDLE_LABEL: Final = "mlprov.oms_bundle"
OMS_BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"


@dataclass(frozen=True)
class CreateRequest:
    kind: AssetKind
    name: str
    ingredients: list[tuple[Path, str]]
    hash_alg: HashName = "sha384"
    author_org: str | None = None
    author_name: str | None = None
    description: str | None = None
    linked_manifests: tuple[str, ...] = ()
    with_tdx: bool = False
    software_type: str | None = None
    version: str | None = None
    metrics: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CreatedManifest:
    manifest: dict[str, Any]
    c2pa: bytes | None
    oms_bundle: bytes | None


def pair_ingredients(paths: list[str], names: list[str]) -> list[tuple[Path, str]]:
    """Pair ``--paths`` with ``--ingredient-names`` one to one (atlas-cli silently drops extras; we refuse)."""
    if len(paths) != len(names):
        raise InvalidInputError(
            f"--paths has {len(paths)} item(s) but --ingredient-names has {len(names)}; give one name per path"
        )
    pairs: list[tuple[Path, str]] = []
    for raw, name in zip(paths, names, strict=True):
        path = Path(raw)
        if not path.exists():
            raise InvalidInputError(f"cannot read {raw}: no such file or directory")
        pairs.append((path, name))
    return pairs


def parse_metrics(items: list[str]) -> dict[str, Any]:
    """``k=v`` items (atlas-cli's ``--metrics``); numbers become numbers."""
    metrics: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"metric {item!r} is not key=value; write e.g. --metrics accuracy=0.95,f1=0.9")
        text = value.strip()
        number: Any = text
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = text
        metrics[key.strip()] = number
    return metrics


def cosigned_asset(paths: list[Path]) -> Path | None:
    """The one artifact the C2PA sidecar and the OMS bundle sign, as :func:`provenance.checks.artifact_path_of`
    finds it again at verification: the sole path, or the directory whose files are exactly the paths
    given (OMS rules: top-level ``.git*`` paths do not count). ``None`` when there is no such artifact."""
    if len(paths) == 1:
        return paths[0]
    if not paths or any(not p.is_file() for p in paths):
        return None
    given = {p.absolute() for p in paths}
    parent = Path(os.path.commonpath([str(p) for p in given]))
    found: set[Path] = set()
    for root, dirs, files in os.walk(parent):
        if Path(root) == parent:
            dirs[:] = [d for d in dirs if d not in OMS_IGNORED_TOP_LEVEL]
            files = [f for f in files if f not in OMS_IGNORED_TOP_LEVEL]
        found.update(Path(root) / f for f in files)
    return parent if found == given else None


def _oms_bundle(asset: Path, identity: SigningIdentity) -> bytes:
    from provenance.oms import sign_model

    return sign_model(asset, private_key_pem=identity.private_key_pem, chain_pem=identity.chain_pem)


def _c2pa_sidecar(asset: Path, identity: SigningIdentity, manifest: dict[str, Any]) -> bytes:
    """The asset's C2PA sidecar (a directory's is bound to its canonical listing: see c2pa_sidecar)."""
    from provenance.c2pa_sidecar import sign_sidecar

    return sign_sidecar(
        asset,
        private_key_pem=identity.private_key_pem,
        chain_pem=identity.chain_pem,
        title=str(manifest["title"]),
        manifest_id=str(manifest["instance_id"]),
    )


def create_manifest(
    request: CreateRequest,
    *,
    identity: SigningIdentity,
    store: ManifestStore | None,
    note: Callable[[str], None],
) -> CreatedManifest:
    """Build, sign and co-sign one manifest (steps 2-4 of the module docstring); store nothing."""
    from provenance.manifest import build_manifest, cross_reference, custom_assertion, make_ingredient
    from provenance.signing import sign_manifest

    refs: list[dict[str, Any]] = []
    if request.linked_manifests:
        if store is None:  # pragma: no cover - the commands always open a store for links
            raise InvalidInputError("linking manifests needs a store (--storage-type/--storage-url)")
        for linked_id in request.linked_manifests:
            refs.append(cross_reference(store.get(linked_id).manifest))

    ingredients = [
        make_ingredient(path, name, kind=request.kind, hash_alg=request.hash_alg) for path, name in request.ingredients
    ]
    assertions: list[dict[str, Any]] = []
    if request.with_tdx:
        from provenance.cli.attestation import TDX_LABEL, attestation_assertion_data

        assertions.append(custom_assertion(TDX_LABEL, attestation_assertion_data()))

    asset = cosigned_asset([path for path, _ in request.ingredients])
    can_cosign = bool(identity.chain)
    if not can_cosign and request.ingredients:
        note("--key is a bare key without a certificate chain: C2PA sidecar and OMS bundle skipped")
    elif asset is None and request.ingredients:
        note(
            "C2PA sidecar and OMS bundle skipped: they sign one artifact; give one file or directory, "
            "or all the files of one directory"
        )
    oms_bundle: bytes | None = None
    if can_cosign and asset is not None and request.kind == "model":
        oms_bundle = _oms_bundle(asset, identity)
        assertions.append(
            custom_assertion(
                OMS_BUNDLE_LABEL,
                {
                    "digest": f"sha256:{hashlib.sha256(oms_bundle).hexdigest()}",
                    "media_type": OMS_BUNDLE_MEDIA_TYPE,
                    "subject": asset.absolute().as_uri(),
                },
            )
        )

    unsigned = build_manifest(
        kind=request.kind,
        title=request.name,
        ingredients=ingredients,
        author_org=request.author_org,
        author_name=request.author_name,
        description=request.description,
        cross_references=refs,
        assertions=assertions,
        parameters=request.parameters or None,
        software_type=request.software_type,
        version=request.version,
        metrics=request.metrics,
    )
    signed = sign_manifest(unsigned, identity, hash_alg=request.hash_alg)
    c2pa = _c2pa_sidecar(asset, identity, signed) if can_cosign and asset is not None else None
    return CreatedManifest(manifest=signed, c2pa=c2pa, oms_bundle=oms_bundle)


def render(manifest: dict[str, Any], encoding: str) -> str:
    """``--print`` output: pretty JSON, or the CBOR encoding as hex (atlas-cli's ``--format cbor``)."""
    if encoding == "cbor":
        import cbor2

        return bytes(cbor2.dumps(manifest)).hex()
    return json.dumps(manifest, indent=2, ensure_ascii=False)
