"""The transparency log through the CLI: create/link append, verify checks inclusion, ``mlprov log ...``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provenance.cli import EXIT_VERIFICATION, cli
from provenance.keys import init_identity
from provenance.storage.local_fs import LocalFsStore
from provenance.tlog import (
    Checkpoint,
    InclusionProof,
    LocalTransparencyLog,
    leaf_hash,
    manifest_entry,
    verify_inclusion,
)

SUCCESS = "✓ Manifest verification successful"


@pytest.fixture
def home(mlprov_home: Path) -> Path:
    init_identity(mlprov_home)
    return mlprov_home


@pytest.fixture
def store(tmp_path: Path) -> list[str]:
    return ["--storage-type", "local-fs", "--storage-url", str(tmp_path / "store")]


def mlprov(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> Result:
    result = mlprov(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def fails(code: int, *args: str) -> str:
    result = mlprov(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def create(tmp_path: Path, store: list[str], name: str, *extra: str) -> str:
    path = tmp_path / f"{name}.csv"
    path.write_text(f"{name}\n")
    result = ok("dataset", "create", f"--paths={path}", f"--ingredient-names={name}", f"--name={name}", *store, *extra)
    assert result.stdout.splitlines() == [result.stdout.split("\n")[0]]  # exactly atlas-cli's one line
    assert result.stderr == ""
    return result.stdout.split("ID: ", 1)[1].strip()


def entries(root: Path) -> list[bytes]:
    with LocalTransparencyLog(root) as log:
        return [log.entry(i).data for i in range(log.size())]


def test_create_and_link_append_and_verify_shows_inclusion(home: Path, tmp_path: Path, store: list[str]) -> None:
    ds = create(tmp_path, store, "d")
    other = create(tmp_path, store, "e")
    out = ok("manifest", "link", "-s", ds, "-t", other, *store).stdout
    assert out.splitlines()[0] == f"Successfully linked manifest {ds} to {other}"
    linked = out.split("Updated manifest ID: ", 1)[1].strip()
    local = LocalFsStore(tmp_path / "store")
    assert entries(home / "tlog") == [manifest_entry(local.get(i).manifest) for i in (ds, other, linked)]

    text = ok("verify", linked, *store).stdout
    assert text.rstrip().splitlines()[-1] == SUCCESS
    assert "✓ tlog inclusion: entry 2 proven in mlprov.local/tlog at size 3" in text
    assert "✓ tlog inclusion: entry 1 proven" in text  # the linked manifest too
    assert ok("dataset", "verify", "--id", linked, *store).stdout.rstrip().endswith(SUCCESS)
    report = json.loads(ok("verify", linked, "--json", *store).stdout)
    assert [c["ok"] for n in report["nodes"] for c in n["checks"] if c["name"] == "tlog inclusion"] == [True, True]


def test_log_commands(home: Path, tmp_path: Path, store: list[str]) -> None:
    ds = create(tmp_path, store, "d")
    vkey = ok("log", "vkey").stdout.strip()
    assert vkey == (home / "tlog" / "log.vkey").read_text().strip()
    note = ok("log", "checkpoint").stdout
    saved = tmp_path / "cp.note"
    assert ok("log", "checkpoint", "--out", str(saved)).stdout.startswith("Checkpoint of mlprov.local/tlog at size 1")
    assert saved.read_text() == note

    proof = json.loads(ok("log", "proof", "--id", ds, *store).stdout)
    assert proof["manifestId"] == ds
    checkpoint = Checkpoint.from_body(proof["checkpoint"]["note"].split("\n\n")[0] + "\n")
    stored = LocalFsStore(tmp_path / "store").get(ds).manifest
    verify_inclusion(
        leaf_hash(manifest_entry(stored)), InclusionProof.from_dict(proof["inclusionProof"]), checkpoint.root_hash
    )

    create(tmp_path, store, "e")
    out = ok("log", "audit", "--checkpoint", str(saved)).stdout
    assert out.startswith("✓ mlprov.local/tlog at size 2 extends the checkpoint")
    ok("log", "audit", "--checkpoint", str(saved), "--vkey", vkey)


def test_a_rewritten_log_fails_audit_and_verify(home: Path, tmp_path: Path, store: list[str]) -> None:
    ds = create(tmp_path, store, "d")
    ev = create(tmp_path, store, "e")
    saved = tmp_path / "cp.note"
    ok("log", "checkpoint", "--out", str(saved))
    # The attacker keeps the log key but rebuilds the entries without `ds`, with other content instead.
    root = home / "tlog"
    for path in [root / "entries.log", root / "offsets.bin", *root.glob("level-*.bin")]:
        path.unlink()
    with LocalTransparencyLog(root) as log:
        log.append(b"something else")
        log.append(manifest_entry(LocalFsStore(tmp_path / "store").get(ev).manifest))

    line = fails(EXIT_VERIFICATION, "log", "audit", "--checkpoint", str(saved))
    assert line.startswith("error: audit failed: ")
    assert "forked" in line
    result = mlprov("verify", ds, *store)
    assert result.exit_code == EXIT_VERIFICATION
    assert f"first broken at {ds}: tlog inclusion: not logged" in result.stderr
    assert ok("verify", ev, *store).stdout.rstrip().endswith(SUCCESS)

    (root / "entries.log").write_bytes(b"")  # shrink it to nothing
    for path in [root / "offsets.bin", *root.glob("level-*.bin")]:
        path.unlink()
    assert "shrank from 2 to 0" in fails(EXIT_VERIFICATION, "log", "audit", "--checkpoint", str(saved))
    shutil.rmtree(root)
    assert "is gone" in fails(EXIT_VERIFICATION, "log", "audit", "--checkpoint", str(saved))


def test_no_tlog_and_tlog_off(home: Path, tmp_path: Path, store: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    create(tmp_path, store, "d")
    unlogged = create(tmp_path, store, "u", "--no-tlog")
    assert len(entries(home / "tlog")) == 1
    result = mlprov("verify", unlogged, *store)
    assert result.exit_code == EXIT_VERIFICATION
    assert "tlog inclusion: not logged: no entry for manifest" in result.stdout
    assert "not logged" in fails(EXIT_VERIFICATION, "log", "proof", "--id", unlogged, *store)
    assert ok("verify", unlogged, "--no-tlog", *store).stdout.rstrip().endswith(SUCCESS)
    monkeypatch.setenv("MLPROV_TLOG", "off")
    create(tmp_path, store, "v")
    assert len(entries(home / "tlog")) == 1
    assert "tlog inclusion" not in ok("verify", unlogged, *store).stdout


def test_log_dir_and_pinned_vkey(home: Path, tmp_path: Path, store: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPROV_TLOG_DIR", str(tmp_path / "elsewhere"))
    ds = create(tmp_path, store, "d")
    assert not (home / "tlog").exists()
    assert len(entries(tmp_path / "elsewhere")) == 1
    with LocalTransparencyLog(tmp_path / "unrelated") as other:
        monkeypatch.setenv("MLPROV_TLOG_VKEY", other.verifier_key)
    result = mlprov("verify", ds, *store)
    assert result.exit_code == EXIT_VERIFICATION
    assert "tlog inclusion: checkpoint signature invalid" in result.stdout


def test_no_log_yet_means_no_inclusion_check(home: Path, tmp_path: Path, store: list[str]) -> None:
    path = tmp_path / "d.csv"
    path.write_text("d\n")
    manifest = tmp_path / "m.json"
    manifest.write_text(
        ok("dataset", "create", f"--paths={path}", "--ingredient-names=d", "--name=d", "--print").stdout
    )
    assert not (home / "tlog").exists()  # --print stores nothing, logs nothing
    out = ok("verify", str(manifest), *store).stdout
    assert "tlog inclusion" not in out
    assert not (home / "tlog").exists()  # verify never creates a log
