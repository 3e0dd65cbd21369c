"""Body limits: a declared length over the bound is refused before reading, a chunked body once it
passes the bound; either way 413 with problem details and nothing written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from fleetguard.api.limits import BodyLimit

if TYPE_CHECKING:
    from conftest import Api

_LIMIT = 1024  # the smallest bound Settings accepts


@pytest.fixture
def small(make_api: Any) -> Api:
    api: Api = make_api(max_request_bytes=_LIMIT, max_import_bytes=64 * 1024)
    return api


def _oversize_device() -> bytes:
    return json.dumps({"serial": "1", "manufacturer": "acme", "owner": "x" * (2 * _LIMIT)}).encode()


def _chunks(data: bytes, size: int = 256) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _assert_413(response: Any, api: Api) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "https://fleetguard.dev/problems/body-too-large"
    assert f"exceeds {_LIMIT} bytes" in problem["detail"] or "exceeds 65536 bytes" in problem["detail"]
    assert api.runtime.inventory.count() == 0


def test_declared_length_over_the_limit_is_413(small: Api) -> None:
    response = small.client.post(
        "/v1/devices",
        content=_oversize_device(),
        headers=small.headers(**{"Content-Type": "application/json"}),
    )
    _assert_413(response, small)


def test_chunked_body_over_the_limit_is_413(small: Api) -> None:
    response = small.client.post(
        "/v1/devices",
        content=_chunks(_oversize_device()),
        headers=small.headers(**{"Content-Type": "application/json"}),
    )
    assert "content-length" not in response.request.headers
    _assert_413(response, small)


def test_chunked_body_within_the_limit_passes(small: Api) -> None:
    body = json.dumps({"serial": "1", "manufacturer": "acme"}).encode()
    response = small.client.post(
        "/v1/devices", content=_chunks(body, 8), headers=small.headers(**{"Content-Type": "application/json"})
    )
    assert response.status_code == 201, response.text


def test_oversize_body_without_a_token_is_413_too(small: Api) -> None:
    response = small.client.post("/v1/devices", content=b"x" * (_LIMIT + 1))
    assert response.status_code == 413


def test_import_accepts_more_than_a_request(small: Api) -> None:
    rows = "".join(f"dev-{n},SN{n},acme\n" for n in range(100))
    body = ("id,serial,manufacturer\n" + rows).encode()
    assert _LIMIT < len(body) < 64 * 1024
    response = small.client.post(
        "/v1/devices/import", content=body, headers=small.headers(**{"Content-Type": "text/csv"})
    )
    assert response.json() == {"imported": 100}


@pytest.mark.parametrize("chunked", [False, True])
def test_import_over_its_own_limit_is_413(small: Api, chunked: bool) -> None:
    body = b"id,serial,manufacturer\n" + b"x" * (64 * 1024)
    response = small.client.post(
        "/v1/devices/import",
        content=_chunks(body, 4096) if chunked else body,
        headers=small.headers(**{"Content-Type": "text/csv"}),
    )
    assert response.status_code == 413
    assert "65536" in response.json()["detail"]
    assert small.runtime.inventory.count() == 0


def test_limit_for_matches_exact_paths() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    limits = BodyLimit(app, default=10, routes={"/v1/devices/import": 99})
    assert limits.limit_for("/v1/devices/import") == 99
    assert limits.limit_for("/v1/devices/import/") == 99
    assert limits.limit_for("/v1/devices/imports") == 10
    assert limits.limit_for("/v1/devices/import/transitions") == 10
    assert limits.limit_for("/v1/devices") == 10
    assert limits.limit_for("/") == 10


def test_a_device_path_beginning_with_import_gets_the_default_limit(small: Api) -> None:
    # "import" itself is a reserved id; the nearest legal id must not inherit the import limit.
    small.register(id="import-1")
    body = json.dumps({"action": "provision", "reason": "x" * (2 * _LIMIT)}).encode()
    response = small.client.post(
        "/v1/devices/import-1/transitions",
        content=body,
        headers=small.headers(**{"Content-Type": "application/json"}),
    )
    assert response.status_code == 413
    assert small.runtime.inventory.get("import-1").state == "registered"
