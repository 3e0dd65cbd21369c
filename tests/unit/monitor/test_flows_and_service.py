"""Flows assembled from packets, and the monitor service raising alerts about the owning devices."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.monitor.flows import flows_from_packets
from fleetguard.monitor.model import FlowRecord, PacketColumns, address_key
from fleetguard.monitor.service import MonitorService, owners_from_bindings

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
A, B = "10.0.0.5", "10.0.0.9"


def _packets(rows: list[tuple[float, str, str, int, int, int, int]]) -> PacketColumns:
    """rows: (ts, src, dst, sport, dport, length, tcp flags), all TCP."""
    n = len(rows)
    return PacketColumns(
        ts=np.array([r[0] for r in rows], np.float64),
        src=np.array([address_key(r[1]) for r in rows], np.uint64),
        dst=np.array([address_key(r[2]) for r in rows], np.uint64),
        sport=np.array([r[3] for r in rows], np.uint16), dport=np.array([r[4] for r in rows], np.uint16),
        proto=np.full(n, 6, np.uint8), length=np.array([r[5] for r in rows], np.uint32),
        tcp_flags=np.array([r[6] for r in rows], np.uint8), src_mac=np.zeros(n, np.uint64),
        addresses={address_key(A): A, address_key(B): B},
    )  # fmt: skip


def test_a_handshake_and_its_replies_are_one_flow_with_both_sides() -> None:
    flows = flows_from_packets(_packets([
        (1.0, A, B, 40000, 22, 60, SYN), (1.1, B, A, 22, 40000, 60, SYN | ACK),
        (1.2, A, B, 40000, 22, 52, ACK),
        (1.5, A, B, 40000, 22, 100, FIN | ACK), (1.6, B, A, 22, 40000, 52, FIN | ACK),
    ]))  # fmt: skip
    assert flows == [
        FlowRecord(start=1.0, duration=pytest.approx(0.6), src=A, dst=B, sport=40000, dport=22, proto="tcp",
                   src_bytes=212, dst_bytes=112, src_packets=3, dst_packets=2, state="SF", source="pcap")
    ]  # fmt: skip


def test_unanswered_and_refused_connections_get_their_states() -> None:
    flows = flows_from_packets(_packets([
        (1.0, A, B, 40001, 23, 60, SYN),
        (2.0, A, B, 40002, 23, 60, SYN), (2.1, B, A, 23, 40002, 54, RST | ACK),
    ]))  # fmt: skip
    assert [(f.sport, f.state, f.dst_packets) for f in flows] == [(40001, "S0", 0), (40002, "REJ", 1)]


def test_an_idle_gap_splits_a_flow_and_an_empty_batch_has_none() -> None:
    flows = flows_from_packets(
        _packets([(1.0, A, B, 5000, 53, 80, 0), (100.0, A, B, 5000, 53, 80, 0)]), idle_s=60.0
    )
    assert [f.start for f in flows] == [1.0, 100.0]
    assert flows_from_packets(PacketColumns.empty()) == []


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=T0)
    runtime = Runtime(settings)
    runtime.inventory.register(DeviceSpec(id="cam-1", serial="cam-1", manufacturer="Acme"), actor="t")
    yield runtime
    runtime.close()


def test_a_telnet_brute_force_becomes_an_alert_about_the_owning_device(runtime: Runtime) -> None:
    monitor = MonitorService(
        runtime.database, runtime.log, runtime.alerts, lambda: {A: "cam-1"}, clock=lambda: T0
    )
    attempts = [
        FlowRecord(start=1000.0 + i, duration=0.5, src=A, dst=B, sport=40000 + i, dport=23, proto="tcp",
                   src_bytes=120, dst_bytes=80, src_packets=3, dst_packets=2, state="SF")
        for i in range(12)
    ]  # fmt: skip
    report = monitor.ingest_flows(reversed(attempts))
    assert report.records == 12
    assert [f.rule for f in report.findings] == ["bruteforce.telnet"]
    (alert,) = report.alerts
    assert (alert.device_id, alert.address, alert.rule, alert.severity) == (
        "cam-1",
        A,
        "bruteforce.telnet",
        "high",
    )
    assert alert.evidence["threshold"] == 10
    assert runtime.trust.facts("cam-1").risk == 35


def test_addresses_come_from_the_segmentation_bindings() -> None:
    class Binding:
        def __init__(self, device_id: str, ipv4: str | None, ipv6: str | None) -> None:
            self.device_id, self.ipv4, self.ipv6 = device_id, ipv4, ipv6

    owners = owners_from_bindings([Binding("cam-1", A, "fd00::5"), Binding("cam-2", None, None)])
    assert owners == {A: "cam-1", "fd00::5": "cam-1"}


def test_failed_mqtt_logins_in_a_broker_log_become_an_alert(runtime: Runtime) -> None:
    from fleetguard.monitor.broker import parse_mosquitto_log

    lines = []
    for i in range(12):
        lines.append(f"{1_700_000_000 + i}: New connection from 10.0.0.77:{50000 + i} on port 8883.")
        lines.append(f"{1_700_000_000 + i}: Client <unknown> disconnected, not authorised.")
    events, skipped = parse_mosquitto_log(lines)
    assert dict(skipped.counts) == {"connection accepted (attribution only)": 12}
    monitor = MonitorService(runtime.database, runtime.log, runtime.alerts, dict, clock=lambda: T0)
    report = monitor.ingest_broker(events)
    assert [(a.rule, a.address, a.device_id, a.detector) for a in report.alerts] == [
        ("bruteforce.mqtt", "10.0.0.77", None, "broker")
    ]


def test_baselines_learn_then_flag_an_unexpected_destination_and_survive_a_restart(runtime: Runtime) -> None:
    def service() -> MonitorService:
        return MonitorService(
            runtime.database, runtime.log, runtime.alerts, lambda: {A: "cam-1"}, clock=lambda: T0,
            baseline_learning=dt.timedelta(0), baseline_window_s=300.0,
        )  # fmt: skip

    def flow(at: float, dst: str) -> FlowRecord:
        return FlowRecord(
            start=at, duration=1.0, src=A, dst=dst, sport=40000, dport=443, proto="tcp", src_bytes=2000,
            dst_bytes=8000, src_packets=10, dst_packets=10, state="SF",
        )  # fmt: skip

    irregular = (0, 3, 40, 41, 90, 150, 151, 200, 260, 290)  # not periodic: no beaconing
    monitor = service()
    for window in range(13):  # 12 windows to learn from, the 13th closes the 12th
        report = monitor.ingest_flows([flow(window * 300.0 + at, "52.1.2.3") for at in irregular])
        assert report.findings == []
    (stored,) = monitor.baselines()
    assert stored.subject == A
    assert stored.windows == 12
    restarted = service()  # a restart keeps what was learned
    restarted.ingest_flows([flow(13 * 300.0 + 5, "203.0.113.66")])
    report = restarted.ingest_flows([flow(14 * 300.0 + 5, "52.1.2.3")])  # closes window 13
    assert [(f.rule, f.target) for f in report.findings] == [
        ("destination.unexpected", "203.0.113.66 tcp/443")
    ]
    assert report.alerts[0].device_id == "cam-1"


def test_the_broker_feed_turns_queued_log_lines_into_alerts(runtime: Runtime) -> None:
    from fleetguard.monitor.endpoint import BrokerFeed

    feed = BrokerFeed(runtime, interval_s=60.0)
    for i in range(12):
        feed.line(f"{1_700_000_000 + i}: New connection from 10.0.0.78:{50000 + i} on port 8883.")
        feed.line(f"{1_700_000_000 + i}: Client <unknown> disconnected, not authorised.")
    feed.stop()  # analyses what is queued
    assert [(a.rule, a.address) for a in runtime.alerts.alerts()] == [("bruteforce.mqtt", "10.0.0.78")]
    assert feed.dropped == 0


def test_a_volume_spike_is_judged_by_the_device_and_its_type_baselines(runtime: Runtime) -> None:
    other = "10.0.0.6"
    monitor = MonitorService(
        runtime.database, runtime.log, runtime.alerts, lambda: {A: "cam-1", other: "cam-2"}, clock=lambda: T0,
        baseline_learning=dt.timedelta(0), device_type=lambda device_id: "camera",
    )  # fmt: skip

    def flows(window: int, octets: int) -> list[FlowRecord]:
        return [
            FlowRecord(start=window * 300.0 + at, duration=1.0, src=src, dst="52.1.2.3", sport=40000,
                       dport=443, proto="tcp", src_bytes=octets, dst_bytes=0, src_packets=10, dst_packets=0)
            for src in (A, other) for at in (0, 3, 40, 41, 90, 150, 151, 200, 260, 290)
        ]  # fmt: skip

    for window in range(13):
        assert monitor.ingest_flows(flows(window, 20_000 + 1000 * (window % 3))).findings == []
    spike = [f for f in flows(13, 20_000) if f.src == other] + [
        FlowRecord(start=13 * 300.0 + 7, duration=30.0, src=A, dst="52.1.2.3", sport=40001, dport=443,
                   proto="tcp", src_bytes=50_000_000, dst_bytes=0, src_packets=40_000, dst_packets=0)
    ]  # fmt: skip
    monitor.ingest_flows(spike)
    report = monitor.ingest_flows(flows(14, 20_000))  # closes window 13
    assert sorted((f.rule, f.device) for f in report.findings) == [("volume.device", A), ("volume.type", A)]
    assert {b.subject for b in monitor.baselines()} == {A, other, "type:camera"}


def test_a_segmentation_violation_on_the_bus_becomes_an_alert(runtime: Runtime) -> None:
    import time

    from fleetguard.events.entry import NewEvent
    from fleetguard.inventory.service import device_event_subject
    from fleetguard.monitor.endpoint import ViolationWatcher, violation_alert

    assert violation_alert({"action": "device.updated", "subject": "device:cam-1"}) is None
    watcher = ViolationWatcher(runtime)
    try:
        with runtime.database.transaction() as session:
            runtime.log.append(
                session,
                NewEvent(actor="segment", subject=device_event_subject("cam-1"), action="segment.violation",
                         data={"source": A, "destination": "198.51.100.7", "protocol": "tcp",
                               "destination_port": 6667, "direction": "from-device"}),
                now=T0,
            )  # fmt: skip
        runtime.relay.notify()
        runtime.relay.pump()
        deadline = time.monotonic() + 10
        while not runtime.alerts.alerts() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    (alert,) = runtime.alerts.alerts()
    assert (alert.rule, alert.device_id, alert.severity) == ("destination.mud", "cam-1", "high")
    assert "198.51.100.7 tcp/6667 is outside the device's MUD policy" in alert.reason
