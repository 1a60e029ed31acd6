"""atlas-cli style flows through the ``mlprov`` CLI: create, link, show, verify, export, list.

Scripts written for atlas-cli extract IDs as the text after ``ID: `` on the line
``Manifest stored successfully with ID: <id>`` (or ``Updated manifest ID: <id>``); these tests do the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
import yaml
from click.testing import CliRunner, Result

from provenance.cli import cli
from provenance.keys import init_identity
from provenance.storage.local_fs import LocalFsStore

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def home(mlprov_home: Path) -> Path:
    init_identity(mlprov_home)
    return mlprov_home


@pytest.fixture
def assets(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "train.csv"
    data.write_text("x,y\n1,2\n")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\x00" * 1024)
    (model_dir / "config.json").write_text('{"layers": 2}')
    script = tmp_path / "train.py"
    script.write_text("print('train')\n")
    results = tmp_path / "eval.json"
    results.write_text('{"accuracy": 0.9}')
    return {"data": data, "model": model_dir, "script": script, "results": results}


def mlprov(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> str:
    result = mlprov(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result.stdout


def stored_id(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("Manifest stored successfully with ID: "))
    return line.split("ID: ", 1)[1]


def updated_id(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("Updated manifest ID: "))
    return line.split("ID: ", 1)[1]


def test_atlas_script_flow_local_fs(home: Path, assets: dict[str, Path], tmp_path: Path) -> None:
    store = ["--storage-type=local-fs", f"--storage-url={tmp_path / 'store'}"]
    ds = stored_id(
        ok(
            "dataset", "create", f"--paths={assets['data']}", "--ingredient-names=Training data",
            "--name=Train", "--author-org=Org", "--author-name=Ann", *store,
        )
    )  # fmt: skip
    model = stored_id(
        ok(
            "model", "create", f"--paths={assets['model']}", "--ingredient-names=Weights", "--name=Net",
            f"--linked-manifests={ds}", *store,
        )
    )  # fmt: skip
    out = ok("manifest", "link", "-s", model, "-t", ds, *store)
    assert out.splitlines()[0] == f"Successfully linked manifest {model} to {ds}"
    linked = updated_id(out)
    assert linked not in (model, ds)

    shown = ok("manifest", "show", "-i", linked, *store)
    assert f"ID: {linked}" in shown
    assert "Title: Net" in shown
    local = LocalFsStore(tmp_path / "store")
    got = local.get(linked)
    assert got.c2pa is not None
    assert got.oms_bundle is not None
    assert f"C2PA sidecar: {got.locations['c2pa']}" in shown
    assert f"OMS bundle: {got.locations['oms_bundle']}" in shown

    out = ok("model", "verify", "--id", linked, *store)
    assert out.rstrip("\n").splitlines()[-1] == "✓ Manifest verification successful"
    assert "✓ oms bundle" in out
    assert "✓ c2pa sidecar" in out
    ok("manifest", "validate", "-i", linked, *store)
    assert "Link verification successful" in ok("manifest", "verify-link", "-s", linked, "-t", ds, *store)

    graph_file = tmp_path / "graph.json"
    out = ok("manifest", "export", "-i", linked, "--format", "json", "-o", str(graph_file), "--max-depth", "10", *store)
    assert out.strip() == f"Provenance graph exported to: {graph_file}"
    graph = json.loads(graph_file.read_text())
    assert graph["root_id"] == linked
    assert set(graph["nodes"]) == {linked, ds}
    assert {"source": linked, "target": ds, "relation_type": "references"} in graph["edges"]
    assert graph["nodes"][ds]["manifest_type"] == "Dataset"
    assert yaml.safe_load(ok("manifest", "export", "-i", linked, "--format", "yaml", *store))["root_id"] == linked
    assert ok("manifest", "export", "-i", linked, "--max-depth", "0", *store).count('"manifest_type"') == 1

    listed = ok("model", "list", *store)
    assert f"(ID: {model}, Type: Model" in listed
    assert f"(ID: {linked}, Type: Model" in listed
    assert ds not in listed
    assert f"Manifest: Train (ID: {ds}, Type: Dataset, Created: " in ok("dataset", "list", *store)


def test_software_and_evaluation_commands(home: Path, assets: dict[str, Path], tmp_path: Path) -> None:
    store = ["--storage-type", "local-fs", "--storage-url", str(tmp_path / "s")]
    ds = stored_id(
        ok("dataset", "create", "--paths", str(assets["data"]), "--ingredient-names", "D", "--name", "D", *store)
    )
    model = stored_id(
        ok("model", "create", "--paths", str(assets["model"]), "--ingredient-names", "M", "--name", "M", *store)
    )
    sw = stored_id(
        ok(
            "software", "create", "--paths", str(assets["script"]), "--ingredient-names", "train.py",
            "--name", "Trainer", "--software-type", "script", "--version", "1.2", *store,
        )
    )  # fmt: skip
    out = ok("software", "link-model", "--software-id", sw, "--model-id", model, *store)
    assert out.splitlines()[0] == f"Successfully linked manifest {model} to {sw}"
    new_model = updated_id(out)
    out = ok("software", "link-dataset", "--software-id", sw, "--dataset-id", ds, *store)
    new_ds = updated_id(out)
    out = ok("model", "link-dataset", "--model-id", new_model, "--dataset-id", new_ds, *store)
    assert out.splitlines()[0] == f"Successfully linked dataset {new_ds} to model {new_model}"
    final_model = updated_id(out)

    ev = stored_id(
        ok(
            "evaluation", "create", "--path", str(assets["results"]), "--name", "Eval", "--model-id", final_model,
            "--dataset-id", new_ds, "--metrics", "accuracy=0.95,f1=0.9,label=good", *store,
        )
    )  # fmt: skip
    manifest = LocalFsStore(tmp_path / "s").get(ev).manifest
    action = manifest["claim"]["created_assertions"][1]["Action"]["actions"][0]
    assert action["action"] == "c2pa.evaluation"
    assert action["parameters"]["metrics"] == {"accuracy": 0.95, "f1": 0.9, "label": "good"}
    assert action["parameters"]["model_id"] == final_model
    assert {r["manifest_url"] for r in manifest["cross_references"]} == {final_model, new_ds}
    assert ok("evaluation", "verify", "--id", ev, *store).rstrip().endswith("✓ Manifest verification successful")
    assert f"(ID: {ev}, Type: EvaluationResult" in ok("evaluation", "list", *store)
    assert f"(ID: {sw}, Type: Software" in ok("software", "list", *store)
    assert ok("software", "verify", "--id", sw, *store).rstrip().endswith("✓ Manifest verification successful")
    assert ok("dataset", "verify", "--id", new_ds, *store).rstrip().endswith("✓ Manifest verification successful")


def test_print_json_and_cbor_store_nothing(home: Path, assets: dict[str, Path], tmp_path: Path) -> None:
    store = ["--storage-type", "local-fs", "--storage-url", str(tmp_path / "s")]
    printed = json.loads(
        ok(
            "dataset",
            "create",
            "--paths",
            str(assets["data"]),
            "--ingredient-names",
            "D",
            "--name",
            "D",
            "--print",
            *store,
        )
    )
    assert printed["title"] == "D"
    assert printed["claim"]["signature"]
    hex_out = ok(
        "model", "create", "--paths", str(assets["model"]), "--ingredient-names", "M", "--name", "M", "--print",
        "--format", "cbor", "--hash-alg", "sha512", *store,
    ).strip()  # fmt: skip
    decoded: dict[str, Any] = cbor2.loads(bytes.fromhex(hex_out))
    assert decoded["title"] == "M"
    assert decoded["ingredients"][0]["data"]["alg"] == "sha512"
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*.json"))


def test_with_tdx_adds_the_atlas_assertion(home: Path, assets: dict[str, Path]) -> None:
    out = ok(
        "dataset",
        "create",
        "--paths",
        str(assets["data"]),
        "--ingredient-names",
        "D",
        "--name",
        "D",
        "--print",
        "--with-tdx",
    )
    assertions = json.loads(out)["claim"]["created_assertions"]
    tdx = [a["CustomAssertion"] for a in assertions if a.get("CustomAssertion", {}).get("label") == "tdx-linux"]
    assert len(tdx) == 1
    report = json.loads(tdx[0]["data"])  # data is a JSON *string*, as atlas-cli writes it
    assert report["type"] == "mock_attestation"
    assert report["bound_to_claim"] is False


def test_bare_key_skips_c2pa_and_oms_with_one_note_and_verifies_once_pinned(
    mlprov_home: Path, assets: dict[str, Path], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    store = ["--storage-type", "local-fs", "--storage-url", str(tmp_path / "s")]
    result = mlprov(
        "model",
        "create",
        "--paths",
        str(assets["model"]),
        "--ingredient-names",
        "M",
        "--name",
        "M",
        "--key",
        str(pem),
        *store,
    )
    assert result.exit_code == 0
    assert result.stderr.count("\n") == 1
    assert "C2PA sidecar and OMS bundle skipped" in result.stderr
    model = stored_id(result.stdout)
    assert mlprov("verify", model, *store).exit_code == 4  # not trusted yet
    ok("keys", "trust", str(pem))
    assert ok("verify", model, *store).rstrip().endswith("✓ Manifest verification successful")


def test_verify_a_manifest_file_and_json_report(home: Path, assets: dict[str, Path], tmp_path: Path) -> None:
    store = ["--storage-type", "local-fs", "--storage-url", str(tmp_path / "s")]
    manifest_file = tmp_path / "m.json"
    manifest_file.write_text(
        ok("dataset", "create", "--paths", str(assets["data"]), "--ingredient-names", "D", "--name", "D", "--print")
    )
    assert ok("verify", str(manifest_file), *store).rstrip().endswith("✓ Manifest verification successful")
    report = json.loads(ok("verify", str(manifest_file), "--json", "--no-rehash", *store))
    assert report["ok"] is True
    assets["data"].write_text("tampered\n")
    result = mlprov("verify", str(manifest_file), "--json", *store)
    assert result.exit_code == 4
    assert json.loads(result.stdout)["ok"] is False


def test_cc_attestation(home: Path) -> None:
    out = ok("cc-attestation", "show")
    assert out.startswith("Got report: ")
    assert json.loads(out.removeprefix("Got report: "))["type"] == "mock_attestation"
    assert ok("cc-attestation").startswith("Got report: ")
    assert ok("cc-attestation", "get-launch-measurement").strip() == "Launch measurement raw bytes: 0x" + "00" * 48
    result = mlprov("cc-attestation", "verify-launch")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: launch endorsement verification is not supported")


@pytest.mark.slow  # six real `mlprov` processes: ~2 s each on this machine
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_an_atlas_cli_shell_script_runs_unchanged_but_for_the_program_name(
    home: Path, assets: dict[str, Path], tmp_path: Path
) -> None:
    """The shape of atlas-cli's own example scripts, with ``atlas-cli`` replaced by ``mlprov``."""
    script = tmp_path / "flow.sh"
    script.write_text(
        """set -euo pipefail
S="--storage-type=local-fs --storage-url=$STORE"
out=$(mlprov dataset create --paths=$DATA --ingredient-names="Training data" --name="Train" $S)
DATASET_ID=$(echo "$out" | grep "Manifest stored successfully" | sed 's/.*ID: //')
out=$(mlprov model create --paths=$MODEL --ingredient-names="Model" --name="Net" --linked-manifests=$DATASET_ID $S)
MODEL_ID=${out##*ID: }
out=$(mlprov manifest link -s "$MODEL_ID" -t "$DATASET_ID" $S)
NEW_ID=$(echo "$out" | grep "Updated manifest ID" | awk -F'ID: ' '{print $2}')
mlprov manifest show -i "$NEW_ID" $S > /dev/null
mlprov model verify --id "$NEW_ID" $S | tail -n 1
mlprov manifest export -i "$NEW_ID" --format json -o "$OUT" --max-depth 10 $S
"""
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "mlprov"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m provenance.cli "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "STORE": str(tmp_path / "store"),
        "DATA": str(assets["data"]),
        "MODEL": str(assets["model"]),
        "OUT": str(tmp_path / "graph.json"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "✓ Manifest verification successful"
    assert json.loads((tmp_path / "graph.json").read_text())["root_id"]


def _service_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_atlas_service", Path(__file__).parent / "test_storage_database.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_database_flow_with_token_and_env_defaults(
    home: Path, assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    server = _service_module().AtlasStorageService(token="tok")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MLPROV_TOKEN", "tok")
        monkeypatch.setenv("MLPROV_STORAGE_URL", server.url)  # default --storage-type is database
        ds = stored_id(ok("dataset", "create", f"--paths={assets['data']}", "--ingredient-names=D", "--name=D"))
        model = stored_id(
            ok(
                "model",
                "create",
                f"--paths={assets['model']}",
                "--ingredient-names=M",
                "--name=M",
                f"--linked-manifests={ds}",
            )
        )
        entry = server.entries[model]
        assert entry["manifest"]["manifest"]["instance_id"] == model
        assert entry["manifest_type"] == "Model"
        assert entry["manifest"]["mlprov_oms_bundle"]
        assert entry["manifest"]["mlprov_c2pa"]
        shown = ok("manifest", "show", "-i", model)
        assert f"OMS bundle: {server.url}/manifests/{model} (field manifest.mlprov_oms_bundle)" in shown
        linked = updated_id(ok("manifest", "link", "-s", model, "-t", ds))
        assert ok("verify", linked).rstrip().endswith("✓ Manifest verification successful")
        assert f"(ID: {linked}, Type: Model" in ok("model", "list")
        monkeypatch.setenv("MLPROV_TOKEN", "wrong")
        refused = mlprov("model", "list")
        assert refused.exit_code == 5
        assert "MLPROV_TOKEN" in refused.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
