"""``--storage-type local-fs``: manifests in a directory, laid out as atlas-cli's filesystem storage.

Layout (atlas-cli ``src/storage/filesystem.rs``, kept byte-compatible so either tool reads the other's
directory)::

    <dir>/<sha256(manifest id)>.json    the manifest, pretty-printed JSON (2-space indent)
    <dir>/manifest_index.json           {"<manifest id>": "<sha256(id)>.json", ...}

atlas-cli reads ``manifest_index.json`` as a flat map of strings and silently resets it when it holds
anything else, so mlprov keeps that file exactly so and records its own additions in a second index:

    <dir>/<sha256(id)>.c2pa             the C2PA sidecar manifest of the manifest's asset
    <dir>/<sha256(id)>.sig              the OpenSSF Model Signing bundle (models; model_signing's name)
    <dir>/mlprov_index.json             {"<id>": {"manifest": "<f>.json", "c2pa": "<f>.c2pa" | null,
                                                  "oms_bundle": "<f>.sig" | null}, ...}

Every file is written atomically (temporary file + rename); the signatures are written before the
manifest and the indexes last, so a crash leaves at worst unreferenced signature files, never a
manifest whose signatures are missing. Writers serialise on an ``fcntl`` lock (``.mlprov.lock``),
so concurrent ``put`` calls from several processes do not lose index entries.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provenance.errors import ManifestNotFoundError, StorageError
from provenance.manifest import manifest_type
from provenance.storage.atomic import write_atomic
from provenance.storage.base import ManifestSummary, StoredManifest

__all__ = ["INDEX_FILE", "MLPROV_INDEX_FILE", "LocalFsStore"]

INDEX_FILE = "manifest_index.json"
MLPROV_INDEX_FILE = "mlprov_index.json"
_LOCK_FILE = ".mlprov.lock"
_NOT_MANIFESTS = frozenset({INDEX_FILE, MLPROV_INDEX_FILE})


def _stem(manifest_id: str) -> str:
    return hashlib.sha256(manifest_id.encode()).hexdigest()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


class LocalFsStore:
    """A :class:`~provenance.storage.base.ManifestStore` over a directory (created when missing)."""

    def __init__(self, root: Path | str) -> None:
        text = str(root)
        if text.startswith("file://"):
            text = text.removeprefix("file://")
        self.root = Path(text)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StorageError(f"storage directory {self.root} is a file; give a directory") from None
        except OSError as exc:
            raise StorageError(f"cannot create storage directory {self.root}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"LocalFsStore({str(self.root)!r})"

    # -- helpers -----------------------------------------------------------------------------------

    def manifest_path(self, manifest_id: str) -> Path:
        return self.root / f"{_stem(manifest_id)}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot write to storage directory {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StorageError(f"{path} is not valid JSON; the storage directory is damaged") from None

    def _read_index(self, name: str) -> dict[str, Any]:
        try:
            value = self._read_json(self.root / name)
        except FileNotFoundError:
            return {}
        except StorageError:
            return {}  # atlas-cli treats an unreadable index as empty too; the manifest files are the truth
        return value if isinstance(value, dict) else {}

    def _write(self, path: Path, data: bytes) -> None:
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None

    def _stored(self, manifest_id: str, manifest: dict[str, Any]) -> StoredManifest:
        entry = self._read_index(MLPROV_INDEX_FILE).get(manifest_id)
        names: dict[str, str | None] = {"c2pa": None, "oms_bundle": None}
        stem = _stem(manifest_id)
        if isinstance(entry, dict):
            for key in names:
                value = entry.get(key)
                names[key] = value if isinstance(value, str) else None
        else:  # no mlprov index entry (a directory atlas-cli wrote): look for the conventional names
            names = {"c2pa": f"{stem}.c2pa", "oms_bundle": f"{stem}.sig"}
        blobs: dict[str, bytes | None] = {}
        locations = {"manifest": str(self.manifest_path(manifest_id))}
        for key, name in names.items():
            blobs[key] = None
            if name is None or "/" in name or name.startswith("."):
                continue
            path = self.root / name
            try:
                blobs[key] = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {exc.strerror}") from None
            locations[key] = str(path)
        return StoredManifest(
            id=manifest_id,
            manifest=manifest,
            c2pa=blobs["c2pa"],
            oms_bundle=blobs["oms_bundle"],
            locations=locations,
        )

    # -- ManifestStore -------------------------------------------------------------------------------

    def put(
        self,
        manifest: dict[str, Any],
        *,
        c2pa: bytes | None = None,
        oms_bundle: bytes | None = None,
    ) -> StoredManifest:
        manifest_id = manifest.get("instance_id")
        if not isinstance(manifest_id, str) or not manifest_id:
            raise StorageError("refusing to store a manifest without an instance_id")
        stem = _stem(manifest_id)
        path = self.manifest_path(manifest_id)
        with self._locked():
            if path.exists():
                existing = self._read_json(path)
                if existing != manifest:
                    raise StorageError(f"{self.root} already holds a different manifest with ID {manifest_id}")
                return self._stored(manifest_id, existing)
            entry: dict[str, str | None] = {"manifest": path.name, "c2pa": None, "oms_bundle": None}
            if c2pa is not None:
                entry["c2pa"] = f"{stem}.c2pa"
                self._write(self.root / f"{stem}.c2pa", c2pa)
            if oms_bundle is not None:
                entry["oms_bundle"] = f"{stem}.sig"
                self._write(self.root / f"{stem}.sig", oms_bundle)
            self._write(path, _dumps(manifest))
            index = self._read_index(INDEX_FILE)
            index[manifest_id] = path.name
            self._write(self.root / INDEX_FILE, _dumps(index))
            ours = self._read_index(MLPROV_INDEX_FILE)
            ours[manifest_id] = entry
            self._write(self.root / MLPROV_INDEX_FILE, _dumps(ours))
        return self._stored(manifest_id, manifest)

    def get(self, manifest_id: str) -> StoredManifest:
        path = self.manifest_path(manifest_id)
        try:
            manifest = self._read_json(path)
        except FileNotFoundError:
            raise ManifestNotFoundError(f"no manifest with ID {manifest_id} in {self.root}") from None
        if not isinstance(manifest, dict):
            raise StorageError(f"{path} does not hold a manifest object")
        return self._stored(manifest_id, manifest)

    def list(self) -> builtins.list[ManifestSummary]:
        summaries: builtins.list[ManifestSummary] = []
        try:
            paths = sorted(self.root.glob("*.json"))
        except OSError as exc:
            raise StorageError(f"cannot list {self.root}: {exc.strerror}") from None
        for path in paths:
            if path.name in _NOT_MANIFESTS:
                continue
            try:
                manifest = self._read_json(path)
            except (StorageError, FileNotFoundError):
                continue  # as atlas-cli: an unparseable file is skipped, not fatal
            if not isinstance(manifest, dict) or not isinstance(manifest.get("instance_id"), str):
                continue
            summaries.append(
                ManifestSummary(
                    id=manifest["instance_id"],
                    title=str(manifest.get("title", "")),
                    kind=manifest_type(manifest),
                    created_at=str(manifest.get("created_at", "")),
                )
            )
        summaries.sort(key=lambda s: (s.created_at, s.id))
        return summaries

    def delete(self, manifest_id: str) -> None:
        path = self.manifest_path(manifest_id)
        with self._locked():
            if not path.exists():
                raise ManifestNotFoundError(f"no manifest with ID {manifest_id} in {self.root}")
            ours = self._read_index(MLPROV_INDEX_FILE)
            entry = ours.pop(manifest_id, None)
            index = self._read_index(INDEX_FILE)
            index.pop(manifest_id, None)
            try:
                path.unlink()
                if isinstance(entry, dict):
                    for key in ("c2pa", "oms_bundle"):
                        name = entry.get(key)
                        if isinstance(name, str) and "/" not in name and not name.startswith("."):
                            (self.root / name).unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot delete {path}: {exc.strerror}") from None
            self._write(self.root / INDEX_FILE, _dumps(index))
            self._write(self.root / MLPROV_INDEX_FILE, _dumps(ours))
