"""Sites and device types over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetguard.api.tokens import Role

if TYPE_CHECKING:
    from conftest import Api


def test_sites_create_list_and_refuse_duplicates(api: Api) -> None:
    response = api.client.post(
        "/v1/sites", json={"id": "plant-1", "name": "Plant 1"}, headers=api.headers(Role.OPERATOR)
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Plant 1"
    again = api.client.post("/v1/sites", json={"id": "plant-1"}, headers=api.headers())
    assert (again.status_code, again.json()["type"]) == (409, "https://fleetguard.dev/problems/duplicate")
    listed = api.client.get("/v1/sites", headers=api.headers(Role.READ_ONLY)).json()
    assert [site["id"] for site in listed] == ["plant-1"]


def test_device_types_create_and_list(api: Api) -> None:
    body = {"id": "cam", "manufacturer": "acme", "model": "C1", "mud_url": "https://mud.acme.example/c1"}
    response = api.client.post("/v1/device-types", json=body, headers=api.headers(Role.OPERATOR))
    assert response.status_code == 201, response.text
    listed = api.client.get("/v1/device-types", headers=api.headers(Role.AUDITOR)).json()
    assert [(t["id"], t["mud_url"]) for t in listed] == [("cam", body["mud_url"])]


def test_device_type_with_http_mud_url_is_422(api: Api) -> None:
    body = {"id": "cam", "mud_url": "http://mud.acme.example/c1"}
    response = api.client.post("/v1/device-types", json=body, headers=api.headers())
    assert response.status_code == 422
    assert "RFC 8520" in response.json()["detail"]


def test_devices_reference_sites_and_types(api: Api) -> None:
    api.client.post("/v1/sites", json={"id": "plant-1"}, headers=api.headers())
    api.client.post("/v1/device-types", json={"id": "cam"}, headers=api.headers())
    device = api.register(site="plant-1", device_type="cam")
    assert (device["site"], device["device_type"]) == ("plant-1", "cam")


def test_read_only_cannot_create_a_site(api: Api) -> None:
    response = api.client.post("/v1/sites", json={"id": "plant-1"}, headers=api.headers(Role.READ_ONLY))
    assert response.status_code == 403
    assert api.runtime.inventory.sites() == []
