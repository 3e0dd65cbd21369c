"""``/v1/monitor/alerts``: list, get and triage alerts; read-only tokens cannot triage."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from fleetguard.api.tokens import Role
from fleetguard.monitor.alerts import AlertInput, Severity

if TYPE_CHECKING:
    from conftest import Api


def _raise(api: Api) -> str:
    api.register(id="cam-1", serial="cam-1", manufacturer="Acme")
    alert = api.runtime.alerts.raise_alert(
        AlertInput(
            rule="scan.port", detector="rules", severity=Severity.MEDIUM, address="10.0.0.5",
            reason="25 ports in 60 s (threshold 20)", at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
            device_id="cam-1", evidence={"ports": 25},
        )
    )  # fmt: skip
    assert alert is not None
    return alert.id


def test_alerts_are_listed_and_triaged_through_the_api(api: Api) -> None:
    alert_id = _raise(api)
    listed = api.client.get("/v1/monitor/alerts?state=new", headers=api.headers(Role.READ_ONLY))
    assert listed.status_code == 200
    assert [(a["id"], a["rule"], a["evidence"]) for a in listed.json()] == [
        (alert_id, "scan.port", {"ports": 25})
    ]
    one = api.client.get(f"/v1/monitor/alerts/{alert_id}", headers=api.headers(Role.AUDITOR))
    assert one.json()["reason"] == "25 ports in 60 s (threshold 20)"
    refused = api.client.post(
        f"/v1/monitor/alerts/{alert_id}/triage",
        json={"state": "resolved"},
        headers=api.headers(Role.READ_ONLY),
    )
    assert refused.status_code == 403
    done = api.client.post(
        f"/v1/monitor/alerts/{alert_id}/triage", json={"state": "acknowledged", "note": "looking"},
        headers=api.headers(Role.OPERATOR),
    )  # fmt: skip
    assert done.status_code == 200
    assert (done.json()["state"], done.json()["triage_note"]) == ("acknowledged", "looking")
    backwards = api.client.post(
        f"/v1/monitor/alerts/{alert_id}/triage", json={"state": "new"}, headers=api.headers(Role.OPERATOR)
    )
    assert backwards.status_code == 409
    assert api.client.get("/v1/monitor/alerts/nope", headers=api.headers()).status_code == 404
