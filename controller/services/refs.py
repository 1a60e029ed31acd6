"""Mutable references resolved to immutable ones: git ref -> commit, artifact name/alias -> digest.

Both the reference as given and what it resolved to are recorded on the task (``code``, ``inputs``).

Artifact references (a task's ``inputs``):

* ``sha256:<64 hex>`` -- a content digest (must be a recorded artifact);
* ``<name>`` or ``<name>@latest`` -- the most recently recorded artifact of that name.

Names are ``[A-Za-z0-9][A-Za-z0-9._-]{0,254}`` (no ``/``, no ``..``): an input is materialised as
``inputs/<name>``, so anything that could leave that directory is refused (HTTP 400).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.errors import InvalidInputError, InvalidNameError, UnknownArtifactError
from controller.store.models import Artifact

__all__ = [
    "ARTIFACT_NAME_PATTERN",
    "ResolvedArtifact",
    "check_artifact_name",
    "check_artifact_ref",
    "resolve_artifact",
    "resolve_git_ref",
]

ARTIFACT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
_NAME = re.compile(ARTIFACT_NAME_PATTERN)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
_GIT_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/@{}^~+-]{0,254}$")
_LATEST = "latest"


@dataclass(frozen=True)
class ResolvedArtifact:
    ref: str
    digest: str
    name: str
    """The name it is materialised under in ``inputs/``."""
    size: int


def check_artifact_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"artifact name {name!r} is not allowed: use letters, digits, '.', '_' and '-' (no '/', no '..'), "
            "starting with a letter or digit"
        )
    return name


def check_artifact_ref(ref: str) -> None:
    """Syntax only (400 when malformed); existence is checked by :func:`resolve_artifact`."""
    if ref.startswith("sha256:"):
        if not _DIGEST.fullmatch(ref):
            raise InvalidInputError(f"input {ref!r} is not a digest: use sha256:<64 lowercase hex digits>")
        return
    name, _, alias = ref.partition("@")
    check_artifact_name(name)
    if alias and alias != _LATEST:
        raise InvalidInputError(f"input {ref!r}: the only alias is @latest (or give the digest sha256:...)")


def resolve_artifact(session: Session, ref: str) -> ResolvedArtifact:
    """The artifact ``ref`` names now; :class:`UnknownArtifactError` (400) if none is recorded."""
    check_artifact_ref(ref)
    if ref.startswith("sha256:"):
        row = session.get(Artifact, ref)
        if row is None:
            raise UnknownArtifactError(
                f"input {ref!r}: no artifact with this digest is recorded; produce or register it first"
            )
        return ResolvedArtifact(ref, row.digest, row.name or ref.removeprefix("sha256:"), row.size)
    name = ref.partition("@")[0]
    row = session.scalars(
        select(Artifact).where(Artifact.name == name).order_by(Artifact.created_at.desc()).limit(1)
    ).first()
    if row is None:
        raise UnknownArtifactError(
            f"input {ref!r}: no artifact named {name!r} is recorded; check the name or give its digest"
        )
    return ResolvedArtifact(ref, row.digest, name, row.size)


def _git(args: list[str], timeout: float) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "LC_ALL": "C"}
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InvalidInputError(f"git {args[0]} took longer than {timeout:.0f} s: check the repository URL") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot run git: {exc}; install git on the controller host") from exc
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise InvalidInputError(f"git {' '.join(a for a in args if not a.startswith('/'))} failed: {message}")
    return done.stdout


def _local_repo(repo: str) -> Path | None:
    path = Path(repo.removeprefix("file://")) if repo.startswith(("file://", "/", ".")) else None
    return path if path is not None and path.exists() else None


def resolve_git_ref(repo: str, ref: str, timeout: float = 30.0) -> str:
    """The commit ``ref`` (branch, tag, commit, ``HEAD``) points to in ``repo`` (a local path or a URL)."""
    if not repo or repo.startswith("-"):
        raise InvalidInputError(f"code.repo {repo!r} is not a repository path or URL")
    if not _GIT_REF.fullmatch(ref):
        raise InvalidInputError(f"code.ref {ref!r} is not a git ref: give a branch, tag or commit")
    local = _local_repo(repo)
    if local is not None:
        try:
            out = _git(["-C", str(local), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], timeout)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"code.ref {ref!r} does not resolve to a commit in {repo} ({exc}): "
                "give an existing branch, tag or commit"
            ) from exc
        return out.strip()
    if _COMMIT.fullmatch(ref):
        return ref  # a full commit id is already immutable; a remote cannot be asked about it cheaply
    out = _git(["ls-remote", repo, ref], timeout)
    found: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
        if candidate in found:
            return found[candidate]
    raise InvalidInputError(f"code.ref {ref!r} does not exist in {repo}: push it or give an existing branch/tag")
