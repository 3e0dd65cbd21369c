"""Bulk import (all or nothing, bad rows named) and streamed export, in both formats."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from fleetguard.api.tokens import Role
from fleetguard.inventory.transfer import write_csv, write_json

if TYPE_CHECKING:
    from conftest import Api

_GOOD_CSV = b'id,serial,manufacturer,labels\ncam-1,SN1,acme,"{""env"": ""prod""}"\ncam-2,SN2,acme,\n'


def _import(api: Api, body: bytes, content_type: str = "text/csv", **params: str) -> Any:
    return api.client.post(
        "/v1/devices/import",
        content=body,
        params=params,
        headers=api.headers(Role.OPERATOR, **{"Content-Type": content_type}),
    )


def test_import_csv_registers_every_row(api: Api) -> None:
    response = _import(api, _GOOD_CSV, reason="initial load")
    assert response.status_code == 200, response.text
    assert response.json() == {"imported": 2}
    assert api.runtime.inventory.get("cam-1").labels == {"env": "prod"}
    entry = api.runtime.log.entries(subject="device:cam-2")[0]
    assert (entry.action, entry.reason) == ("device.registered", "initial load")


def test_import_json_with_format_parameter(api: Api) -> None:
    body = json.dumps([{"id": "x", "serial": "1", "manufacturer": "acme"}]).encode()
    response = _import(api, body, content_type="application/octet-stream", format="json")
    assert response.json() == {"imported": 1}


def test_import_with_a_bad_row_is_422_naming_it_and_writes_nothing(api: Api) -> None:
    api.token(Role.OPERATOR)
    size = api.log_size()
    body = _GOOD_CSV + b"cam-3,,acme,\n"
    response = _import(api, body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "https://fleetguard.dev/problems/import-rejected"
    assert problem["row"] == 3
    assert "serial" in problem["reason"]
    assert "nothing was imported" in problem["detail"]
    assert api.runtime.inventory.count() == 0
    assert api.log_size() == size


def test_import_duplicate_of_an_existing_device_is_rejected_whole(api: Api) -> None:
    api.register(id="cam-2")
    response = _import(api, _GOOD_CSV)
    assert (response.status_code, response.json()["row"]) == (422, 2)
    assert api.runtime.inventory.count() == 1


def test_import_malformed_json_is_422_at_row_0(api: Api) -> None:
    response = _import(api, b"[{", content_type="application/json")
    assert (response.status_code, response.json()["row"]) == (422, 0)


def test_import_of_unknown_media_type_is_415(api: Api) -> None:
    response = _import(api, _GOOD_CSV, content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["type"] == "https://fleetguard.dev/problems/unsupported-media-type"


def test_import_row_limit_is_enforced(make_api: Any) -> None:
    api = make_api(max_import_rows=1)
    response = _import(api, _GOOD_CSV)
    assert (response.status_code, response.json()["row"]) == (422, 2)
    assert api.runtime.inventory.count() == 0


@pytest.mark.parametrize(("output", "writer"), [("csv", write_csv), ("json", write_json)])
def test_export_streams_what_transfer_writes(api: Api, output: str, writer: Any) -> None:
    for number in range(3):
        api.register(id=f"dev-{number}", labels={"n": str(number)})
    response = api.client.get(
        "/v1/devices/export", params={"format": output}, headers=api.headers(Role.READ_ONLY)
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="devices.{output}"'
    expected = io.StringIO()
    writer(api.runtime.inventory.iterate(), expected)
    assert response.text == expected.getvalue()


@pytest.mark.parametrize(("output", "media_type"), [("csv", "text/csv"), ("json", "application/json")])
def test_export_round_trips_into_another_installation(make_api: Any, output: str, media_type: str) -> None:
    source, target = make_api(), make_api()
    source.register(id="cam-1", labels={"env": "prod"}, owner="ops")
    source.register(id="cam-2", model="M2")
    source.register(id="lock-1", labels={"env": "dev"})
    exported = source.client.get(
        "/v1/devices/export", params={"format": output, "label": "env=prod"}, headers=source.headers()
    )
    assert exported.headers["content-type"].startswith(media_type)
    response = _import(target, exported.content, content_type=media_type)
    assert response.json() == {"imported": 1}
    copy, original = target.runtime.inventory.get("cam-1"), source.runtime.inventory.get("cam-1")
    assert (copy.serial, copy.owner, copy.labels) == (original.serial, original.owner, original.labels)


def test_export_of_nothing_is_a_header_or_an_empty_array(api: Api) -> None:
    csv_text = api.client.get("/v1/devices/export", headers=api.headers()).text
    assert csv_text.startswith("id,serial,manufacturer")
    assert csv_text.count("\n") == 1
    json_text = api.client.get("/v1/devices/export", params={"format": "json"}, headers=api.headers()).text
    assert json.loads(json_text) == []


def test_export_path_is_not_read_as_a_device_id(api: Api) -> None:
    response = api.client.get("/v1/devices/export", headers=api.headers())
    assert response.headers["content-type"].startswith("text/csv")
