"""Where ingest pulls its data from: ``builtin://``, ``file://``, ``http(s)://`` and ``s3://`` URIs.

Each reader copies the source's bytes into an open binary file and raises :class:`SourceError` (exit
3) with one line naming the URI when the source cannot be read, :class:`InputError` (exit 2) when
the URI itself is wrong. ``builtin://`` sources are written by :mod:`stages.synthetic`.

S3 settings: the endpoint comes from the ``s3_endpoint`` parameter (``http://127.0.0.1:9000``),
else ``AWS_ENDPOINT_URL``, else AWS itself; the region from ``s3_region`` or ``AWS_REGION`` /
``AWS_DEFAULT_REGION``. Credentials come **only** from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``; set them in the service's ``env``):
parameters are signed into every manifest and logged to MLflow, so a secret must never be one.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stages.workspace import InputError, SourceError

__all__ = ["SUPPORTED_SCHEMES", "ByteSink", "S3Settings", "copy_file", "copy_http", "copy_s3", "split_uri"]

SUPPORTED_SCHEMES = ("builtin", "file", "http", "https", "s3")
_CHUNK = 1 << 20


class ByteSink(Protocol):
    """Where a reader copies the bytes to (a binary file, or a wrapper that also hashes them)."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None
    region: str | None
    timeout: float


def split_uri(uri: str) -> urllib.parse.SplitResult:
    """The parsed URI; :class:`InputError` for an unsupported scheme or a missing location."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in SUPPORTED_SCHEMES:
        raise InputError(f"source {uri!r}: unsupported scheme; use one of {', '.join(SUPPORTED_SCHEMES)}")
    if parts.scheme in ("http", "https", "s3", "builtin") and not parts.netloc:
        raise InputError(f"source {uri!r}: no host/bucket/name after {parts.scheme}://")
    if parts.scheme in ("file", "s3") and parts.path in ("", "/"):
        raise InputError(f"source {uri!r}: no path to a file")
    return parts


def copy_file(parts: urllib.parse.SplitResult, out: ByteSink) -> None:
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"source {parts.geturl()!r}: file:// URIs must name a local path (file:///path)")
    path = Path(urllib.request.url2pathname(parts.path))
    try:
        with path.open("rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    except FileNotFoundError as exc:
        raise SourceError(f"source {parts.geturl()!r}: no such file {path}") from exc
    except IsADirectoryError as exc:
        raise SourceError(f"source {parts.geturl()!r}: {path} is a directory, not a data file") from exc
    except OSError as exc:
        raise SourceError(f"source {parts.geturl()!r}: cannot read {path}: {exc.strerror}") from exc


def copy_http(parts: urllib.parse.SplitResult, out: ByteSink, *, timeout: float) -> None:
    uri = parts.geturl()
    request = urllib.request.Request(uri, headers={"User-Agent": "mlprov-demo-ingest/1"})  # noqa: S310 - scheme checked
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"source {uri!r}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise SourceError(f"source {uri!r}: cannot connect ({exc.reason})") from exc
    except TimeoutError as exc:
        raise SourceError(f"source {uri!r}: no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise SourceError(f"source {uri!r}: transfer failed ({exc})") from exc


def _endpoint(settings: S3Settings) -> tuple[str, bool]:
    endpoint = settings.endpoint or os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"s3_endpoint {endpoint!r} must look like http(s)://host[:port]")
    return parsed.netloc, parsed.scheme == "https"


def copy_s3(parts: urllib.parse.SplitResult, out: ByteSink, settings: S3Settings) -> None:
    # Imported here: only an s3:// source pays for the client.
    import urllib3
    from minio import Minio
    from minio.error import MinioException, S3Error

    uri = parts.geturl()
    bucket, key = parts.netloc, parts.path.lstrip("/")
    host, secure = _endpoint(settings)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.timeout, read=settings.timeout),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    client = Minio(
        host,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        secure=secure,
        region=settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        http_client=http,
    )
    response = None
    try:
        response = client.get_object(bucket, key)
        for chunk in response.stream(_CHUNK):
            out.write(chunk)
    except S3Error as exc:
        raise SourceError(f"source {uri!r}: S3 {exc.code} ({exc.message})") from exc
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SourceError(f"source {uri!r}: cannot read from {host}: {exc}") from exc
    finally:
        if response is not None:
            response.close()
            response.release_conn()
