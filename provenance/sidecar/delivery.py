"""The sidecar's HTTP client to the controller (docs/sidecar-protocol.md section 2).

Every call carries the task token and has a timeout. Outcomes are mapped to the delivery error tree
so the :class:`~provenance.sidecar.spool.Spool` knows what to do:

* connection refused/reset, timeouts, 408, 429 and 5xx: :class:`RetryableDeliveryError` (back off, retry);
* any other 4xx (400 digest mismatch, 401/403 token, 409 other content under that manifest ID):
  :class:`PermanentDeliveryError` (dead letter, reported at exit).

The token never appears in a message or a log line. A directory artifact is uploaded as an
uncompressed tar of its files, paths relative to the directory, sorted, regular files only, the
completion marker (and the top-level git paths OMS ignores) left out: exactly the files its digest
covers, so the controller can re-hash what it receives.
"""

from __future__ import annotations

import functools
import io
import os
import ssl
import tarfile
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import structlog

from provenance.errors import PermanentDeliveryError, RetryableDeliveryError
from provenance.hashing import OMS_IGNORED_TOP_LEVEL

__all__ = ["API", "ControllerClient", "TokenFile", "tar_directory", "warm_up"]

log = structlog.get_logger(__name__)

API = "/api/v1"
_READ = 1024 * 1024
_IN_MEMORY_LIMIT = 8 * 1024 * 1024
_RETRYABLE_STATUS = frozenset({408, 425, 429})


def _files(directory: Path, exclude_top_level: frozenset[str]) -> list[tuple[str, Path]]:
    skipped = OMS_IGNORED_TOP_LEVEL | exclude_top_level
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        top = rel_root == "."
        if top:
            dirs[:] = [d for d in dirs if d not in skipped]
        dirs.sort()
        for name in sorted(files):
            if top and name in skipped:
                continue
            rel = name if top else f"{rel_root.replace(os.sep, '/')}/{name}"
            found.append((rel, Path(root) / name))
    return found


def tar_directory(
    directory: Path, out: io.BufferedIOBase | Any, exclude_top_level: frozenset[str] = frozenset()
) -> None:
    """Write the directory's files as an uncompressed tar (see the module docstring) to ``out``."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in _files(directory, exclude_top_level):
            info = tar.gettarinfo(str(full), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(full, "rb") as fh:
                tar.addfile(info, fh)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """What ``httpx`` builds for ``verify=True`` without ``trust_env`` (certifi's CA bundle), built once per
    process: loading the bundle costs tens of ms of CPU per client, at the start of every job."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def warm_up() -> None:
    """Do a client's one-time costs now (``httpcore``'s import, the TLS context): a standby sidecar calls
    this before its job starts, so creating :class:`ControllerClient` then is cheap."""
    import httpcore  # noqa: F401  # httpx imports it lazily, when the first client is built

    _tls_context()


def _chunks(fh: Any) -> Iterator[bytes]:
    while chunk := fh.read(_READ):
        yield chunk


class TokenFile(httpx.Auth):
    """Bearer auth from a token file read for every request: the Kubernetes runtime's projected,
    audience-bound service-account token, which the kubelet rewrites before it expires. An unreadable or
    empty file is a retryable delivery error (the kubelet may be between writes), never a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        try:
            token = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RetryableDeliveryError(f"cannot read the token file {self.path} ({type(exc).__name__})") from None
        if not token:
            raise RetryableDeliveryError(f"the token file {self.path} is empty")
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class ControllerClient:
    """Calls of docs/sidecar-protocol.md section 2 with the task token (a string, or a :class:`TokenFile`).
    Thread-safe (one httpx client)."""

    def __init__(self, base_url: str, token: str | TokenFile, task_id: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.task_id = task_id
        headers = {"User-Agent": "mlprov-sidecar"}
        if isinstance(token, str):
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            auth=token if isinstance(token, TokenFile) else None,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            trust_env=False,  # the controller is addressed directly, never through a proxy
            verify=_tls_context(),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, what: str, ok: tuple[int, ...], **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise RetryableDeliveryError(f"{what}: controller timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise RetryableDeliveryError(f"{what}: controller unreachable ({type(exc).__name__}: {exc})") from None
        if response.status_code in ok:
            return response
        detail = response.text.strip().replace("\n", " ")[:300]
        message = f"{what}: controller answered {response.status_code} {detail}".rstrip()
        if response.status_code in _RETRYABLE_STATUS or response.status_code >= 500:
            raise RetryableDeliveryError(message)
        raise PermanentDeliveryError(message)

    # -- the calls ---------------------------------------------------------------------------------
    def upload_artifact(
        self, digest: str, path: Path, *, is_dir: bool, exclude_top_level: frozenset[str] = frozenset()
    ) -> int:
        """``PUT /tasks/{task}/artifacts/{digest}``: the file's bytes, or a tar of the directory. Returns the status."""
        url = f"{API}/tasks/{self.task_id}/artifacts/{digest}"
        what = f"upload of {digest}"
        if is_dir:
            with tempfile.TemporaryFile(prefix="mlprov-upload-") as tmp:
                tar_directory(path, tmp, exclude_top_level)
                size = tmp.tell()
                tmp.seek(0)
                headers = {"Content-Type": "application/x-tar", "Content-Length": str(size)}
                return self._request(
                    "PUT", url, what=what, ok=(200, 201), content=_chunks(tmp), headers=headers
                ).status_code
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below; the OSError is mapped first
        except OSError as exc:
            raise PermanentDeliveryError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            content: bytes | Iterator[bytes] = fh.read() if size <= _IN_MEMORY_LIMIT else _chunks(fh)
            return self._request("PUT", url, what=what, ok=(200, 201), content=content, headers=headers).status_code

    def register_manifest(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /manifests``; the controller's answer ``{"id", "log_index", "artifact"}``."""
        manifest_id = body.get("manifest", {}).get("instance_id")
        response = self._request(
            "POST", f"{API}/manifests", what=f"registration of {manifest_id}", ok=(200, 201), json=body
        )
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            raise RetryableDeliveryError(f"registration of {manifest_id}: controller answered no JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise RetryableDeliveryError(f"registration of {manifest_id}: controller answer lacks an id")
        return answer

    def find_software_manifest(self, repo: str, commit: str) -> dict[str, Any] | None:
        """``GET /software-manifests?repo=&commit=``: ``{"id", "manifest"}`` or ``None`` (404)."""
        response = self._request(
            "GET",
            f"{API}/software-manifests",
            what=f"software manifest lookup of {commit[:12]}",
            ok=(200, 404),
            params={"repo": repo, "commit": commit},
        )
        if response.status_code == 404:
            return None
        try:
            found: dict[str, Any] = response.json()
        except ValueError:
            raise RetryableDeliveryError("software manifest lookup: controller answered no JSON") from None
        if not isinstance(found.get("id"), str) or not isinstance(found.get("manifest"), dict):
            raise RetryableDeliveryError("software manifest lookup: answer lacks id or manifest")
        return found
