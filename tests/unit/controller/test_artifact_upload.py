"""``PUT /api/v1/tasks/{task_id}/artifacts/{digest}`` through the real app: files, directories as tar,
digest checks, unsafe archives, the artifact size limit, scopes, and reading the content back."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provenance.hashing import hash_directory
from provenance.sidecar.delivery import tar_directory
from tests.unit.controller.ingest_support import App, counts, new_task, running_app


@pytest.fixture
def app(mlprov_home: Path) -> Iterator[App]:
    with running_app(mlprov_home, max_artifact_bytes=64 * 1024) as running:
        yield running


def _put(
    app: App, task_id: str, token: str, digest: str, body: bytes, media: str = "application/octet-stream"
) -> httpx.Response:
    return app.client.put(
        f"/api/v1/tasks/{task_id}/artifacts/{digest}",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": media},
    )


def test_file_upload_is_stored_once_and_readable(app: App) -> None:
    task_id, token = new_task(app.state)
    body = b"a,b\n1,2\n" * 100
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    first = _put(app, task_id, token, digest, body)
    assert first.status_code == 201, first.text
    again = _put(app, task_id, token, digest, body)
    assert again.status_code == 200
    assert app.state.artifact_store is not None
    assert app.state.artifact_store.exists(digest)
    view = app.client.get(f"/api/v1/artifacts/{digest}", headers=app.reader()).json()
    assert view["size"] == len(body)
    assert view["kind"] == "unclassified"
    assert view["manifests"] == []
    content = app.client.get(f"/api/v1/artifacts/{digest}/content", headers=app.reader())
    assert content.status_code == 200
    assert content.content == body


def test_directory_upload_is_rehashed_as_oms_root(app: App, tmp_path: Path) -> None:
    task_id, token = new_task(app.state)
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"w" * 1000)
    (model / "sub" / "config.json").write_text("{}")
    digest = "sha256:" + hash_directory(model).root
    buf = io.BytesIO()
    tar_directory(model, buf)
    response = _put(app, task_id, token, digest, buf.getvalue(), "application/x-tar")
    assert response.status_code == 201, response.text
    content = app.client.get(f"/api/v1/artifacts/{digest}/content", headers=app.reader())
    with tarfile.open(fileobj=io.BytesIO(content.content)) as tar:
        assert sorted(tar.getnames()) == ["sub/config.json", "weights.bin"]


def test_digest_mismatch_is_refused_and_nothing_recorded(app: App) -> None:
    task_id, token = new_task(app.state)
    before = counts(app.state)
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    response = _put(app, task_id, token, wrong, b"these bytes")
    assert response.status_code == 400
    assert response.json()["error"] == "digest_mismatch"
    assert counts(app.state) == before
    assert app.state.artifact_store is not None
    assert not app.state.artifact_store.exists(wrong)
    assert list((app.home / "uploads").iterdir()) == []  # the spooled body is gone


def _tar(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tarfile.TarInfo("/etc/passwd"), "absolute"),
        (tarfile.TarInfo("../escape"), "'..'"),
        (tarfile.TarInfo("a/../../escape"), "'..'"),
    ],
)
def test_unsafe_paths_are_refused(app: App, member: tarfile.TarInfo, why: str) -> None:
    task_id, token = new_task(app.state)
    before = counts(app.state)
    digest = "sha256:" + "0" * 64
    response = _put(app, task_id, token, digest, _tar([member]), "application/x-tar")
    assert response.status_code == 400
    assert response.json()["error"] == "unsafe_archive"
    assert why in response.json()["detail"]
    assert counts(app.state) == before


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(app: App, kind: bytes) -> None:
    task_id, token = new_task(app.state)
    info = tarfile.TarInfo("evil")
    info.type = kind
    info.linkname = "/etc/passwd"
    response = _put(app, task_id, token, "sha256:" + "0" * 64, _tar([info]), "application/x-tar")
    assert response.status_code == 400
    assert response.json()["error"] == "unsafe_archive"


def test_oversize_upload_is_413_declared_or_streamed(app: App) -> None:
    task_id, token = new_task(app.state)
    before = counts(app.state)
    body = b"z" * (64 * 1024 + 1)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    declared = _put(app, task_id, token, digest, body)
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    streamed = app.client.put(
        f"/api/v1/tasks/{task_id}/artifacts/{digest}",
        content=chunks(),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert streamed.status_code == 413, streamed.text
    assert counts(app.state) == before
    # The JSON limit is not the artifact limit: 20 KiB is above neither, 1 MiB JSON is refused elsewhere.
    small = b"y" * 20_000
    ok = _put(app, task_id, token, "sha256:" + hashlib.sha256(small).hexdigest(), small)
    assert ok.status_code == 201


def test_scopes(app: App) -> None:
    own, token = new_task(app.state)
    other, _ = new_task(app.state)
    body = b"scoped"
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert _put(app, other, token, digest, body).status_code == 403
    reader = app.client.put(f"/api/v1/tasks/{own}/artifacts/{digest}", content=body, headers=app.reader())
    assert reader.status_code == 403
    admin = app.client.put(f"/api/v1/tasks/{own}/artifacts/{digest}", content=body, headers=app.admin())
    assert admin.status_code == 201
    # A task token cannot read artifacts across tasks.
    assert (
        app.client.get(f"/api/v1/artifacts/{digest}", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    )
