"""Liveness, readiness and metrics: public, and revealing nothing but counts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from fleetguard.store.errors import StoreUnavailable

if TYPE_CHECKING:
    from conftest import Api


def test_healthz_and_readyz_need_no_token(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}


class _Unreachable:
    """A database that does not answer, as when PostgreSQL is down."""

    def ping(self) -> None:
        raise StoreUnavailable("database unavailable: connection refused", hint="check that it runs")


def test_readyz_is_503_when_the_database_does_not_answer(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.runtime, "database", _Unreachable())
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"] == "https://fleetguard.dev/problems/store-unavailable"
    assert api.client.get("/healthz").status_code == 200


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match[1] for key, value in labels.items()):
            return float(match[2])
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_count_requests_by_route_template_and_devices_by_state(api: Api) -> None:
    api.register(id="cam-1")
    api.register(id="cam-2")
    api.client.post("/v1/devices/cam-2/transitions", json={"action": "provision"}, headers=api.headers())
    api.client.get("/v1/devices/cam-1", headers=api.headers())
    api.client.get("/v1/devices/ghost", headers=api.headers())
    api.client.get("/v1/devices/cam-1")
    api.client.get("/no/such/path")
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    route = "/v1/devices/{device_id}"
    assert _sample(text, "fleetguard_http_requests_total", route=route, status="200", method="GET") == 1
    assert _sample(text, "fleetguard_http_requests_total", route=route, status="404") == 1
    assert _sample(text, "fleetguard_http_requests_total", route=route, status="401") == 1
    assert _sample(text, "fleetguard_http_requests_total", route="unmatched", status="404") == 1
    assert _sample(text, "fleetguard_http_requests_total", route="/v1/devices", status="201") == 2
    assert _sample(text, "fleetguard_http_request_duration_seconds_count", route=route) == 3
    assert _sample(text, "fleetguard_devices", state="registered") == 1
    assert _sample(text, "fleetguard_devices", state="provisioned") == 1
    assert _sample(text, "fleetguard_devices", state="decommissioned") == 0
    assert "ghost" not in text
    assert "cam-1" not in text


def test_each_app_has_its_own_registry(make_api: object) -> None:
    first, second = make_api(), make_api()  # type: ignore[operator]
    first.client.get("/healthz")
    assert 'route="/healthz"' in first.client.get("/metrics").text
    assert 'route="/healthz"' not in second.client.get("/metrics").text
