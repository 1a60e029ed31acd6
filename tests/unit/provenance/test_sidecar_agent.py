"""The sidecar assembly against a fake controller: kinds, links, assertions, signatures, and its pieces."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provenance.checks import c2pa_sidecar_check, oms_bundle_check
from provenance.errors import InvalidInputError, PermanentDeliveryError, RetryableDeliveryError
from provenance.hashing import hash_directory, hash_file
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, find_assertion, make_ingredient, manifest_hash, manifest_type
from provenance.oms import bundle_subject_digest, verify_model_bundle
from provenance.sidecar.agent import Sidecar
from provenance.sidecar.delivery import ControllerClient
from provenance.sidecar.taskinfo import load_task_info
from provenance.signing import sign_manifest
from provenance.verify import verify_chain
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
def repo(tmp_path: Path) -> Path:
    code = tmp_path / "repo" / "stages" / "finetune.py"
    code.parent.mkdir(parents=True)
    code.write_text("print('train')\n")
    return tmp_path / "repo"


def input_manifest(workspace: Path, identity: SigningIdentity) -> tuple[dict[str, Any], dict[str, Any]]:
    """An input dataset with a manifest registered by an earlier task; returns (manifest, task.json input)."""
    data = workspace / "inputs" / "train.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("x,y\n1,2\n")
    ingredient = make_ingredient(data, "train.csv", kind="dataset", hash_alg="sha256")
    manifest = sign_manifest(build_manifest(kind="dataset", title="train.csv", ingredients=[ingredient]), identity)
    ref = {
        "name": "train.csv",
        "digest": "sha256:" + hash_file(data),
        "path": "inputs/train.csv",
        "kind": "dataset",
        "manifest_id": manifest["instance_id"],
        "manifest_hash": manifest_hash(manifest),
    }
    return manifest, ref


_CLIENTS: list[ControllerClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def make_agent(workspace: Path, fake: FakeController, identity: SigningIdentity, **extra: Any) -> Sidecar:
    settings = settings_for(workspace, fake.url, **extra)
    task = load_task_info(workspace, expected_task_id=TASK_ID)
    client = ControllerClient(fake.url, TOKEN, TASK_ID, timeout=5.0)
    _CLIENTS.append(client)
    return Sidecar(settings, task, identity, client)


def test_a_job_gets_three_signed_linked_manifests(
    tmp_path: Path, fake: FakeController, repo: Path, signer: tuple[Path, SigningIdentity, TrustStore]
) -> None:
    _, identity, trust = signer
    workspace = tmp_path / "ws"
    workspace.mkdir()
    upstream, ref = input_manifest(workspace, identity)
    fake.preload(upstream)
    write_task(workspace, TASK_ID, repo=repo, inputs=[ref])
    outputs = workspace / "outputs"

    with Running(make_agent(workspace, fake, identity)) as running:
        publish(outputs / "features.parquet", os.urandom(4096))
        model = outputs / "model"
        model.mkdir()
        (model / "weights.safetensors").write_bytes(os.urandom(8192))
        (model / "config.json").write_text('{"layers": 2}')
        (model / "_SUCCESS").write_text("")
        publish(outputs / "metrics.json", json.dumps({"accuracy": 0.91, "loss": 0.2, "notes": [1]}).encode())
        summary = running.finish()

    assert summary.ok, summary
    assert (summary.captured, summary.delivered, summary.undelivered) == (3, 3, 0)
    by_title = {r.manifest["title"]: r for r in fake.outputs()}
    assert set(by_title) == {"features.parquet", "model", "metrics.json"}
    assert {t: manifest_type(r.manifest) for t, r in by_title.items()} == {
        "features.parquet": "Dataset",
        "model": "Model",
        "metrics.json": "EvaluationResult",
    }
    (software,) = fake.code()
    assert summary.software_manifest == software.id
    assert assertion(software.manifest, "mlprov.code")["commit"] == "a" * 40

    model_digest = "sha256:" + hash_directory(model, exclude_top_level=frozenset({"_SUCCESS"})).root
    for title, reg in by_title.items():
        m = reg.manifest
        links = {x["manifest_url"]: x["manifest_hash"] for x in m["cross_references"]}
        assert links == {upstream["instance_id"]: ref["manifest_hash"], software.id: software.hash}, title
        for label in ("mlprov.task", "mlprov.run", "mlprov.parameters", "mlprov.code", "mlprov.environment",
                      "mlprov.signer", "mlprov.manifest", "mlprov.artifact", "mlprov.inputs"):  # fmt: skip
            assert find_assertion(m, label) is not None, (title, label)
        assert assertion(m, "mlprov.task")["task_id"] == TASK_ID
        assert find_assertion(m, "mlprov.parameters") == {"epochs": 3}
        (ingredient,) = m["claim"]["ingredients"]
        assert ingredient["data"]["alg"] == "sha256"
        assert f"sha256:{ingredient['data']['hash']}" == reg.artifact["digest"]  # type: ignore[index]
        assert reg.c2pa is not None, title
    assert by_title["model"].artifact["digest"] == model_digest  # type: ignore[index]
    assert find_assertion(by_title["model"].manifest, "mlprov.oms_bundle") is not None
    bundle = by_title["model"].oms_bundle
    assert bundle is not None
    assert "sha256:" + bundle_subject_digest(bundle) == model_digest
    verify_model_bundle(model, bundle, trust.anchors_pem)  # the marker is ignored as the bundle records
    assert by_title["features.parquet"].oms_bundle is None
    action = assertion(by_title["metrics.json"].manifest, "Action")["actions"][0]
    assert action["parameters"]["metrics"] == {"accuracy": 0.91, "loss": 0.2}
    assert action["parameters"]["dataset_id"] == upstream["instance_id"]

    # Verification elsewhere resolves artifacts by digest from the store, not by the workspace URL.
    shutil.rmtree(outputs)
    anchors = trust.anchors_pem
    checks = (
        oms_bundle_check(anchors, artifact_path=fake.artifact_path),
        c2pa_sidecar_check(anchors, artifact_path=fake.artifact_path),
    )
    for reg in by_title.values():
        report = verify_chain(reg.id, fake, trust, asset_resolver=fake.resolve, extra_checks=checks)
        assert report.ok, [(n.id, [c for c in n.checks if not c.ok]) for n in report.nodes]
        root = report.nodes[0]
        names = {c.name: c for c in root.checks}
        assert names["signature"].ok
        assert not names["c2pa sidecar"].skipped
        assert not names[f"ingredient {reg.manifest['title']!r}"].skipped
        assert {n.id for n in report.nodes} == {reg.id, upstream["instance_id"], software.id}
    model_report = verify_chain(by_title["model"].id, fake, trust, asset_resolver=fake.resolve, extra_checks=checks)
    assert not {c.name: c for c in model_report.nodes[0].checks}["oms bundle"].skipped


def test_once_captures_what_is_there_and_a_rerun_signs_nothing_new(
    tmp_path: Path, fake: FakeController, repo: Path, signer: tuple[Path, SigningIdentity, TrustStore]
) -> None:
    _, identity, _ = signer
    workspace = tmp_path / "ws"
    write_task(workspace, TASK_ID, repo=repo)
    (workspace / "outputs" / "settings.yaml").write_text("lr: 0.1\n")
    (workspace / "outputs" / "notes.txt").write_text("hello\n")
    summary = make_agent(workspace, fake, identity).run(once=True)
    assert summary.ok
    assert summary.captured == 2
    kinds = {r.manifest["title"]: assertion(r.manifest, "mlprov.artifact")["classification"] for r in fake.outputs()}
    assert kinds == {"settings.yaml": "config", "notes.txt": "other"}
    assert {manifest_type(r.manifest) for r in fake.outputs()} == {"Dataset"}

    again = make_agent(workspace, fake, identity).run(once=True)  # a restart: the ledger says all is signed
    assert again.ok
    assert again.captured == 2
    assert len(fake.outputs()) == 2
    assert len(fake.code()) == 1


def test_software_manifest_of_another_sidecar_is_linked(
    tmp_path: Path, fake: FakeController, repo: Path, signer: tuple[Path, SigningIdentity, TrustStore]
) -> None:
    _, identity, _ = signer
    first, second = tmp_path / "ws1", tmp_path / "ws2"
    for ws in (first, second):
        write_task(ws, TASK_ID, repo=repo)
        (ws / "outputs" / f"{ws.name}.csv").write_text(ws.name)
    make_agent(first, fake, identity).run(once=True)
    make_agent(second, fake, identity).run(once=True)
    (software,) = fake.code()
    for reg in fake.outputs():
        assert [x["manifest_url"] for x in reg.manifest["cross_references"]] == [software.id]


def test_task_json_errors_are_one_line(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with pytest.raises(InvalidInputError, match="not found"):
        load_task_info(ws)
    (ws / ".mlprov").mkdir(parents=True)
    (ws / ".mlprov" / "task.json").write_text('{"task_id": "t", "inputs": [{"name": "a", "digest": "md5:1"}]}')
    with pytest.raises(InvalidInputError, match=r"inputs\.0\.digest") as caught:
        load_task_info(ws)
    assert "\n" not in str(caught.value)
    (ws / ".mlprov" / "task.json").write_text('{"task_id": "t"}')
    with pytest.raises(InvalidInputError, match="MLPROV_TASK_ID"):
        load_task_info(ws, expected_task_id="other")
    (ws / "params.json").write_text('{"lr": 1}')
    assert load_task_info(ws).params == {"lr": 1}


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, RetryableDeliveryError), (503, RetryableDeliveryError), (429, RetryableDeliveryError),
     (408, RetryableDeliveryError), (400, PermanentDeliveryError), (403, PermanentDeliveryError),
     (409, PermanentDeliveryError)],
)  # fmt: skip
def test_controller_answers_map_to_retry_or_dead_letter(status: int, error: type[Exception]) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text="no")

    client = ControllerClient("http://controller", "secret-token", "t1")
    client._client = httpx.Client(base_url="http://controller", transport=httpx.MockTransport(answer))
    with pytest.raises(error) as caught:
        client.register_manifest({"manifest": {"instance_id": "urn:c2pa:x"}})
    assert str(status) in str(caught.value)
    assert "secret-token" not in str(caught.value)


def test_unreachable_controller_is_retryable() -> None:
    with (
        ControllerClient("http://127.0.0.1:9", "tok", "t1", timeout=2.0) as client,
        pytest.raises(RetryableDeliveryError, match="unreachable"),
    ):
        client.find_software_manifest("r", "c")


def _count_uploads(agent: Sidecar, fail_first: bool = False) -> list[str]:
    """Wrap the agent's upload call: every digest uploaded (the first try of each fails if ``fail_first``)."""
    calls: list[str] = []
    real = agent.client.upload_artifact

    def upload(digest: str, path: Path, **kwargs: Any) -> int:
        calls.append(digest)
        if fail_first and calls.count(digest) == 1:
            raise RetryableDeliveryError("controller unreachable")
        return real(digest, path, **kwargs)

    agent.client.upload_artifact = upload  # type: ignore[method-assign]
    return calls


def test_the_upload_starts_while_signing_and_is_not_repeated(
    tmp_path: Path, fake: FakeController, repo: Path, signer: tuple[Path, SigningIdentity, TrustStore]
) -> None:
    _, identity, _ = signer
    workspace = tmp_path / "ws"
    write_task(workspace, TASK_ID, repo=repo)
    agent = make_agent(workspace, fake, identity)
    calls = _count_uploads(agent)
    with Running(agent) as running:
        publish(workspace / "outputs" / "a.parquet", os.urandom(2048))
        publish(workspace / "outputs" / "b.parquet", os.urandom(2048))
        summary = running.finish()
    assert summary.ok, summary
    digests = {r.artifact["digest"] for r in fake.outputs() if r.artifact}
    assert len(digests) == 2
    assert [calls.count(d) for d in digests] == [1, 1]  # one PUT each: the spool's delivery used the early one
    assert digests <= set(fake.state.artifacts)


def test_a_failed_early_upload_is_made_again_by_the_spool(
    tmp_path: Path, fake: FakeController, repo: Path, signer: tuple[Path, SigningIdentity, TrustStore]
) -> None:
    _, identity, _ = signer
    workspace = tmp_path / "ws"
    write_task(workspace, TASK_ID, repo=repo)
    (workspace / "outputs" / "notes.txt").write_text("hello\n")
    agent = make_agent(workspace, fake, identity)
    calls = _count_uploads(agent, fail_first=True)
    summary = agent.run(once=True)
    assert summary.ok, summary
    (reg,) = fake.outputs()
    assert reg.artifact is not None
    assert calls.count(reg.artifact["digest"]) == 2
    assert reg.artifact["digest"] in fake.state.artifacts
