"""JUnit XML for GitLab's test report (``artifacts:reports:junit``): one testsuite, one testcase per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # writing XML only: nothing untrusted is parsed
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CheckResult", "junit_xml", "write_junit"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool | None
    """True passed, False failed, None skipped (an earlier check failed)."""
    message: str = ""
    """One line: what was seen (passed) or what to fix (failed)."""
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)


def junit_xml(suite: str, results: Sequence[CheckResult]) -> bytes:
    """The report as UTF-8 XML bytes."""
    failures = sum(1 for r in results if r.ok is False)
    skipped = sum(1 for r in results if r.ok is None)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures))
    node = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for result in results:
        case = ET.SubElement(node, "testcase", classname=suite, name=result.name, time=f"{result.seconds:.3f}")
        if result.ok is False:
            failure = ET.SubElement(case, "failure", message=result.message, type="CheckFailed")
            failure.text = "\n".join([result.message, *result.details])
        elif result.ok is None:
            ET.SubElement(case, "skipped", message=result.message or "not run: an earlier check failed")
        elif result.details or result.message:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([result.message, *result.details])
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"


def write_junit(path: Path, suite: str, results: Sequence[CheckResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(junit_xml(suite, results))
    tmp.replace(path)
