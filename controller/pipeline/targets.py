"""Where ``mlprov deploy`` puts DAG and plugin files, each all-or-nothing: stage, then one atomic switch.

``--to`` forms (:func:`publisher_for`):

* a local folder ``DEST``: every release is written to ``DEST.releases/<release>/`` and ``DEST`` is a
  symlink switched to it with one ``rename`` (Airflow reads ``DEST/dags`` and ``DEST/plugins``). The
  three newest releases are kept; rollback points the link back.
* ``s3://bucket/prefix``: files go under ``prefix/releases/<release>/``; then the object
  ``prefix/CURRENT`` (one PUT, atomic in S3) names that release. A sync job on the Airflow side
  follows the pointer (``docs/gitlab-ci.md``). Endpoint and keys: ``MLPROV_DEPLOY_S3_ENDPOINT``,
  ``MLPROV_DEPLOY_S3_ACCESS_KEY``, ``MLPROV_DEPLOY_S3_SECRET_KEY`` (``MLPROV_DEPLOY_S3_SECURE``,
  default true), falling back to ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
* ``git+<repo>#<branch>``: the files are committed to ``branch`` of ``repo`` (a git-sync branch) and
  pushed with one ``git push`` (a ref update is atomic); rollback pushes the previous commit back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.pipeline.errors import BadInputError, PipelineError, UnreachableError

__all__ = [
    "DeployFile",
    "GitBranchPublisher",
    "LocalFolderPublisher",
    "Publisher",
    "S3Publisher",
    "publisher_for",
]

KEEP_RELEASES = 3


@dataclass(frozen=True)
class DeployFile:
    source: Path
    path: str
    """Where it goes in the deployment, e.g. ``dags/train.py``, ``plugins/ops.py``, ``services.yaml``."""
    role: str
    digest: str
    size: int
    dag_ids: tuple[str, ...] = ()


class Publisher(Protocol):
    """One deploy target: nothing is visible to Airflow before :meth:`activate`."""

    def stage(self, release: str, files: list[DeployFile]) -> None: ...

    def activate(self) -> None: ...

    def rollback(self) -> None:
        """Undo :meth:`activate` (or drop what :meth:`stage` wrote); never raises for a missing stage."""
        ...

    def describe(self) -> dict[str, Any]:
        """The ``target`` of the deployment record."""
        ...

    def finish(self) -> None:
        """The deployment is recorded: release temporary resources (the release stays live)."""
        ...


class LocalFolderPublisher:
    def __init__(self, dest: Path) -> None:
        self.dest = dest.absolute()
        self.releases = self.dest.parent / f"{self.dest.name}.releases"
        self.release: str | None = None
        self.previous: str | None = None
        self.activated = False

    def stage(self, release: str, files: list[DeployFile]) -> None:
        foreign = self.dest.exists() and not self.dest.is_symlink()
        if foreign and (not self.dest.is_dir() or any(self.dest.iterdir())):
            raise BadInputError(
                f"{self.dest} exists and was not made by `mlprov deploy`: point --to at a new path or remove it"
            )
        self.releases.mkdir(parents=True, exist_ok=True)
        target = self.releases / release
        partial = self.releases / f".{release}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for f in files:
            out = partial / f.path
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.source, out)
        for sub in ("dags", "plugins"):
            (partial / sub).mkdir(exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        self.release = release

    def activate(self) -> None:
        assert self.release is not None, "stage() first"
        if self.dest.is_symlink():
            self.previous = os.readlink(self.dest)
        elif self.dest.is_dir():
            self.dest.rmdir()  # empty (checked in stage)
        self._point_to(str(self.releases / self.release))
        self.activated = True
        self._prune()

    def _point_to(self, where: str) -> None:
        link = self.dest.parent / f".{self.dest.name}.link"
        link.unlink(missing_ok=True)
        link.symlink_to(where, target_is_directory=True)
        link.replace(self.dest)  # rename(2) over the old link: readers see the old or the new tree

    def _prune(self) -> None:
        keep = {self.release, Path(self.previous).name if self.previous else None}
        releases = sorted((p for p in self.releases.iterdir() if not p.name.startswith(".")), key=os.path.getmtime)
        for old in releases[:-KEEP_RELEASES]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def rollback(self) -> None:
        if self.activated:
            if self.previous is not None:
                self._point_to(self.previous)
            else:
                self.dest.unlink(missing_ok=True)
            self.activated = False
        if self.release is not None:
            shutil.rmtree(self.releases / self.release, ignore_errors=True)
            self.release = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "path": str(self.dest), "release": self.release}

    def finish(self) -> None:
        pass


def _s3_settings() -> dict[str, Any]:
    env = os.environ
    endpoint = env.get("MLPROV_DEPLOY_S3_ENDPOINT") or env.get("MLPROV_S3_ENDPOINT")
    if not endpoint:
        raise BadInputError("an s3:// target needs MLPROV_DEPLOY_S3_ENDPOINT (host:port of the S3 server)")
    secure = (env.get("MLPROV_DEPLOY_S3_SECURE") or "true").lower() not in ("0", "false", "no")
    if "://" in endpoint:
        secure = endpoint.startswith("https://")
        endpoint = endpoint.split("://", 1)[1]
    return {
        "endpoint": endpoint.rstrip("/"),
        "access_key": env.get("MLPROV_DEPLOY_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID"),
        "secret_key": env.get("MLPROV_DEPLOY_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY"),
        "secure": secure,
    }


class S3Publisher:
    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.release: str | None = None
        self.previous: bytes | None = None
        self.activated = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from minio import Minio

            self._client = Minio(**_s3_settings())
        return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            raise PipelineError(f"S3 refused {what} in bucket {self.bucket!r}: {exc.code}: {exc.message}") from exc
        except HTTPError as exc:
            raise UnreachableError(f"the S3 server is unreachable ({what}): {exc}: check the endpoint") from exc

    def stage(self, release: str, files: list[DeployFile]) -> None:
        self.release = release
        for f in files:
            key = self._key("releases", release, f.path)
            self._call(f"uploading {f.path}", self.client.fput_object, self.bucket, key, str(f.source))
        manifest = json.dumps({"release": release, "files": [f.path for f in files]}).encode()
        self._call("writing the release index", self.client.put_object, self.bucket,
                   self._key("releases", release, "RELEASE.json"), io.BytesIO(manifest), len(manifest))  # fmt: skip

    def activate(self) -> None:
        assert self.release is not None, "stage() first"
        from minio.error import S3Error

        try:
            answer = self.client.get_object(self.bucket, self._key("CURRENT"))
            try:
                self.previous = answer.read()
            finally:
                answer.close()
                answer.release_conn()
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise PipelineError(f"S3 refused reading {self._key('CURRENT')}: {exc.code}") from exc
        pointer = (json.dumps({"release": self.release, "prefix": self._key("releases", self.release)}) + "\n").encode()
        self._call("switching CURRENT", self.client.put_object, self.bucket, self._key("CURRENT"),
                   io.BytesIO(pointer), len(pointer))  # fmt: skip
        self.activated = True

    def rollback(self) -> None:
        if self.activated:
            if self.previous is not None:
                self.client.put_object(self.bucket, self._key("CURRENT"), io.BytesIO(self.previous), len(self.previous))
            else:
                self.client.remove_object(self.bucket, self._key("CURRENT"))
            self.activated = False
        if self.release is not None:
            for obj in self.client.list_objects(self.bucket, prefix=self._key("releases", self.release) + "/",
                                                recursive=True):  # fmt: skip
                self.client.remove_object(self.bucket, obj.object_name)
            self.release = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "s3", "bucket": self.bucket, "prefix": self.prefix, "release": self.release}

    def finish(self) -> None:
        pass


def _git(args: list[str], cwd: Path, what: str) -> str:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": os.environ.get("GITLAB_USER_NAME", "mlprov deploy"),
        "GIT_AUTHOR_EMAIL": os.environ.get("GITLAB_USER_EMAIL", "mlprov-deploy@localhost"),
    }
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PipelineError(f"git {what} failed: {last}")
    return done.stdout.strip()


class GitBranchPublisher:
    def __init__(self, repo: str, branch: str) -> None:
        self.repo = repo
        self.branch = branch
        self.workdir: Path | None = None
        self.previous: str | None = None
        self.commit: str | None = None
        self.activated = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def stage(self, release: str, files: list[DeployFile]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="mlprov-deploy-git-")
        work = Path(self._tmp.name) / "work"
        work.mkdir()
        _git(["init", "-q"], work, "init")
        _git(["remote", "add", "origin", self.repo], work, "remote add")
        found = subprocess.run(
            ["git", "ls-remote", "--heads", "origin", self.branch], cwd=work, capture_output=True, text=True,
            timeout=120, check=False, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )  # fmt: skip
        if found.returncode != 0:
            raise UnreachableError(f"git repository {self.repo} is unreachable: {found.stderr.strip()[-200:]}")
        if found.stdout.strip():
            _git(["fetch", "-q", "--depth", "1", "origin", self.branch], work, f"fetch {self.branch}")
            _git(["checkout", "-q", "-B", self.branch, "FETCH_HEAD"], work, "checkout")
            self.previous = _git(["rev-parse", "HEAD"], work, "rev-parse")
        else:
            _git(["checkout", "-q", "--orphan", self.branch], work, "checkout --orphan")
        for entry in work.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        for f in files:
            out = work / f.path
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.source, out)
        _git(["add", "-A"], work, "add")
        _git(["commit", "-q", "--allow-empty", "-m", f"mlprov deploy {release}"], work, "commit")
        self.commit = _git(["rev-parse", "HEAD"], work, "rev-parse")
        self.workdir = work

    def activate(self) -> None:
        assert self.workdir is not None, "stage() first"
        lease = f"--force-with-lease=refs/heads/{self.branch}:{self.previous or ''}"
        _git(["push", "-q", lease, "origin", f"HEAD:refs/heads/{self.branch}"], self.workdir, f"push to {self.branch}")
        self.activated = True

    def rollback(self) -> None:
        if self.activated and self.workdir is not None:
            lease = f"--force-with-lease=refs/heads/{self.branch}:{self.commit}"
            where = self.previous if self.previous is not None else ""
            _git(["push", "-q", lease, "origin", f"{where}:refs/heads/{self.branch}"], self.workdir, "rollback push")
            self.activated = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "git", "repo": self.repo, "branch": self.branch, "commit": self.commit}

    def finish(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None


def publisher_for(dest: str) -> Publisher:
    """The publisher of a ``--to`` value: a folder, ``s3://bucket/prefix`` or ``git+<repo>#<branch>``."""
    if dest.startswith("s3://"):
        bucket, _, prefix = dest.removeprefix("s3://").partition("/")
        if len(bucket) < 3:
            raise BadInputError(f"--to {dest}: name a bucket (s3://bucket/prefix)")
        return S3Publisher(bucket, prefix)
    if dest.startswith("git+"):
        repo, sep, branch = dest.removeprefix("git+").rpartition("#")
        if not sep or not repo or not branch:
            raise BadInputError(f"--to {dest}: use git+<repository>#<branch>")
        return GitBranchPublisher(repo, branch)
    if "://" in dest:
        raise BadInputError(f"--to {dest}: use a folder, s3://bucket/prefix or git+<repository>#<branch>")
    return LocalFolderPublisher(Path(dest))
