"""Authentication and roles: every route but the public ones needs a token whose role grants its
permission; the matrices below walk every route, so that a new one cannot forget either."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute

from fleetguard.api.app import api_routes
from fleetguard.api.auth import PUBLIC_PATHS, actor_of, permission_of, require
from fleetguard.api.tokens import ROLE_PERMISSIONS, Permission, Role

if TYPE_CHECKING:
    from conftest import Api

_PLACEHOLDERS = {
    "action": "start",
    "alert_id": "no-such-alert",
    "batch_id": "no-such-batch",
    "ca_id": "no-such-ca",
    "campaign_id": "no-such-campaign",
    "device_id": "no-such-device",
    "manufacturer": "no-such-manufacturer",
    "model": "no-such-model",
    "request_id": "no-such-request",
    "scan_id": "no-such-scan",
    "seq": "1",
    "serial": "1",
    "sha256": "0" * 64,
    "token_id": "000000000000",
    "url": "https://no-such.example/mud.json",
    "version": "1",
}
_PROTECTED = [
    pytest.param(method, route.path, permission_of(route), id=f"{method} {route.path}")
    for route in api_routes()
    if route.path not in PUBLIC_PATHS
    for method in sorted(route.methods or ())
]


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: _PLACEHOLDERS[m[1]], path)  # {url:path} too


def _assert_problem(response_json: dict[str, object], status: int, code: str) -> None:
    assert response_json["status"] == status
    assert response_json["type"] == f"https://fleetguard.dev/problems/{code}"


def test_every_route_but_the_public_ones_requires_a_permission() -> None:
    paths = {route.path for route in api_routes()}
    assert paths >= PUBLIC_PATHS
    assert len(_PROTECTED) >= 20
    assert all(param.values[2] is not None for param in _PROTECTED)


@pytest.mark.parametrize(("method", "path", "permission"), _PROTECTED)
def test_route_without_token_is_401_problem(api: Api, method: str, path: str, permission: Permission) -> None:
    response = api.client.request(method, _concrete(path))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    _assert_problem(response.json(), 401, "unauthenticated")


@pytest.mark.parametrize(("method", "path", "permission"), _PROTECTED)
def test_route_enforces_its_permission_for_every_role(
    api: Api, method: str, path: str, permission: Permission
) -> None:
    for role in Role:
        response = api.client.request(method, _concrete(path), headers=api.headers(role))
        if permission in ROLE_PERMISSIONS[role]:
            assert response.status_code not in {401, 403}, (role, response.text)
        else:
            assert response.status_code == 403, (role, response.text)
            _assert_problem(response.json(), 403, "forbidden")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer nope", "Basic YWRtaW46YWRtaW4=", "Bearer fgt_000000000000_" + "A" * 43, "Bearer"],
)
def test_bad_credentials_are_401(api: Api, authorization: str) -> None:
    response = api.client.get("/v1/devices", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_revoked_token_is_refused_at_once(api: Api) -> None:
    token = api.token(Role.OPERATOR)
    token_id = token.split("_")[1]
    assert api.client.get("/v1/devices", headers=api.headers(Role.OPERATOR)).status_code == 200
    assert api.client.delete(f"/v1/tokens/{token_id}", headers=api.headers()).status_code == 200
    response = api.client.get("/v1/devices", headers=api.headers(Role.OPERATOR))
    assert response.status_code == 401
    assert response.json()["detail"] == "API token revoked"


@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        (Role.READ_ONLY, "POST", "/v1/devices", {"serial": "1", "manufacturer": "acme"}),
        (Role.AUDITOR, "POST", "/v1/devices/{id}/transitions", {"action": "provision"}),
        (Role.OPERATOR, "POST", "/v1/tokens", {"name": "mine", "role": "admin"}),
        (Role.OPERATOR, "POST", "/v1/events/checkpoints", None),
        (Role.OPERATOR, "GET", "/v1/events/verify", None),
        (Role.READ_ONLY, "GET", "/v1/events", None),
        (Role.READ_ONLY, "PUT", "/v1/policies", {"text": "// x", "expected_version": 0}),
        (Role.AUDITOR, "POST", "/v1/devices/{id}/signals", {"risk": 90}),
    ],
)
def test_wrong_role_is_403_and_changes_nothing(
    api: Api, role: Role, method: str, path: str, body: dict[str, str] | None
) -> None:
    device = api.register()
    headers = api.headers(role)
    size = api.log_size()
    response = api.client.request(method, path.replace("{id}", device["id"]), json=body, headers=headers)
    assert response.status_code == 403
    assert f"role {role} may not" in response.json()["detail"]
    assert api.log_size() == size
    assert api.runtime.inventory.get(device["id"]).version == device["version"]


def test_changes_are_logged_with_the_token_as_actor(api: Api) -> None:
    device = api.register()
    entry = api.runtime.log.entries(subject=f"device:{device['id']}")[0]
    admin = next(t for t in api.runtime.tokens.tokens() if t.name == "initial admin")
    assert entry.actor == actor_of(admin) == f"token:{admin.id}:initial admin"


def test_permission_of_reads_the_requirement_back() -> None:
    router = APIRouter()

    @router.get("/guarded", dependencies=[Depends(require(Permission.EVENTS_AUDIT))])
    def guarded() -> None: ...

    @router.get("/open")
    def unguarded() -> None: ...

    guarded_route, open_route = (r for r in router.routes if isinstance(r, APIRoute))
    assert permission_of(guarded_route) is Permission.EVENTS_AUDIT
    assert permission_of(open_route) is None
