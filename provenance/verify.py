"""Full-chain verification: a manifest and everything it links to, down to the roots.

What is checked, per manifest (each checked once, however many paths reach it):

1. **structure**: the manifest is the Atlas layout (it can be hashed and signed as Atlas does);
2. **signature**: the claim signature against the trust store (an unknown key fails), the signer
   assertion, ``c2pa.claim.v2`` = claim, top-level fields = what the claim binds
   (:mod:`provenance.signing`);
3. **ingredients**: each (signed) ingredient re-hashed with the algorithm it names, when its file
   is reachable: the ``file://`` path exists, or ``asset_resolver`` finds it. An unreachable file
   is reported as *skipped*, not failed (the manifest may describe files on another machine);
4. **links**: each cross-reference resolved through the source, its hash recomputed as Atlas does
   (algorithm from the hex length: 64/96/128) and compared; the linked manifest is then verified in
   turn. A missing manifest, a hash mismatch, a cycle, or links beyond ``max_depth`` fail;
5. **extra checks**: OMS bundle, C2PA sidecar, transparency-log inclusion, plugged in as
   :data:`~provenance.report.NodeCheck` callables (see :mod:`provenance.checks`).

The report is ok only when every check of every node holds. Nothing here raises for a broken chain:
the failure is in the report; only a root that cannot be fetched raises (``ManifestNotFoundError``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import structlog

from provenance.canonical import canonical_manifest
from provenance.errors import InvalidInputError, ManifestNotFoundError, ProvenanceError, VerificationError
from provenance.hashing import hash_path
from provenance.keys import TrustStore
from provenance.manifest import manifest_type
from provenance.report import Check, NodeCheck, NodeResult, VerificationReport
from provenance.signing import SignatureVerifier
from provenance.storage.base import StoredManifest

__all__ = [
    "Check",
    "ManifestSource",
    "NodeCheck",
    "NodeResult",
    "VerificationReport",
    "ingredient_path",
    "verify_chain",
]

log = structlog.get_logger(__name__)

_ALG_BY_HEX_LENGTH = {64: "sha256", 96: "sha384", 128: "sha512"}
_HASHERS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
AssetResolver = Callable[[dict[str, Any]], Path | None]


class ManifestSource(Protocol):
    def get(self, manifest_id: str) -> StoredManifest: ...


def ingredient_path(ingredient: dict[str, Any], resolver: AssetResolver | None = None) -> Path | None:
    """Where an ingredient's content can be read: its ``file://`` path if it exists, else the resolver's."""
    url = (ingredient.get("data") or {}).get("url")
    if isinstance(url, str) and url.startswith("file://"):
        path = Path(unquote(urlparse(url).path))
        if path.exists():
            return path
    if resolver is not None:
        found = resolver(ingredient)
        if found is not None and Path(found).exists():
            return Path(found)
    return None


class _Node:
    __slots__ = ("canonical", "result", "stored")

    def __init__(self, stored: StoredManifest, result: NodeResult, canonical: dict[str, Any] | None) -> None:
        self.stored = stored
        self.result = result
        self.canonical = canonical


class _ChainVerifier:
    def __init__(
        self,
        source: ManifestSource,
        trust: TrustStore,
        *,
        max_depth: int,
        rehash: bool,
        asset_resolver: AssetResolver | None,
        extra_checks: Sequence[NodeCheck],
    ) -> None:
        self.source = source
        self.signatures = SignatureVerifier(trust)
        self.max_depth = max_depth
        self.rehash = rehash
        self.resolver = asset_resolver
        self.extra_checks = extra_checks
        # Per-walk memos. A walk fetches each ID once (``fetched``), so within it an ID names one
        # content; nothing outlives the walk. Canonical forms are kept only from the link check that
        # first reaches a manifest until that manifest's own check (then dropped: fewer live objects,
        # less garbage-collector work); link hashes are kept per (ID, algorithm) for later links to it.
        # The CBOR a manifest's signature covers is made with its manifest JSON (one pass over the
        # claim, :class:`~provenance.cbor_claim.ClaimEncoder`) and kept until that manifest's check.
        self.fetched: dict[str, StoredManifest | None] = {}
        self.canonical: dict[str, dict[str, Any] | None] = {}
        self.signed_bytes: dict[str, bytes] = {}
        self.link_hashes: dict[tuple[str, str], str | None] = {}
        self.encoder = self.signatures.encoder

    # --- fetching and caching -----------------------------------------------------------------

    def fetch(self, manifest_id: str) -> StoredManifest | None:
        if manifest_id not in self.fetched:
            try:
                self.fetched[manifest_id] = self.source.get(manifest_id)
            except ManifestNotFoundError:
                self.fetched[manifest_id] = None
        return self.fetched[manifest_id]

    def canonical_of(self, stored: StoredManifest, *, keep: bool = True) -> dict[str, Any] | None:
        """The canonical form of a fetched manifest (``None`` if it is not an Atlas manifest);
        ``keep=False`` takes it out of the memo (the node's own check is its last use)."""
        if stored.id in self.canonical:
            return self.canonical[stored.id] if keep else self.canonical.pop(stored.id)
        try:  # shared: the walk only reads manifests, and each is fetched once
            canonical: dict[str, Any] | None = canonical_manifest(stored.manifest, share=True)
        except InvalidInputError:
            canonical = None
        if keep:
            self.canonical[stored.id] = canonical
        return canonical

    def link_hash(self, target: StoredManifest, alg: str) -> str | None:
        """Atlas's manifest hash of ``target`` with ``alg``; ``None`` if it is not an Atlas manifest."""
        key = (target.id, alg)
        if key not in self.link_hashes:
            canonical = self.canonical_of(target)
            if canonical is None:
                self.link_hashes[key] = None
            else:
                text, signed = self.encoder.encode_manifest(canonical)
                if target.id in self.canonical:  # its own check is still to come
                    self.signed_bytes[target.id] = signed
                self.link_hashes[key] = _HASHERS[alg](text.encode()).hexdigest()
        return self.link_hashes[key]

    # --- per-node checks ----------------------------------------------------------------------

    def check_node(self, stored: StoredManifest, depth: int) -> _Node:
        manifest = stored.manifest
        title = manifest.get("title") if isinstance(manifest.get("title"), str) else ""
        result = NodeResult(id=stored.id, title=str(title), kind=manifest_type(manifest), depth=depth, ok=True)
        canonical = self.canonical_of(stored, keep=False)
        if canonical is None:
            try:
                canonical_manifest(manifest)
            except InvalidInputError as exc:
                result.add(Check("structure", False, str(exc)))
            return _Node(stored, result, None)
        if manifest.get("instance_id") != stored.id:
            result.add(Check("structure", False, f"store returned manifest {manifest.get('instance_id')!r}"))
        elif manifest.get("is_active") is not True:
            result.add(Check("structure", False, "manifest is not active"))
        else:
            result.add(Check("structure", True, "Atlas layout"))
        self.check_signature(canonical, manifest, result, self.signed_bytes.pop(stored.id, None))
        self.check_ingredients(manifest, result)
        for extra in self.extra_checks:
            result.add(self.run_extra(extra, stored))
        return _Node(stored, result, canonical)

    def check_signature(
        self, canonical: dict[str, Any], manifest: dict[str, Any], result: NodeResult, signed: bytes | None
    ) -> None:
        try:
            signer = self.signatures.verify(manifest, canonical=canonical, signed_bytes=signed)
        except VerificationError as exc:
            result.add(Check("signature", False, str(exc)))
            return
        who = signer.subject or f"pinned key {signer.key_id[:16]}…"
        result.add(Check("signature", True, f"{signer.algorithm} by {who}"))

    def check_ingredients(self, manifest: dict[str, Any], result: NodeResult) -> None:
        ingredients = manifest["claim"]["ingredients"]
        if not self.rehash:
            if ingredients:
                result.add(Check("ingredients", True, f"{len(ingredients)} not re-hashed (rehash off)", skipped=True))
            return
        for ingredient in ingredients:
            title = ingredient["title"]
            data = ingredient["data"]
            name = f"ingredient {title!r}"
            path = ingredient_path(ingredient, self.resolver)
            if path is None:
                result.add(Check(name, True, f"not reachable ({data['url']}); not re-hashed", skipped=True))
                continue
            alg = data["alg"]
            if alg not in ("sha256", "sha384", "sha512"):
                result.add(Check(name, False, f"unsupported hash algorithm {alg!r}"))
                continue
            try:
                actual = hash_path(path, alg)
            except ProvenanceError as exc:
                result.add(Check(name, False, f"cannot re-hash {path}: {exc}"))
                continue
            if hmac.compare_digest(actual, data["hash"].lower()):
                result.add(Check(name, True, f"{alg} matches ({path})"))
            else:
                result.add(
                    Check(name, False, f"{alg} of {path} is {actual[:16]}…, manifest records {data['hash'][:16]}…")
                )

    @staticmethod
    def run_extra(check: NodeCheck, stored: StoredManifest) -> Check:
        name = getattr(check, "check_name", None) or getattr(check, "__name__", type(check).__name__)
        try:
            found = check(stored)
        except ProvenanceError as exc:
            return Check(str(name), False, str(exc))
        except Exception as exc:  # a check that crashes proves nothing: the node must not pass
            return Check(str(name), False, f"check failed to run: {type(exc).__name__}: {exc}")
        if found is None:
            return Check(str(name), True, "not applicable", skipped=True)
        return found

    def check_link(self, node: _Node, ref: dict[str, Any], on_path: set[str]) -> StoredManifest | None:
        """Check one cross-reference of ``node``; return the linked manifest if it should be visited."""
        target_id = ref["manifest_url"]
        expected = ref["manifest_hash"].lower()
        name = f"link {target_id}"
        if target_id in on_path:
            node.result.add(Check(name, False, f"cycle: {target_id} links back to itself through this manifest"))
            return None
        alg = _ALG_BY_HEX_LENGTH.get(len(expected))
        if alg is None:
            node.result.add(Check(name, False, f"manifest_hash has {len(expected)} hex digits (64, 96 or 128)"))
        target = self.fetch(target_id)
        if target is None:
            node.result.add(Check(name, False, f"linked manifest {target_id} not found"))
            return None
        if alg is not None:
            actual = self.link_hash(target, alg)
            if actual is None:
                node.result.add(
                    Check(name, False, "linked manifest is not an Atlas manifest; its hash cannot be computed")
                )
            else:
                if hmac.compare_digest(actual, expected):
                    node.result.add(Check(name, True, f"{alg} manifest hash matches"))
                else:
                    node.result.add(
                        Check(name, False, f"{alg} manifest hash is {actual[:16]}…, link records {expected[:16]}…")
                    )
        return target

    # --- the walk -----------------------------------------------------------------------------

    def run(self, root: StoredManifest) -> VerificationReport:
        self.fetched[root.id] = root
        order: list[NodeResult] = []
        done: set[str] = set()
        on_path: set[str] = set()
        # Iterative depth-first walk: ("enter", stored, depth) visits, ("leave", id) pops the path.
        stack: list[tuple[str, StoredManifest | None, int]] = [("enter", root, 0)]
        while stack:
            action, stored, depth = stack.pop()
            if action == "leave":
                assert stored is not None
                on_path.discard(stored.id)
                continue
            assert stored is not None
            if stored.id in done:
                continue
            done.add(stored.id)
            node = self.check_node(stored, depth)
            order.append(node.result)
            refs = node.canonical["cross_references"] if node.canonical is not None else []
            on_path.add(stored.id)
            stack.append(("leave", stored, depth))
            children: list[StoredManifest] = []
            for ref in refs:
                target = self.check_link(node, ref, on_path)
                if target is not None and target.id not in done:
                    children.append(target)
            if children and depth + 1 > self.max_depth:
                node.result.add(
                    Check("depth", False, f"links beyond max_depth={self.max_depth} not verified ({len(children)})")
                )
                continue
            for child in reversed(children):
                stack.append(("enter", child, depth + 1))
        first_broken = next((n for n in order if not n.ok), None)
        report = VerificationReport(root=root.id, ok=first_broken is None, nodes=order, first_broken=first_broken)
        log.info(
            "provenance.verify",
            manifest_id=root.id,
            ok=report.ok,
            nodes=len(order),
            first_broken=None if first_broken is None else first_broken.id,
        )
        return report


def verify_chain(
    root: str | StoredManifest,
    source: ManifestSource,
    trust: TrustStore,
    *,
    max_depth: int = 32,
    rehash: bool = True,
    asset_resolver: AssetResolver | None = None,
    extra_checks: Sequence[NodeCheck] = (),
) -> VerificationReport:
    """Verify ``root`` and every manifest it links to (see the module docstring)."""
    stored = source.get(root) if isinstance(root, str) else root
    verifier = _ChainVerifier(
        source, trust, max_depth=max_depth, rehash=rehash, asset_resolver=asset_resolver, extra_checks=extra_checks
    )
    return verifier.run(stored)
