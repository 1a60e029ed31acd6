"""The verification report: one entry per manifest checked, each with its checks, as text and JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from provenance.storage.base import StoredManifest

__all__ = ["Check", "NodeCheck", "NodeResult", "VerificationReport"]


@dataclass
class Check:
    """One thing checked on one manifest. ``skipped`` checks (an unreachable file) are ok but say so."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "skipped": self.skipped, "detail": self.detail}


#: A per-node check plugged into :func:`provenance.verify.verify_chain` (OMS bundle, C2PA sidecar,
#: transparency-log inclusion). Returns ``None`` when it does not apply to this manifest.
NodeCheck: TypeAlias = Callable[[StoredManifest], "Check | None"]


@dataclass
class NodeResult:
    id: str
    title: str
    kind: str
    depth: int
    ok: bool
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    """The first failed check as ``"<check>: <detail>"``; ``None`` when the node holds."""

    def add(self, check: Check) -> None:
        self.checks.append(check)
        if not check.ok:
            if self.ok:
                self.error = f"{check.name}: {check.detail}"
            self.ok = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "depth": self.depth,
            "ok": self.ok,
            "error": self.error,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass
class VerificationReport:
    """Every manifest reached from ``root`` (depth-first, root first) and the first one that broke."""

    root: str
    ok: bool
    nodes: list[NodeResult]
    first_broken: NodeResult | None

    def to_dict(self) -> dict[str, Any]:
        checks = [c for n in self.nodes for c in n.checks]
        return {
            "root": self.root,
            "ok": self.ok,
            "first_broken": None
            if self.first_broken is None
            else {"id": self.first_broken.id, "title": self.first_broken.title, "error": self.first_broken.error},
            "summary": {
                "nodes": len(self.nodes),
                "checks": len(checks),
                "failed": sum(not c.ok for c in checks),
                "skipped": sum(c.skipped for c in checks),
            },
            "nodes": [n.to_dict() for n in self.nodes],
        }

    def to_text(self) -> str:
        lines = [f"Verification of {self.root}"]
        for node in self.nodes:
            mark = "✓" if node.ok else "✗"
            lines.append(f"{'  ' * node.depth}{mark} {node.kind} {node.title!r} ({node.id})")
            for check in node.checks:
                sign = "-" if check.skipped else ("✓" if check.ok else "✗")
                lines.append(f"{'  ' * node.depth}    {sign} {check.name}: {check.detail}")
        if self.ok:
            lines.append(f"✓ Verified {len(self.nodes)} manifest(s): every signature, hash and link holds")
        elif self.first_broken is not None:
            fb = self.first_broken
            lines.append(f"✗ Verification failed: first broken link at {fb.kind} {fb.title!r} ({fb.id}): {fb.error}")
        else:  # pragma: no cover - ok is False only when some node failed
            lines.append("✗ Verification failed")
        return "\n".join(lines)
