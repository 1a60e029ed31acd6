"""The seams of ARCHITECTURE section 3, enforced: provenance never imports controller."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> list[tuple[Path, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
    return found


def test_provenance_never_imports_controller() -> None:
    offenders = [f"{p.relative_to(ROOT)}: {m}" for p, m in _imports("provenance") if m.split(".")[0] == "controller"]
    assert offenders == []


def test_the_scan_sees_provenance_imports() -> None:
    # Guard against a vacuous pass: the scan must find provenance's own imports.
    assert any(m.startswith("provenance") for _, m in _imports("provenance"))
