"""Image references resolved to digests before launch (OCI Distribution API), recorded in provenance.

``ImageResolver.resolve("ghcr.io/org/train:1.2")`` asks the registry
``HEAD /v2/<repository>/manifests/<tag>`` with ``Accept`` for an OCI image index, an OCI manifest, a
Docker manifest list and a Docker v2 manifest, and takes ``Docker-Content-Digest`` (when a registry
leaves it out of a HEAD answer: ``GET`` and the sha256 of the body). A ``401`` with a
``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` challenge is answered by fetching a token
from the realm (anonymously, or with the registry's basic credentials) and retrying once; a ``Basic``
challenge is retried with the credentials. A reference that already carries ``@sha256:`` is returned
as it is, without a request. Docker Hub short names (``python:3.11``) mean
``registry-1.docker.io/library/python``.

The result, :class:`ResolvedImage`, gives the pinned reference ``<registry>/<repository>@<digest>``
the Job runs and the dispatcher records (``image``, ``image_digest``) on the task and in task.json.
Errors are :class:`ImageResolutionError` (a ``JobLaunchError``: the task fails with its message).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from controller.errors import JobLaunchError

__all__ = ["MANIFEST_MEDIA_TYPES", "ImageReference", "ImageResolutionError", "ImageResolver", "ResolvedImage"]

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "registry-1.docker.io"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ImageResolutionError(JobLaunchError):
    """The image's tag could not be resolved to a digest (unknown tag, registry down, refused)."""

    code = "image_resolution_failed"


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, reference: str) -> ImageReference:
        rest, _, digest = reference.partition("@")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, remainder
        else:
            registry, path = DOCKER_HUB, rest
        name, tag = path, None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            name, _, tag = path.rpartition(":")
        if registry in (DOCKER_HUB, "docker.io", "index.docker.io"):
            registry = DOCKER_HUB
            if "/" not in name:
                name = f"library/{name}"
        if not name:
            raise ImageResolutionError(f"image {reference!r} names no repository")
        if digest and not _DIGEST.fullmatch(digest):
            raise ImageResolutionError(f"image {reference!r}: the digest must be sha256:<64 hex>")
        return cls(registry, name, tag if tag or digest else "latest", digest or None)

    def pinned(self, digest: str) -> str:
        return f"{self.registry}/{self.repository}@{digest}"


@dataclass(frozen=True)
class ResolvedImage:
    reference: str
    """As the service gave it."""
    pinned: str
    """``<registry>/<repository>@sha256:<hex>``: what the Job runs."""
    digest: str
    media_type: str | None = None


class ImageResolver:
    """Tag -> digest through the OCI Distribution API (see the module docstring). Thread-safe."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        insecure: tuple[str, ...] | list[str] = (),
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._credentials = dict(credentials or {})
        self._insecure = set(insecure)
        self._http = httpx.Client(timeout=timeout, transport=transport, trust_env=False, follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def resolve(self, reference: str) -> ResolvedImage:
        ref = ImageReference.parse(reference)
        if ref.digest is not None:
            return ResolvedImage(reference, ref.pinned(ref.digest), ref.digest)
        scheme = "http" if ref.registry in self._insecure else "https"
        url = f"{scheme}://{ref.registry}/v2/{ref.repository}/manifests/{ref.tag}"
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        try:
            response = self._http.head(url, headers=headers)
            if response.status_code == 401:
                auth = self._authorization(ref, response.headers.get("www-authenticate", ""))
                if auth is not None:
                    headers["Authorization"] = auth
                    response = self._http.head(url, headers=headers)
            if response.status_code == 200 and not response.headers.get("docker-content-digest"):
                response = self._http.get(url, headers=headers)
                if response.status_code == 200:
                    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
                    media = response.headers.get("content-type")
                    return ResolvedImage(reference, ref.pinned(digest), digest, media)
        except httpx.HTTPError as exc:
            raise ImageResolutionError(f"image {reference!r}: registry {ref.registry} unreachable: {exc}") from exc
        if response.status_code != 200:
            what = {401: "refused the credentials", 403: "denied access", 404: "has no such tag"}.get(
                response.status_code, f"answered HTTP {response.status_code}"
            )
            raise ImageResolutionError(f"image {reference!r}: registry {ref.registry} {what}")
        digest = response.headers["docker-content-digest"].strip()
        if not _DIGEST.fullmatch(digest):
            raise ImageResolutionError(f"image {reference!r}: the registry sent an unusable digest {digest!r}")
        return ResolvedImage(reference, ref.pinned(digest), digest, response.headers.get("content-type"))

    def _authorization(self, ref: ImageReference, challenge: str) -> str | None:
        scheme, _, params_text = challenge.partition(" ")
        creds = self._credentials.get(ref.registry)
        if scheme.lower() == "basic":
            return None if creds is None else "Basic " + _basic(creds)
        if scheme.lower() != "bearer":
            return None
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.pop("realm", None)
        if not realm:
            return None
        params.setdefault("scope", f"repository:{ref.repository}:pull")
        auth = httpx.BasicAuth(*creds) if creds is not None else None
        answer = self._http.get(realm, params=params, auth=auth) if auth else self._http.get(realm, params=params)
        if answer.status_code != 200:
            raise ImageResolutionError(
                f"image {ref.registry}/{ref.repository}: the token service {realm} answered HTTP {answer.status_code}"
            )
        body = answer.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ImageResolutionError(f"image {ref.registry}/{ref.repository}: the token service sent no token")
        return f"Bearer {token}"


def _basic(creds: tuple[str, str]) -> str:
    import base64

    return base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
