"""The verification service: the provenance-core chain verifier run over what the controller stores.

``POST /api/v1/verify`` names an artifact (digest) or a manifest (ID). The root manifest is the one
named, or the artifact's latest manifest; :func:`provenance.verify.verify_chain` then walks every
cross-reference upstream with:

- a :class:`DbManifestSource` over the ``manifests`` table (manifest JSON, C2PA sidecar, OMS bundle).
  Before the walk it loads, in one statement, the manifests of every artifact upstream of the root
  (the lineage CTE of :mod:`controller.services.lineage`), so a long chain costs no query per node;
- every signature against the controller's trust store, every manifest hash and link (the verifier);
- ``artifact`` (a :data:`~provenance.report.NodeCheck`): the manifest is bound to the artifact row it
  is filed under (one of its signed sha256 ingredients is that digest); when re-hashing applies to the
  node (the root by default, every node with ``rehash_all``) the bytes are materialised **by digest
  from the ArtifactStore** and re-hashed. The ``file://`` URLs in manifests are workspace labels and
  are never read, which is why the verifier's own ingredient re-hash is left off (its report says so);
- the OMS bundle and the C2PA sidecar of a re-hashed node, against the materialised bytes;
- ``tlog inclusion`` of every manifest in the controller's transparency log, proven against its
  checkpoint verified with the log's verifier key;
- policy ``code commit``: an ``mlprov.code`` assertion names a resolved 40-hex commit;
- policy ``signed inputs``: no unsigned ancestor. The manifest's task consumed no artifact that has
  no manifest (``artifact -consumed-> task`` edges), and its ``mlprov.inputs`` assertion lists no
  input with a null ``manifest_id``.

The answer is the report (:meth:`provenance.report.VerificationReport.to_dict`); a broken chain is
``ok: false``, never an exception. Only an unknown artifact or manifest raises (404). Nothing is written.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from controller.artifacts.base import ArtifactStore
from controller.errors import ArtifactNotFoundError, NotFoundError
from controller.logging import get_logger
from controller.services.lineage import resolve_artifact, upstream_artifacts
from controller.store.models import Artifact, LineageEdge, Manifest
from provenance.errors import ManifestNotFoundError, ProvenanceError
from provenance.hashing import hash_path
from provenance.keys import TrustStore
from provenance.manifest import find_assertion
from provenance.report import Check, NodeCheck, NodeResult, VerificationReport
from provenance.storage.base import StoredManifest

if TYPE_CHECKING:
    from controller.state import AppState
    from provenance.tlog.base import TransparencyLog

__all__ = [
    "DbManifestSource",
    "ManifestRowNotFoundError",
    "VerificationService",
    "VerifyRequest",
    "VerifyResult",
    "build_verification_service",
]

log = get_logger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_EDGES = LineageEdge.__table__


class ManifestRowNotFoundError(NotFoundError):
    code = "manifest_not_found"


class VerifyRequest(BaseModel):
    artifact: str | None = Field(default=None, description="artifact digest (its latest manifest is the root)")
    manifest: str | None = Field(default=None, description="manifest ID (the root)")
    rehash: bool = Field(default=True, description="re-hash the target's bytes from the artifact store")
    rehash_all: bool = Field(default=False, description="re-hash every node's bytes, not only the target's")
    max_depth: int = Field(default=32, ge=0, le=1000, description="how many links deep to follow")

    @model_validator(mode="after")
    def _one_target(self) -> VerifyRequest:
        if (self.artifact is None) == (self.manifest is None):
            raise ValueError("give exactly one of `artifact` (a digest) and `manifest` (an ID)")
        return self


class VerifyResult(BaseModel):
    ok: bool
    artifact: str | None = Field(description="the artifact verified")
    manifest: str | None = Field(description="the root manifest (null when the artifact has none)")
    report: dict[str, Any] = Field(description="provenance.report.VerificationReport.to_dict()")


@dataclass
class _Row:
    stored: StoredManifest
    artifact_digest: str | None
    task_id: str | None


class DbManifestSource:
    """A :class:`provenance.verify.ManifestSource` over the ``manifests`` table, with a bulk prefetch."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rows: dict[str, _Row | None] = {}
        self.queries = 0

    @staticmethod
    def _row(m: Manifest) -> _Row:
        stored = StoredManifest(
            id=m.id,
            manifest=m.manifest,
            c2pa=m.c2pa,
            oms_bundle=m.oms_bundle,
            locations={"artifact": m.artifact_digest} if m.artifact_digest else {},
        )
        return _Row(stored, m.artifact_digest, m.task_id)

    def prefetch_upstream(self, digest: str, depth: int) -> None:
        """Load the manifests of every artifact within ``depth`` edges upstream of ``digest`` (one statement)."""
        self.queries += 1
        upstream = upstream_artifacts(digest, depth)
        for m in self.session.scalars(select(Manifest).where(Manifest.artifact_digest.in_(upstream))):
            self.rows[m.id] = self._row(m)

    def row(self, manifest_id: str) -> _Row | None:
        if manifest_id not in self.rows:
            self.queries += 1
            m = self.session.get(Manifest, manifest_id)
            self.rows[manifest_id] = None if m is None else self._row(m)
        return self.rows[manifest_id]

    def get(self, manifest_id: str) -> StoredManifest:
        row = self.row(manifest_id)
        if row is None:
            raise ManifestNotFoundError(f"no manifest {manifest_id} in the controller store")
        return row.stored


@dataclass
class _UnsignedInputs:
    """``task_id -> [(digest, name)]`` of consumed artifacts that have no manifest; filled in bulk."""

    session: Session
    known: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)

    def _query(self, tasks: Any) -> None:
        a = Artifact.__table__
        unsigned = ~exists().where(Manifest.artifact_digest == _EDGES.c.src_id)
        stmt = (
            select(_EDGES.c.dst_id, _EDGES.c.src_id, a.c.name)
            .select_from(_EDGES.outerjoin(a, a.c.digest == _EDGES.c.src_id))
            .where(
                _EDGES.c.role == "consumed",
                _EDGES.c.src_type == "artifact",
                _EDGES.c.dst_type == "task",
                _EDGES.c.dst_id.in_(tasks),
                unsigned,
            )
        )
        for task_id, digest, name in self.session.execute(stmt):
            self.known.setdefault(task_id, []).append((digest, name))

    def prefetch(self, task_ids: list[str]) -> None:
        wanted = [t for t in task_ids if t not in self.known]
        for t in wanted:
            self.known[t] = []
        for i in range(0, len(wanted), 500):
            self._query(wanted[i : i + 500])

    def of(self, task_id: str) -> list[tuple[str, str | None]]:
        if task_id not in self.known:
            self.prefetch([task_id])
        return self.known[task_id]


def _sha256_ingredients(manifest: dict[str, Any]) -> list[str]:
    claim = manifest.get("claim")
    ingredients = claim.get("ingredients") if isinstance(claim, dict) else None
    found: list[str] = []
    for g in ingredients if isinstance(ingredients, list) else []:
        data = g.get("data") if isinstance(g, dict) else None
        if isinstance(data, dict) and data.get("alg") == "sha256" and isinstance(data.get("hash"), str):
            found.append(f"sha256:{data['hash'].lower()}")
    return found


def _named(name: str, fn: Callable[[StoredManifest], Check | None]) -> NodeCheck:
    fn.check_name = name  # type: ignore[attr-defined]  # read by verify_chain to name a crashed check
    return fn


class _Materialiser:
    """Artifacts fetched by digest from the store into one temporary directory, hashed once each."""

    def __init__(self, store: ArtifactStore | None, workdir: Path) -> None:
        self.store = store
        self.workdir = workdir
        self.paths: dict[str, Path] = {}  # manifest ID -> materialised artifact (re-hashed and matching)

    def check(self, stored: StoredManifest, digest: str | None, rehash: bool) -> Check:
        signed = _sha256_ingredients(stored.manifest)
        if digest is None:
            return Check("artifact", True, "not filed under an artifact the controller holds", skipped=True)
        if not signed:
            return Check("artifact", True, "no sha256 ingredient names a stored artifact; not bound", skipped=True)
        if digest not in signed:
            return Check(
                "artifact", False, f"filed under artifact {digest}, but the signed ingredients name {signed[0]}"
            )
        if not rehash:
            return Check("artifact", True, f"bound to {digest}; bytes not re-hashed")
        if self.store is None:
            return Check("artifact", True, f"bound to {digest}; no artifact store to re-hash from", skipped=True)
        hex_digest = digest.removeprefix("sha256:")
        dest = self.workdir / hex_digest
        try:
            if not dest.exists():
                if not self.store.exists(digest):
                    return Check("artifact", True, f"bound to {digest}; bytes not in the artifact store", skipped=True)
                self.store.get(digest, dest)
            actual = hash_path(dest, "sha256")
        except (ProvenanceError, ArtifactNotFoundError, OSError) as exc:
            return Check("artifact", False, f"cannot re-hash {digest} from the artifact store: {exc}")
        if actual != hex_digest:
            return Check(
                "artifact",
                False,
                f"sha256 of the stored bytes is {actual[:16]}…, the manifest records {hex_digest[:16]}…",
            )
        self.paths[stored.id] = dest
        return Check("artifact", True, f"sha256 of the stored bytes matches {digest}")


def _code_commit_check(stored: StoredManifest) -> Check | None:
    code = find_assertion(stored.manifest, "mlprov.code")
    if not isinstance(code, dict):
        return None
    commit = code.get("commit")
    if isinstance(commit, str) and _COMMIT.fullmatch(commit):
        return Check("policy: code commit", True, f"{code.get('repo')}@{commit}")
    where = f"{code.get('repo')}@{code.get('ref')}"
    return Check("policy: code commit", False, f"code reference {where} is not resolved to a commit ({commit!r})")


class VerificationService:
    """Verify what the controller stores (see the module docstring); one instance per request."""

    def __init__(
        self,
        session: Session,
        *,
        trust: TrustStore,
        tlog: TransparencyLog | None,
        tlog_verifier_key: str | None,
        artifact_store: ArtifactStore | None,
    ) -> None:
        self.session = session
        self.trust = trust
        self.tlog = tlog
        self.tlog_verifier_key = tlog_verifier_key
        self.artifact_store = artifact_store

    def _root(self, request: VerifyRequest) -> tuple[str | None, str | None]:
        """(artifact digest or None, root manifest ID or None)."""
        if request.manifest is not None:
            found = self.session.execute(
                select(Manifest.id, Manifest.artifact_digest).where(Manifest.id == request.manifest)
            ).first()
            if found is None:
                raise ManifestRowNotFoundError(f"no manifest {request.manifest}")
            return found.artifact_digest, request.manifest
        assert request.artifact is not None
        digest = resolve_artifact(self.session, request.artifact)
        latest = self.session.scalar(
            select(Manifest.id)
            .where(Manifest.artifact_digest == digest)
            .order_by(Manifest.created_at.desc(), Manifest.id)
            .limit(1)
        )
        return digest, latest

    def _checks(
        self, source: DbManifestSource, root_id: str, request: VerifyRequest, materialiser: _Materialiser
    ) -> list[NodeCheck]:
        from provenance.checks import c2pa_sidecar_check, oms_bundle_check

        unsigned = _UnsignedInputs(self.session)
        unsigned.prefetch(sorted({r.task_id for r in source.rows.values() if r is not None and r.task_id}))

        def artifact(stored: StoredManifest) -> Check | None:
            row = source.row(stored.id)
            if row is None:  # pragma: no cover - the verifier only passes manifests the source returned
                return None
            rehash = request.rehash_all or (request.rehash and stored.id == root_id)
            return materialiser.check(stored, row.artifact_digest, rehash)

        def signed_inputs(stored: StoredManifest) -> Check | None:
            row = source.row(stored.id)
            missing: dict[str, str | None] = {}
            if row is not None and row.task_id is not None:
                missing.update(unsigned.of(row.task_id))
            inputs = find_assertion(stored.manifest, "mlprov.inputs")
            for item in inputs if isinstance(inputs, list) else []:
                if isinstance(item, dict) and item.get("manifest_id") is None:
                    missing.setdefault(str(item.get("digest")), item.get("name"))
            if missing:
                named = ", ".join(f"{d} ({n})" if n else d for d, n in sorted(missing.items()))
                return Check("policy: signed inputs", False, f"unsigned ancestor: input {named} has no manifest")
            if row is None or (row.task_id is None and inputs is None):
                return None
            return Check("policy: signed inputs", True, "every input has a manifest")

        def path_of(stored: StoredManifest) -> Path | None:
            return materialiser.paths.get(stored.id)

        anchors = self.trust.anchors_pem
        checks: list[NodeCheck] = [_named("artifact", artifact)]
        if b"CERTIFICATE" in anchors:
            checks += [
                oms_bundle_check(anchors, artifact_path=path_of),
                c2pa_sidecar_check(anchors, artifact_path=path_of),
            ]
        checks.append(self._tlog_check())
        checks += [_named("policy: code commit", _code_commit_check), _named("policy: signed inputs", signed_inputs)]
        return checks

    def _tlog_check(self) -> NodeCheck:
        if self.tlog is None or self.tlog_verifier_key is None:

            def absent(stored: StoredManifest) -> Check:
                return Check("tlog inclusion", True, "the controller has no transparency log configured", skipped=True)

            return _named("tlog inclusion", absent)
        from provenance.checks import tlog_inclusion_check

        return tlog_inclusion_check(self.tlog, verifier_keys=self.tlog_verifier_key)

    def verify(self, request: VerifyRequest) -> VerifyResult:
        from provenance.verify import verify_chain

        started = time.perf_counter()
        digest, root_id = self._root(request)
        if root_id is None:
            assert digest is not None
            return self._unsigned(digest)
        source = DbManifestSource(self.session)
        if digest is not None:
            # A manifest link is artifact -> task -> artifact in the edges: 2 edges per link level.
            source.prefetch_upstream(digest, 2 * request.max_depth + 2)
        with _workdir() as workdir:
            materialiser = _Materialiser(self.artifact_store, workdir)
            report = verify_chain(
                source.get(root_id),
                source,
                self.trust,
                max_depth=request.max_depth,
                rehash=False,  # bytes come from the artifact store (the `artifact` check), never file:// URLs
                extra_checks=self._checks(source, root_id, request, materialiser),
            )
        log.info(
            "verification done",
            artifact=digest,
            manifest_id=root_id,
            ok=report.ok,
            nodes=len(report.nodes),
            queries=source.queries,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return VerifyResult(ok=report.ok, artifact=digest, manifest=root_id, report=report.to_dict())

    def _unsigned(self, digest: str) -> VerifyResult:
        name = self.session.scalar(select(Artifact.name).where(Artifact.digest == digest))
        node = NodeResult(id=digest, title=name or "", kind="Unknown", depth=0, ok=True)
        node.add(Check("signature", False, f"artifact {digest} has no manifest: it is unsigned"))
        report = VerificationReport(root=digest, ok=False, nodes=[node], first_broken=node)
        return VerifyResult(ok=False, artifact=digest, manifest=None, report=report.to_dict())


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mlprov-verify-") as tmp:
        yield Path(tmp)


def build_verification_service(state: AppState, session: Session) -> VerificationService:
    """The service over the app's trust store, transparency log and artifact store."""
    trust = state.trust if state.trust is not None else TrustStore.load(state.settings.trust_dir)
    log_ = state.tlog.log if state.tlog is not None else None
    vkey = getattr(log_, "verifier_key", None)
    return VerificationService(
        session,
        trust=trust,
        tlog=log_,
        tlog_verifier_key=vkey if isinstance(vkey, str) else None,
        artifact_store=state.artifact_store,
    )
