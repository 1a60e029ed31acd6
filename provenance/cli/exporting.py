"""``manifest export``: the provenance graph reachable from a manifest, in atlas-cli's shape::

{"root_id": ID,
 "nodes": {ID: {id, title, manifest_type, created_at, ingredients: [instance ids],
                assertions: [{type_name, details}], references: [{target_id, relation_type}],
                signature: bool | null}},
 "edges": [{source, target, relation_type: "references" | "isReferencedBy"}]}
"""

from __future__ import annotations

from typing import Any

from provenance.errors import ManifestNotFoundError
from provenance.storage.base import ManifestStore

__all__ = ["provenance_graph"]


def _assertion_info(assertion: dict[str, Any]) -> dict[str, Any]:
    if "CreativeWork" in assertion:
        work = assertion["CreativeWork"] or {}
        return {
            "type_name": "CreativeWork",
            "details": {
                "creative_type": work.get("@type"),
                "authors": [{"type": a.get("@type"), "name": a.get("name")} for a in work.get("author") or []],
            },
        }
    if "Action" in assertion:
        actions = []
        for action in (assertion["Action"] or {}).get("actions") or []:
            item = {"action": action.get("action")}
            if action.get("software_agent") is not None:
                item["software_agent"] = action["software_agent"]
            if action.get("parameters") is not None:
                item["parameters"] = action["parameters"]
            actions.append(item)
        return {"type_name": "Action", "details": {"actions": actions}}
    if "DoNotTrain" in assertion:
        body = assertion["DoNotTrain"] or {}
        return {"type_name": "DoNotTrain", "details": {"reason": body.get("reason"), "enforced": body.get("enforced")}}
    if "CustomAssertion" in assertion:
        return {"type_name": "CustomAssertion", "details": {"label": (assertion["CustomAssertion"] or {}).get("label")}}
    return {"type_name": "Other", "details": {"type": "Unknown"}}


def _node(manifest_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    from provenance.manifest import manifest_type

    claim = manifest.get("c2pa.claim.v2") or manifest.get("claim") or {}
    return {
        "id": manifest_id,
        "title": manifest.get("title"),
        "manifest_type": manifest_type(manifest),
        "created_at": manifest.get("created_at"),
        "ingredients": [i.get("instance_id") for i in manifest.get("ingredients") or [] if isinstance(i, dict)],
        "assertions": [_assertion_info(a) for a in claim.get("created_assertions") or [] if isinstance(a, dict)],
        "references": [],
        "signature": (claim.get("signature") is not None) if claim else None,
    }


def provenance_graph(store: ManifestStore, root_id: str, max_depth: int) -> dict[str, Any]:
    """Walk cross-references from ``root_id`` (depth-first, each manifest once, at most ``max_depth``
    links deep). A referenced manifest the store does not hold raises ``ManifestNotFoundError``."""
    graph: dict[str, Any] = {"root_id": root_id, "nodes": {}, "edges": []}
    visited: set[str] = set()

    def visit(manifest_id: str, depth: int) -> None:
        if manifest_id in visited or depth > max_depth:
            return
        visited.add(manifest_id)
        try:
            manifest = store.get(manifest_id).manifest
        except ManifestNotFoundError as exc:
            if depth == 0:
                raise
            raise ManifestNotFoundError(f"linked manifest missing from the graph: {exc}") from None
        graph["nodes"][manifest_id] = _node(manifest_id, manifest)
        for ref in manifest.get("cross_references") or []:
            target = str(ref.get("manifest_url"))
            graph["nodes"][manifest_id]["references"].append({"target_id": target, "relation_type": "references"})
            graph["edges"].append({"source": manifest_id, "target": target, "relation_type": "references"})
            visit(target, depth + 1)
            if target in graph["nodes"]:
                graph["nodes"][target]["references"].append(
                    {"target_id": manifest_id, "relation_type": "isReferencedBy"}
                )
            graph["edges"].append({"source": target, "target": manifest_id, "relation_type": "isReferencedBy"})

    visit(root_id, 0)
    return graph
