"""The issue's reliability tests with the real runtime, sidecar and controller (nothing faked):

- the sidecar killed with SIGKILL mid-job is restarted by the launcher: exactly one manifest per artifact;
- the controller stopped while a job writes and started again on the same home and port: every manifest
  arrives (the sidecar spools and retries; the new controller re-attaches to the job);
- a file written slowly in place gets the digest of its final content, and only that one;
- a tampered stored artifact, a manifest edited in the database, a deleted log entry: verification fails
  naming the node.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from sqlalchemy import func, select, update

from controller.store.db import make_engine
from controller.store.models import Manifest
from provenance.tlog.entries import manifest_entry
from tests.e2e.conftest import (
    Controller,
    controller_on,
    free_port,
    rewrite_log_without,
    run_pipeline,
    stage_service,
    verify,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 50


def _output_manifests(ctl: Controller, task_id: str) -> list[tuple[str, str | None]]:
    """``(manifest ID, artifact digest)`` of every output manifest registered for the task."""
    with ctl.state.session_factory() as session:
        rows = session.execute(
            select(Manifest.id, Manifest.artifact_digest).where(Manifest.task_id == task_id, Manifest.role == "output")
        ).all()
    return [(str(m), d) for m, d in rows]


def _count_output_manifests(home: Path, task_id: str) -> int:
    """Output manifests in the controller's database while no controller runs."""
    engine = make_engine(f"sqlite:///{home / 'controller.db'}")
    try:
        with engine.connect() as conn:
            query = select(func.count()).where(Manifest.task_id == task_id, Manifest.role == "output")
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def _until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _state_dir(ctl: Controller, task_id: str) -> Path:
    """The launcher's state directory of the task's first attempt (controller/runtime/local.py)."""
    return ctl.home / "work" / task_id / ".job-1"


def _expected_digests(count: int, size: int) -> set[str]:
    """What ``tests/data/stages/many.py`` writes: part i is ``i`` (4 bytes, big-endian) repeated."""
    return {
        "sha256:" + hashlib.sha256(i.to_bytes(4, "big") * (size // 4) + bytes(size % 4)).hexdigest()
        for i in range(count)
    }


def _assert_exactly_once(ctl: Controller, task: dict[str, Any], count: int, size: int) -> None:
    manifests = _output_manifests(ctl, task["id"])
    digests = [d for _, d in manifests]
    assert len(manifests) == count, f"{len(manifests)} output manifests, not {count}"
    assert len(set(digests)) == count, "an artifact got two manifests"
    assert set(digests) == _expected_digests(count, size)
    assert len(task["outputs"]) == count
    assert {o["digest"] for o in task["outputs"]} == set(digests)
    assert all(o["manifest_id"] for o in task["outputs"])
    checkpoint = ctl.get("/api/v1/log/checkpoint", format="json")
    with ctl.state.session_factory() as session:
        every = session.scalars(select(Manifest.id)).all()
    assert checkpoint["treeSize"] == len(every), "every manifest is logged once"


def test_a_sidecar_killed_mid_job_is_restarted_and_nothing_is_signed_twice(e2e_home: Path) -> None:
    size = 4096
    with controller_on(e2e_home, free_port()) as ctl:
        ctl.register(stage_service("many", "many", params={"count": COUNT, "size": size, "gap": 0.06}))
        task_id = ctl.submit("many")
        ctl.wait(task_id, "running")
        _until(lambda: len(_output_manifests(ctl, task_id)) >= 8, "the first manifests")
        pids = json.loads((_state_dir(ctl, task_id) / "pids.json").read_text())
        first_sidecar = int(pids["sidecar"])
        os.killpg(first_sidecar, signal.SIGKILL)  # the sidecar is its own process group
        killed_at = len(_output_manifests(ctl, task_id))
        task = ctl.wait(task_id, timeout=120)
        assert task["state"] == "succeeded", (task, ctl.job_log(task_id))
        assert killed_at < COUNT, "the job had finished before the sidecar was killed: nothing was tested"
        exit_record = json.loads((_state_dir(ctl, task_id) / "exit.json").read_text())
        assert exit_record["sidecar_restarts"] == 1, exit_record
        assert exit_record["sidecar_exit_code"] == 0, exit_record
        assert int(json.loads((_state_dir(ctl, task_id) / "pids.json").read_text())["sidecar"]) != first_sidecar
        assert "restarting it (1/5)" in ctl.job_log(task_id)
        _assert_exactly_once(ctl, task, COUNT, size)


def test_a_controller_stopped_while_a_job_writes_loses_no_manifest(e2e_home: Path, tmp_path: Path) -> None:
    size, go = 2048, tmp_path / "go"
    port = free_port()
    env = {"MLPROV_SIDECAR_BACKOFF_MAX": "1", "MLPROV_SIDECAR_BACKOFF_INITIAL": "0.2"}  # retry often while down
    with controller_on(e2e_home, port) as ctl:
        params = {"count": COUNT, "size": size, "gap": 0.02, "go": str(go)}
        ctl.register(stage_service("many", "many", params=params, env=env))
        task_id = ctl.submit("many")
        _until(lambda: len(_output_manifests(ctl, task_id)) >= COUNT // 2, "the first half's manifests")
    # --- no controller: the job writes the second half and ends; the sidecar spools ----------------
    go.touch()
    workspace = e2e_home / "work" / task_id
    _until(lambda: (workspace / ".mlprov" / "job-exit").exists(), "the job's end")
    written = [p for p in (workspace / "outputs").iterdir() if not p.name.startswith(".")]
    assert len(written) == COUNT
    time.sleep(1.0)  # the sidecar finds the controller down at least once
    assert not (workspace / ".job-1" / "exit.json").exists(), "the sidecar gave up before the controller came back"
    before = _count_output_manifests(e2e_home, task_id)
    assert before < COUNT, "every manifest arrived before the stop: nothing was tested"
    # --- the next controller, same home and port ---------------------------------------------------
    with controller_on(e2e_home, port) as ctl:
        task = ctl.wait(task_id, timeout=120)
        assert task["state"] == "succeeded", (task, ctl.job_log(task_id))
        _assert_exactly_once(ctl, task, COUNT, size)
        summary = [line for line in ctl.job_log(task_id).splitlines() if '"sidecar_summary"' in line]
        assert summary, ctl.job_log(task_id)
        assert json.loads(summary[-1].split(" ", 3)[3])["undelivered"] == 0


def test_a_file_written_slowly_gets_the_digest_of_its_final_content(e2e_home: Path) -> None:
    chunks, gap = 10, 0.5  # over 5 s, each pause shorter than the sidecar's 2 s stability interval
    final = "".join(f"row,{i}\n" for i in range(chunks * 100)).encode()
    with controller_on(e2e_home, free_port()) as ctl:
        ctl.register(stage_service("slow", "slow_writer", params={"chunks": chunks, "gap": gap}))
        task_id = ctl.submit("slow")
        task = ctl.wait(task_id, timeout=60)
        assert task["state"] == "succeeded", (task, ctl.job_log(task_id))
        digest = "sha256:" + hashlib.sha256(final).hexdigest()
        assert [(o["name"], o["digest"]) for o in task["outputs"]] == [("slow.csv", digest)]
        assert _output_manifests(ctl, task_id) == [(task["outputs"][0]["manifest_id"], digest)]
        assert verify(ctl, digest)["ok"] is True


def _node(report: dict[str, Any], manifest_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in report["nodes"] if n["id"] == manifest_id)
    return found


def test_tampering_anywhere_fails_verification_naming_the_node(e2e_home: Path, code_repo: tuple[Path, str]) -> None:
    repo, _ = code_repo
    with controller_on(e2e_home, free_port()) as ctl:
        pipeline = run_pipeline(ctl, {"repo": str(repo), "ref": "HEAD"})
        derived, dataset = pipeline.output("derived.csv"), pipeline.output("dataset.csv")
        target = derived["digest"]
        assert verify(ctl, target)["ok"] is True

        # 1. the stored bytes of the target artifact
        uri = ctl.get(f"/api/v1/artifacts/{target}")["uris"][0]
        stored = Path(unquote(urlparse(uri).path))
        original = stored.read_bytes()
        os.chmod(stored, stat.S_IRUSR | stat.S_IWUSR)
        stored.write_bytes(original.replace(b"x,y", b"x,z", 1))
        result = verify(ctl, target)
        assert result["ok"] is False
        broken = result["report"]["first_broken"]
        assert broken["id"] == derived["manifest_id"]
        assert broken["error"].startswith("artifact: sha256 of the stored bytes is"), broken
        stored.write_bytes(original)
        assert verify(ctl, target)["ok"] is True

        # 2. the upstream dataset's manifest edited in the database
        with ctl.state.session_factory() as session:
            row = session.get(Manifest, dataset["manifest_id"])
            assert row is not None
            saved = row.manifest
        edited = {**saved, "title": "not-the-dataset.csv"}
        with ctl.state.session_factory() as session, session.begin():
            session.execute(update(Manifest).where(Manifest.id == dataset["manifest_id"]).values(manifest=edited))
        result = verify(ctl, target)
        assert result["ok"] is False
        report = result["report"]
        assert report["first_broken"]["id"] == derived["manifest_id"]  # its link to the dataset's manifest
        assert "manifest hash is" in report["first_broken"]["error"], report["first_broken"]
        node = _node(report, dataset["manifest_id"])
        assert not node["ok"]
        assert {c["name"] for c in node["checks"] if not c["ok"]} >= {"signature", "tlog inclusion"}
        with ctl.state.session_factory() as session, session.begin():
            session.execute(update(Manifest).where(Manifest.id == dataset["manifest_id"]).values(manifest=saved))
        assert verify(ctl, target)["ok"] is True

        # 3. the dataset manifest's entry deleted from the transparency log (history rewritten, re-signed)
        rewrite_log_without(ctl.state, manifest_entry(saved))
        result = verify(ctl, target)
        assert result["ok"] is False
        broken = result["report"]["first_broken"]
        assert broken["id"] == dataset["manifest_id"]
        assert broken["error"].startswith("tlog inclusion: not logged"), broken
        assert _node(result["report"], derived["manifest_id"])["ok"]
