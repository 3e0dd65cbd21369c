"""The interactive API docs are served from the installation itself, with no CDN."""

from __future__ import annotations

import re

from conftest import Api


def test_docs_page_loads_only_local_assets(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sources
    assert all(src.startswith("/") for src in sources), sources
    assert "cdn" not in page.text.lower()
    script = api.client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(script.content) > 100_000


def test_docs_are_not_an_api_operation(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith("/docs") for path in paths)


def test_reserved_collection_actions_are_not_device_ids(api: Api) -> None:
    response = api.client.post(
        "/v1/devices", json={"serial": "S", "manufacturer": "acme", "id": "export"}, headers=api.headers()
    )
    assert response.status_code == 422
    assert "reserved" in response.json()["detail"]
    assert api.runtime.inventory.count() == 0
