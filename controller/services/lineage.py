"""Lineage queries: the graph around an artifact, walked **in the database** with a recursive CTE.

The graph is the ``lineage_edges`` table restricted to artifacts, tasks and code
(``artifact -consumed-> task``, ``code -code-> task``, ``task -produced-> artifact``). A walk from the
root follows edges backwards (``upstream``: what it was made from), forwards (``downstream``: what
was made from it) or both (the union of the two walks, not an undirected walk).

``depth`` counts edges: artifact -> task -> artifact is 2, so depth 20 reaches ten generations of
artifacts. The recursive CTE carries ``(node, depth)`` rows and uses ``UNION`` (not ``UNION ALL``),
so a row already produced is never expanded again: with the depth bound, a cycle in the data costs at
most ``depth`` visits of each node on its path and the query always ends. Each node then gets its
smallest depth. A task node carries the deployment (DAG version) it recorded at submission, joined in
the same statement. One walk costs three statements whatever the size of the answer: nodes (with their
artifact/task rows and latest manifest), edges, and nothing else; no Python loop per level.

``truncated`` is true when some node at the depth bound has an edge (in the walked direction) to a
node the walk did not reach: a larger ``depth`` would show more.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    CTE,
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session

from controller.errors import ArtifactNotFoundError, RunNotFoundError
from controller.logging import get_logger
from controller.services.deployments_query import DeploymentRef, deployment_refs
from controller.store.models import Artifact, Deployment, DeploymentDag, LineageEdge, Manifest, PipelineRun, Task

__all__ = [
    "DEFAULT_DEPTH",
    "MAX_DEPTH",
    "NODE_TYPES",
    "Direction",
    "GraphEdge",
    "GraphNode",
    "LineageGraph",
    "RunArtifact",
    "RunManifest",
    "RunProvenance",
    "RunTaskProvenance",
    "lineage",
    "resolve_artifact",
    "run_provenance",
    "upstream_artifacts",
]

log = get_logger(__name__)

DEFAULT_DEPTH = 10
MAX_DEPTH = 200
NODE_TYPES = ("artifact", "task", "code")
_EDGES = LineageEdge.__table__


class Direction(enum.StrEnum):
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    BOTH = "both"


class GraphNode(BaseModel):
    id: str
    type: str = Field(description="artifact | task | code")
    depth: int = Field(description="edges from the root (the shortest walk found)")
    name: str | None = None
    kind: str | None = Field(default=None, description="artifact kind, or the task's service")
    digest: str | None = None
    state: str | None = Field(default=None, description="task state; for an artifact: signed | unsigned")
    manifest: str | None = Field(default=None, description="the artifact's latest manifest ID")
    size: int | None = None
    media_type: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    airflow_task_id: str | None = None
    deployment: DeploymentRef | None = Field(
        default=None, description="for a task: the deployment (DAG version) it recorded at submission"
    )


class GraphEdge(BaseModel):
    src: str = Field(description="node ID of the source (``type:id`` is not needed: IDs do not collide)")
    src_type: str
    dst: str
    dst_type: str
    role: str


class LineageGraph(BaseModel):
    root: str = Field(description="the root artifact's digest")
    direction: Direction
    depth: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool


@dataclass(frozen=True)
class _Way:
    """Which end of an edge the walk arrives at (``near``) and which it goes to (``far``)."""

    near_type: Any
    near_id: Any
    far_type: Any
    far_id: Any


_UP = _Way(_EDGES.c.dst_type, _EDGES.c.dst_id, _EDGES.c.src_type, _EDGES.c.src_id)
_DOWN = _Way(_EDGES.c.src_type, _EDGES.c.src_id, _EDGES.c.dst_type, _EDGES.c.dst_id)


def _is_digest(ref: str) -> bool:
    return ref.startswith(("sha256:", "sha384:", "sha512:"))


def resolve_artifact(session: Session, ref: str) -> str:
    """The artifact digest ``ref`` names: a digest, or a manifest ID (its artifact).

    :class:`ArtifactNotFoundError` when neither the artifacts table nor any edge knows it.
    """
    if not _is_digest(ref):
        digest = session.scalar(select(Manifest.artifact_digest).where(Manifest.id == ref))
        if digest is None:
            raise ArtifactNotFoundError(f"no artifact or manifest {ref!r}: give an artifact digest or a manifest ID")
        return digest
    if session.get(Artifact, ref) is not None:
        return ref
    known = session.scalar(
        select(_EDGES.c.id)
        .where(
            or_(
                and_(_EDGES.c.src_type == "artifact", _EDGES.c.src_id == ref),
                and_(_EDGES.c.dst_type == "artifact", _EDGES.c.dst_id == ref),
            )
        )
        .limit(1)
    )
    if known is None:
        raise ArtifactNotFoundError(f"no artifact {ref}")
    return ref


def _walk(root_type: str, root_id: str, way: _Way, depth: int, name: str) -> CTE:
    """Every node within ``depth`` edges of the root in one direction, with its smallest depth."""
    # Casts keep the column types of both terms identical (PostgreSQL insists on it).
    seed = select(
        cast(literal(root_type), String()).label("node_type"),
        cast(literal(root_id), String()).label("node_id"),
        cast(literal(0), Integer()).label("depth"),
    ).cte(f"{name}_walk", recursive=True)
    step = (
        select(
            cast(way.far_type, String()),
            cast(way.far_id, String()),
            cast(seed.c.depth + 1, Integer()),
        )
        .select_from(seed.join(_EDGES, and_(way.near_type == seed.c.node_type, way.near_id == seed.c.node_id)))
        # Filter on the walk's side, never on the edge's: a condition on lineage_edges makes SQLite (3.38+)
        # build a Bloom filter over the whole table at every step (100x slower). A node of another type
        # (e.g. a manifest) is reached but not expanded, and left out of the answer.
        .where(seed.c.depth < depth, seed.c.node_type.in_(NODE_TYPES))
    )
    walk = seed.union(step)
    return (
        select(walk.c.node_type, walk.c.node_id, func.min(walk.c.depth).label("depth"))
        .where(walk.c.node_type.in_(NODE_TYPES))
        .group_by(walk.c.node_type, walk.c.node_id)
        .cte(f"{name}_reached")
    )


def upstream_artifacts(digest: str, depth: int) -> Select[tuple[str]]:
    """A SELECT of the digests of every artifact within ``depth`` edges upstream of ``digest`` (itself too),
    for use as an ``IN (...)`` subquery."""
    reached = _walk("artifact", digest, _UP, depth, "upstream")
    return select(reached.c.node_id).where(reached.c.node_type == "artifact")


def _latest_manifest(node_id: ColumnElement[str]) -> Any:
    return (
        select(Manifest.id)
        .where(Manifest.artifact_digest == node_id)
        .order_by(Manifest.created_at.desc(), Manifest.id)
        .limit(1)
        .scalar_subquery()
    )


def _nodes_query(reached: CTE) -> Select[Any]:
    a = Artifact.__table__
    t = Task.__table__
    dep = Deployment.__table__
    dag = DeploymentDag.__table__
    is_artifact = reached.c.node_type == "artifact"
    return (
        select(
            reached.c.node_type,
            reached.c.node_id,
            reached.c.depth,
            a.c.name,
            a.c.kind,
            a.c.size,
            a.c.media_type,
            t.c.service,
            t.c.state,
            t.c.dag_id,
            t.c.run_id,
            t.c.airflow_task_id,
            t.c.deployment_id,
            dep.c.pipeline.label("dep_pipeline"),
            dep.c.environment.label("dep_environment"),
            dep.c.sequence.label("dep_sequence"),
            dep.c.commit.label("dep_commit"),
            dep.c.manifest_id.label("dep_manifest_id"),
            dep.c.manifest_hash.label("dep_manifest_hash"),
            dag.c.path.label("dep_dag_file"),
            dag.c.digest.label("dep_dag_file_digest"),
            _latest_manifest(reached.c.node_id).label("manifest"),
        )
        .select_from(reached)
        .outerjoin(a, and_(is_artifact, a.c.digest == reached.c.node_id))
        .outerjoin(t, and_(reached.c.node_type == "task", t.c.id == reached.c.node_id))
        .outerjoin(dep, dep.c.id == t.c.deployment_id)
        .outerjoin(dag, and_(dag.c.deployment_id == t.c.deployment_id, dag.c.dag_id == t.c.dag_id))
    )


def _edges_query(reached: CTE, way: _Way) -> Select[Any]:
    """The edges leaving every reached node in the walk's direction (those at the bound included)."""
    return select(_EDGES.c.src_type, _EDGES.c.src_id, _EDGES.c.dst_type, _EDGES.c.dst_id, _EDGES.c.role).select_from(
        reached.join(_EDGES, and_(way.near_type == reached.c.node_type, way.near_id == reached.c.node_id))
    )  # no condition on lineage_edges (see _walk): edges to other node types are dropped by the caller


def _deployment_of(row: Any) -> DeploymentRef | None:
    if row.deployment_id is None or row.dep_commit is None:
        return None
    return DeploymentRef(
        id=row.deployment_id,
        pipeline=row.dep_pipeline,
        environment=row.dep_environment,
        sequence=row.dep_sequence,
        commit=row.dep_commit,
        manifest_id=row.dep_manifest_id,
        manifest_hash=row.dep_manifest_hash,
        dag_id=row.dag_id,
        dag_file=row.dep_dag_file,
        dag_file_digest=row.dep_dag_file_digest,
    )


def _node(row: Any) -> GraphNode:
    if row.node_type == "artifact":
        return GraphNode(
            id=row.node_id,
            type="artifact",
            depth=row.depth,
            name=row.name,
            kind=row.kind,
            digest=row.node_id,
            state="signed" if row.manifest is not None else "unsigned",
            manifest=row.manifest,
            size=row.size,
            media_type=row.media_type,
        )
    if row.node_type == "task":
        return GraphNode(
            id=row.node_id,
            type="task",
            depth=row.depth,
            name=row.airflow_task_id or row.service,
            kind=row.service,
            state=row.state,
            dag_id=row.dag_id,
            run_id=row.run_id,
            airflow_task_id=row.airflow_task_id,
            deployment=_deployment_of(row),
        )
    return GraphNode(id=row.node_id, type=row.node_type, depth=row.depth, name=row.node_id)


def _one_way(session: Session, root: str, way: _Way, depth: int, name: str) -> tuple[list[GraphNode], list[Any]]:
    reached = _walk("artifact", root, way, depth, name)
    nodes = [_node(row) for row in session.execute(_nodes_query(reached))]
    edges = list(session.execute(_edges_query(reached, way)))
    return nodes, edges


def lineage(
    session: Session, ref: str, *, direction: Direction = Direction.UPSTREAM, depth: int = DEFAULT_DEPTH
) -> LineageGraph:
    """The lineage graph of the artifact ``ref`` names (a digest or a manifest ID); see the module docstring."""
    root = resolve_artifact(session, ref)
    ways = {
        Direction.UPSTREAM: [(_UP, "up")],
        Direction.DOWNSTREAM: [(_DOWN, "down")],
        Direction.BOTH: [(_UP, "up"), (_DOWN, "down")],
    }[direction]
    nodes: dict[tuple[str, str], GraphNode] = {}
    raw_edges: list[Any] = []
    for way, name in ways:
        found, edges = _one_way(session, root, way, depth, name)
        for node in found:
            key = (node.type, node.id)
            if key not in nodes or node.depth < nodes[key].depth:
                nodes[key] = node
        raw_edges.extend(edges)
    kept: dict[tuple[str, str, str, str, str], GraphEdge] = {}
    truncated = False
    for e in raw_edges:
        if e.src_type not in NODE_TYPES or e.dst_type not in NODE_TYPES:
            continue
        if (e.src_type, e.src_id) not in nodes or (e.dst_type, e.dst_id) not in nodes:
            truncated = True  # an edge from a node at the bound to one beyond it
            continue
        kept[(e.src_type, e.src_id, e.dst_type, e.dst_id, e.role)] = GraphEdge(
            src=e.src_id, src_type=e.src_type, dst=e.dst_id, dst_type=e.dst_type, role=e.role
        )
    ordered = sorted(nodes.values(), key=lambda n: (n.depth, n.type, n.id))
    log.debug("lineage", root=root, direction=direction.value, depth=depth, nodes=len(ordered), edges=len(kept))
    return LineageGraph(
        root=root,
        direction=direction,
        depth=depth,
        nodes=ordered,
        edges=sorted(kept.values(), key=lambda e: (e.src_type, e.src, e.dst_type, e.dst, e.role)),
        truncated=truncated,
    )


# --- what a pipeline run consumed and produced ----------------------------------------------------


class RunArtifact(BaseModel):
    digest: str
    name: str | None
    kind: str | None
    size: int | None
    media_type: str | None
    uris: list[Any]
    manifests: list[str] = Field(description="IDs of the manifests recorded for this artifact")


class RunManifest(BaseModel):
    id: str
    artifact_digest: str | None
    """None for a manifest of no stored artifact: a task's code (software) manifest."""
    role: str
    """``output`` | ``code`` | ``deployment`` | ... (``Manifest.role``)."""
    task_id: str | None
    title: str | None
    manifest_hash: str
    log_index: int | None


class RunTaskProvenance(BaseModel):
    id: str
    airflow_task_id: str | None
    try_number: int | None
    service: str
    state: str
    code: dict[str, Any] | None = Field(description="``{repo, ref, commit}`` as submitted and resolved")
    code_refs: list[str] = Field(description="code nodes of ``code -code-> task`` edges (``repo@commit``)")
    consumed: list[str] = Field(description="digests of the input artifacts")
    produced: list[str] = Field(description="digests of the output artifacts")
    manifests: list[str] = Field(description="IDs of the manifests this task registered")
    deployment: DeploymentRef | None = Field(
        default=None, description="the deployment (DAG version) the task recorded at submission"
    )


class RunProvenance(BaseModel):
    dag_id: str
    run_id: str
    state: str | None
    tasks: list[RunTaskProvenance]
    consumed: list[str] = Field(description="artifacts the run used but did not make (its inputs)")
    produced: list[str] = Field(description="artifacts the run's tasks made")
    artifacts: list[RunArtifact]
    manifests: list[RunManifest]
    code: list[str]
    deployments: list[DeploymentRef] = Field(
        default_factory=list, description="the deployments (DAG versions) the run's tasks ran under, oldest first"
    )


def run_provenance(session: Session, dag_id: str, run_id: str) -> RunProvenance:
    """Everything the run's tasks (every try) consumed and produced, with manifests, code and the
    deployments (DAG versions) they ran under: seven set-based statements, none per task.
    :class:`RunNotFoundError` when no task belongs to the run."""
    run = session.scalar(select(PipelineRun).where(PipelineRun.dag_id == dag_id, PipelineRun.run_id == run_id))
    tasks = list(
        session.scalars(
            select(Task).where(Task.dag_id == dag_id, Task.run_id == run_id).order_by(Task.submitted_at, Task.id)
        )
    )
    if run is None and not tasks:
        raise RunNotFoundError(f"no pipeline run {dag_id}/{run_id}")
    task_ids = select(Task.id).where(Task.dag_id == dag_id, Task.run_id == run_id).scalar_subquery()
    edges = list(
        session.execute(
            select(_EDGES.c.src_type, _EDGES.c.src_id, _EDGES.c.dst_type, _EDGES.c.dst_id, _EDGES.c.role).where(
                or_(
                    and_(_EDGES.c.dst_type == "task", _EDGES.c.dst_id.in_(task_ids)),
                    and_(_EDGES.c.src_type == "task", _EDGES.c.src_id.in_(task_ids)),
                )
            )
        )
    )
    consumed: dict[str, list[str]] = {t.id: [] for t in tasks}
    produced: dict[str, list[str]] = {t.id: [] for t in tasks}
    code_refs: dict[str, list[str]] = {t.id: [] for t in tasks}
    for e in edges:
        if e.dst_type == "task" and e.src_type == "artifact":
            consumed[e.dst_id].append(e.src_id)
        elif e.dst_type == "task" and e.src_type == "code":
            code_refs[e.dst_id].append(e.src_id)
        elif e.src_type == "task" and e.dst_type == "artifact":
            produced[e.src_id].append(e.dst_id)
    all_produced = sorted({d for ds in produced.values() for d in ds})
    all_consumed = sorted({d for ds in consumed.values() for d in ds} - set(all_produced))
    digests = sorted({*all_produced, *all_consumed})
    manifest_rows = list(
        session.execute(
            select(
                Manifest.id,
                Manifest.artifact_digest,
                Manifest.role,
                Manifest.task_id,
                Manifest.manifest,
                Manifest.manifest_hash,
                Manifest.log_index,
            )
            .where(or_(Manifest.task_id.in_(task_ids), Manifest.artifact_digest.in_(digests)))
            .order_by(Manifest.created_at, Manifest.id)
        )
    )
    by_artifact: dict[str, list[str]] = {}
    by_task: dict[str, list[str]] = {t.id: [] for t in tasks}
    manifests: list[RunManifest] = []
    for m in manifest_rows:
        if m.artifact_digest is not None:  # a code manifest belongs to its task, not to an artifact
            by_artifact.setdefault(m.artifact_digest, []).append(m.id)
        if m.task_id in by_task:
            by_task[m.task_id].append(m.id)
        title = m.manifest.get("title") if isinstance(m.manifest, dict) else None
        manifests.append(
            RunManifest(
                id=m.id,
                artifact_digest=m.artifact_digest,
                role=m.role,
                task_id=m.task_id,
                title=title if isinstance(title, str) else None,
                manifest_hash=m.manifest_hash,
                log_index=m.log_index,
            )
        )
    rows = {a.digest: a for a in session.scalars(select(Artifact).where(Artifact.digest.in_(digests)))}
    artifacts = [
        RunArtifact(
            digest=d,
            name=rows[d].name if d in rows else None,
            kind=rows[d].kind if d in rows else None,
            size=rows[d].size if d in rows else None,
            media_type=rows[d].media_type if d in rows else None,
            uris=list(rows[d].uris or []) if d in rows else [],
            manifests=by_artifact.get(d, []),
        )
        for d in digests
    ]
    deployments = deployment_refs(session, [(t.deployment_id, t.dag_id) for t in tasks if t.deployment_id])
    return RunProvenance(
        dag_id=dag_id,
        run_id=run_id,
        state=run.state if run is not None else None,
        tasks=[
            RunTaskProvenance(
                id=t.id,
                airflow_task_id=t.airflow_task_id,
                try_number=t.try_number,
                service=t.service,
                state=t.state,
                code=t.code,
                code_refs=sorted(code_refs[t.id]),
                consumed=sorted(consumed[t.id]),
                produced=sorted(produced[t.id]),
                manifests=by_task[t.id],
                deployment=deployments.get(t.deployment_id) if t.deployment_id else None,
            )
            for t in tasks
        ],
        consumed=all_consumed,
        produced=all_produced,
        artifacts=artifacts,
        manifests=manifests,
        code=sorted({c for cs in code_refs.values() for c in cs}),
        deployments=sorted(deployments.values(), key=lambda d: (d.pipeline, d.environment, d.sequence)),
    )
