"""Devices over HTTP: register, read, search, page, update with optimistic locking, transitions; and
bad input, each refused with problem details and no change to the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from fleetguard.api.tokens import Role

if TYPE_CHECKING:
    from conftest import Api


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://fleetguard.dev/problems/{code}"
    assert body["status"] == status
    assert body["instance"] == response.request.url.path
    assert body["title"]
    assert body["detail"]
    return body


def test_register_answers_201_with_location_and_etag(api: Api) -> None:
    response = api.client.post(
        "/v1/devices",
        json={"id": "cam-1", "serial": "SN1", "manufacturer": "acme", "labels": {"env": "prod"}},
        headers=api.headers(),
    )
    assert response.status_code == 201
    assert response.headers["location"] == "/v1/devices/cam-1"
    assert response.headers["etag"] == '"1"'
    device = response.json()
    assert device["state"] == "registered"
    assert device["version"] == 1
    assert device["labels"] == {"env": "prod"}
    assert device["created_at"].endswith("Z")
    assert device["last_seen"] is None
    fetched = api.client.get("/v1/devices/cam-1", headers=api.headers(Role.READ_ONLY))
    assert fetched.json() == device
    assert fetched.headers["etag"] == '"1"'


def test_register_without_id_gets_a_uuid(api: Api) -> None:
    device = api.register()
    assert len(device["id"]) == 36


def test_duplicate_serial_is_409_and_writes_nothing(api: Api) -> None:
    api.register(id="a", serial="SN1")
    size = api.log_size()
    response = api.client.post(
        "/v1/devices", json={"id": "b", "serial": "SN1", "manufacturer": "acme"}, headers=api.headers()
    )
    _problem(response, 409, "duplicate")
    assert api.runtime.inventory.count() == 1
    assert api.log_size() == size


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"serial": "1", "manufacturer": "acme", "colour": "red"}, ["body", "colour"]),
        ({"serial": "1"}, ["body", "manufacturer"]),
        ({"serial": "1", "manufacturer": "acme", "owner": "x" * 257}, ["body", "owner"]),
        ({"serial": "1", "manufacturer": "acme", "labels": {"k": 1}}, ["body", "labels", "k"]),
    ],
)
def test_invalid_body_is_422_with_errors(api: Api, body: dict[str, Any], where: list[str]) -> None:
    problem = _problem(api.client.post("/v1/devices", json=body, headers=api.headers()), 422, "invalid-input")
    assert [error["loc"] for error in problem["errors"]] == [where]
    assert api.runtime.inventory.count() == 0


def test_core_validation_is_422(api: Api) -> None:
    response = api.client.post(
        "/v1/devices",
        json={"id": "bad/id", "serial": "1", "manufacturer": "acme"},
        headers=api.headers(),
    )
    assert "invalid device id" in _problem(response, 422, "invalid-input")["detail"]


def test_unknown_site_is_422(api: Api) -> None:
    response = api.client.post(
        "/v1/devices", json={"serial": "1", "manufacturer": "acme", "site": "mars"}, headers=api.headers()
    )
    problem = _problem(response, 422, "unknown-reference")
    assert problem["hint"] == "create it first"


def test_malformed_json_is_400(api: Api) -> None:
    response = api.client.post(
        "/v1/devices",
        content=b'{"serial": "1", ',
        headers=api.headers(**{"Content-Type": "application/json"}),
    )
    assert "not valid JSON" in _problem(response, 400, "malformed-json")["detail"]
    assert api.runtime.inventory.count() == 0


def test_unknown_device_is_404(api: Api) -> None:
    problem = _problem(api.client.get("/v1/devices/ghost", headers=api.headers()), 404, "device-not-found")
    assert problem["device_id"] == "ghost"
    assert problem["hint"]


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    _problem(api.client.get("/v1/nothing", headers=api.headers()), 404, "not-found")
    response = api.client.put("/v1/devices", headers=api.headers())
    _problem(response, 405, "method-not-allowed")
    assert response.headers["allow"]


def test_list_filters_by_label_state_and_text(api: Api) -> None:
    api.register(id="cam-1", labels={"env": "prod", "zone": "a"}, owner="ops team")
    api.register(id="cam-2", labels={"env": "prod", "zone": "b"})
    api.register(id="lock-1", labels={"env": "dev"}, model="DoorLock 3")
    api.client.post("/v1/devices/cam-2/transitions", json={"action": "provision"}, headers=api.headers())

    def ids(**params: Any) -> list[str]:
        response = api.client.get("/v1/devices", params=params, headers=api.headers(Role.READ_ONLY))
        assert response.status_code == 200, response.text
        return [device["id"] for device in response.json()["items"]]

    assert ids() == ["cam-1", "cam-2", "lock-1"]
    assert ids(label="env=prod") == ["cam-1", "cam-2"]
    assert ids(label=["env=prod", "zone=b"]) == ["cam-2"]
    assert ids(state="provisioned") == ["cam-2"]
    assert ids(q="lock") == ["lock-1"]
    assert ids(q="ops") == ["cam-1"]
    assert ids(model="DoorLock 3") == ["lock-1"]
    assert ids(id="cam-2") == ["cam-2"]
    assert ids(created_after="2000-01-01T00:00:00Z", label="env=dev") == ["lock-1"]
    assert ids(seen_after="2000-01-01T00:00:00Z") == []


@pytest.mark.parametrize(
    "params",
    [{"label": "env"}, {"state": "lost"}, {"created_after": "2024-01-01T00:00:00"}, {"limit": 0}],
)
def test_bad_filters_are_422(api: Api, params: dict[str, str]) -> None:
    _problem(api.client.get("/v1/devices", params=params, headers=api.headers()), 422, "invalid-input")


def test_pages_follow_the_cursor(api: Api) -> None:
    for number in range(5):
        api.register(id=f"dev-{number}")
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2, "count": "true"}
    while True:
        page = api.client.get("/v1/devices", params=params, headers=api.headers()).json()
        assert page["total"] == 5
        seen += [device["id"] for device in page["items"]]
        if page["next_after"] is None:
            break
        params["after"] = page["next_after"]
    assert seen == [f"dev-{n}" for n in range(5)]


def test_page_size_is_bounded_by_settings(make_api: Any) -> None:
    api = make_api(max_page_size=3)
    response = api.client.get("/v1/devices", params={"limit": 4}, headers=api.headers())
    assert "maximum page size 3" in _problem(response, 422, "invalid-input")["detail"]


def test_patch_with_if_match_updates_and_bumps_the_etag(api: Api) -> None:
    api.register(id="cam-1")
    response = api.client.patch(
        "/v1/devices/cam-1",
        json={"owner": "facilities", "labels": {"env": "prod"}, "reason": "handover"},
        headers=api.headers(Role.OPERATOR, **{"If-Match": '"1"'}),
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    assert response.json()["owner"] == "facilities"
    entry = api.runtime.log.entries(subject="device:cam-1", newest_first=True)[0]
    assert (entry.action, entry.reason) == ("device.updated", "handover")


def test_patch_with_version_field_works_too(api: Api) -> None:
    api.register(id="cam-1")
    response = api.client.patch("/v1/devices/cam-1", json={"model": "X", "version": 1}, headers=api.headers())
    assert response.json()["version"] == 2


def test_patch_with_stale_version_is_409_and_changes_nothing(api: Api) -> None:
    api.register(id="cam-1")
    api.client.patch("/v1/devices/cam-1", json={"owner": "first", "version": 1}, headers=api.headers())
    size = api.log_size()
    response = api.client.patch(
        "/v1/devices/cam-1", json={"owner": "second"}, headers=api.headers(**{"If-Match": '"1"'})
    )
    _problem(response, 409, "concurrent-update")
    device = api.runtime.inventory.get("cam-1")
    assert (device.owner, device.version) == ("first", 2)
    assert api.log_size() == size


def test_patch_without_precondition_is_428(api: Api) -> None:
    api.register(id="cam-1")
    response = api.client.patch("/v1/devices/cam-1", json={"owner": "x"}, headers=api.headers())
    assert "If-Match" in _problem(response, 428, "precondition-required")["hint"]
    assert api.runtime.inventory.get("cam-1").owner == ""


@pytest.mark.parametrize("if_match", ["1", 'W/"1"', '"1", "2"', "*"])
def test_patch_with_unusable_if_match_is_422(api: Api, if_match: str) -> None:
    api.register(id="cam-1")
    response = api.client.patch(
        "/v1/devices/cam-1", json={"owner": "x"}, headers=api.headers(**{"If-Match": if_match})
    )
    _problem(response, 422, "invalid-input")


def test_patch_with_disagreeing_preconditions_is_422(api: Api) -> None:
    api.register(id="cam-1")
    response = api.client.patch(
        "/v1/devices/cam-1", json={"owner": "x", "version": 2}, headers=api.headers(**{"If-Match": '"1"'})
    )
    _problem(response, 422, "invalid-input")


def test_patch_unknown_device_is_404(api: Api) -> None:
    response = api.client.patch("/v1/devices/ghost", json={"owner": "x", "version": 1}, headers=api.headers())
    _problem(response, 404, "device-not-found")


def test_transitions_follow_the_lifecycle(api: Api) -> None:
    api.register(id="cam-1")
    for action, state in [
        ("provision", "provisioned"),
        ("activate", "active"),
        ("quarantine", "quarantined"),
    ]:
        response = api.client.post(
            "/v1/devices/cam-1/transitions",
            json={"action": action, "reason": "test"},
            headers=api.headers(Role.OPERATOR),
        )
        assert response.status_code == 200, response.text
        assert response.json()["state"] == state
    assert response.headers["etag"] == '"4"'
    actions = [e.action for e in api.runtime.log.entries(subject="device:cam-1")]
    assert actions == ["device.registered", "device.provision", "device.activate", "device.quarantine"]


def test_illegal_transition_is_409_and_changes_and_logs_nothing(api: Api) -> None:
    api.register(id="cam-1")
    size = api.log_size()
    response = api.client.post(
        "/v1/devices/cam-1/transitions", json={"action": "release"}, headers=api.headers()
    )
    problem = _problem(response, 409, "illegal-transition")
    assert (problem["state"], problem["action"], problem["device_id"]) == ("registered", "release", "cam-1")
    device = api.runtime.inventory.get("cam-1")
    assert (device.state, device.version) == ("registered", 1)
    assert api.log_size() == size


def test_transition_honours_if_match(api: Api) -> None:
    api.register(id="cam-1")
    response = api.client.post(
        "/v1/devices/cam-1/transitions",
        json={"action": "provision"},
        headers=api.headers(**{"If-Match": '"7"'}),
    )
    _problem(response, 409, "concurrent-update")
    assert api.runtime.inventory.get("cam-1").state == "registered"


def test_unknown_action_is_422(api: Api) -> None:
    api.register(id="cam-1")
    response = api.client.post(
        "/v1/devices/cam-1/transitions", json={"action": "explode"}, headers=api.headers()
    )
    _problem(response, 422, "invalid-input")


def test_decommissioned_device_cannot_be_updated(api: Api) -> None:
    api.register(id="cam-1")
    api.client.post("/v1/devices/cam-1/transitions", json={"action": "decommission"}, headers=api.headers())
    response = api.client.patch("/v1/devices/cam-1", json={"owner": "x", "version": 2}, headers=api.headers())
    assert _problem(response, 409, "illegal-transition")["state"] == "decommissioned"
