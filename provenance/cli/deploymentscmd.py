"""``mlprov deployments list|show``: the deployment history the controller keeps (docs/deployments.md).

Each deployment of a pipeline's definitions (DAGs, plugins, services.yaml) is a signed manifest linked to
the previous one; ``mlprov verify --server URL <manifest_id>`` of the newest walks the whole history.
Recording one is ``mlprov deploy``'s job (CI); these commands only read, over HTTP, with ``MLPROV_TOKEN``
(a read-only token is enough). Exit codes as everywhere: unknown deployment 3, controller unreachable 5.
"""

from __future__ import annotations

import json
from typing import Any

import click

from provenance.cli.lineagecmd import ControllerClient
from provenance.errors import StorageError

__all__ = ["deployments", "render_deployment", "render_list"]

_SERVER = click.option("--server", metavar="URL", help="The controller (default: $MLPROV_CONTROLLER_URL).")


@click.group("deployments")
def deployments() -> None:
    """Deployments of pipeline definitions recorded by the controller (newest first)."""


def _who(ci: dict[str, Any]) -> str:
    who = ci.get("triggered_by") or "-"
    where = "/".join(str(ci[k]) for k in ("pipeline_id", "job_id") if ci.get(k))
    return f"{who} ({ci.get('provider') or 'ci'} {where})" if where else str(who)


def render_list(items: list[dict[str, Any]]) -> str:
    """One line per deployment: sequence, time, pipeline/environment, commit, DAGs, ID, who."""
    if not items:
        return "no deployments recorded"
    lines = []
    for d in items:
        dags = ",".join(d.get("dag_ids") or []) or "-"
        lines.append(
            f"#{d['sequence']:<4} {d['created_at']}  {d['pipeline']}/{d['environment']}  "
            f"{str(d['commit'])[:12]}  dags={dags}  {d['id']}  by {_who(d.get('ci') or {})}"
        )
    return "\n".join(lines)


def render_deployment(d: dict[str, Any]) -> str:
    """The record as readable text: identity, chain, CI, files."""
    ci = d.get("ci") or {}
    lines = [
        f"deployment {d['id']}  #{d['sequence']} of {d['pipeline']}/{d['environment']}",
        f"  commit:    {d['commit']}" + (f" ({d['ref']})" if d.get("ref") else ""),
        f"  created:   {d['created_at']}",
        f"  manifest:  {d['manifest_id']}  {d['manifest_hash']}"
        + (f"  (log index {d['log_index']})" if d.get("log_index") is not None else ""),
        f"  previous:  {d.get('previous_id') or '-'}"
        + (f"  ({d['previous_manifest_id']})" if d.get("previous_manifest_id") else ""),
        f"  dags:      {', '.join(d.get('dag_ids') or []) or '-'}",
        f"  services:  {', '.join(d.get('services') or []) or '-'}",
    ]
    for key in sorted(ci):
        lines.append(f"  ci.{key}: {ci[key]}")
    for key, value in sorted((d.get("target") or {}).items()):
        lines.append(f"  target.{key}: {value}")
    lines.append(f"  files ({len(d.get('files') or [])}):")
    for f in d.get("files") or []:
        dag_ids = f" [{', '.join(f['dag_ids'])}]" if f.get("dag_ids") else ""
        lines.append(f"    {f['role']:<8} {f['path']}  {f['digest']}{dag_ids}")
    return "\n".join(lines)


@deployments.command("list")
@_SERVER
@click.option("--pipeline", help="Only this pipeline.")
@click.option("--environment", help="Only this environment.")
@click.option("--dag-id", help="Only deployments carrying this DAG.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
def list_command(
    server: str | None, pipeline: str | None, environment: str | None, dag_id: str | None, limit: int, as_json: bool
) -> None:
    """List recorded deployments, newest first."""
    params = {"pipeline": pipeline, "environment": environment, "dag_id": dag_id, "limit": limit}
    client = ControllerClient(server)
    try:
        page = client.request(
            "GET",
            "/deployments",
            what="deployments",
            params={k: v for k, v in params.items() if v is not None},
        )
    finally:
        client.close()
    if not isinstance(page, dict) or not isinstance(page.get("deployments"), list):
        raise StorageError("the controller's deployment list is malformed")
    items = page["deployments"]
    if as_json:
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        click.echo(render_list(items))


@deployments.command("show")
@click.argument("deployment_id", metavar="ID")
@_SERVER
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.option("--manifest", "show_manifest", is_flag=True, help="Print the signed manifest instead.")
def show_command(deployment_id: str, server: str | None, as_json: bool, show_manifest: bool) -> None:
    """Show one deployment: commit, CI job, DAGs, deployed files and the signed manifest linking it."""
    from urllib.parse import quote

    client = ControllerClient(server)
    path = f"/deployments/{quote(deployment_id, safe='')}"
    try:
        if show_manifest:
            found = client.request("GET", path + "/manifest", what=f"manifest of deployment {deployment_id}")
        else:
            found = client.request("GET", path, what=f"deployment {deployment_id}")
    finally:
        client.close()
    if not isinstance(found, dict):
        raise StorageError(f"the controller's answer for deployment {deployment_id} is malformed")
    if as_json or show_manifest:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
    else:
        click.echo(render_deployment(found))
