"""The JUnit writer: GitLab reads testsuite/testcase/failure/skipped; one testcase per check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from controller.pipeline.junit import CheckResult, junit_xml, write_junit


def test_one_testcase_per_check_with_failure_and_skipped() -> None:
    results = [
        CheckResult("reachable", True, "both answer", 0.25),
        CheckResult("tasks succeeded", False, "task train of run r1 is failed", 1.5, ["train: failed"]),
        CheckResult("logs searchable", None, "not run: an earlier check failed"),
    ]
    root = ET.fromstring(junit_xml("mlprov pipeline test demo", results))  # noqa: S314 - our own output
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    assert suite.get("time") == "1.750"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["reachable", "tasks succeeded", "logs searchable"]
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == "task train of run r1 is failed"
    assert failure.text is not None
    assert "train: failed" in failure.text
    assert cases[2].find("skipped") is not None
    assert cases[0].find("failure") is None


def test_messages_with_markup_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "junit.xml"
    write_junit(path, "s", [CheckResult("dag run", False, 'run <a & "b"> still running')])
    root = ET.fromstring(path.read_bytes())  # noqa: S314 - our own output
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == 'run <a & "b"> still running'
    assert path.read_bytes().startswith(b"<?xml")
