"""The app factory: one app per runtime, and the env-configured factory that owns its runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetguard.api.app import create_app_from_env
from fleetguard.config import Settings
from fleetguard.events.errors import BusError
from fleetguard.installation import NotInitialized, initialize
from fleetguard.types import utc_now


def test_factory_from_env_serves_and_closes_its_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    _, token = initialize(Settings(data_dir=data_dir), "example.org", now=utc_now())
    monkeypatch.setenv("FLEETGUARD_DATA_DIR", str(data_dir))
    app = create_app_from_env()
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        response = client.get("/v1/devices", headers={"Authorization": f"Bearer {token}"})
        assert response.json()["items"] == []
    with pytest.raises(BusError, match="closed"):
        app.state.runtime.bus.publish("fleetguard.system.test", b"{}")


def test_factory_from_env_without_an_installation_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETGUARD_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(NotInitialized, match="fleetguard init"):
        create_app_from_env()
