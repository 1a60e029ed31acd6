"""``mlprov deploy``: DAGs, plugins and ``services.yaml`` to an Airflow deployment, all or nothing.

Order (each step only after the one before succeeded; any failure undoes what was done):

1. **Validate everything, change nothing**: the controller answers ``/readyz``; every DAG file imports
   without parse-time I/O (:func:`controller.pipeline.dagcheck.check_dags`); every ``services.yaml``
   entry passes the controller's own registration checks (``POST /api/v1/services/validate``, a dry run).
2. **Stage** the files on the target where Airflow does not read them yet (:mod:`controller.pipeline.targets`).
3. **Register** the services (``POST`` new ones, ``PUT`` changed ones); if one is refused, the ones
   already applied are put back to their previous specs (or deleted when new).
4. **Switch** the target to the staged release in one atomic step.
5. **Record** the deployment (``POST /api/v1/deployments``: files with digests and DAG ids, services, CI
   context from GitLab's ``CI_*`` variables, target). If the controller refuses the record, the
   switch and the services are undone too: a deployment that is live is a deployment that is recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
import yaml

from controller.catalog import read_service_entries
from controller.errors import CatalogError
from controller.pipeline.controller_client import ControllerClient
from controller.pipeline.dagcheck import DagCheckReport, check_dags
from controller.pipeline.errors import BadInputError, PipelineError
from controller.pipeline.targets import DeployFile, Publisher

__all__ = [
    "DeployOptions",
    "DeployResult",
    "ServiceChanges",
    "ci_context",
    "collect_files",
    "deploy",
    "git_revision",
    "load_service_entries",
    "read_dotenv",
    "resolve_images",
]

log = structlog.get_logger(__name__)

DagChecker = Callable[[Path, Path | None], DagCheckReport]


@dataclass(frozen=True)
class DeployOptions:
    dags: Path
    plugins: Path | None = None
    services: Path | None = None
    pipeline: str = "default"
    environment: str = "production"
    commit: str | None = None
    """A full git commit; default ``CI_COMMIT_SHA`` or ``git rev-parse HEAD`` where the DAGs are."""
    ref: str | None = None
    images: Path | None = None
    """A dotenv file of image references (``MLPROV_STAGE_IMAGE=reg/x@sha256:...``) written by the CI
    build jobs: ``${NAME}`` in a service's ``image`` is replaced by it, and the file is deployed."""
    require_pinned_images: bool = False
    """Refuse a service whose ``image`` is not pinned by digest (``...@sha256:<hex>``)."""


@dataclass
class DeployResult:
    deployment: dict[str, Any]
    files: list[DeployFile]
    services: list[dict[str, Any]]
    """The controller's dry-run answer per entry (``name``, ``action``)."""
    target: dict[str, str]
    dag_check_seconds: float = 0.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _walk(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.suffix != ".pyc"
    )


def collect_files(dags: Path, plugins: Path | None, services: Path | None) -> list[DeployFile]:
    """What a deployment holds: ``dags/**``, ``plugins/**`` and ``services.yaml``, with digests."""
    files: list[DeployFile] = []
    for root, prefix, role in ((dags, "dags", "dag"), (plugins, "plugins", "plugin")):
        if root is None:
            continue
        for path in _walk(root):
            kind = role if role == "plugin" or path.suffix == ".py" else "other"
            rel = f"{prefix}/{path.relative_to(root).as_posix()}"
            files.append(DeployFile(path, rel, kind, _sha256(path), path.stat().st_size))
    if services is not None:
        files.append(DeployFile(services, "services.yaml", "services", _sha256(services), services.stat().st_size))
    if not any(f.role == "dag" for f in files):
        raise BadInputError(f"{dags} holds no DAG files (*.py): fix --dags")
    return files


def load_service_entries(path: Path) -> list[Any]:
    """The raw entries of ``services.yaml`` (the controller validates them): the catalog's reader."""
    try:
        return read_service_entries(path, option="--services")
    except CatalogError as exc:
        raise BadInputError(str(exc)) from exc


def read_dotenv(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (GitLab's ``artifacts:reports:dotenv`` format); ``#`` comments ignored."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the images file ({exc.strerror}): fix --images") from exc
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise BadInputError(f"{path}:{number}: expected NAME=value")
        values[name.strip()] = value.strip().strip('"')
    return values


_PINNED = re.compile(r"@sha256:[0-9a-f]{64}$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_images(path: Path, entries: list[Any], images: Mapping[str, str], *, require_pinned: bool) -> bool:
    """Replace ``${NAME}`` in each entry's ``image`` from ``images`` (in place); True when any changed.
    With ``require_pinned`` every image must end in ``@sha256:<hex>``."""
    changed = False
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            continue
        label = f"entry {index} ({entry.get('name')!r})"
        missing = [m for m in _VAR.findall(entry["image"]) if m not in images]
        if missing:
            raise BadInputError(f"{path}: {label}: image needs ${{{missing[0]}}}, which the images file lacks")
        resolved = _VAR.sub(lambda m: images[m.group(1)], entry["image"])
        if resolved != entry["image"]:
            entry["image"], changed = resolved, True
        if require_pinned and not _PINNED.search(resolved):
            raise BadInputError(
                f"{path}: {label}: image {resolved!r} is not pinned by digest: use <image>@sha256:<digest>"
            )
    return changed


def git_revision(where: Path, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(commit, ref)`` from GitLab's variables, else from the git checkout holding ``where``."""
    commit, ref = env.get("CI_COMMIT_SHA"), env.get("CI_COMMIT_REF_NAME")
    if commit:
        return commit, ref
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        ref = ref or subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=where, capture_output=True, text=True, timeout=30,
            check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, ref
    return commit or None, ref


def ci_context(env: Mapping[str, str], release: str = "") -> dict[str, str]:
    """The ``ci`` of the record from GitLab's predefined variables. Outside GitLab CI each deploy is its
    own job (``provider: local``, ``job_id``: the release): the controller keys idempotency on
    (pipeline, environment, CI pipeline, CI job, commit), and a local re-deploy of the same commit with
    edited files is a new deployment, not a conflicting retry."""
    if not (env.get("GITLAB_CI") or env.get("CI_PIPELINE_ID")):
        local = {"provider": "local", "job_id": release, "triggered_by": env.get("USER") or env.get("LOGNAME")}
        return {k: v for k, v in local.items() if v}
    values = {
        "provider": "gitlab",
        "pipeline_id": env.get("CI_PIPELINE_ID"),
        "job_id": env.get("CI_JOB_ID"),
        "project": env.get("CI_PROJECT_PATH"),
        "pipeline_url": env.get("CI_PIPELINE_URL"),
        "triggered_by": env.get("GITLAB_USER_LOGIN"),
    }
    return {k: v for k, v in values.items() if v}


@dataclass
class ServiceChanges:
    """Services changed so far and how to put each back."""

    controller: ControllerClient
    previous: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def apply(self, entries: list[Any], checks: list[dict[str, Any]]) -> None:
        for entry, check in zip(entries, checks, strict=True):
            name, action = str(check["name"]), check["action"]
            if action == "unchanged":
                continue
            self.previous[name] = self.controller.get_service(name) if action == "update" else None
            if action == "create":
                self.controller.create_service(entry)
            else:
                self.controller.replace_service(entry)

    def undo(self) -> None:
        for name, spec in reversed(self.previous.items()):
            try:
                if spec is None:
                    self.controller.delete_service(name)
                else:
                    self.controller.replace_service(spec)
            except PipelineError as exc:  # keep undoing the others; the log says what is left
                log.error("service_rollback_failed", service=name, error=str(exc))
        self.previous.clear()


def _validate_services(controller: ControllerClient, path: Path, entries: list[Any]) -> list[dict[str, Any]]:
    answer = controller.validate_services(entries)
    checks: list[dict[str, Any]] = answer["services"]
    for check in checks:
        if check["action"] == "invalid":
            label = f"entry {check['index']}" + (f" ({check['name']!r})" if check.get("name") else "")
            raise BadInputError(
                f"{path}: {label} refused by the controller: {'; '.join(check['errors'])}: fix it in {path.name}"
            )
    return checks


def _release_id(files: list[DeployFile], now: dt.datetime) -> str:
    digest = hashlib.sha256("\n".join(f"{f.path} {f.digest}" for f in files).encode()).hexdigest()
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest[:12]}"


def deploy(
    options: DeployOptions,
    controller: ControllerClient,
    publisher: Publisher | None,
    *,
    env: Mapping[str, str] | None = None,
    dag_checker: DagChecker = check_dags,
    echo: Callable[[str], None] = lambda _line: None,
) -> DeployResult:
    """Validate, stage, register, switch, record; all or nothing. ``publisher`` None: the files are
    already where Airflow reads them (the local ``make up`` stack): only services and the record."""
    env = os.environ if env is None else env
    controller.ready()
    files = collect_files(options.dags, options.plugins, options.services)
    commit, ref = git_revision(options.dags, env)
    commit, ref = options.commit or commit, options.ref or ref
    if not commit:
        raise BadInputError("no git commit to record: run in a git checkout, set CI_COMMIT_SHA or pass --commit")

    report = dag_checker(options.dags, options.plugins)
    report.raise_for_problems()
    dag_ids = {f"dags/{f.path}": tuple(f.dag_ids) for f in report.files}
    files = [replace(f, dag_ids=dag_ids.get(f.path, ())) if f.role == "dag" else f for f in files]
    echo(f"import test: {sum(len(f.dag_ids) for f in files)} DAG(s) in {report.seconds:.1f} s")

    entries = load_service_entries(options.services) if options.services is not None else []
    images = read_dotenv(options.images) if options.images is not None else {}
    with tempfile.TemporaryDirectory(prefix="mlprov-deploy-") as tmp:
        if options.services is not None and resolve_images(
            options.services, entries, images, require_pinned=options.require_pinned_images
        ):
            resolved = Path(tmp) / "services.yaml"  # what is deployed names the images by digest
            resolved.write_text(yaml.safe_dump({"services": entries}, sort_keys=False))
            files = [
                DeployFile(resolved, f.path, f.role, _sha256(resolved), resolved.stat().st_size)
                if f.role == "services"
                else f
                for f in files
            ]
        if options.images is not None:
            size = options.images.stat().st_size
            files.append(DeployFile(options.images, "images.env", "other", _sha256(options.images), size))
        return _apply(options, controller, publisher, env, files, entries, report, commit, ref, echo)


def _apply(
    options: DeployOptions,
    controller: ControllerClient,
    publisher: Publisher | None,
    env: Mapping[str, str],
    files: list[DeployFile],
    entries: list[Any],
    report: DagCheckReport,
    commit: str,
    ref: str | None,
    echo: Callable[[str], None],
) -> DeployResult:
    checks = _validate_services(controller, options.services, entries) if options.services is not None else []
    echo("services: " + (", ".join(f"{c['name']} ({c['action']})" for c in checks) or "none"))

    release = _release_id(files, dt.datetime.now(dt.UTC))
    changes = ServiceChanges(controller)
    target: dict[str, str] = {"kind": "in-place", "path": str(options.dags.resolve())}
    try:
        if publisher is not None:
            publisher.stage(release, files)
        changes.apply(entries, checks)
        if publisher is not None:
            publisher.activate()
            target = {k: str(v) for k, v in publisher.describe().items() if v is not None}
        body = {
            "pipeline": options.pipeline,
            "environment": options.environment,
            "commit": commit,
            "ref": ref,
            "files": [
                {"path": f.path, "digest": f.digest, "size": f.size, "role": f.role, "dag_ids": list(f.dag_ids)}
                for f in files
            ],
            "services": sorted(str(c["name"]) for c in checks),
            "ci": ci_context(env, release),
            "target": {**target, "release": release},
        }
        deployment = controller.record_deployment(body)
    except BaseException as exc:
        changes.undo()
        if publisher is not None:
            try:
                publisher.rollback()
            except Exception as undo_exc:
                log.error("target_rollback_failed", error=str(undo_exc))
        log.warning("deploy_rolled_back", release=release, error=str(exc))
        if isinstance(exc, PipelineError):
            raise type(exc)(f"{exc} (nothing was deployed: every change was rolled back)") from exc
        raise
    if publisher is not None:
        publisher.finish()
    log.info("deployed", release=release, deployment=deployment.get("id"), files=len(files))
    return DeployResult(deployment, files, checks, target, report.seconds)
