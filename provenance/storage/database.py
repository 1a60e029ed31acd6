"""``--storage-type database``: a client of the Atlas storage-service HTTP API.

The API (atlas-compat.md section 4; the controller serves it, atlas-cli's own server too)::

    POST   /manifests/{id}   body {manifest_id, manifest_type, manifest, created_at}  -> 201
    GET    /manifests        [entry, ...]
    GET    /manifests/{id}   entry, or 404
    DELETE /manifests/{id}

    entry = {manifest_id, manifest_type, manifest: <the POST body>, created_at}

so a reader finds the Atlas manifest at ``entry["manifest"]["manifest"]``.

**mlprov's extension** (compatible with that API): the C2PA sidecar and the OMS bundle travel in the
same POST body as two optional fields, base64 (standard alphabet, padded)::

    "mlprov_c2pa":        "<base64 of the .c2pa sidecar bytes>"
    "mlprov_oms_bundle":  "<base64 of the Sigstore bundle JSON bytes>"

A server that knows nothing of them stores the body whole (as atlas-cli's does), so they come back at
``entry["manifest"]["mlprov_c2pa"]``; a reader that knows nothing of them ignores them. The manifest
itself is never touched: link hashes stay what Atlas computes.

``manifest_type`` on the wire is one of Atlas's four values (``Model``, ``Dataset``, ``Software``,
``Unknown``; an evaluation is sent as ``Unknown``); listings derive the kind from the manifest itself.
``Authorization: Bearer <token>`` is sent when a token is configured (``MLPROV_TOKEN``). Every request
has a timeout; a refused connection, a time-out or an unexpected status becomes one
:class:`~provenance.errors.StorageError` line naming the URL.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import datetime as dt
from typing import Any, Final
from urllib.parse import quote

import httpx

from provenance.errors import ManifestNotFoundError, StorageError
from provenance.manifest import manifest_type
from provenance.storage.base import ManifestSummary, StoredManifest

__all__ = ["C2PA_FIELD", "DEFAULT_TIMEOUT", "OMS_BUNDLE_FIELD", "DatabaseStore"]

C2PA_FIELD: Final = "mlprov_c2pa"
OMS_BUNDLE_FIELD: Final = "mlprov_oms_bundle"
#: atlas-cli uses 30 s per request; connecting gets less, a closed port answers at once anyway.
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=5.0)
_WIRE_TYPES: Final = frozenset({"Model", "Dataset", "Software"})


def _now() -> str:
    text = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    head, _, frac = text[:-1].partition(".")
    frac = frac.rstrip("0")
    return f"{head}.{frac}Z" if frac else f"{head}Z"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(value: Any, what: str, manifest_id: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StorageError(f"the stored {what} of {manifest_id} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise StorageError(f"the stored {what} of {manifest_id} is not valid base64") from None


class DatabaseStore:
    """A :class:`~provenance.storage.base.ManifestStore` over the Atlas storage-service API.

    ``transport`` is for tests (``httpx.ASGITransport``/``MockTransport``); the default is a real network.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise StorageError(f"storage URL {base_url!r} is not an http(s) URL; pass --storage-url http://HOST:PORT")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"DatabaseStore({self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DatabaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------------

    def _url(self, manifest_id: str | None = None) -> str:
        return "/manifests" if manifest_id is None else f"/manifests/{quote(manifest_id, safe=':')}"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        where = f"{self.base_url}{path}"
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise StorageError(
                f"cannot reach the manifest store at {self.base_url} (connection refused); "
                "start it or pass --storage-url / --storage-type local-fs"
            ) from None
        except httpx.TimeoutException:
            raise StorageError(
                f"the manifest store at {self.base_url} did not answer in time ({method} {where})"
            ) from None
        except httpx.HTTPError as exc:
            raise StorageError(f"{method} {where} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise StorageError(
                f"the manifest store at {self.base_url} refused {method} {path} ({response.status_code}); "
                "set MLPROV_TOKEN to a valid token"
            )
        return response

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise StorageError(f"the manifest store answered {what} with something that is not JSON") from None

    def _fail(self, response: httpx.Response, what: str) -> StorageError:
        return StorageError(f"the manifest store at {self.base_url} answered {what} with HTTP {response.status_code}")

    # -- entries ------------------------------------------------------------------------------------

    def _entry_to_stored(self, entry: Any, manifest_id: str) -> StoredManifest:
        if not isinstance(entry, dict):
            raise StorageError(f"the manifest store returned a malformed entry for {manifest_id}")
        body = entry.get("manifest")
        if isinstance(body, dict) and isinstance(body.get("manifest"), dict):
            manifest = body["manifest"]
            extras = body
        elif isinstance(body, dict) and "claim" in body:  # a server that stores the bare manifest
            manifest, extras = body, entry
        else:
            raise StorageError(f"the manifest store returned an entry for {manifest_id} without a manifest")
        c2pa = _unb64(extras.get(C2PA_FIELD), "C2PA sidecar", manifest_id)
        oms = _unb64(extras.get(OMS_BUNDLE_FIELD), "OMS bundle", manifest_id)
        url = f"{self.base_url}{self._url(manifest_id)}"
        locations = {"manifest": url}
        if c2pa is not None:
            locations["c2pa"] = f"{url} (field manifest.{C2PA_FIELD})"
        if oms is not None:
            locations["oms_bundle"] = f"{url} (field manifest.{OMS_BUNDLE_FIELD})"
        return StoredManifest(id=manifest_id, manifest=manifest, c2pa=c2pa, oms_bundle=oms, locations=locations)

    # -- ManifestStore ------------------------------------------------------------------------------

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
        try:
            existing = self.get(manifest_id)
        except ManifestNotFoundError:
            existing = None
        if existing is not None:
            if existing.manifest != manifest:
                raise StorageError(f"the manifest store already holds a different manifest with ID {manifest_id}")
            return existing
        kind = manifest_type(manifest)
        body: dict[str, Any] = {
            "manifest_id": manifest_id,
            "manifest_type": kind if kind in _WIRE_TYPES else "Unknown",
            "manifest": manifest,
            "created_at": _now(),
        }
        if c2pa is not None:
            body[C2PA_FIELD] = _b64(c2pa)
        if oms_bundle is not None:
            body[OMS_BUNDLE_FIELD] = _b64(oms_bundle)
        response = self._request("POST", self._url(manifest_id), json=body)
        if response.status_code not in (200, 201):
            raise self._fail(response, f"POST {self._url(manifest_id)}")
        url = f"{self.base_url}{self._url(manifest_id)}"
        locations = {"manifest": url}
        if c2pa is not None:
            locations["c2pa"] = f"{url} (field manifest.{C2PA_FIELD})"
        if oms_bundle is not None:
            locations["oms_bundle"] = f"{url} (field manifest.{OMS_BUNDLE_FIELD})"
        return StoredManifest(id=manifest_id, manifest=manifest, c2pa=c2pa, oms_bundle=oms_bundle, locations=locations)

    def get(self, manifest_id: str) -> StoredManifest:
        response = self._request("GET", self._url(manifest_id))
        if response.status_code == 404:
            raise ManifestNotFoundError(f"no manifest with ID {manifest_id} at {self.base_url}")
        if response.status_code != 200:
            raise self._fail(response, f"GET {self._url(manifest_id)}")
        return self._entry_to_stored(self._json(response, f"GET {self._url(manifest_id)}"), manifest_id)

    def list(self) -> builtins.list[ManifestSummary]:
        response = self._request("GET", self._url())
        if response.status_code != 200:
            raise self._fail(response, "GET /manifests")
        entries = self._json(response, "GET /manifests")
        if not isinstance(entries, builtins.list):
            raise StorageError("the manifest store answered GET /manifests with something that is not a list")
        summaries: builtins.list[ManifestSummary] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("manifest_id"), str):
                continue
            try:
                stored = self._entry_to_stored(entry, entry["manifest_id"])
            except StorageError:
                continue  # as atlas-cli: one malformed entry does not hide the others
            summaries.append(
                ManifestSummary(
                    id=stored.id,
                    title=str(stored.manifest.get("title", "")),
                    kind=manifest_type(stored.manifest),
                    created_at=str(entry.get("created_at") or stored.manifest.get("created_at", "")),
                )
            )
        summaries.sort(key=lambda s: (s.created_at, s.id))
        return summaries

    def delete(self, manifest_id: str) -> None:
        response = self._request("DELETE", self._url(manifest_id))
        if response.status_code == 404:
            raise ManifestNotFoundError(f"no manifest with ID {manifest_id} at {self.base_url}")
        if response.status_code not in (200, 202, 204):
            raise self._fail(response, f"DELETE {self._url(manifest_id)}")
