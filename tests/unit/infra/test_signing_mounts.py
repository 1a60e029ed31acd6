"""The signing Secret lands where provenance looks for it: in the controller (chart) and in the runtime's sidecar.

The Secret holds the flat output of ``mlprov keys init`` (``signer.key``, ``signer.pem``, ``chain.pem``,
``ca.pem``; docs/kubernetes.md). Each test lays the Secret's keys out as the kubelet would from the pod's
volumes and mounts (``items`` mapping keys to paths), then loads the identity and the trust store from the
container's ``MLPROV_HOME`` with provenance's own functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from controller.runtime.k8s_objects import HOME_DIR, SIDECAR_CONTAINER, K8sJobSpec, ObjectConfig, job_body
from provenance.keys import TrustStore, identity_paths, init_identity, key_id, load_identity
from tests.unit.infra.chart_support import objects, one, render, values_of

SECRET = "mlprov-signing-identity"


@pytest.fixture(scope="module")
def secret_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The signing Secret's data, from a real ``mlprov keys init`` (without the CA key: it stays offline)."""
    paths = init_identity(tmp_path_factory.mktemp("keys-init"))
    files = {"signer.key": paths.signer_key, "signer.pem": paths.signer_cert, "chain.pem": paths.chain}
    files["ca.pem"] = paths.trust_dir / "ca.pem"
    return {name: path.read_bytes() for name, path in files.items()}


def _materialise(pod: dict[str, Any], container: dict[str, Any], data: dict[str, bytes], root: Path) -> list[Path]:
    """Write what each mount of a volume from the signing Secret shows, under ``root``; the files written."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    written: list[Path] = []
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("secret")
        if source is None or source["secretName"] != SECRET:
            continue
        assert mount.get("readOnly") is True, mount
        assert "subPath" not in mount  # a subPath mount of a Secret never sees a rotated key
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = root / mount["mountPath"].lstrip("/") / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])
            written.append(target)
            if item["key"] == "signer.key":
                mode = item.get("mode", source.get("defaultMode", 0o644))
                assert mode & 0o007 == 0, f"{mount['name']}: the signing key must not be world-readable"
    return written


def _check_home(home: Path, data: dict[str, bytes]) -> None:
    identity = load_identity(home)  # keys/signer.key + keys/chain.pem, as the signer loads them
    assert identity.chain[0].public_bytes(Encoding.PEM) in data["chain.pem"]
    trust = TrustStore.load(identity_paths(home).trust_dir)
    assert len(trust.anchors) == 1
    assert key_id(identity.chain[-1].public_key()) == key_id(trust.anchors[0].public_key())  # type: ignore[arg-type]
    assert identity_paths(home).signer_cert.read_bytes() == data["signer.pem"]


def test_the_controller_finds_its_identity_and_trust_store_under_mlprov_home(
    secret_data: dict[str, bytes], tmp_path: Path
) -> None:
    rendered = objects(render(values_of("dev")))
    deployment = one(rendered, "Deployment", "mlprov-controller")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    home = next(e["value"] for e in container["env"] if e["name"] == "MLPROV_HOME")
    written = _materialise(pod, container, secret_data, tmp_path)
    rel = sorted(str(p.relative_to(tmp_path / home.lstrip("/"))) for p in written)
    assert rel == ["keys/ca.pem", "keys/chain.pem", "keys/signer.key", "keys/signer.pem", "trust/ca.pem"]
    _check_home(tmp_path / home.lstrip("/"), secret_data)


def test_the_sidecar_finds_its_identity_and_trust_store_under_mlprov_home(
    secret_data: dict[str, bytes], tmp_path: Path
) -> None:
    config = ObjectConfig(signing_secret=SECRET)
    spec = K8sJobSpec(task_id="t-1", attempt=1, workspace=tmp_path, image="reg.example/x:1",
                      sidecar_command=["mlprov", "sidecar"])  # fmt: skip
    pod = job_body(config, spec, "mlprov-x-1-abc123")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == SIDECAR_CONTAINER)
    home = next(e["value"] for e in sidecar["env"] if e["name"] == "MLPROV_HOME")
    assert home == HOME_DIR
    root = tmp_path / "fs"
    written = _materialise(pod, sidecar, secret_data, root)
    rel = sorted(str(p.relative_to(root / home.lstrip("/"))) for p in written)
    assert rel == ["keys/chain.pem", "keys/signer.key", "keys/signer.pem", "trust/ca.pem"]
    _check_home(root / home.lstrip("/"), secret_data)
    # the stage container never sees the signing identity
    main = pod["containers"][0]
    assert _materialise(pod, main, secret_data, tmp_path / "main") == []
