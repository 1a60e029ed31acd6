"""The Atlas storage API served by the controller, driven by the real ``mlprov`` CLI over a real port,
plus the auth rule (tokens; anonymous only when enabled), signature checks and DELETE as a tombstone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from controller.store.db import session_scope
from controller.store.models import LineageEdge
from provenance.keys import load_private_key_pem
from provenance.manifest import build_manifest, make_ingredient
from provenance.signing import sign_manifest
from tests.unit.controller.ingest_support import ADMIN, READ, App, counts, running_app, signed_manifest

pytestmark = pytest.mark.integration


@pytest.fixture
def app(mlprov_home: Path) -> Iterator[App]:
    with running_app(mlprov_home) as running:
        yield running


def _mlprov(app: App, *args: str, token: str | None = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPROV_")}
    env.update({"MLPROV_HOME": str(app.home), "MLPROV_TLOG": "off"})  # the controller keeps the log
    if token is not None:
        env["MLPROV_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "provenance.cli", *args, "--storage-type", "database", "--storage-url", app.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _stored_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    found = re.search(r"Manifest stored successfully with ID: (\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def test_the_mlprov_cli_stores_into_the_controller(app: App, tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    dataset_id = _stored_id(
        _mlprov(app, "dataset", "create", f"--paths={data}", "--ingredient-names=train", "--name=train set")
    )
    entry = app.client.get(f"/manifests/{dataset_id}", headers=app.reader()).json()
    assert entry["manifest_id"] == dataset_id
    assert entry["manifest_type"] == "Dataset"
    assert entry["manifest"]["manifest"]["instance_id"] == dataset_id  # the POST body, as Atlas serves it
    assert "mlprov_c2pa" in entry["manifest"]  # mlprov's extension field came along
    assert [e["manifest_id"] for e in app.client.get("/manifests", headers=app.reader()).json()] == [dataset_id]
    view = app.client.get(f"/api/v1/manifests/{dataset_id}", headers=app.reader()).json()
    assert view["role"] == "atlas"
    assert view["log"]["index"] == 0

    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights")
    model_id = _stored_id(
        _mlprov(
            app,
            "model",
            "create",
            f"--paths={model}",
            "--ingredient-names=m",
            "--name=m",
            f"--linked-manifests={dataset_id}",
        )
    )
    with session_scope(app.state.session_factory) as session:
        edges = {(e.src_id, e.role, e.dst_id) for e in session.scalars(select(LineageEdge))}
    assert (dataset_id, "linked", model_id) in edges
    verified = _mlprov(app, "model", "verify", f"--id={model_id}")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    refused = _mlprov(app, "dataset", "create", f"--paths={data}", "--ingredient-names=t", "--name=t", token=None)
    assert refused.returncode != 0
    assert "MLPROV_TOKEN" in refused.stderr


def _atlas_body(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "manifest_id": manifest["instance_id"],
        "manifest_type": "Dataset",
        "manifest": manifest,
        "created_at": "2025-06-01T00:00:00Z",
        "note": "kept",
    }


def test_auth_rule_and_signature_checks(mlprov_home: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("x\n")
    with running_app(mlprov_home) as closed:
        manifest = signed_manifest(closed.identity, data, task_id=None)
        url = f"/manifests/{manifest['instance_id']}"
        assert closed.client.post(url, json=_atlas_body(manifest)).status_code == 401
        assert closed.client.get("/manifests").status_code == 401
        assert closed.client.post(url, json=_atlas_body(manifest), headers=closed.reader()).status_code == 403
    with running_app(mlprov_home, atlas_anonymous_writes=True) as open_app:
        before = counts(open_app.state)
        # atlas-cli signs with a bare key and records no signer: refused, naming why
        bare = load_private_key_pem(mlprov_home / "keys" / "signer.key")
        unsigned_style = sign_manifest(
            build_manifest(kind="dataset", title="d", ingredients=[make_ingredient(data, "d", kind="dataset")]), bare
        )
        for bad, words in [
            (unsigned_style, "not in the trust store"),
            ({**manifest, "title": "edited"}, "signature"),
        ]:
            response = open_app.client.post(f"/manifests/{bad['instance_id']}", json=_atlas_body(bad))
            assert response.status_code == 400, response.text
            assert words in response.json()["detail"]
        mismatch = open_app.client.post("/manifests/urn:c2pa:other", json=_atlas_body(manifest))
        assert mismatch.status_code == 400
        assert "mismatch" in mismatch.json()["detail"]
        assert counts(open_app.state) == before

        url = f"/manifests/{manifest['instance_id']}"
        assert open_app.client.post(url, json=_atlas_body(manifest)).status_code == 201
        assert open_app.client.post(url, json=_atlas_body(manifest)).status_code == 200
        entry = open_app.client.get(url).json()
        assert entry["manifest"]["note"] == "kept"
        assert entry["created_at"] == "2025-06-01T00:00:00Z"

        # DELETE: admin only, a tombstone
        assert open_app.client.delete(url).status_code == 401
        assert open_app.client.delete(url, headers={"Authorization": f"Bearer {READ}"}).status_code == 403
        assert open_app.client.delete(url, headers=open_app.admin()).status_code == 204
        assert open_app.client.get(url).status_code == 404
        assert open_app.client.get("/manifests").json() == []
        kept = open_app.client.get(f"/api/v1/manifests/{manifest['instance_id']}", headers=open_app.reader()).json()
        assert kept["deleted"] is True
        assert kept["log"]["index"] is not None
        log_size = counts(open_app.state)["tlog"]
        assert open_app.client.post(url, json=_atlas_body(manifest)).status_code == 201  # visible again
        assert open_app.client.get(url).status_code == 200
        assert counts(open_app.state)["tlog"] == log_size  # same entry, not a new one
