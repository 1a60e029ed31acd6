"""Manifests in the transparency log: the v1 entry format, proofs for a manifest, and the Rekor-backed log
against the in-test Rekor of tests/unit/provenance/tlog/test_tlog_rekor.py."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from provenance.checks import tlog_inclusion_check
from provenance.errors import InvalidInputError, ManifestNotFoundError, ProofError
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, cross_reference, make_ingredient, manifest_hash
from provenance.signing import sign_manifest
from provenance.storage.base import StoredManifest
from provenance.tlog import (
    LocalTransparencyLog,
    RekorClient,
    RekorTransparencyLog,
    TransparencyLog,
    audit_checkpoint,
    leaf_hash,
    manifest_entry,
    manifest_entry_leaf,
    parse_manifest_entry,
    prove_manifest,
    verify_inclusion,
)
from provenance.verify import verify_chain

pytest.importorskip("rekor_types")  # the fake checks proposed entries against sigstore's schema


def _fake_rekor_module() -> ModuleType:
    path = Path(__file__).parent / "tlog" / "test_tlog_rekor.py"
    spec = importlib.util.spec_from_file_location("_fake_rekor_for_tlog_integration", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MemorySource:
    def __init__(self) -> None:
        self.items: dict[str, StoredManifest] = {}

    def add(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.items[manifest["instance_id"]] = StoredManifest(id=manifest["instance_id"], manifest=manifest)
        return manifest

    def get(self, manifest_id: str) -> StoredManifest:
        try:
            return self.items[manifest_id]
        except KeyError:
            raise ManifestNotFoundError(manifest_id) from None


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningIdentity, TrustStore]:
    home = tmp_path_factory.mktemp("id")
    paths = init_identity(home)
    return load_identity(home), TrustStore.load(paths.trust_dir)


@pytest.fixture
def chain(tmp_path: Path, identity: tuple[SigningIdentity, TrustStore]) -> tuple[MemorySource, list[dict[str, Any]]]:
    """A dataset manifest and a model manifest linking it (root last)."""
    signer, _ = identity
    source = MemorySource()
    (tmp_path / "d.csv").write_text("a\n1\n")
    (tmp_path / "m.bin").write_bytes(b"\x00" * 64)
    ds = source.add(
        sign_manifest(
            build_manifest(
                kind="dataset", title="d", ingredients=[make_ingredient(tmp_path / "d.csv", "d", kind="dataset")]
            ),
            signer,
        )
    )
    model = source.add(
        sign_manifest(
            build_manifest(
                kind="model",
                title="m",
                ingredients=[make_ingredient(tmp_path / "m.bin", "m", kind="model")],
                cross_references=[cross_reference(ds)],
            ),
            signer,
        )
    )
    return source, [ds, model]


# --- the entry format ------------------------------------------------------------------------------


def test_entry_names_the_manifest_and_binds_its_signed_content(
    chain: tuple[MemorySource, list[dict[str, Any]]],
) -> None:
    _, (ds, model) = chain
    data = manifest_entry(ds)
    assert data == f"mlprov-manifest:v1\n{ds['instance_id']}\n{manifest_hash(ds, 'sha256')}\n".encode()
    assert parse_manifest_entry(data).manifest_id == ds["instance_id"]
    assert manifest_entry_leaf(ds) == leaf_hash(data)
    assert manifest_entry(copy.deepcopy(ds)) == data  # recomputable from the manifest alone
    assert manifest_entry(model) != data
    resigned = copy.deepcopy(ds)
    resigned["claim"]["signature"] = resigned["c2pa.claim.v2"]["signature"] = "AAAA"
    assert manifest_entry(resigned) != data  # the signature is part of what is logged


@pytest.mark.parametrize(
    "data",
    [b"other", b"mlprov-manifest:v1\nid\nnothex\n", b"mlprov-manifest:v1\n\n" + b"0" * 64 + b"\n", b"\xff"],
)
def test_other_data_is_not_a_manifest_entry(data: bytes) -> None:
    with pytest.raises(InvalidInputError):
        parse_manifest_entry(data)


def test_a_manifest_without_an_id_cannot_be_logged() -> None:
    with pytest.raises(InvalidInputError, match="instance_id"):
        manifest_entry({"title": "x"})


# --- local log -------------------------------------------------------------------------------------


def test_prove_manifest_in_the_local_log(tmp_path: Path, chain: tuple[MemorySource, list[dict[str, Any]]]) -> None:
    _, (ds, model) = chain
    with LocalTransparencyLog(tmp_path / "tlog") as log:
        assert isinstance(log, TransparencyLog)
        log.append(manifest_entry(ds))
        with pytest.raises(ProofError, match=r"^not logged: no entry for manifest"):
            prove_manifest(log, model, verifier_keys=log.verifier_key)
        log.append(manifest_entry(model))
        inclusion = prove_manifest(log, model, verifier_keys=log.verifier_key)
        assert (inclusion.entry.index, inclusion.proof.tree_size, inclusion.checkpoint.size) == (1, 2, 2)
        verify_inclusion(manifest_entry_leaf(model), inclusion.proof, inclusion.checkpoint.root_hash)
        as_json = json.loads(json.dumps(inclusion.to_dict()))
        assert as_json["inclusionProof"]["logIndex"] == 1
        with pytest.raises(ProofError, match=r"^checkpoint signature invalid"):
            prove_manifest(log, model, verifier_keys=_other_log_key(tmp_path / "other"))


def _other_log_key(root: Path) -> str:
    with LocalTransparencyLog(root) as other:
        return other.verifier_key


def test_a_crashing_log_fails_the_node_not_the_run(
    tmp_path: Path, chain: tuple[MemorySource, list[dict[str, Any]]], identity: tuple[SigningIdentity, TrustStore]
) -> None:
    source, (_, model) = chain
    with LocalTransparencyLog(tmp_path / "tlog") as log:
        log.append(manifest_entry(model))
        check = tlog_inclusion_check(log, verifier_keys=log.verifier_key)
    report = verify_chain(model["instance_id"], source, identity[1], extra_checks=[check])  # the log is closed
    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken.error is not None
    assert report.first_broken.error.startswith("tlog inclusion: ")
    assert report.first_broken.error.startswith("tlog inclusion: log unavailable")
    assert "closed" in report.first_broken.error


# --- Rekor-backed log ------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Any:
    return _fake_rekor_module().FakeRekor()


@pytest.fixture
def rekor_log(
    fake: Any, tmp_path: Path, identity: tuple[SigningIdentity, TrustStore]
) -> Iterator[RekorTransparencyLog]:
    pem = _fake_rekor_module()._pem(fake.key)
    with RekorClient("https://rekor.test", public_key_pem=pem, transport=httpx.MockTransport(fake.handle)) as client:
        yield RekorTransparencyLog(
            client, index_path=tmp_path / "rekor-index.json", signer=lambda: identity[0], public_key_pem=pem
        )


def test_rekor_log_appends_finds_and_proves(
    rekor_log: RekorTransparencyLog, fake: Any, chain: tuple[MemorySource, list[dict[str, Any]]], identity: Any
) -> None:
    source, (ds, model) = chain
    assert isinstance(rekor_log, TransparencyLog)
    fake.bodies.append(b'{"someone":"else"}')  # an entry of another client comes first
    fake.tree.append(b'{"someone":"else"}')
    first = rekor_log.append(manifest_entry(ds))
    second = rekor_log.append(manifest_entry(model))
    assert (first.index, second.index) == (1, 2)
    assert rekor_log.append(manifest_entry(model)) == second  # idempotent: no second Rekor entry
    assert rekor_log.size() == 3
    body = json.loads(second.data)
    assert body["kind"] == "hashedrekord"
    assert rekor_log.entry_binds(second, manifest_entry(model))
    assert not rekor_log.entry_binds(second, manifest_entry(ds))
    assert rekor_log.find(manifest_entry_leaf(model)) == second
    assert rekor_log.find(leaf_hash(b"never appended")) is None
    assert rekor_log.entry(1) == first
    assert rekor_log.entry(0).data == b'{"someone":"else"}'  # by the shard offset learnt from the index

    keys = rekor_log.note_verifier()
    report = verify_chain(
        model["instance_id"], source, identity[1], extra_checks=[tlog_inclusion_check(rekor_log, verifier_keys=keys)]
    )
    assert report.ok, report.to_text()
    assert sum(c.name == "tlog inclusion" and c.ok and not c.skipped for n in report.nodes for c in n.checks) == 2

    old = rekor_log.checkpoint()
    rekor_log.append(b"later")
    assert audit_checkpoint(rekor_log, old.note, keys).size == 4
    with pytest.raises(ProofError, match="current tree of size 4 only"):
        rekor_log.inclusion_proof(1, 3)


def test_rekor_log_failures_name_the_cause(
    rekor_log: RekorTransparencyLog, fake: Any, chain: tuple[MemorySource, list[dict[str, Any]]], identity: Any
) -> None:
    source, (ds, model) = chain
    rekor_log.append(manifest_entry(ds))
    keys = rekor_log.note_verifier()

    def error() -> str:
        check = tlog_inclusion_check(rekor_log, verifier_keys=keys)
        report = verify_chain(model["instance_id"], source, identity[1], extra_checks=[check])
        assert report.first_broken is not None
        assert report.first_broken.error is not None
        return report.first_broken.error

    assert error().startswith("tlog inclusion: not logged: no entry for manifest")
    rekor_log.append(manifest_entry(model))
    fake.tamper = "proof"
    assert error().startswith("tlog inclusion: proof does not verify")
    fake.tamper = "checkpoint-key"
    assert error().startswith("tlog inclusion: checkpoint signature invalid")
