"""The registry client resolving tags to digests: the exact requests (HEAD, Accept headers), the bearer
challenge, a registry without the digest header, references already pinned, and the errors."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from controller.services.images import MANIFEST_MEDIA_TYPES, ImageReference, ImageResolutionError, ImageResolver

DIGEST = "sha256:" + "e" * 64


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("python:3.11", ("registry-1.docker.io", "library/python", "3.11", None)),
        ("ghcr.io/org/train", ("ghcr.io", "org/train", "latest", None)),
        ("localhost:5000/a/b:v1", ("localhost:5000", "a/b", "v1", None)),
        (f"reg.example/x@{DIGEST}", ("reg.example", "x", None, DIGEST)),
        ("org/tool:2", ("registry-1.docker.io", "org/tool", "2", None)),
    ],
)
def test_references_parse(ref: str, expected: tuple[str, str, str | None, str | None]) -> None:
    parsed = ImageReference.parse(ref)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == expected


def test_head_with_the_manifest_accept_headers_returns_the_pinned_reference() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST, "Content-Type": MANIFEST_MEDIA_TYPES[0]})

    resolver = ImageResolver(transport=httpx.MockTransport(handler))
    resolved = resolver.resolve("ghcr.io/org/train:1.2")
    assert resolved.pinned == f"ghcr.io/org/train@{DIGEST}"
    assert resolved.digest == DIGEST
    assert [(r.method, str(r.url)) for r in seen] == [("HEAD", "https://ghcr.io/v2/org/train/manifests/1.2")]
    accept = seen[0].headers["accept"]
    for media in MANIFEST_MEDIA_TYPES:
        assert media in accept


def test_bearer_challenge_fetches_a_token_and_retries() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url} {request.headers.get('authorization', '-')}")
        if request.url.host == "auth.example":
            assert request.url.params["scope"] == "repository:library/python:pull"
            assert request.url.params["service"] == "registry.docker.io"
            return httpx.Response(200, json={"token": "tok"})
        if request.headers.get("authorization") == "Bearer tok":
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
        challenge = 'Bearer realm="https://auth.example/token",service="registry.docker.io"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    resolved = ImageResolver(transport=httpx.MockTransport(handler)).resolve("python:3.11")
    assert resolved.pinned == f"registry-1.docker.io/library/python@{DIGEST}"
    assert seen[0].startswith("HEAD https://registry-1.docker.io/v2/library/python/manifests/3.11 -")
    assert seen[1].startswith("GET https://auth.example/token?")
    assert seen[2].endswith("Bearer tok")


def test_basic_credentials_go_to_the_token_service() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            assert request.headers["authorization"].startswith("Basic ")
            return httpx.Response(200, json={"access_token": "t2"})
        if request.headers.get("authorization") == "Bearer t2":
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/t"'})

    resolver = ImageResolver(credentials={"reg.example": ("u", "p")}, transport=httpx.MockTransport(handler))
    assert resolver.resolve("reg.example/private/model:1").digest == DIGEST


def test_without_the_digest_header_the_body_is_hashed() -> None:
    body = b'{"schemaVersion": 2}'

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.scheme == "http"  # an insecure (local) registry
        return httpx.Response(200, content=body if request.method == "GET" else b"")

    resolver = ImageResolver(insecure=["127.0.0.1:5000"], transport=httpx.MockTransport(handler))
    resolved = resolver.resolve("127.0.0.1:5000/demo/stage:dev")
    assert resolved.digest == "sha256:" + hashlib.sha256(body).hexdigest()


def test_a_pinned_reference_needs_no_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    resolved = ImageResolver(transport=httpx.MockTransport(handler)).resolve(f"reg.example/x:1@{DIGEST}")
    assert resolved.pinned == f"reg.example/x@{DIGEST}"


@pytest.mark.parametrize(("status", "message"), [(404, "has no such tag"), (403, "denied"), (500, "HTTP 500")])
def test_registry_refusals_name_the_image(status: int, message: str) -> None:
    resolver = ImageResolver(transport=httpx.MockTransport(lambda r: httpx.Response(status)))
    with pytest.raises(ImageResolutionError, match=message) as info:
        resolver.resolve("reg.example/a:1")
    assert "reg.example/a:1" in str(info.value)


def test_an_unreachable_registry_is_a_launch_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ImageResolutionError, match="unreachable"):
        ImageResolver(transport=httpx.MockTransport(handler)).resolve("reg.example/a:1")
