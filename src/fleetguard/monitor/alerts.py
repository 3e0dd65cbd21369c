"""Alerts: stored with their evidence, de-duplicated, rate limited, triaged, exported, and acted on.

Theory of operation. A detector's finding becomes an :class:`AlertInput`. :meth:`AlertService.raise_alert`
de-duplicates on ``rule | subject | target`` against the *open* alerts (new or acknowledged): a repeat
raises the count and ``last_seen`` of the open alert instead of a new one. New alerts are rate limited
per subject (``max_new_per_hour``); what is suppressed is counted, never silently lost. Every new alert
and every triage change is in the event log.

Triage follows :data:`_TRIAGE` (``new → acknowledged → resolved``, and ``false_positive`` from either
open state). Response: a device's risk score is the sum of its open alerts' severity weights, capped at
100, reported to the trust capability (which re-decides the device's access at once); with a
:class:`ResponsePolicy` threshold the device is also quarantined through the inventory. Both are in
the event log through those services. Alerts go to the configured sinks (syslog with CEF, JSON
webhooks); a sink that fails is logged and the alert stays stored.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import socket
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select

from fleetguard.errors import Conflict, InvalidInput, NotFound
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.monitor.rules import Severity
from fleetguard.store.database import Database
from fleetguard.store.models import MonitorAlertRow

__all__ = [
    "Alert",
    "AlertInput",
    "AlertService",
    "AlertSink",
    "AlertState",
    "ResponsePolicy",
    "Severity",
    "SyslogSink",
    "WebhookSink",
    "to_cef",
]

_log = logging.getLogger(__name__)
_MAX_EVIDENCE = 8192
_MAX_REASON = 2000
_MAX_NOTE = 1000


_RISK = {Severity.LOW: 5, Severity.MEDIUM: 15, Severity.HIGH: 35, Severity.CRITICAL: 60}
_CEF_SEVERITY = {Severity.LOW: 3, Severity.MEDIUM: 5, Severity.HIGH: 8, Severity.CRITICAL: 10}


class AlertState(enum.StrEnum):
    """Where an alert is in triage."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    FALSE_POSITIVE = "false_positive"


_OPEN = (AlertState.NEW, AlertState.ACKNOWLEDGED)
_TRIAGE: dict[AlertState, frozenset[AlertState]] = {
    AlertState.NEW: frozenset({AlertState.ACKNOWLEDGED, AlertState.RESOLVED, AlertState.FALSE_POSITIVE}),
    AlertState.ACKNOWLEDGED: frozenset({AlertState.RESOLVED, AlertState.FALSE_POSITIVE}),
    AlertState.RESOLVED: frozenset(),
    AlertState.FALSE_POSITIVE: frozenset(),
}


@dataclass(frozen=True, slots=True)
class AlertInput:
    """What a detector found: rule, who, why, and the evidence (JSON-able, bounded when stored)."""

    rule: str
    detector: str
    severity: Severity
    address: str
    reason: str
    at: dt.datetime
    device_id: str | None = None
    target: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """A stored alert."""

    id: str
    rule: str
    detector: str
    severity: Severity
    state: AlertState
    device_id: str | None
    address: str
    reason: str
    evidence: Mapping[str, Any]
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    triaged_by: str | None
    triage_note: str


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    """Automated response: quarantine a device whose risk reaches ``quarantine_at`` (None: never)."""

    quarantine_at: int | None = None
    max_new_per_hour: int = 60

    def __post_init__(self) -> None:
        if self.quarantine_at is not None and not 1 <= self.quarantine_at <= 100:
            raise InvalidInput("the quarantine threshold is a risk score in 1..100")
        if not 1 <= self.max_new_per_hour <= 100_000:
            raise InvalidInput("max_new_per_hour must be in 1..100000")


class AlertSink(Protocol):
    """Where alerts are sent (SIEM)."""

    def send(self, alert: Alert) -> None:
        """Deliver one alert; raise ``OSError`` when it cannot."""
        ...


class Responder(Protocol):
    """What the response needs: ``TrustService.report_signals`` and a quarantine (inventory)."""

    def report_risk(self, device_id: str, risk: int, reason: str) -> None:
        """Record the device's new risk score."""
        ...

    def quarantine(self, device_id: str, reason: str) -> bool:
        """Quarantine the device if it is active; return whether it was."""
        ...


class AlertService:
    """Stores, de-duplicates, triages and acts on alerts (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        responder: Responder,
        *,
        clock: Callable[[], dt.datetime],
        policy: ResponsePolicy | None = None,
        sinks: Sequence[AlertSink] = (),
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._database = database
        self._log = log
        self._responder = responder
        self._clock = clock
        self.policy = policy or ResponsePolicy()
        self._sinks = tuple(sinks)
        self._on_commit = on_commit
        self._recent: dict[str, deque[dt.datetime]] = {}
        self.suppressed = 0

    def configure(self, policy: ResponsePolicy, sinks: Sequence[AlertSink]) -> None:
        """Replace the response policy and the sinks (``fleetguard up`` applies its settings)."""
        self.policy = policy
        self._sinks = tuple(sinks)

    def raise_alert(self, alert: AlertInput) -> Alert | None:
        """Store ``alert`` (or count a repeat of an open one); return it, or None when rate limited."""
        subject = alert.device_id or alert.address
        key = f"{alert.rule}|{subject}|{alert.target}"[:256]
        now = self._clock()
        evidence = _bounded(alert.evidence)
        with self._database.transaction() as session:
            row = session.scalars(
                select(MonitorAlertRow).where(
                    MonitorAlertRow.dedup_key == key, MonitorAlertRow.state.in_([s.value for s in _OPEN])
                )
            ).first()
            if row is not None:
                row.count += 1
                row.last_seen = max(row.last_seen, alert.at)
                row.evidence = evidence
                row.updated_at = now
                return _alert(row)
            if not self._admit(subject, now):
                self.suppressed += 1
                return None
            row = MonitorAlertRow(
                id=str(uuid.uuid4()), dedup_key=key, rule=alert.rule, detector=alert.detector,
                severity=alert.severity, state=AlertState.NEW, device_id=alert.device_id,
                address=alert.address, reason=alert.reason[:_MAX_REASON], evidence=evidence, count=1,
                first_seen=alert.at, last_seen=alert.at, updated_at=now, triaged_by=None, triage_note="",
            )  # fmt: skip
            session.add(row)
            self._event(session, row, "monitor.alert.raised", "monitor", now)
        publish_committed(self._on_commit)
        stored = _alert(row)
        self._respond(stored.device_id, f"alert {stored.rule}: {stored.reason}")
        self._deliver(stored)
        return stored

    def triage(self, alert_id: str, state: AlertState, *, actor: str, note: str = "") -> Alert:
        """Move an alert in triage; raise :class:`Conflict` for a move the table does not allow."""
        now = self._clock()
        with self._database.transaction() as session:
            row = session.get(MonitorAlertRow, alert_id)
            if row is None:
                raise NotFound(f"no alert {alert_id[:64]!r}")
            current = AlertState(row.state)
            if state not in _TRIAGE[current]:
                allowed = ", ".join(sorted(_TRIAGE[current])) or "nothing (it is closed)"
                raise Conflict(f"alert {alert_id} is {current}; it may become: {allowed}")
            row.state, row.triaged_by, row.triage_note, row.updated_at = state, actor, note[:_MAX_NOTE], now
            self._event(session, row, f"monitor.alert.{state}", actor, now)
        publish_committed(self._on_commit)
        self._respond(row.device_id, f"alert {row.rule} {state} by {actor}")
        return _alert(row)

    def alerts(
        self, *, state: AlertState | None = None, device_id: str | None = None, limit: int = 100
    ) -> list[Alert]:
        """Return alerts, newest first."""
        query = select(MonitorAlertRow).order_by(MonitorAlertRow.last_seen.desc()).limit(min(limit, 10_000))
        if state is not None:
            query = query.where(MonitorAlertRow.state == state)
        if device_id is not None:
            query = query.where(MonitorAlertRow.device_id == device_id)
        with self._database.reading() as session:
            return [_alert(row) for row in session.scalars(query)]

    def risk(self, device_id: str) -> int:
        """Return the device's risk score from its open alerts (0..100)."""
        with self._database.reading() as session:
            rows = session.execute(
                select(MonitorAlertRow.severity, func.count())
                .where(
                    MonitorAlertRow.device_id == device_id,
                    MonitorAlertRow.state.in_([s.value for s in _OPEN]),
                )
                .group_by(MonitorAlertRow.severity)
            ).all()
        return min(100, sum(_RISK[Severity(severity)] * count for severity, count in rows))

    def _admit(self, subject: str, now: dt.datetime) -> bool:
        window = self._recent.setdefault(subject, deque())
        while window and now - window[0] > dt.timedelta(hours=1):
            window.popleft()
        if len(window) >= self.policy.max_new_per_hour:
            return False
        window.append(now)
        if len(self._recent) > 100_000:  # bounded: forget the quietest subjects
            self._recent = {k: v for k, v in self._recent.items() if v}
        return True

    def _respond(self, device_id: str | None, reason: str) -> None:
        if device_id is None:
            return
        risk = self.risk(device_id)
        self._responder.report_risk(device_id, risk, reason)
        threshold = self.policy.quarantine_at
        if threshold is not None and risk >= threshold:
            self._responder.quarantine(device_id, f"risk {risk} >= {threshold}: {reason}"[:500])

    def _deliver(self, alert: Alert) -> None:
        for sink in self._sinks:
            try:
                sink.send(alert)
            except OSError as exc:  # the alert is stored; the SIEM missing one is logged
                _log.warning("monitor: alert %s not delivered to %s: %s", alert.id, type(sink).__name__, exc)

    def _event(self, session: Any, row: MonitorAlertRow, action: str, actor: str, now: dt.datetime) -> None:
        subject = f"device:{row.device_id}" if row.device_id else f"address:{row.address}"
        data: dict[str, str | int] = {
            "alert": row.id,
            "rule": row.rule,
            "severity": row.severity,
            "count": row.count,
        }
        self._log.append(
            session,
            NewEvent(actor=actor, subject=subject, action=action, reason=row.reason[:500], data=data),
            now=now,
        )


def _bounded(evidence: Mapping[str, Any]) -> dict[str, Any]:
    text = json.dumps(evidence, default=str, sort_keys=True)
    if len(text) <= _MAX_EVIDENCE:
        return dict(json.loads(text))
    return {"truncated": True, "summary": text[: _MAX_EVIDENCE - 100]}


def _alert(row: MonitorAlertRow) -> Alert:
    return Alert(
        id=row.id, rule=row.rule, detector=row.detector, severity=Severity(row.severity),
        state=AlertState(row.state), device_id=row.device_id, address=row.address, reason=row.reason,
        evidence=row.evidence, count=row.count, first_seen=row.first_seen, last_seen=row.last_seen,
        triaged_by=row.triaged_by, triage_note=row.triage_note,
    )  # fmt: skip


# -- export -------------------------------------------------------------------------------------------


def to_cef(alert: Alert) -> str:
    """Return the alert as an ArcSight CEF line (header fields escaped as CEF requires)."""
    header = [
        "CEF:0", "fleetguard", "fleetguard", "0.1", alert.rule, alert.reason[:256],
        str(_CEF_SEVERITY[alert.severity]),
    ]  # fmt: skip
    extension = {
        "rt": str(int(alert.last_seen.timestamp() * 1000)), "src": alert.address,
        "cs1Label": "device", "cs1": alert.device_id or "", "cs2Label": "alert", "cs2": alert.id,
        "cnt": str(alert.count), "msg": alert.reason[:1000],
    }  # fmt: skip
    head = "|".join(_cef_header(value) for value in header)
    return head + "|" + " ".join(f"{k}={_cef_value(v)}" for k, v in extension.items())


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _cef_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


class SyslogSink:
    """RFC 5424 syslog over UDP with the CEF line as the message."""

    def __init__(self, host: str, port: int = 514, *, hostname: str = "fleetguard") -> None:
        self._address = (host, port)
        self._hostname = hostname

    def send(self, alert: Alert) -> None:
        """Send one datagram; raise ``OSError``."""
        priority = 8 * 10 + (2 if alert.severity in (Severity.HIGH, Severity.CRITICAL) else 4)  # authpriv
        stamp = alert.last_seen.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        line = f"<{priority}>1 {stamp} {self._hostname} fleetguard - alert - {to_cef(alert)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(line.encode()[:8192], self._address)


class WebhookSink:
    """A JSON webhook: one POST per alert, with a timeout."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        if not url.startswith(("https://", "http://")):
            raise InvalidInput(f"webhook URL {url[:80]!r} must be http(s)")
        self._url = url
        self._timeout_s = timeout_s

    def send(self, alert: Alert) -> None:
        """POST the alert; raise ``OSError`` (``urllib.error.URLError`` is one) on failure."""
        body = json.dumps(
            {
                "id": alert.id, "rule": alert.rule, "detector": alert.detector, "severity": alert.severity,
                "state": alert.state, "device_id": alert.device_id, "address": alert.address,
                "reason": alert.reason, "evidence": alert.evidence, "count": alert.count,
                "first_seen": alert.first_seen.isoformat(), "last_seen": alert.last_seen.isoformat(),
            }
        ).encode()  # fmt: skip
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            self._url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
            if response.status >= 300:
                raise OSError(f"webhook answered {response.status}")
