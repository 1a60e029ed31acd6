"""The software manifest of a task's stage code: one per code commit, shared by every task of that commit.

Order (docs/sidecar-protocol.md section 2.3): remembered in the ledger (a restart never rebuilds it)?
use it. Else ``GET /software-manifests?repo=&commit=``: 200 -> link to the manifest the controller
has (maybe another sidecar's). 404 -> build a ``software`` manifest, sign it, ``POST`` it with role
``code`` and link to the ID the controller answers (another sidecar may have won the race: the
controller then answers *that* ID, and its manifest is fetched for the link hash).

Ingredients: the code file(s) named by ``task.json`` ``code.path`` when found (``<repo>/<path>`` for
a local checkout, else ``<workspace>/<path>``), hashed with sha256 and co-signed with a C2PA sidecar;
otherwise one ingredient describing the commit (``url`` ``git+<repo>@<commit>#<path>``, whose hash
is the sha256 of that URL: it names the commit, it is not file content; verification reports it as
not reachable). Assertions: ``mlprov.code`` {repo, ref, commit, path}, ``mlprov.task``; software_type
``script``.

When the controller cannot be reached, the sidecar links outputs to its *own* software manifest and
spools its registration (kind ``code``); outputs are delivered only after it (see the agent). If the
controller later answers another ID (a race with another sidecar while this one was cut off), the
outputs already signed still name this one; this is logged as ``software_manifest_superseded``.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from provenance.errors import DeliveryError, InvalidInputError
from provenance.hashing import hash_file
from provenance.keys import SigningIdentity
from provenance.manifest import build_manifest, custom_assertion, manifest_hash
from provenance.sidecar.delivery import ControllerClient
from provenance.sidecar.spool import ArtifactLedger, Spool, SpoolItem
from provenance.sidecar.taskinfo import CodeRef, TaskInfo
from provenance.signing import sign_manifest

__all__ = ["CODE_KIND", "SoftwareManifests", "SoftwareRef", "software_key"]

log = structlog.get_logger(__name__)

CODE_KIND = "code"
"""The spool item kind of a software manifest registration."""


@dataclass(frozen=True)
class SoftwareRef:
    manifest_id: str
    manifest_hash: str
    confirmed: bool
    """The controller answered with this ID (``False``: ours, registration still spooled)."""

    def cross_reference(self) -> dict[str, Any]:
        return {"manifest_url": self.manifest_id, "manifest_hash": self.manifest_hash, "media_type": "application/json"}


def software_key(code: CodeRef) -> str:
    return f"{code.repo}@{code.commit}"


def _code_file(code: CodeRef, workspace: Path) -> Path | None:
    if not code.path:
        return None
    candidates = [Path(code.repo) / code.path] if "://" not in code.repo else []
    candidates.append(workspace / code.path)
    return next((p for p in candidates if p.is_file()), None)


def _commit_ingredient(code: CodeRef) -> dict[str, Any]:
    url = f"git+{code.repo}@{code.commit}" + (f"#{code.path}" if code.path else "")
    return {
        "title": code.path or code.repo,
        "relationship": "componentOf",
        "dc:format": "application/x-git-commit",
        "document_id": f"uuid:{uuid.uuid4()}",
        "instance_id": f"uuid:{uuid.uuid4()}",
        "data": {
            "url": url,
            "alg": "sha256",
            "hash": hashlib.sha256(url.encode()).hexdigest(),
            "data_types": ["c2pa.types.generator"],
            "linked_ingredient_url": None,
            "linked_ingredient_hash": None,
        },
        "linked_ingredient": None,
    }


class SoftwareManifests:
    """Resolves (and if need be builds and registers) the software manifest of the task's code."""

    def __init__(
        self,
        *,
        client: ControllerClient,
        identity: SigningIdentity,
        ledger: ArtifactLedger,
        spool: Spool,
        workspace: Path,
    ) -> None:
        self._client = client
        self._identity = identity
        self._ledger = ledger
        self._spool = spool
        self._workspace = workspace

    # -- resolution ----------------------------------------------------------------------------------
    def resolve(self, task: TaskInfo) -> SoftwareRef | None:
        """The software manifest to cross-reference, or ``None`` when task.json names no code."""
        code = task.code
        if code is None:
            return None
        key = software_key(code)
        cached = self._ledger.software(key)
        if cached is not None:
            return SoftwareRef(cached["id"], cached["hash"], bool(cached.get("confirmed")))
        try:
            found = self._client.find_software_manifest(code.repo, code.commit)
            if found is not None:
                return self._remember(key, found["id"], manifest_hash(found["manifest"]), confirmed=True)
            manifest, body, upload = self.build(task, code)
            self._upload(upload)
            answer = self._client.register_manifest(body)
            return self._adopt_answer(key, manifest, answer["id"])
        except DeliveryError as exc:
            log.warning("software_manifest_unconfirmed", error=str(exc), repo=code.repo, commit=code.commit)
            manifest, body, upload = self.build(task, code)
            self._spool.put(
                str(manifest["instance_id"]), {"body": body, "upload": upload, "software_key": key}, kind=CODE_KIND
            )
            return self._remember(key, str(manifest["instance_id"]), manifest_hash(manifest), confirmed=False)

    def _upload(self, upload: dict[str, Any] | None) -> None:
        if upload is not None:
            self._client.upload_artifact(upload["digest"], Path(upload["path"]), is_dir=False)

    def _adopt_answer(self, key: str, ours: dict[str, Any], answered_id: str) -> SoftwareRef:
        if answered_id == ours["instance_id"]:
            log.info("software_manifest_registered", manifest_id=answered_id)
            return self._remember(key, answered_id, manifest_hash(ours), confirmed=True)
        repo, _, commit = key.rpartition("@")
        found = self._client.find_software_manifest(repo, commit)
        if found is None or found["id"] != answered_id:
            raise InvalidInputError(f"controller answered software manifest {answered_id} but does not serve it")
        log.info("software_manifest_shared", manifest_id=answered_id, ours=ours["instance_id"])
        return self._remember(key, answered_id, manifest_hash(found["manifest"]), confirmed=True)

    def _remember(self, key: str, manifest_id: str, digest: str, *, confirmed: bool) -> SoftwareRef:
        self._ledger.record_software(key, {"id": manifest_id, "hash": digest, "confirmed": confirmed})
        return SoftwareRef(manifest_id, digest, confirmed)

    def delivered(self, item: SpoolItem, answer: dict[str, Any]) -> None:
        """A spooled ``code`` registration got through; note the ID the controller keeps."""
        key = str(item.payload.get("software_key", ""))
        ours = item.payload["body"]["manifest"]
        if answer["id"] == item.key:
            self._remember(key, item.key, manifest_hash(ours), confirmed=True)
            return
        log.error(
            "software_manifest_superseded",
            manifest_id=item.key,
            controller_id=answer["id"],
            note="outputs signed while the controller was unreachable link to this sidecar's software manifest",
        )
        repo, _, commit = key.rpartition("@")
        found = self._client.find_software_manifest(repo, commit)
        if found is not None:
            self._remember(key, found["id"], manifest_hash(found["manifest"]), confirmed=True)

    # -- building ------------------------------------------------------------------------------------
    def build(self, task: TaskInfo, code: CodeRef) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """(signed manifest, POST body, upload description or ``None``) of the code's software manifest."""
        from provenance.c2pa_sidecar import sign_sidecar
        from provenance.manifest import make_ingredient

        path = _code_file(code, self._workspace)
        title = f"{Path(code.repo.rstrip('/')).name or code.repo}@{code.commit[:12]}"
        upload: dict[str, Any] | None = None
        artifact: dict[str, Any] | None = None
        if path is not None:
            hex_digest = hash_file(path, "sha256")
            ingredient = make_ingredient(
                path, code.path or path.name, kind="software", hash_alg="sha256", digest_hex=hex_digest
            )
            digest = f"sha256:{hex_digest}"
            size = path.stat().st_size
            artifact = {"digest": digest, "name": code.path, "kind": "software", "size": size,
                        "media_type": ingredient["dc:format"]}  # fmt: skip
            upload = {"digest": digest, "path": str(path), "is_dir": False, "exclude": []}
        else:
            ingredient = _commit_ingredient(code)
        assertions = [
            custom_assertion(
                "mlprov.code", {"repo": code.repo, "ref": code.ref, "commit": code.commit, "path": code.path}
            ),
            custom_assertion(
                "mlprov.task", {"task_id": task.task_id, "attempt": task.attempt, "service": task.service}
            ),
        ]
        unsigned = build_manifest(
            kind="software",
            title=title,
            ingredients=[ingredient],
            description=f"stage code {code.path or ''} at commit {code.commit}".replace("  ", " "),
            assertions=assertions,
            software_type="script",
            version=code.commit,
        )
        signed = sign_manifest(unsigned, self._identity, hash_alg="sha256")
        c2pa: str | None = None
        if path is not None and self._identity.chain:
            sidecar = sign_sidecar(
                path,
                private_key_pem=self._identity.private_key_pem,
                chain_pem=self._identity.chain_pem,
                title=title,
                manifest_id=str(signed["instance_id"]),
            )
            c2pa = base64.b64encode(sidecar).decode()
        body = {"manifest": signed, "c2pa": c2pa, "oms_bundle": None, "artifact": artifact, "role": "code"}
        return signed, body, upload
