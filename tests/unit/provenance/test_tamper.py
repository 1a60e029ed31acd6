"""The tamper matrix: every way of breaking a signed lineage must fail verification, and the report
must name the node and the cause.

The chain: a dataset manifest D (one CSV), a model manifest M (one weights file) linking D, an
evaluation manifest E linking M and D. E is the root.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provenance.checks import tlog_inclusion_check
from provenance.errors import ManifestNotFoundError, ProofError
from provenance.keys import SigningIdentity, TrustStore, init_identity, load_identity
from provenance.manifest import build_manifest, cross_reference, make_ingredient
from provenance.signing import sign_manifest
from provenance.storage.base import StoredManifest
from provenance.tlog import LocalTransparencyLog, NoteVerifier, SignedCheckpoint, audit_checkpoint, manifest_entry
from provenance.verify import VerificationReport, verify_chain


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


@dataclass
class Lineage:
    source: MemorySource
    trust: TrustStore
    identity: SigningIdentity
    tmp: Path
    dataset: dict[str, Any]
    model: dict[str, Any]
    evaluation: dict[str, Any]

    def verify(self, root: str | None = None, **kwargs: Any) -> VerificationReport:
        return verify_chain(root or self.evaluation["instance_id"], self.source, self.trust, **kwargs)

    def edit(self, manifest: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Store a tampered copy under the same ID (what an attacker with write access to the store does)."""
        tampered = copy.deepcopy(manifest)
        change(tampered)
        self.source.items[manifest["instance_id"]] = StoredManifest(id=manifest["instance_id"], manifest=tampered)
        return tampered


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningIdentity, TrustStore]:
    home = tmp_path_factory.mktemp("ca")
    paths = init_identity(home)
    return load_identity(home), TrustStore.load(paths.trust_dir)


def build_lineage(tmp: Path, identity: SigningIdentity, trust: TrustStore) -> Lineage:
    source = MemorySource()
    (tmp / "train.csv").write_text("x,y\n1,2\n")
    (tmp / "model.pt").write_bytes(b"\x00weights\x01" * 10)
    (tmp / "eval.json").write_text('{"accuracy": 0.91}')
    dataset = source.add(
        sign_manifest(
            build_manifest(
                kind="dataset", title="train", ingredients=[make_ingredient(tmp / "train.csv", "train", kind="dataset")]
            ),
            identity,
        )
    )
    model = source.add(
        sign_manifest(
            build_manifest(
                kind="model",
                title="classifier",
                ingredients=[make_ingredient(tmp / "model.pt", "weights", kind="model", hash_alg="sha256")],
                cross_references=[cross_reference(dataset)],
            ),
            identity,
        )
    )
    evaluation = source.add(
        sign_manifest(
            build_manifest(
                kind="evaluation",
                title="eval",
                ingredients=[make_ingredient(tmp / "eval.json", "results", kind="evaluation", hash_alg="sha512")],
                cross_references=[cross_reference(model), cross_reference(dataset)],
                metrics={"accuracy": 0.91},
                parameters={"model_id": model["instance_id"], "dataset_id": dataset["instance_id"]},
            ),
            identity,
        )
    )
    return Lineage(source, trust, identity, tmp, dataset, model, evaluation)


@pytest.fixture
def lineage(tmp_path: Path, ca: tuple[SigningIdentity, TrustStore]) -> Lineage:
    return build_lineage(tmp_path, *ca)


def failing(report: VerificationReport) -> list[tuple[str, str, str]]:
    return [(n.id, c.name, c.detail) for n in report.nodes for c in n.checks if not c.ok]


def test_untampered_lineage_verifies(lineage: Lineage) -> None:
    report = lineage.verify()
    assert report.ok, report.to_text()
    assert [n.id for n in report.nodes] == [
        lineage.evaluation["instance_id"],
        lineage.model["instance_id"],
        lineage.dataset["instance_id"],
    ]
    assert report.first_broken is None
    # every ingredient was really re-hashed, none skipped
    assert sum(c.name.startswith("ingredient") and not c.skipped for n in report.nodes for c in n.checks) == 3


def _both_claims(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Apply a change to the claim and its c2pa.claim.v2 copy alike (so only the signature can catch it)."""

    def apply(m: dict[str, Any]) -> None:
        change(m["claim"])
        change(m["c2pa.claim.v2"])

    return apply


def _custom(claim: dict[str, Any], label: str) -> dict[str, Any]:
    return next(
        a["CustomAssertion"] for a in claim["created_assertions"] if a.get("CustomAssertion", {}).get("label") == label
    )


def _flip_signature_byte(claim: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(claim["signature"]))
    raw[0] ^= 0x01
    claim["signature"] = base64.b64encode(bytes(raw)).decode()


def _drop_signer(claim: dict[str, Any]) -> None:
    claim["created_assertions"] = [
        a for a in claim["created_assertions"] if a.get("CustomAssertion", {}).get("label") != "mlprov.signer"
    ]


def _author(c: dict[str, Any]) -> dict[str, Any]:
    return c["created_assertions"][0]["CreativeWork"]["author"][1]  # type: ignore[no-any-return]  # JSON


def _metrics(c: dict[str, Any]) -> dict[str, Any]:
    return c["created_assertions"][1]["Action"]["actions"][0]["parameters"]["metrics"]  # type: ignore[no-any-return]


def _ingredient_data(c: dict[str, Any]) -> dict[str, Any]:
    return c["ingredients"][0]["data"]  # type: ignore[no-any-return]  # JSON


def _signer(c: dict[str, Any]) -> dict[str, Any]:
    return _custom(c, "mlprov.signer")["data"]  # type: ignore[no-any-return]  # JSON


def _add_assertion(c: dict[str, Any]) -> None:
    c["created_assertions"].append({"DoNotTrain": {"reason": "r", "enforced": True}})


Change = Callable[[dict[str, Any]], None]
XREF = "cross_references differs"
SIGNED = "does not verify"
OTHER_ID = "urn:c2pa:00000000-0000-4000-8000-000000000000"

# (case id, what to change on the root evaluation manifest, expected failing check, text in its detail)
ROOT_TAMPERS: list[tuple[str, Change, str, str]] = [
    ("claim-instance-id", _both_claims(lambda c: c.update(instance_id=OTHER_ID)), "signature", SIGNED),
    ("claim-created-at", _both_claims(lambda c: c.update(created_at="2020-01-01T00:00:00Z")), "signature", SIGNED),
    ("claim-generator-info", _both_claims(lambda c: c.update(claim_generator_info="evil:1")), "signature", SIGNED),
    ("claim-author", _both_claims(lambda c: _author(c).update(name="Mallory")), "signature", SIGNED),
    ("claim-metric", _both_claims(lambda c: _metrics(c).update(accuracy=0.99)), "signature", SIGNED),
    ("claim-ingredient-hash", _both_claims(lambda c: _ingredient_data(c).update(hash="0" * 128)), "signature", SIGNED),
    ("claim-ingredient-url", _both_claims(lambda c: _ingredient_data(c).update(url="file:///x")), "signature", SIGNED),
    ("claim-extra-assertion", _both_claims(_add_assertion), "signature", SIGNED),
    ("claim-v2-only", lambda m: m["c2pa.claim.v2"].update(signature=None), "signature", "v2 differs"),
    ("signature-byte", _both_claims(_flip_signature_byte), "signature", SIGNED),
    ("signature-removed", _both_claims(lambda c: c.update(signature=None)), "signature", "not signed"),
    ("signer-assertion-removed", _both_claims(_drop_signer), "signature", "mlprov.signer"),
    ("signer-key-id", _both_claims(lambda c: _signer(c).update(key_id="ab" * 32)), "signature", "recorded key ID"),
    ("signer-hash-alg", _both_claims(lambda c: _signer(c).update(hash_alg="sha256")), "signature", SIGNED),
    ("cross-reference-hash", lambda m: m["cross_references"][0].update(manifest_hash="1" * 64), "signature", XREF),
    ("cross-reference-dropped", lambda m: m["cross_references"].pop(), "signature", XREF),
    ("top-level-title", lambda m: m.update(title="renamed"), "signature", "title differs"),
    ("top-level-ingredients", lambda m: _ingredient_data(m).update(url="file:///x"), "signature", "ingredients differ"),
    ("not-atlas-layout", lambda m: m["claim"].pop("created_assertions"), "structure", "created_assertions"),
]  # fmt: skip  # one case per line reads as the matrix it is


@pytest.mark.parametrize(("change", "check", "detail"), [c[1:] for c in ROOT_TAMPERS], ids=[c[0] for c in ROOT_TAMPERS])
def test_tampered_root_fails_naming_node_and_cause(
    lineage: Lineage, change: Callable[[dict[str, Any]], None], check: str, detail: str
) -> None:
    lineage.edit(lineage.evaluation, change)
    report = lineage.verify()
    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken.id == lineage.evaluation["instance_id"]
    assert report.first_broken.error is not None
    assert report.first_broken.error.startswith(check), report.first_broken.error
    assert detail in report.first_broken.error
    text = report.to_text()
    assert lineage.evaluation["instance_id"] in text.splitlines()[-1]
    assert report.to_dict()["first_broken"]["id"] == lineage.evaluation["instance_id"]


def test_cross_reference_hash_also_fails_the_link_check(lineage: Lineage) -> None:
    lineage.edit(lineage.evaluation, lambda m: m["cross_references"][0].update(manifest_hash="1" * 64))
    report = lineage.verify()
    link = f"link {lineage.model['instance_id']}"
    assert any(name == link and "manifest hash" in d for _, name, d in failing(report))


def test_one_byte_of_an_artifact(lineage: Lineage) -> None:
    weights = lineage.tmp / "model.pt"
    data = bytearray(weights.read_bytes())
    data[5] ^= 0x01
    weights.write_bytes(bytes(data))
    report = lineage.verify()
    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken.id == lineage.model["instance_id"]
    assert report.first_broken.error is not None
    assert report.first_broken.error.startswith("ingredient 'weights'")
    assert "sha256" in report.first_broken.error  # the algorithm the ingredient names, not Atlas's fixed sha384


def test_tampered_linked_manifest_breaks_the_link_first(lineage: Lineage) -> None:
    lineage.edit(lineage.model, _both_claims(lambda c: c.update(created_at="2020-01-01T00:00:00Z")))
    report = lineage.verify()
    assert report.first_broken is not None
    assert report.first_broken.id == lineage.evaluation["instance_id"]
    assert report.first_broken.error is not None
    assert report.first_broken.error.startswith(f"link {lineage.model['instance_id']}: ")
    assert "manifest hash" in report.first_broken.error
    model_node = next(n for n in report.nodes if n.id == lineage.model["instance_id"])
    assert not model_node.ok
    assert model_node.error is not None
    assert model_node.error.startswith("signature")


def test_untrusted_signer(lineage: Lineage, tmp_path: Path) -> None:
    other = load_identity(init_identity(tmp_path / "other").home)
    lineage.source.add(
        sign_manifest(copy.deepcopy(lineage.evaluation), other)
    )  # same ID, signed by a CA the trust store does not hold
    report = lineage.verify()
    assert report.first_broken is not None
    assert report.first_broken.id == lineage.evaluation["instance_id"]
    assert report.first_broken.error is not None
    assert "not issued by a trusted CA" in report.first_broken.error


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ec", "rsa"],
)
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "not-pinned"])
def test_bare_atlas_style_key(
    lineage: Lineage, make_key: Callable[[], ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey], pinned: bool
) -> None:
    bare = SigningIdentity(private_key=make_key())
    signed = lineage.source.add(sign_manifest(copy.deepcopy(lineage.dataset), bare))
    trust = TrustStore(anchors=list(lineage.trust.anchors))
    if pinned:
        trust.pin(bare.public_key)
    report = verify_chain(signed["instance_id"], lineage.source, trust)
    assert report.ok is pinned, report.to_text()
    if not pinned:
        assert report.first_broken is not None
        assert report.first_broken.id == signed["instance_id"]
        assert report.first_broken.error is not None
        assert "not in the trust store" in report.first_broken.error


def test_missing_linked_manifest(lineage: Lineage) -> None:
    del lineage.source.items[lineage.dataset["instance_id"]]
    report = lineage.verify()
    assert not report.ok
    assert report.first_broken is not None
    # A node's links are all checked when the node is, so the evaluation (root, which links the
    # dataset too) is the first broken; the model's link to the dataset fails as well.
    assert report.first_broken.id == lineage.evaluation["instance_id"]
    missing = [(node, d) for node, name, d in failing(report) if "not found" in d]
    assert {node for node, _ in missing} == {lineage.evaluation["instance_id"], lineage.model["instance_id"]}


def test_cycle(lineage: Lineage) -> None:
    # The model is re-stored linking the evaluation, which links the model: E -> M -> E.
    lineage.edit(lineage.model, lambda m: m["cross_references"].append(cross_reference(lineage.evaluation)))
    report = lineage.verify()
    assert not report.ok
    cycle = [(node, d) for node, name, d in failing(report) if d.startswith("cycle")]
    assert cycle == [(lineage.model["instance_id"], cycle[0][1])]
    assert lineage.evaluation["instance_id"] in cycle[0][1]
    assert len(report.nodes) == len({n.id for n in report.nodes})  # each node checked once


def test_links_beyond_max_depth_fail(lineage: Lineage) -> None:
    report = lineage.verify(max_depth=0)
    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken.id == lineage.evaluation["instance_id"]
    assert report.first_broken.error is not None
    assert report.first_broken.error.startswith("depth")


# --- OMS bundle and C2PA sidecar, checked through verify_chain's extra checks ----------------------


@pytest.fixture
def signed_artifacts(lineage: Lineage) -> Lineage:
    """The model stored with a real OMS bundle and C2PA sidecar over its weights file."""
    from provenance.c2pa_sidecar import sign_sidecar
    from provenance.oms import sign_model

    weights = lineage.tmp / "model.pt"
    key, chain = lineage.identity.private_key_pem, lineage.identity.chain_pem
    bundle = sign_model(weights, private_key_pem=key, chain_pem=chain)
    sidecar = sign_sidecar(weights, private_key_pem=key, chain_pem=chain, title="classifier")
    model_id = lineage.model["instance_id"]
    lineage.source.items[model_id] = StoredManifest(
        id=model_id, manifest=lineage.model, c2pa=sidecar, oms_bundle=bundle
    )
    return lineage


def _extra(lineage: Lineage) -> list[Any]:
    from provenance.checks import c2pa_sidecar_check, oms_bundle_check

    return [oms_bundle_check(lineage.trust.anchors_pem), c2pa_sidecar_check(lineage.trust.anchors_pem)]


def test_oms_and_c2pa_hold_on_an_untampered_model(signed_artifacts: Lineage) -> None:
    report = signed_artifacts.verify(extra_checks=_extra(signed_artifacts))
    assert report.ok, report.to_text()
    model = next(n for n in report.nodes if n.id == signed_artifacts.model["instance_id"])
    assert {c.name for c in model.checks if not c.skipped} >= {"oms bundle", "c2pa sidecar"}


def test_model_byte_fails_oms_and_c2pa(signed_artifacts: Lineage) -> None:
    weights = signed_artifacts.tmp / "model.pt"
    weights.write_bytes(b"\x01" + weights.read_bytes()[1:])
    report = signed_artifacts.verify(extra_checks=_extra(signed_artifacts), rehash=False)
    assert report.first_broken is not None
    assert report.first_broken.id == signed_artifacts.model["instance_id"]
    assert {name for node, name, _ in failing(report)} == {"oms bundle", "c2pa sidecar"}


@pytest.mark.parametrize("which", ["oms_bundle", "c2pa"])
def test_tampered_bundle_or_sidecar_fails(signed_artifacts: Lineage, which: str) -> None:
    model_id = signed_artifacts.model["instance_id"]
    stored = signed_artifacts.source.items[model_id]
    if which == "oms_bundle":  # one byte of the DSSE signature
        assert stored.oms_bundle is not None
        bundle = json.loads(stored.oms_bundle)
        raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-1] ^= 0x01
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
        blob = bytearray(json.dumps(bundle).encode())
    else:  # one byte in the middle of the manifest store (claim, signature or assertion boxes)
        assert stored.c2pa is not None
        blob = bytearray(stored.c2pa)
        blob[len(blob) // 2] ^= 0x01
    signed_artifacts.source.items[model_id] = StoredManifest(
        id=model_id,
        manifest=stored.manifest,
        c2pa=bytes(blob) if which == "c2pa" else stored.c2pa,
        oms_bundle=bytes(blob) if which == "oms_bundle" else stored.oms_bundle,
    )
    report = signed_artifacts.verify(extra_checks=_extra(signed_artifacts))
    assert report.first_broken is not None
    assert report.first_broken.id == model_id
    expected = "oms bundle" if which == "oms_bundle" else "c2pa sidecar"
    assert [name for _, name, _ in failing(report)] == [expected]


# --- transparency-log inclusion, checked through verify_chain's extra checks -----------------------


@dataclass
class Logged:
    lineage: Lineage
    log: LocalTransparencyLog
    keys: list[NoteVerifier]
    checkpoint: SignedCheckpoint | str | None = None

    def verify(self) -> VerificationReport:
        check = tlog_inclusion_check(self.log, verifier_keys=self.keys, checkpoint=self.checkpoint)
        return self.lineage.verify(extra_checks=[check], rehash=False)


def _open_log(root: Path) -> LocalTransparencyLog:
    return LocalTransparencyLog(root)


@pytest.fixture
def logged(lineage: Lineage) -> Iterator[Logged]:
    """The lineage with every manifest appended, in order D, M, E, to a local log."""
    log = _open_log(lineage.tmp / "tlog")
    for manifest in (lineage.dataset, lineage.model, lineage.evaluation):
        log.append(manifest_entry(manifest))
    yield Logged(lineage, log, [log.signer.verifier])
    log.close()


def _rebuild(logged: Logged, manifests: list[dict[str, Any]], junk: Sequence[bytes] = ()) -> None:
    """Delete the log's entry files (keeping its key, as an attacker holding it would) and refill them."""
    root = logged.log.root
    logged.log.close()
    for path in [root / "entries.log", root / "offsets.bin", *root.glob("level-*.bin")]:
        path.unlink()
    logged.log = _open_log(root)
    for item in [*(manifest_entry(m) for m in manifests), *junk]:
        logged.log.append(item)


def _root_not_logged(logged: Logged) -> None:
    _rebuild(logged, [logged.lineage.dataset, logged.lineage.model])


def _model_entry_replaced(logged: Logged) -> None:
    lineage = logged.lineage
    _rebuild(
        logged, [lineage.dataset, lineage.evaluation], [b"mlprov-manifest:v1\nurn:c2pa:forged\n" + b"0" * 64 + b"\n"]
    )


def _root_re_signed_after_logging(logged: Logged) -> None:
    logged.lineage.source.add(sign_manifest(copy.deepcopy(logged.lineage.evaluation), logged.lineage.identity))


def _checkpoint_of_another_log(logged: Logged) -> None:
    with _open_log(logged.lineage.tmp / "other") as other:
        for i in range(3):
            other.append(b"other %d" % i)
        logged.checkpoint = other.checkpoint()


def _another_tree_same_size(logged: Logged) -> None:
    """A log with the same origin whose key the verifier also trusts (a second trusted log)."""
    with _open_log(logged.lineage.tmp / "other") as other:
        for i in range(3):
            other.append(b"other %d" % i)
        logged.checkpoint = other.checkpoint()
        logged.keys.append(other.signer.verifier)


def _another_tree_larger(logged: Logged) -> None:
    with _open_log(logged.lineage.tmp / "other") as other:
        for i in range(5):
            other.append(b"other %d" % i)
        logged.checkpoint = other.checkpoint()
        logged.keys.append(other.signer.verifier)


def _altered_checkpoint_note(logged: Logged) -> None:
    note = logged.log.checkpoint().note
    origin, size, rest = note.split("\n", 2)
    logged.checkpoint = f"{origin}\n{int(size) - 1}\n{rest}"  # the note alone is accepted too


def _stale_checkpoint(logged: Logged) -> None:
    """A checkpoint taken before the root was appended."""
    _rebuild(logged, [logged.lineage.dataset, logged.lineage.model])
    logged.checkpoint = logged.log.checkpoint()
    logged.log.append(manifest_entry(logged.lineage.evaluation))


E, M = "evaluation", "model"
# (case id, what the attacker does, the first broken node, the cause its tlog check names)
TLOG_TAMPERS: list[tuple[str, Callable[[Logged], None], str, str]] = [
    ("root-not-logged", _root_not_logged, E, "not logged: no entry"),
    ("entry-deleted-and-log-rebuilt", _model_entry_replaced, M, "not logged: no entry"),
    ("root-re-signed-after-logging", _root_re_signed_after_logging, E, "not logged: no entry"),
    ("stale-checkpoint", _stale_checkpoint, E, "not logged: entry 2 was appended after"),
    ("checkpoint-of-another-log", _checkpoint_of_another_log, E, "checkpoint signature invalid"),
    ("altered-checkpoint-note", _altered_checkpoint_note, E, "checkpoint signature invalid"),
    ("proof-for-another-tree-same-size", _another_tree_same_size, E, "proof does not verify"),
    ("proof-for-another-tree-larger", _another_tree_larger, E, "proof for another tree"),
]  # fmt: skip


def test_logged_lineage_verifies_with_inclusion(logged: Logged) -> None:
    report = logged.verify()
    assert report.ok, report.to_text()
    details = [c.detail for n in report.nodes for c in n.checks if c.name == "tlog inclusion"]
    assert len(details) == 3
    assert all(d.endswith(")") and "at size 3" in d for d in details), details


@pytest.mark.parametrize(("change", "node", "cause"), [c[1:] for c in TLOG_TAMPERS], ids=[c[0] for c in TLOG_TAMPERS])
def test_tlog_tamper_fails_naming_node_and_cause(
    logged: Logged, change: Callable[[Logged], None], node: str, cause: str
) -> None:
    change(logged)
    report = logged.verify()
    assert not report.ok
    assert report.first_broken is not None
    expected = logged.lineage.evaluation if node == E else logged.lineage.model
    assert report.first_broken.id == expected["instance_id"], report.to_text()
    assert report.first_broken.error is not None
    assert report.first_broken.error.startswith(f"tlog inclusion: {cause}"), report.first_broken.error


def test_rebuilt_log_fails_the_audit_of_an_older_checkpoint(logged: Logged) -> None:
    stored = logged.log.checkpoint().note
    audit_checkpoint(logged.log, stored, logged.keys)  # the honest log passes
    _model_entry_replaced(logged)
    with pytest.raises(ProofError, match="forked"):  # same size, another root
        audit_checkpoint(logged.log, stored, logged.keys)
    _rebuild(logged, [logged.lineage.dataset])
    with pytest.raises(ProofError, match="shrank from 3 to 1"):
        audit_checkpoint(logged.log, stored, logged.keys)
    _rebuild(logged, [logged.lineage.dataset, logged.lineage.evaluation, logged.lineage.model], [b"x"])
    with pytest.raises(ProofError, match="not a prefix"):  # grown, but not from the old tree
        audit_checkpoint(logged.log, stored, logged.keys)
