"""Threat monitoring: alerts with their evidence, and their triage (tokens with ``monitor:read`` /
``monitor:write``). A device's risk score follows its open alerts (``fleetguard.monitor.alerts``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.errors import NotFound
from fleetguard.monitor.alerts import Alert, AlertState, Severity

__all__ = ["router"]

router = APIRouter(tags=["monitor"], responses=problem_responses(401, 403, 422, 503))
_Reader = Annotated[TokenInfo, Depends(require(Permission.MONITOR_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.MONITOR_WRITE))]
_AlertId = Annotated[str, Path(min_length=1, max_length=64, description="The alert id.")]


class AlertView(BaseModel):
    """An alert: what fired, about whom, why, the evidence, and its triage."""

    id: str
    rule: str
    detector: str
    severity: Severity
    state: AlertState
    device_id: str | None
    address: str
    reason: str
    evidence: dict[str, Any]
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    triaged_by: str | None
    triage_note: str

    @classmethod
    def of(cls, alert: Alert) -> AlertView:
        """Build the view of ``alert``."""
        return cls(
            id=alert.id, rule=alert.rule, detector=alert.detector, severity=alert.severity, state=alert.state,
            device_id=alert.device_id, address=alert.address, reason=alert.reason,
            evidence=dict(alert.evidence), count=alert.count, first_seen=alert.first_seen,
            last_seen=alert.last_seen, triaged_by=alert.triaged_by, triage_note=alert.triage_note,
        )  # fmt: skip


class Triage(BaseModel):
    """A triage decision."""

    state: AlertState = Field(description="acknowledged, resolved or false_positive.")
    note: str = Field(default="", max_length=1000, description="Why; kept with the alert.")


@router.get("/v1/monitor/alerts", summary="List alerts")
def list_alerts(
    runtime: RuntimeDep,
    _token: _Reader,
    state: Annotated[AlertState | None, Query(description="Only alerts in this state.")] = None,
    device_id: Annotated[str | None, Query(max_length=128, description="Only about this device.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AlertView]:
    """Alerts, most recent first."""
    return [AlertView.of(a) for a in runtime.alerts.alerts(state=state, device_id=device_id, limit=limit)]


@router.get("/v1/monitor/alerts/{alert_id}", summary="Get an alert", responses=problem_responses(404))
def get_alert(alert_id: _AlertId, runtime: RuntimeDep, _token: _Reader) -> AlertView:
    """One alert with its evidence."""
    for alert in runtime.alerts.alerts(limit=10_000):
        if alert.id == alert_id:
            return AlertView.of(alert)
    raise NotFound(f"no alert {alert_id!r}")


@router.post(
    "/v1/monitor/alerts/{alert_id}/triage", summary="Triage an alert", responses=problem_responses(404, 409)
)
def triage_alert(alert_id: _AlertId, body: Triage, runtime: RuntimeDep, token: _Writer) -> AlertView:
    """Acknowledge, resolve or mark an alert a false positive; the device's risk follows its open alerts."""
    return AlertView.of(runtime.alerts.triage(alert_id, body.state, actor=actor_of(token), note=body.note))
