"""Alerts on a real installation: de-duplication, rate limits, triage, risk to trust, quarantine, export."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from fleetguard.config import Settings
from fleetguard.errors import Conflict, NotFound
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import DeviceSpec
from fleetguard.monitor.alerts import (
    AlertInput,
    AlertService,
    AlertState,
    ResponsePolicy,
    Severity,
    SyslogSink,
    WebhookSink,
    to_cef,
)
from fleetguard.monitor.response import InstallationResponder

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=T0)
    runtime = Runtime(settings)
    for device_id in ("cam-1", "cam-2"):
        runtime.inventory.register(DeviceSpec(id=device_id, serial=device_id, manufacturer="Acme"), actor="t")
        runtime.inventory.transition(device_id, Action.PROVISION, actor="t")
        runtime.inventory.transition(device_id, Action.ACTIVATE, actor="t")
    yield runtime
    runtime.close()


def _service(runtime: Runtime, clock: Clock, policy: ResponsePolicy | None = None, sinks=()) -> AlertService:  # type: ignore[no-untyped-def]
    responder = InstallationResponder(runtime.trust, runtime.inventory)
    return AlertService(runtime.database, runtime.log, responder, clock=clock, policy=policy, sinks=sinks)


def _finding(rule: str = "scan.port", severity: Severity = Severity.HIGH, device: str | None = "cam-1",
             target: str = "10.0.0.9", at: dt.datetime = T0) -> AlertInput:  # fmt: skip
    return AlertInput(
        rule=rule, detector="rules", severity=severity, address="10.0.0.5", reason="42 ports in 60 s",
        at=at, device_id=device, target=target, evidence={"ports": 42, "flows": ["a", "b"]},
    )  # fmt: skip


def test_a_repeat_of_an_open_alert_counts_instead_of_raising_a_new_one(runtime: Runtime) -> None:
    clock = Clock()
    alerts = _service(runtime, clock)
    first = alerts.raise_alert(_finding())
    assert first is not None
    assert (first.state, first.count, first.severity) == (AlertState.NEW, 1, Severity.HIGH)
    again = alerts.raise_alert(_finding(at=T0 + dt.timedelta(seconds=30)))
    assert again is not None
    assert (again.id, again.count, again.last_seen) == (first.id, 2, T0 + dt.timedelta(seconds=30))
    other = alerts.raise_alert(_finding(target="10.0.0.10"))
    assert other is not None
    assert other.id != first.id
    assert len(alerts.alerts()) == 2
    raised = runtime.log.entries(action="monitor.alert.raised", limit=10)
    assert len(raised) == 2


def test_new_alerts_are_rate_limited_per_subject_and_counted(runtime: Runtime) -> None:
    clock = Clock()
    alerts = _service(runtime, clock, ResponsePolicy(max_new_per_hour=2))
    assert alerts.raise_alert(_finding(target="a")) is not None
    assert alerts.raise_alert(_finding(target="b")) is not None
    assert alerts.raise_alert(_finding(target="c")) is None
    assert alerts.suppressed == 1
    assert alerts.raise_alert(_finding(device="cam-2", target="c")) is not None  # another subject
    clock.now += dt.timedelta(hours=1, seconds=1)
    assert alerts.raise_alert(_finding(target="c")) is not None


def test_open_alerts_raise_the_risk_reported_to_trust_and_triage_lowers_it(runtime: Runtime) -> None:
    alerts = _service(runtime, Clock())
    first = alerts.raise_alert(_finding(severity=Severity.HIGH, target="a"))
    alerts.raise_alert(_finding(severity=Severity.MEDIUM, target="b"))
    assert first is not None
    assert alerts.risk("cam-1") == 35 + 15
    assert runtime.trust.facts("cam-1").risk == 50
    alerts.triage(first.id, AlertState.ACKNOWLEDGED, actor="ops")
    assert runtime.trust.facts("cam-1").risk == 50  # acknowledged is still open
    closed = alerts.triage(first.id, AlertState.FALSE_POSITIVE, actor="ops", note="lab scanner")
    assert (closed.state, closed.triaged_by, closed.triage_note) == (
        AlertState.FALSE_POSITIVE,
        "ops",
        "lab scanner",
    )
    assert runtime.trust.facts("cam-1").risk == 15
    assert runtime.inventory.get("cam-1").state is State.ACTIVE


def test_triage_follows_its_table(runtime: Runtime) -> None:
    alerts = _service(runtime, Clock())
    alert = alerts.raise_alert(_finding())
    assert alert is not None
    alerts.triage(alert.id, AlertState.RESOLVED, actor="ops")
    with pytest.raises(Conflict, match="is resolved; it may become: nothing"):
        alerts.triage(alert.id, AlertState.ACKNOWLEDGED, actor="ops")
    with pytest.raises(NotFound, match="no alert"):
        alerts.triage("nope", AlertState.RESOLVED, actor="ops")
    assert alerts.raise_alert(_finding()) is not None  # a closed alert does not swallow a recurrence
    assert len(alerts.alerts()) == 2


def test_risk_above_the_policy_threshold_quarantines_the_device(runtime: Runtime) -> None:
    alerts = _service(runtime, Clock(), ResponsePolicy(quarantine_at=60))
    alerts.raise_alert(_finding(severity=Severity.HIGH, target="a"))
    assert runtime.inventory.get("cam-1").state is State.ACTIVE  # 35 < 60
    alerts.raise_alert(_finding(severity=Severity.HIGH, target="b"))  # 70 >= 60
    assert runtime.inventory.get("cam-1").state is State.QUARANTINED
    transitions = [e for e in runtime.log.entries(limit=200) if e.action == "device.quarantine"]
    assert [e.actor for e in transitions] == ["monitor"]
    assert runtime.inventory.get("cam-2").state is State.ACTIVE


def test_an_alert_about_an_unknown_address_changes_no_device(runtime: Runtime) -> None:
    alerts = _service(runtime, Clock(), ResponsePolicy(quarantine_at=1))
    alert = alerts.raise_alert(_finding(device=None))
    assert alert is not None
    assert alert.device_id is None
    assert runtime.inventory.get("cam-1").state is State.ACTIVE


def test_cef_escapes_what_the_format_reserves() -> None:
    alert = _service_free_alert(reason="a|b=c\nd")
    line = to_cef(alert)
    assert line.startswith("CEF:0|fleetguard|fleetguard|0.1|scan.port|a\\|b=c d|8|")
    assert "msg=a|b\\=c\\nd" in line
    assert "cs1=cam-1" in line


def _service_free_alert(reason: str):  # type: ignore[no-untyped-def]
    from fleetguard.monitor.alerts import Alert

    return Alert("id-1", "scan.port", "rules", Severity.HIGH, AlertState.NEW, "cam-1", "10.0.0.5", reason,
                 {}, 3, T0, T0, None, "")  # fmt: skip


def test_sinks_receive_alerts_and_a_failing_sink_loses_nothing(runtime: Runtime) -> None:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(5)
    try:
        sinks = [
            WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/hook"),
            SyslogSink("127.0.0.1", syslog.getsockname()[1]),
            WebhookSink("http://127.0.0.1:9/closed", timeout_s=1),
        ]
        alerts = _service(runtime, Clock(), sinks=sinks)
        alert = alerts.raise_alert(_finding())
        assert alert is not None
        line = syslog.recv(9000).decode()
        assert line.startswith("<82>1 2026-11-01T12:00:00Z fleetguard fleetguard - alert - CEF:0|")
        assert json.loads(received[0])["id"] == alert.id
        assert [a.id for a in alerts.alerts()] == [alert.id]  # stored although one sink failed
    finally:
        server.shutdown()
        server.server_close()
        syslog.close()
