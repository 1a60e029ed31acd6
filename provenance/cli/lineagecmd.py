"""Commands that ask the controller over HTTP: ``mlprov lineage`` and ``mlprov verify --server``.

``mlprov lineage DIGEST|ID`` prints ``GET /api/v1/lineage/{ref}`` as a tree (default), JSON or Graphviz
dot. ``mlprov verify --server URL ID|DIGEST`` (see :mod:`provenance.cli.verifycmd`) runs
``POST /api/v1/verify`` and prints the report exactly as the local verify does, rebuilt from its JSON.

The bearer token is ``MLPROV_TOKEN``; the server is ``--server`` or ``MLPROV_CONTROLLER_URL``. Errors map
to the CLI's exit codes: unknown artifact or manifest 3, controller unreachable or refusing 5,
verification failed 4. ``provenance`` never imports ``controller``: this module only speaks HTTP.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import click

from provenance.errors import InvalidInputError, ManifestNotFoundError, StorageError, VerificationError

if TYPE_CHECKING:
    import httpx

    from provenance.report import VerificationReport

__all__ = [
    "ControllerClient",
    "deployment_note",
    "lineage",
    "render_dot",
    "render_tree",
    "report_from_dict",
    "run_remote_verify",
]

API: Final = "/api/v1"
_DIGEST_PREFIXES: Final = ("sha256:", "sha384:", "sha512:")


class ControllerClient:
    """A small HTTP client of the controller's query APIs (token from ``MLPROV_TOKEN``)."""

    def __init__(self, server: str | None, *, transport: httpx.BaseTransport | None = None) -> None:
        import httpx

        from provenance.config import load_settings

        settings = load_settings()
        base = server or settings.controller_url
        if not base:
            raise InvalidInputError("no controller given: pass --server URL or set MLPROV_CONTROLLER_URL")
        self.base_url = base.rstrip("/")
        token = settings.token_value
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(settings.http_timeout, connect=min(5.0, settings.http_timeout))
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        """The JSON answer; domain errors for 404 (not found), 4xx/5xx and connection failures."""
        import httpx

        try:
            response = self._client.request(method, API + path, **kwargs)
        except httpx.HTTPError as exc:
            raise StorageError(f"controller {self.base_url} unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code == 404:
            raise ManifestNotFoundError(f"{what}: {_detail(response)}")
        if response.status_code in (400, 422):
            raise InvalidInputError(f"{what}: {_detail(response)}")
        if response.status_code >= 300:
            raise StorageError(
                f"controller {self.base_url} answered {response.status_code} for {what}: {_detail(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise StorageError(f"controller {self.base_url} answered non-JSON for {what}") from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return str(body)[:200]


# --- lineage rendering --------------------------------------------------------------------------------


def _label(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if kind == "artifact":
        signed = f"signed {node['manifest']}" if node.get("manifest") else "UNSIGNED"
        return f"{node.get('name') or '?'} [{node.get('kind') or 'artifact'}] {node['id']} ({signed})"
    if kind == "task":
        text = f"task {node.get('name') or node['id']} ({node.get('kind')}, {node.get('state')}) {node['id']}"
        return text + deployment_note(node)
    return f"{kind} {node['id']}"


def deployment_note(node: dict[str, Any]) -> str:
    """`` · DAG <dag_id> @ <commit[:12]> (deployment <id[:8]>)`` for a task that ran under a recorded
    deployment (the DAG version that made it), else ``""``."""
    dep = node.get("deployment")
    if not isinstance(dep, dict) or not dep.get("id"):
        return ""
    dag = dep.get("dag_id") or node.get("dag_id") or "?"
    return f" · DAG {dag} @ {str(dep.get('commit') or '?')[:12]} (deployment {str(dep['id'])[:8]})"


def render_tree(graph: dict[str, Any]) -> str:
    """The graph as an indented text tree from the root: upstream (what it was made from, ``<-``) and/or
    downstream (what was made from it, ``->``). A node reached twice is printed once, then ``(see above)``."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    up: dict[str, list[tuple[str, str]]] = {}
    down: dict[str, list[tuple[str, str]]] = {}
    for e in graph["edges"]:
        up.setdefault(e["dst"], []).append((e["src"], e["role"]))
        down.setdefault(e["src"], []).append((e["dst"], e["role"]))
    root = graph["root"]
    lines = [_label(nodes[root]) if root in nodes else root]
    directions = {"upstream": [("<-", up)], "downstream": [("->", down)], "both": [("<-", up), ("->", down)]}
    for arrow, children in directions[graph.get("direction", "upstream")]:
        seen = {root}
        _branch(root, children, nodes, arrow, "", seen, lines)
    if graph.get("truncated"):
        lines.append(f"… truncated at depth {graph.get('depth')}: raise --depth to see more")
    return "\n".join(lines)


def _branch(
    node_id: str,
    children: dict[str, list[tuple[str, str]]],
    nodes: dict[str, dict[str, Any]],
    arrow: str,
    prefix: str,
    seen: set[str],
    lines: list[str],
) -> None:
    kids = sorted(children.get(node_id, []))
    for i, (child, role) in enumerate(kids):
        last = i == len(kids) - 1
        text = _label(nodes[child]) if child in nodes else child
        again = child in seen
        lines.append(f"{prefix}{'└── ' if last else '├── '}{arrow} {role}: {text}{' (see above)' if again else ''}")
        if not again:
            seen.add(child)
            _branch(child, children, nodes, arrow, prefix + ("    " if last else "│   "), seen, lines)


def _dot_id(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SHAPES: Final = {"artifact": "box", "task": "ellipse", "code": "note"}


def render_dot(graph: dict[str, Any]) -> str:
    """The graph in Graphviz dot (``dot -Tsvg``): artifacts boxes, tasks ellipses, code notes; the root bold."""
    lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n in graph["nodes"]:
        name = n.get("name") or n["id"]
        label = f"{name}\\n{n['id'][:23]}" if n.get("type") == "artifact" else str(name)
        dep = n.get("deployment")
        if n.get("type") == "task" and isinstance(dep, dict) and dep.get("commit"):
            label += f"\\nDAG @ {str(dep['commit'])[:12]}"
        attrs = [f"label={_dot_id(label)}", f"shape={_SHAPES.get(n.get('type', ''), 'box')}"]
        if n["id"] == graph["root"]:
            attrs.append("style=bold")
        if n.get("type") == "artifact" and not n.get("manifest"):
            attrs.append("color=red")
        lines.append(f"  {_dot_id(n['id'])} [{', '.join(attrs)}];")
    for e in graph["edges"]:
        lines.append(f"  {_dot_id(e['src'])} -> {_dot_id(e['dst'])} [label={_dot_id(e['role'])}];")
    lines.append("}")
    return "\n".join(lines)


@click.command("lineage")
@click.argument("target", metavar="DIGEST|ID")
@click.option("--server", metavar="URL", help="The controller (default: $MLPROV_CONTROLLER_URL).")
@click.option(
    "--direction",
    type=click.Choice(["upstream", "downstream", "both"]),
    default="upstream",
    show_default=True,
    help="What it was made from, what was made from it, or both.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=0, max=200),
    default=10,
    show_default=True,
    help="Edges to follow (artifact -> task -> artifact is 2).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["tree", "json", "dot"]), default="tree", show_default=True, help="Output."
)
def lineage(target: str, server: str | None, direction: str, depth: int, fmt: str) -> None:
    """Print the lineage graph of an artifact (by digest, or by the ID of one of its manifests), as the
    controller computes it: artifacts, the tasks that consumed and produced them (with the deployed DAG
    version that ran each, when recorded), and code commits."""
    from urllib.parse import quote

    client = ControllerClient(server)
    try:
        graph = client.request(
            "GET",
            f"/lineage/{quote(target, safe=':')}",
            what=f"lineage of {target}",
            params={"direction": direction, "depth": depth},
        )
    finally:
        client.close()
    if fmt == "json":
        click.echo(json.dumps(graph, indent=2, ensure_ascii=False))
    elif fmt == "dot":
        click.echo(render_dot(graph))
    else:
        click.echo(render_tree(graph))


# --- remote verification --------------------------------------------------------------------------------


def report_from_dict(data: dict[str, Any]) -> VerificationReport:
    """Rebuild a :class:`~provenance.report.VerificationReport` from its ``to_dict()`` form."""
    from provenance.report import Check, NodeResult, VerificationReport

    try:
        nodes = [
            NodeResult(
                id=n["id"],
                title=n["title"],
                kind=n["kind"],
                depth=n["depth"],
                ok=n["ok"],
                checks=[Check(c["name"], c["ok"], c["detail"], c.get("skipped", False)) for c in n["checks"]],
                error=n.get("error"),
            )
            for n in data["nodes"]
        ]
        broken_id = (data.get("first_broken") or {}).get("id")
        first = next((n for n in nodes if n.id == broken_id and not n.ok), None)
        return VerificationReport(root=data["root"], ok=bool(data["ok"]), nodes=nodes, first_broken=first)
    except (KeyError, TypeError) as exc:
        raise StorageError(f"the controller's verification report is malformed: missing {exc}") from None


def run_remote_verify(target: str, *, server: str, as_json: bool, rehash: bool, max_depth: int) -> None:
    """``POST /api/v1/verify`` for ``target`` (a digest or a manifest ID); print the report as the local
    verify does; raise :class:`VerificationError` (exit 4) when it does not hold."""
    from provenance.cli.verifying import SUCCESS_LINE

    body: dict[str, Any] = {"rehash": rehash, "max_depth": max_depth}
    body["artifact" if target.startswith(_DIGEST_PREFIXES) else "manifest"] = target
    client = ControllerClient(server)
    try:
        result = client.request("POST", "/verify", what=f"verification of {target}", json=body)
    finally:
        client.close()
    if not isinstance(result, dict) or not isinstance(result.get("report"), dict):
        raise StorageError("the controller's verification answer has no report")
    report = report_from_dict(result["report"])
    if as_json:
        click.echo(json.dumps(result["report"], indent=2, ensure_ascii=False))
    else:
        text = report.to_text().rstrip("\n")
        if report.ok and not text.endswith(SUCCESS_LINE):
            text = f"{text}\n{SUCCESS_LINE}"
        click.echo(text)
    if not report.ok:
        broken = report.first_broken
        reason = f": first broken at {broken.id}: {broken.error}" if broken is not None else " (see the report)"
        raise VerificationError(f"{target} failed verification on {server}{reason}")
