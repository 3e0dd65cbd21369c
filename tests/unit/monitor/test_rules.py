"""Detectors on hand-built flows: exact findings and reasons, thresholds, windows, state bounds."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from fleetguard.monitor.baseline import Baseline, Counted, RunningStat, Scope
from fleetguard.monitor.model import FlowRecord, PacketColumns, address_key
from fleetguard.monitor.rules import (
    MAX_EVIDENCE,
    BeaconDetector,
    BeaconThresholds,
    BruteForceDetector,
    FlowKey,
    HostSweepDetector,
    PortScanDetector,
    RuleId,
    Severity,
    WindowThresholds,
    detect_port_scans_in_packets,
    detect_unexpected_destinations,
    detect_volume,
)

T0 = 1_700_000_000.0
IOT23 = Path("/work/shared/data/net/iot23-conn")


def flow(
    start: float,
    dst: str = "10.0.0.5",
    dport: int = 80,
    *,
    src: str = "10.0.0.9",
    sport: int = 40000,
    proto: str = "tcp",
    state: str = "S0",
    duration: float = 0.1,
    src_bytes: int = 0,
    dst_bytes: int = 0,
) -> FlowRecord:
    return FlowRecord(start, duration, src, dst, sport, dport, proto, src_bytes, dst_bytes, 1, 0, state)


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


# --- port scan ----------------------------------------------------------------------------------


def test_port_scan_at_threshold_is_one_exact_finding() -> None:
    flows = [flow(T0 + i, dport=1000 + i, sport=50000 + i) for i in range(20)]
    (finding,) = PortScanDetector().observe(flows)
    assert finding.rule is RuleId.SCAN_PORT
    assert finding.severity is Severity.MEDIUM
    assert finding.device == "10.0.0.9"
    assert finding.target == "10.0.0.5"
    assert finding.reason == "20 distinct ports on 10.0.0.5 from 10.0.0.9 within 60 s (threshold 20)"
    assert (finding.value, finding.threshold) == (20, 20)
    assert (finding.first, finding.last) == (utc(T0), utc(T0 + 19))
    assert finding.evidence[0] == FlowKey("tcp", "10.0.0.9", 50000, "10.0.0.5", 1000)


def test_port_scan_one_below_threshold_is_quiet() -> None:
    assert PortScanDetector().observe([flow(T0 + i, dport=1000 + i) for i in range(19)]) == ()


def test_repeated_ports_count_once() -> None:
    flows = [flow(T0 + i, dport=1000 + i % 19) for i in range(100)]
    assert PortScanDetector().observe(flows) == ()


def test_port_scan_reports_the_count_and_bounds_the_evidence() -> None:
    (finding,) = PortScanDetector().observe([flow(T0 + i / 10, dport=i + 1) for i in range(42)])
    assert finding.reason == "42 distinct ports on 10.0.0.5 from 10.0.0.9 within 60 s (threshold 20)"
    assert len(finding.evidence) == MAX_EVIDENCE
    assert finding.evidence[-1].dport == 42


def test_ports_outside_the_window_do_not_add_up() -> None:
    detector = PortScanDetector()
    assert detector.observe([flow(T0 + i, dport=i + 1) for i in range(10)]) == ()
    assert detector.observe([flow(T0 + 70 + i, dport=100 + i) for i in range(10)]) == ()


def test_a_fired_key_is_quiet_for_one_window_then_fires_again() -> None:
    detector = PortScanDetector()
    assert len(detector.observe([flow(T0 + i, dport=i + 1) for i in range(20)])) == 1
    assert detector.observe([flow(T0 + 30 + i, dport=100 + i) for i in range(20)]) == ()
    (again,) = detector.observe([flow(T0 + 200 + i, dport=300 + i) for i in range(20)])
    assert again.first == utc(T0 + 200)


def test_tracked_pairs_are_bounded_and_evictions_counted() -> None:
    detector = PortScanDetector(WindowThresholds(window_s=60, threshold=3, max_keys=2, max_values=4))
    flows = [flow(T0, dst=f"10.0.0.{n}", dport=1) for n in (1, 2, 3)]
    flows += [flow(T0 + 1, dst="10.0.0.3", dport=p) for p in range(2, 8)]
    (finding,) = detector.observe(flows)
    assert detector.tracked == 2
    assert detector.evicted.counts == {"key evicted (max_keys)": 1, "value evicted (max_values)": 3}
    assert finding.value == 4  # max_values kept


def test_advance_expires_state() -> None:
    detector = PortScanDetector()
    detector.observe([flow(T0, dport=1)])
    assert detector.tracked == 1
    detector.advance(utc(T0 + 61))
    assert detector.tracked == 0


def test_thresholds_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="inconsistent thresholds"):
        WindowThresholds(window_s=60, threshold=300, max_values=256)


def test_port_scan_in_packets_vectorized() -> None:
    n = 25
    src, dst = address_key("10.0.0.9"), address_key("10.0.0.5")
    packets = PacketColumns(
        ts=T0 + np.arange(n, dtype=np.float64),
        src=np.full(n, src, np.uint64),
        dst=np.full(n, dst, np.uint64),
        sport=np.full(n, 40000, np.uint16),
        dport=np.arange(1, n + 1, dtype=np.uint16),
        proto=np.full(n, 6, np.uint8),
        length=np.full(n, 60, np.uint32),
        tcp_flags=np.array([0x02] * 21 + [0x12] * 4, np.uint8),  # 4 SYN-ACKs are not probes
        src_mac=np.zeros(n, np.uint64),
        addresses={src: "10.0.0.9", dst: "10.0.0.5"},
    )
    assert T0 % 60 == 20  # the first fixed window holds the 21 SYNs at T0 .. T0 + 20
    (finding,) = detect_port_scans_in_packets(packets)
    assert finding.reason == "21 distinct ports on 10.0.0.5 from 10.0.0.9 within 60 s (threshold 20)"
    assert finding.evidence[0] == FlowKey("tcp", "10.0.0.9", 40000, "10.0.0.5", 2)
    assert len(finding.evidence) == MAX_EVIDENCE
    assert detect_port_scans_in_packets(packets, WindowThresholds(window_s=60, threshold=22)) == ()
    assert detect_port_scans_in_packets(PacketColumns.empty()) == ()


# --- host sweep and brute force -----------------------------------------------------------------


def test_host_sweep_at_threshold() -> None:
    flows = [flow(T0 + i, dst=f"10.0.1.{i}", dport=23) for i in range(32)]
    (finding,) = HostSweepDetector().observe(flows)
    assert finding.rule is RuleId.SCAN_HOST_SWEEP
    assert finding.severity is Severity.HIGH
    assert finding.target == "tcp/23"
    assert finding.reason == "32 distinct hosts on tcp/23 from 10.0.0.9 within 60 s (threshold 32)"
    assert HostSweepDetector().observe(flows[:31]) == ()


@pytest.mark.parametrize(
    ("port", "rule", "name"),
    [
        (22, RuleId.BRUTEFORCE_SSH, "ssh"),
        (2323, RuleId.BRUTEFORCE_TELNET, "telnet"),
        (8883, RuleId.BRUTEFORCE_MQTT, "mqtt"),
    ],
)
def test_brute_force_per_service(port: int, rule: RuleId, name: str) -> None:
    flows = [flow(T0 + 10 * i, dport=port, sport=50000 + i, state="REJ") for i in range(10)]
    (finding,) = BruteForceDetector().observe(flows)
    assert finding.rule is rule
    assert finding.reason == (
        f"10 failed or short connections from 10.0.0.9 to 10.0.0.5 tcp/{port} ({name}) "
        "within 300 s (threshold 10)"
    )
    assert finding.target == f"10.0.0.5 tcp/{port}"


def test_brute_force_one_below_threshold_is_quiet() -> None:
    flows = [flow(T0 + i, dport=22, sport=50000 + i) for i in range(9)]
    assert BruteForceDetector().observe(flows) == ()


def test_short_tiny_established_connections_count_and_real_sessions_do_not() -> None:
    short = [
        flow(T0 + i, dport=22, sport=50000 + i, state="SF", duration=2.0, src_bytes=1500, dst_bytes=1800)
        for i in range(10)
    ]
    assert len(BruteForceDetector().observe(short)) == 1
    sessions = [
        flow(T0 + i, dport=22, sport=50000 + i, state="SF", duration=600.0, src_bytes=90_000)
        for i in range(10)
    ]
    assert BruteForceDetector().observe(sessions) == ()


def test_brute_force_ignores_other_ports_and_udp() -> None:
    flows = [flow(T0 + i, dport=443, sport=50000 + i) for i in range(20)]
    flows += [flow(T0 + i, dport=22, sport=50000 + i, proto="udp") for i in range(20)]
    assert BruteForceDetector().observe(flows) == ()


# --- beaconing ----------------------------------------------------------------------------------


def test_periodic_connections_are_beaconing() -> None:
    jitter = np.random.default_rng(7).uniform(-0.5, 0.5, 10)
    flows = [flow(T0 + 60 * i + float(jitter[i]), dst="203.0.113.7", dport=443) for i in range(10)]
    (finding,) = BeaconDetector().observe(flows)
    assert finding.rule is RuleId.BEACONING
    assert finding.target == "203.0.113.7 tcp/443"
    assert finding.reason.startswith(
        "10.0.0.9 connected to 203.0.113.7 tcp/443 10 times every 60.0 s on average"
    )
    assert finding.reason.endswith("threshold 0.1, at least 8 connections)")
    assert finding.value <= 0.1


def test_exactly_periodic_reason() -> None:
    flows = [flow(T0 + 30 * i, dst="203.0.113.7", dport=8883) for i in range(8)]
    (finding,) = BeaconDetector().observe(flows)
    assert finding.reason == (
        "10.0.0.9 connected to 203.0.113.7 tcp/8883 8 times every 30.0 s on average "
        "(coefficient of variation 0.000, threshold 0.1, at least 8 connections)"
    )


def test_jittery_traffic_is_not_beaconing() -> None:
    times = sorted(T0 + float(t) for t in np.random.default_rng(3).uniform(0, 3600, 40))
    assert BeaconDetector().observe([flow(t, dst="203.0.113.7", dport=443) for t in times]) == ()


def test_too_few_or_too_fast_events_are_not_beaconing() -> None:
    assert BeaconDetector().observe([flow(T0 + 60 * i, dst="203.0.113.7") for i in range(7)]) == ()
    assert BeaconDetector().observe([flow(T0 + i, dst="203.0.113.7") for i in range(50)]) == ()


def test_beacon_channels_are_bounded() -> None:
    detector = BeaconDetector(BeaconThresholds(max_channels=3))
    detector.observe([flow(T0, dst=f"203.0.113.{n}") for n in range(5)])
    assert detector.tracked == 3
    assert detector.evicted.counts == {"channel evicted (max_channels)": 2}
    detector.advance(utc(T0 + 86401))
    assert detector.tracked == 0


# --- volume -------------------------------------------------------------------------------------


def enforcing(subject: str, scope: Scope = Scope.DEVICE, **changes: object) -> Baseline:
    base = Baseline(
        subject,
        scope,
        300.0,
        utc(T0 - 86400),
        min_windows=1,
        windows=10,
        destinations=(Counted("203.0.113.7", 5),),
        octets=RunningStat(10.0, 100_000.0, 10.0 * 1e8),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_volume_far_above_the_device_baseline() -> None:
    flows = [flow(T0 + i, dst="203.0.113.7", src_bytes=200_000, state="SF") for i in range(10)]
    (finding,) = detect_volume(
        flows,
        start=utc(T0),
        end=utc(T0 + 300),
        device_types={"10.0.0.9": None},
        device_baselines={"10.0.0.9": enforcing("10.0.0.9")},
        type_baselines={},
    )
    assert finding.rule is RuleId.VOLUME_DEVICE
    assert finding.severity is Severity.MEDIUM
    assert finding.reason == (
        "2000000 bytes in 300 s from 10.0.0.9: 20.0x its baseline mean of 100000 bytes, z 190.0 "
        "(thresholds 3x, z 4, at least 1000000 bytes)"
    )
    assert len(finding.evidence) == 10


def test_volume_below_the_floor_or_learning_is_quiet() -> None:
    flows = [flow(T0 + i, src_bytes=99_999, state="SF") for i in range(10)]  # 999 990 bytes: under the floor
    kwargs = {
        "start": utc(T0),
        "end": utc(T0 + 300),
        "device_types": {"10.0.0.9": None},
        "type_baselines": {},
    }
    assert detect_volume(flows, device_baselines={"10.0.0.9": enforcing("10.0.0.9")}, **kwargs) == ()  # type: ignore[arg-type]
    learning = enforcing("10.0.0.9", learning_until=utc(T0 + 86400))
    loud = [flow(T0 + i, src_bytes=500_000) for i in range(10)]
    assert detect_volume(loud, device_baselines={"10.0.0.9": learning}, **kwargs) == ()  # type: ignore[arg-type]


def test_volume_against_the_type_baseline() -> None:
    flows = [flow(T0 + i, src_bytes=5_000_000) for i in range(2)]
    (finding,) = detect_volume(
        flows,
        start=utc(T0),
        end=utc(T0 + 300),
        device_types={"10.0.0.9": "camera"},
        device_baselines={},
        type_baselines={"camera": enforcing("camera", Scope.TYPE)},
    )
    assert finding.rule is RuleId.VOLUME_TYPE
    assert finding.severity is Severity.HIGH  # 100x >= 10 * 3x
    assert "the baseline of type camera mean of 100000 bytes" in finding.reason


# --- destinations -------------------------------------------------------------------------------


class FakePolicy:
    def __init__(self, verdicts: dict[str, bool | None]) -> None:
        self.verdicts = verdicts

    def allowed(self, device: str, dst: str, port: int, proto: str) -> bool | None:
        return self.verdicts.get(device)


def test_destination_outside_the_mud_policy() -> None:
    flows = [flow(T0 + i, dst="198.51.100.1", dport=6667, state="SF") for i in range(3)]
    findings, skipped = detect_unexpected_destinations(
        flows,
        policy=FakePolicy({"10.0.0.9": False}),
        baselines={"10.0.0.9": enforcing("10.0.0.9")},
        now=utc(T0),
    )
    (finding,) = findings
    assert finding.rule is RuleId.DESTINATION_UNEXPECTED
    assert finding.severity is Severity.HIGH
    assert finding.reason == (
        "10.0.0.9 connected to 198.51.100.1 tcp/6667 3 times, outside its MUD policy and its learned baseline"
    )
    assert (finding.first, finding.last, len(finding.evidence)) == (utc(T0), utc(T0 + 2), 3)
    assert skipped.total == 0


def test_destination_allowed_by_policy_or_baseline() -> None:
    flows = [flow(T0, dst="198.51.100.1"), flow(T0, dst="203.0.113.7")]
    baselines = {"10.0.0.9": enforcing("10.0.0.9")}
    allowed, _ = detect_unexpected_destinations(
        flows, policy=FakePolicy({"10.0.0.9": True}), baselines=baselines, now=utc(T0)
    )
    assert allowed == ()
    (finding,), _ = detect_unexpected_destinations(
        flows, policy=FakePolicy({}), baselines=baselines, now=utc(T0)
    )
    assert finding.severity is Severity.MEDIUM
    assert finding.reason == (
        "10.0.0.9 connected to 198.51.100.1 tcp/80 1 times, outside its learned baseline (no MUD policy)"
    )


def test_device_without_policy_or_enforcing_baseline_is_skipped_not_judged() -> None:
    findings, skipped = detect_unexpected_destinations(
        [flow(T0, dst="198.51.100.1")], policy=FakePolicy({}), baselines={}, now=utc(T0)
    )
    assert findings == ()
    assert skipped.counts == {"no policy and no enforcing baseline": 1}


def test_policy_deny_while_baseline_learns() -> None:
    learning = enforcing("10.0.0.9", learning_until=utc(T0 + 86400))
    (finding,), _ = detect_unexpected_destinations(
        [flow(T0, dst="203.0.113.7")],
        policy=FakePolicy({"10.0.0.9": False}),
        baselines={"10.0.0.9": learning},
        now=utc(T0),
    )
    assert finding.reason.endswith("outside its MUD policy (no enforcing baseline)")


# --- IoT-23 (Stratosphere Laboratory) conn.log captures -----------------------------------------


def _iot23_flows(path: Path) -> list[FlowRecord]:
    """A simple parse of an IoT-23 labelled conn.log CSV (the test does not use the ingestion module)."""

    def number(text: str) -> float:
        return float(text) if text not in ("", "-") else 0.0

    with path.open(newline="") as stream:
        return [
            FlowRecord(
                number(row["ts"]),
                number(row["duration"]),
                row["id.orig_h"],
                row["id.resp_h"],
                int(row["id.orig_p"]),
                int(row["id.resp_p"]),
                row["proto"],
                int(number(row["orig_bytes"])),
                int(number(row["resp_bytes"])),
                int(number(row["orig_pkts"])),
                int(number(row["resp_pkts"])),
                row["conn_state"],
                label=f"{row['label']}:{row['detailed-label']}",
            )
            for row in csv.DictReader(stream)
        ]


def _scan_captures() -> list[Path]:
    found = []
    for path in sorted(IOT23.glob("*.csv")) if IOT23.is_dir() else []:
        with path.open(newline="") as stream:
            if any("PortScan" in row.get("detailed-label", "") for row in csv.DictReader(stream)):
                found.append(path)
    return found


def test_iot23_port_scan_capture_gives_scan_findings() -> None:
    captures = _scan_captures()
    if not captures:
        pytest.skip(f"no IoT-23 capture labelled PortScan under {IOT23}")
    flows = [f for f in _iot23_flows(captures[0]) if f.label is not None and "PortScan" in f.label]
    flows.sort(key=lambda f: f.start)
    findings = PortScanDetector().observe(flows) + HostSweepDetector().observe(flows)
    assert findings
    scanners = {f.src for f in flows}
    assert {finding.device for finding in findings} <= scanners


def test_iot23_benign_honeypot_traffic_gives_no_scan_or_brute_force_findings() -> None:
    captures = sorted(IOT23.glob("CTU-Honeypot-*.csv")) if IOT23.is_dir() else []
    if not captures:
        pytest.skip(f"no IoT-23 honeypot capture under {IOT23}")
    for capture in captures:
        flows = sorted(_iot23_flows(capture), key=lambda f: f.start)
        assert all(f.label is not None and f.label.lower().startswith("benign") for f in flows)
        detectors = (PortScanDetector(), HostSweepDetector(), BruteForceDetector())
        assert [finding for d in detectors for finding in d.observe(flows)] == [], capture.name
