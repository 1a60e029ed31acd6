"""Sidecar reliability against the fake controller: outage, SIGKILL and restart, slow writers, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.manifest import manifest_type
from provenance.sidecar.agent import Sidecar
from provenance.sidecar.delivery import ControllerClient, TokenFile
from provenance.sidecar.taskinfo import load_task_info
from tests.unit.provenance.fake_controller import (
    TASK_ID,
    TOKEN,
    FakeController,
    Running,
    assertion,
    publish,
    settings_for,
    write_task,
)

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningIdentity, TrustStore]:
    home = tmp_path_factory.mktemp("mlprov-home")
    init_identity(home)
    return home, load_identity(home), TrustStore.load(home / "trust")


@pytest.fixture
def fake(tmp_path: Path, signer: tuple[Path, SigningIdentity, TrustStore]) -> Iterator[FakeController]:
    controller = FakeController(signer[2], token=TOKEN, task_id=TASK_ID, store_dir=tmp_path / "store").start()
    yield controller
    controller.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "stages" / "finetune.py").write_text("print('train')\n")
    ws = tmp_path / "ws"
    write_task(ws, TASK_ID, repo=repo)
    return ws


@pytest.fixture
def agents() -> Iterator[list[Sidecar]]:
    made: list[Sidecar] = []
    yield made
    for agent in made:
        agent.client.close()


def make_agent(agents: list[Sidecar], workspace: Path, url: str, identity: SigningIdentity, **extra: Any) -> Sidecar:
    settings = settings_for(workspace, url, **extra)
    client = ControllerClient(url, TOKEN, TASK_ID, timeout=2.0)
    agent = Sidecar(settings, load_task_info(workspace), identity, client)
    agents.append(agent)
    return agent


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_controller_down_then_up_delivers_everything(
    workspace: Path, fake: FakeController, signer: tuple[Path, SigningIdentity, TrustStore], agents: list[Sidecar]
) -> None:
    fake.stop()  # the port stays known: a closed 127.0.0.1 port answers at once
    agent = make_agent(agents, workspace, fake.url, signer[1])
    outputs = workspace / "outputs"
    with Running(agent) as running:
        publish(outputs / "a.csv", b"1,2\n")
        publish(outputs / "run.yaml", b"lr: 0.1\n")
        publish(outputs / "model.onnx", os.urandom(2048))
        wait_for(lambda: len(agent.ledger.records()) == 3, 20, "three artifacts signed while the controller is down")
        assert fake.outputs() == []
        assert agent.spool.pending()[0].kind == "code"  # our own software manifest, spooled first
        time.sleep(0.3)  # a few failed attempts
        fake.start()
        summary = running.finish()
    assert summary.ok, summary
    assert summary.delivered == 3
    outputs_by_title = {r.manifest["title"]: r for r in fake.outputs()}
    assert set(outputs_by_title) == {"a.csv", "run.yaml", "model.onnx"}
    (software,) = fake.code()
    assert software.id == summary.software_manifest
    for reg in outputs_by_title.values():
        assert software.id in {x["manifest_url"] for x in reg.manifest["cross_references"]}
    config = outputs_by_title["run.yaml"].manifest
    assert manifest_type(config) == "Dataset"
    assert assertion(config, "mlprov.artifact")["classification"] == "config"
    assert outputs_by_title["model.onnx"].oms_bundle is not None
    retried = Counter(mid for _, mid, _ in fake.state.posts)
    assert set(retried.values()) == {1}  # nothing was registered twice


def test_slowly_written_file_gets_the_digest_of_its_final_content(
    workspace: Path, fake: FakeController, signer: tuple[Path, SigningIdentity, TrustStore], agents: list[Sidecar]
) -> None:
    agent = make_agent(agents, workspace, fake.url, signer[1], stable_interval=1.0)
    path = workspace / "outputs" / "slow.csv"
    content = b""
    with Running(agent) as running, open(path, "wb") as fh:
        for i in range(12):  # ~3 s, pauses shorter than the stability interval
            chunk = f"{i},{'x' * 2000}\n".encode()
            fh.write(chunk)
            fh.flush()
            content += chunk
            time.sleep(0.25)
        fh.close()
        wait_for(lambda: len(fake.outputs()) == 1, 20, "the slow file's manifest")
        summary = running.finish()
    assert summary.ok
    (reg,) = fake.outputs()
    assert reg.artifact is not None
    assert reg.artifact["digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert reg.artifact["size"] == len(content)


def test_a_409_is_dead_lettered_and_reported(
    workspace: Path, fake: FakeController, signer: tuple[Path, SigningIdentity, TrustStore], agents: list[Sidecar]
) -> None:
    fake.conflict_titles.add("clash.csv")
    (workspace / "outputs" / "clash.csv").write_text("1\n")
    (workspace / "outputs" / "fine.csv").write_text("2\n")
    summary = make_agent(agents, workspace, fake.url, signer[1]).run(once=True)
    assert not summary.ok
    assert (summary.captured, summary.delivered, summary.undelivered) == (2, 1, 1)
    (dead,) = summary.dead
    assert "409" in dead["reason"]
    assert [r.manifest["title"] for r in fake.outputs()] == ["fine.csv"]
    line = json.loads(summary.to_json())
    assert line["ok"] is False
    assert line["undelivered"] == 1


def _sidecar_process(workspace: Path, home: Path, url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MLPROV_HOME": str(home),
        "MLPROV_TASK_ID": TASK_ID,
        "MLPROV_TASK_TOKEN": TOKEN,
        "MLPROV_WORKSPACE": str(workspace),
        "MLPROV_CONTROLLER_URL": url,
        "MLPROV_SIDECAR_STABLE_INTERVAL": "0.5",
        "MLPROV_SIDECAR_EXIT_SETTLE_INTERVAL": "0.1",
        "MLPROV_SIDECAR_BACKOFF_INITIAL": "0.05",
        "MLPROV_SIDECAR_BACKOFF_MAX": "0.5",
        "MLPROV_SIDECAR_DRAIN_TIMEOUT": "30",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "provenance.cli", "sidecar"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_job_then_restart_gives_exactly_fifty_manifests(
    workspace: Path, fake: FakeController, signer: tuple[Path, SigningIdentity, TrustStore]
) -> None:
    home = signer[0]
    outputs = workspace / "outputs"
    written: list[bytes] = []

    def job() -> None:
        for i in range(50):
            data = f"artifact {i}\n".encode() + os.urandom(1024)
            publish(outputs / f"part-{i:02d}.csv", data)
            written.append(data)
            time.sleep(0.06)

    first = _sidecar_process(workspace, home, fake.url)
    writer = threading.Thread(target=job)
    try:
        wait_for(lambda: len(fake.code()) == 1, 60, "the first sidecar to start")
        writer.start()
        wait_for(lambda: len(fake.outputs()) >= 8, 60, "some manifests before the kill")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        killed_at = len(fake.outputs())
        second = _sidecar_process(workspace, home, fake.url)  # the runtime restarts it
        writer.join(30)
        (workspace / ".mlprov" / "job-exit").write_text("0")  # the job exited
        out, err = second.communicate(timeout=120)
    finally:
        for proc in (first, locals().get("second")):
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert second.returncode == 0, err[-2000:]
    assert killed_at < 50
    registered = fake.outputs()
    digests = Counter(r.artifact["digest"] for r in registered if r.artifact)
    assert len(registered) == 50
    assert set(digests.values()) == {1}
    assert set(digests) == {"sha256:" + hashlib.sha256(d).hexdigest() for d in written}
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["event"] == "sidecar_summary"
    assert (summary["captured"], summary["delivered"], summary["undelivered"]) == (50, 50, 0)
    # Structured logs: JSON lines with task, manifest and digest bound; the token never appears.
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    signed = [line for line in lines if line.get("event") == "artifact_signed"]
    assert signed
    assert all(line["task_id"] == TASK_ID and line["manifest_id"] and line["artifact_digest"] for line in signed)
    assert TOKEN not in err


def test_bad_task_json_is_a_one_line_error(workspace: Path, signer: tuple[Path, SigningIdentity, TrustStore]) -> None:
    (workspace / ".mlprov" / "task.json").write_text('{"task_id": "task-0001", "attempt": "first"')
    proc = _sidecar_process(workspace, signer[0], "http://127.0.0.1:9")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ")
    assert "task.json" in err


def test_a_rotated_token_file_is_read_for_every_request(
    workspace: Path,
    fake: FakeController,
    signer: tuple[Path, SigningIdentity, TrustStore],
    agents: list[Sidecar],
    tmp_path: Path,
) -> None:
    """Kubernetes: the sidecar's credential is the pod's projected token file, which the kubelet rewrites;
    an empty file (between writes) is retried, and the new token is used from the next request on."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = settings_for(workspace, fake.url, task_token=None, task_token_file=token_file)
    agent = Sidecar(
        settings, load_task_info(workspace), signer[1], ControllerClient(fake.url, TokenFile(token_file), TASK_ID)
    )
    agents.append(agent)
    outputs = workspace / "outputs"
    with Running(agent) as running:
        publish(outputs / "first.csv", b"1,2\n")
        wait_for(lambda: len(fake.outputs()) == 1, 20, "the first artifact registered with the first token")
        token_file.write_text("")  # the kubelet between writes: retried, not dead-lettered
        fake.token = "rotated-token-9b2e"
        publish(outputs / "second.csv", b"3,4\n")
        wait_for(lambda: len(agent.ledger.records()) == 2, 20, "the second artifact signed")
        time.sleep(0.3)  # a few failed attempts with no token
        assert len(fake.outputs()) == 1
        token_file.write_text("rotated-token-9b2e")
        summary = running.finish()
    assert summary.ok, summary
    assert {r.manifest["title"] for r in fake.outputs()} == {"first.csv", "second.csv"}
