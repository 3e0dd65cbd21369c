"""Explainable detectors over flows: scans, sweeps, brute force, beaconing, volume, destinations.

Theory of operation. Every detector is pure: it reads :class:`~fleetguard.monitor.model.FlowRecord`
values (or a :class:`~fleetguard.monitor.model.PacketColumns` batch) and returns :class:`Finding`
values; time is the flows' own time, or passed in, never the clock. A finding names a stable rule id
(:class:`RuleId`), a severity, the device, the first and last time involved, the measured value and
the threshold it crossed, a human reason that carries those numbers, and at most
:data:`MAX_EVIDENCE` flow keys as evidence.

Windowed detectors keep state between batches, and the state is bounded:

* :class:`PortScanDetector`: distinct destination ports per (source, destination) in ``window_s``;
* :class:`HostSweepDetector`: distinct destination hosts per (source, proto, port) in ``window_s``;
* :class:`BruteForceDetector`: failed or short, tiny TCP connections per (source, destination,
  port) to telnet (23, 2323), SSH (22) and MQTT (1883, 8883) in ``window_s``;
* :class:`BeaconDetector`: connections from one source to one (destination, proto, port) at near
  constant intervals: the coefficient of variation (standard deviation over mean) of the last
  inter-arrival times is at most ``max_cv`` over at least ``min_events`` connections.

Each keeps at most ``max_keys`` keys (the least recently updated is evicted first) and at most
``max_values`` values per key (the oldest first); evictions are counted in ``evicted``. A key that
fired is quiet for one window, so an ongoing scan gives one finding per window, not one per flow.
The detectors' clock is the latest flow start seen; :meth:`advance` moves it (and expires state)
when no flows come.

Stateless rules judge one window or one batch against what the caller knows:
:func:`detect_volume` compares each device's bytes in a window with its own baseline
(``volume.device``) and its type's (``volume.type``), and :func:`detect_unexpected_destinations`
reports destinations neither a MUD policy (:class:`AllowPolicy`) nor the learned baseline allow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

import numpy as np

from fleetguard.monitor.baseline import Baseline, Phase, summarize_window
from fleetguard.monitor.model import FlowRecord, PacketColumns, Skipped

__all__ = [
    "BRUTE_FORCE_PORTS",
    "MAX_EVIDENCE",
    "AllowPolicy",
    "BeaconDetector",
    "BeaconThresholds",
    "BruteForceDetector",
    "BruteForceThresholds",
    "Finding",
    "FlowKey",
    "HostSweepDetector",
    "PortScanDetector",
    "RuleId",
    "Severity",
    "VolumeThresholds",
    "WindowThresholds",
    "detect_port_scans_in_packets",
    "detect_unexpected_destinations",
    "detect_volume",
]

MAX_EVIDENCE: Final = 20


class Severity(StrEnum):
    """How urgent a finding is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RuleId(StrEnum):
    """The stable slug of each rule (alerts, suppressions and tests refer to it)."""

    SCAN_PORT = "scan.port"
    SCAN_HOST_SWEEP = "scan.host-sweep"
    BRUTEFORCE_SSH = "bruteforce.ssh"
    BRUTEFORCE_TELNET = "bruteforce.telnet"
    BRUTEFORCE_MQTT = "bruteforce.mqtt"
    BRUTEFORCE_SERVICE = "bruteforce.service"
    VOLUME_DEVICE = "volume.device"
    VOLUME_TYPE = "volume.type"
    BEACONING = "beaconing"
    DESTINATION_UNEXPECTED = "destination.unexpected"


# The services brute-forced by IoT malware (Mirai's telnet list, SSH, MQTT with and without TLS).
BRUTE_FORCE_PORTS: Final[Mapping[int, RuleId]] = {
    22: RuleId.BRUTEFORCE_SSH,
    23: RuleId.BRUTEFORCE_TELNET,
    2323: RuleId.BRUTEFORCE_TELNET,
    1883: RuleId.BRUTEFORCE_MQTT,
    8883: RuleId.BRUTEFORCE_MQTT,
    # Other services with a login that IoT malware and attackers guess at: FTP, POP3, IMAP, SMB,
    # VMware authd, MSSQL, MySQL, RDP, PostgreSQL, VNC.
    **dict.fromkeys((21, 110, 143, 445, 902, 1433, 3306, 3389, 5432, 5900), RuleId.BRUTEFORCE_SERVICE),
}
# Infrastructure that is periodic by design, never a beacon: DNS, DHCP, NTP, mDNS, SSDP.
_PERIODIC_SERVICES: Final = frozenset({53, 67, 68, 123, 5353, 1900})
# Zeek conn_state values of connections that did not complete normally (Zeek base/protocols/conn/main.zeek):
# REJ rejected, S0 no reply, RSTO/RSTR reset after establishment, RSTOS0/RSTRH reset without one,
# SH/SHR half-open closes, OTH no SYN seen.
_FAILED_STATES: Final = frozenset({"REJ", "S0", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"})
_SCAN_PROTOS: Final = frozenset({"tcp", "udp"})
_TCP: Final = 6
_SYN, _ACK = 0x02, 0x10


@dataclass(frozen=True, slots=True, order=True)
class FlowKey:
    """The 5-tuple of a flow, the evidence of a finding."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int

    @classmethod
    def of(cls, flow: FlowRecord) -> FlowKey:
        """Return the key of ``flow``."""
        return cls(flow.proto, flow.src, flow.sport, flow.dst, flow.dport)

    def __str__(self) -> str:
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(frozen=True, slots=True)
class Finding:
    """One detection: which rule, how bad, about whom, when, why (with the numbers), and evidence.

    ``value`` is what was measured and ``threshold`` what it crossed, in the rule's unit (distinct
    ports, hosts or connections; a coefficient of variation; bytes; 1 for a single event).
    ``target`` is what the device did it to (an address, ``proto/port``), where the rule has one.
    """

    rule: RuleId
    severity: Severity
    device: str
    first: dt.datetime
    last: dt.datetime
    reason: str
    value: float
    threshold: float
    target: str | None = None
    evidence: tuple[FlowKey, ...] = ()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@dataclass(frozen=True, slots=True)
class WindowThresholds:
    """A count threshold over a sliding window, and the bounds of the state that counts."""

    window_s: float
    threshold: int
    max_keys: int = 4096
    max_values: int = 256

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and 1 <= self.threshold <= self.max_values and self.max_keys >= 1):
            raise ValueError(
                f"inconsistent thresholds {self}: need window_s > 0, 1 <= threshold <= max_values"
            )


@dataclass(slots=True)
class _Entry:
    values: OrderedDict[Hashable, tuple[float, FlowKey]] = field(default_factory=OrderedDict)
    changed: bool = False
    quiet_until: float = -math.inf


class _Tracker:
    """Distinct values per key within a sliding window, bounded in keys and in values per key."""

    def __init__(self, limits: WindowThresholds) -> None:
        self.limits = limits
        self.entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.clock = -math.inf
        self.evicted = Skipped()

    def add(self, key: Hashable, value: Hashable, ts: float, flow: FlowKey) -> None:
        self.clock = max(self.clock, ts)
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.limits.max_keys:
                self.entries.popitem(last=False)
                self.evicted.add("key evicted (max_keys)")
            entry = self.entries[key] = _Entry()
        self.entries.move_to_end(key)
        entry.values[value] = (ts, flow)
        entry.values.move_to_end(value)
        if len(entry.values) > self.limits.max_values:
            entry.values.popitem(last=False)
            self.evicted.add("value evicted (max_values)")
        entry.changed = True

    def crossed(self) -> list[tuple[Hashable, list[tuple[float, FlowKey]]]]:
        """Return the keys changed since the last call that now hold >= threshold values in the window."""
        horizon = self.clock - self.limits.window_s
        fired = []
        for key, entry in self.entries.items():
            if not entry.changed:
                continue
            entry.changed = False
            live = [event for event in entry.values.values() if event[0] > horizon]
            if len(live) >= self.limits.threshold and self.clock >= entry.quiet_until:
                entry.quiet_until = self.clock + self.limits.window_s
                fired.append((key, sorted(live)))
        return fired

    def advance(self, now: float) -> None:
        """Move the clock to ``now`` and drop values (and then keys) older than the window."""
        self.clock = max(self.clock, now)
        horizon = self.clock - self.limits.window_s
        for key in list(self.entries):
            entry = self.entries[key]
            for value in [v for v, (ts, _) in entry.values.items() if ts <= horizon]:
                del entry.values[value]
            if not entry.values and self.clock >= entry.quiet_until:
                del self.entries[key]


class _WindowDetector:
    """The shared part of the sliding-window detectors."""

    def __init__(self, limits: WindowThresholds) -> None:
        self._tracker = _Tracker(limits)

    @property
    def evicted(self) -> Skipped:
        """State dropped to stay within the bounds, counted by reason."""
        return self._tracker.evicted

    @property
    def tracked(self) -> int:
        """How many keys are tracked now."""
        return len(self._tracker.entries)

    def advance(self, now: dt.datetime) -> None:
        """Move the detector's clock to ``now`` (timezone-aware) and expire old state."""
        self._tracker.advance(now.timestamp())

    def observe(self, flows: Iterable[FlowRecord]) -> tuple[Finding, ...]:
        """Fold ``flows`` into the window; return the findings of keys that crossed the threshold."""
        for flow in flows:
            self._add(flow)
        return tuple(self._finding(key, events) for key, events in self._tracker.crossed())

    def _add(self, flow: FlowRecord) -> None:
        raise NotImplementedError

    def _finding(self, key: Hashable, events: list[tuple[float, FlowKey]]) -> Finding:
        raise NotImplementedError

    def _base(
        self, events: list[tuple[float, FlowKey]]
    ) -> tuple[dt.datetime, dt.datetime, tuple[FlowKey, ...]]:
        evidence = tuple(flow for _, flow in events[-MAX_EVIDENCE:])
        return _utc(events[0][0]), _utc(events[-1][0]), evidence


class PortScanDetector(_WindowDetector):
    """``scan.port``: many distinct destination ports from one source to one host (TCP or UDP)."""

    def __init__(self, limits: WindowThresholds | None = None) -> None:
        super().__init__(limits or WindowThresholds(window_s=60.0, threshold=20))

    def _add(self, flow: FlowRecord) -> None:
        if flow.proto in _SCAN_PROTOS:
            self._tracker.add((flow.src, flow.dst), flow.dport, flow.start, FlowKey.of(flow))

    def _finding(self, key: Hashable, events: list[tuple[float, FlowKey]]) -> Finding:
        assert isinstance(key, tuple)
        src, dst = key
        limits = self._tracker.limits
        first, last, evidence = self._base(events)
        reason = (
            f"{len(events)} distinct ports on {dst} from {src} within {limits.window_s:g} s "
            f"(threshold {limits.threshold})"
        )
        return Finding(
            RuleId.SCAN_PORT,
            Severity.MEDIUM,
            src,
            first,
            last,
            reason,
            len(events),
            limits.threshold,
            dst,
            evidence,
        )


class HostSweepDetector(_WindowDetector):
    """``scan.host-sweep``: many distinct hosts on one port from one source (a worm looking for victims)."""

    def __init__(self, limits: WindowThresholds | None = None) -> None:
        super().__init__(limits or WindowThresholds(window_s=60.0, threshold=32))

    def _add(self, flow: FlowRecord) -> None:
        if flow.proto in _SCAN_PROTOS:
            self._tracker.add((flow.src, flow.proto, flow.dport), flow.dst, flow.start, FlowKey.of(flow))

    def _finding(self, key: Hashable, events: list[tuple[float, FlowKey]]) -> Finding:
        assert isinstance(key, tuple)
        src, proto, port = key
        limits = self._tracker.limits
        first, last, evidence = self._base(events)
        reason = (
            f"{len(events)} distinct hosts on {proto}/{port} from {src} within {limits.window_s:g} s "
            f"(threshold {limits.threshold})"
        )
        return Finding(
            RuleId.SCAN_HOST_SWEEP,
            Severity.HIGH,
            src,
            first,
            last,
            reason,
            len(events),
            limits.threshold,
            f"{proto}/{port}",
            evidence,
        )


@dataclass(frozen=True, slots=True)
class BruteForceThresholds:
    """What counts as one failed login attempt: a failed Zeek state, or short and tiny."""

    short_s: float = 10.0
    tiny_bytes: int = 4096


class BruteForceDetector(_WindowDetector):
    """``bruteforce.{ssh,telnet,mqtt}``: many failed or short connections from one source to one service."""

    def __init__(
        self, limits: WindowThresholds | None = None, attempt: BruteForceThresholds | None = None
    ) -> None:
        super().__init__(limits or WindowThresholds(window_s=300.0, threshold=10))
        self._attempt = attempt or BruteForceThresholds()

    def _add(self, flow: FlowRecord) -> None:
        if flow.proto != "tcp" or flow.dport not in BRUTE_FORCE_PORTS:
            return
        short = (
            flow.duration <= self._attempt.short_s
            and flow.src_bytes + flow.dst_bytes <= self._attempt.tiny_bytes
        )
        if flow.state in _FAILED_STATES or short:
            key = FlowKey.of(flow)
            self._tracker.add((flow.src, flow.dst, flow.dport), (key, flow.start), flow.start, key)

    def _finding(self, key: Hashable, events: list[tuple[float, FlowKey]]) -> Finding:
        assert isinstance(key, tuple)
        src, dst, port = key
        limits = self._tracker.limits
        rule = BRUTE_FORCE_PORTS[port]
        first, last, evidence = self._base(events)
        reason = (
            f"{len(events)} failed or short connections from {src} to {dst} tcp/{port} "
            f"({rule.value.removeprefix('bruteforce.')}) within {limits.window_s:g} s "
            f"(threshold {limits.threshold})"
        )
        return Finding(
            rule,
            Severity.HIGH,
            src,
            first,
            last,
            reason,
            len(events),
            limits.threshold,
            f"{dst} tcp/{port}",
            evidence,
        )


@dataclass(frozen=True, slots=True)
class BeaconThresholds:
    """Beaconing: at least ``min_events`` connections at least ``min_interval_s`` apart on average,
    with inter-arrival coefficient of variation at most ``max_cv``, among the last ``max_events``."""

    min_events: int = 8
    max_cv: float = 0.1
    min_interval_s: float = 5.0
    window_s: float = 86400.0
    max_channels: int = 4096
    max_events: int = 64

    def __post_init__(self) -> None:
        if not 3 <= self.min_events <= self.max_events or self.max_channels < 1 or self.window_s <= 0:
            raise ValueError(f"inconsistent beacon thresholds {self}")


@dataclass(slots=True)
class _Channel:
    events: deque[tuple[float, FlowKey]]
    changed: bool = False
    quiet_until: float = -math.inf


class BeaconDetector:
    """``beaconing``: periodic connections from a device to one destination service."""

    def __init__(self, limits: BeaconThresholds | None = None) -> None:
        self.limits = limits or BeaconThresholds()
        self._channels: OrderedDict[tuple[str, str, str, int], _Channel] = OrderedDict()
        self._clock = -math.inf
        self.evicted = Skipped()

    @property
    def tracked(self) -> int:
        """How many channels (source, destination, proto, port) are tracked now."""
        return len(self._channels)

    def advance(self, now: dt.datetime) -> None:
        """Move the clock to ``now`` (timezone-aware) and drop channels quiet for a whole window."""
        self._clock = max(self._clock, now.timestamp())
        horizon = self._clock - self.limits.window_s
        for key in [k for k, c in self._channels.items() if c.events[-1][0] <= horizon]:
            del self._channels[key]

    def observe(self, flows: Iterable[FlowRecord]) -> tuple[Finding, ...]:
        """Fold ``flows`` in; return a finding for each channel that became periodic."""
        for flow in flows:
            self._add(flow)
        findings = []
        for key, channel in self._channels.items():
            if channel.changed:
                channel.changed = False
                finding = self._judge(key, channel)
                if finding is not None:
                    findings.append(finding)
        return tuple(findings)

    def _add(self, flow: FlowRecord) -> None:
        self._clock = max(self._clock, flow.start)
        if flow.proto == "udp" and {flow.sport, flow.dport} & _PERIODIC_SERVICES:
            return  # DHCP leases, NTP, DNS and discovery are periodic by design
        key = (flow.src, flow.dst, flow.proto, flow.dport)
        channel = self._channels.get(key)
        if channel is None:
            if len(self._channels) >= self.limits.max_channels:
                self._channels.popitem(last=False)
                self.evicted.add("channel evicted (max_channels)")
            channel = self._channels[key] = _Channel(deque(maxlen=self.limits.max_events))
        self._channels.move_to_end(key)
        channel.events.append((flow.start, FlowKey.of(flow)))
        channel.changed = True

    def _judge(self, key: tuple[str, str, str, int], channel: _Channel) -> Finding | None:
        horizon = self._clock - self.limits.window_s
        events = sorted(event for event in channel.events if event[0] > horizon)
        if len(events) < self.limits.min_events or self._clock < channel.quiet_until:
            return None
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(events)]
        mean = statistics.fmean(gaps)
        if mean < self.limits.min_interval_s:
            return None
        cv = statistics.pstdev(gaps, mean) / mean
        if cv > self.limits.max_cv:
            return None
        channel.quiet_until = self._clock + self.limits.window_s
        src, dst, proto, port = key
        reason = (
            f"{src} connected to {dst} {proto}/{port} {len(events)} times every {mean:.1f} s on average "
            f"(coefficient of variation {cv:.3f}, threshold {self.limits.max_cv:g}, "
            f"at least {self.limits.min_events} connections)"
        )
        evidence = tuple(flow for _, flow in events[-MAX_EVIDENCE:])
        return Finding(
            RuleId.BEACONING,
            Severity.MEDIUM,
            src,
            _utc(events[0][0]),
            _utc(events[-1][0]),
            reason,
            cv,
            self.limits.max_cv,
            f"{dst} {proto}/{port}",
            evidence,
        )


def detect_port_scans_in_packets(
    packets: PacketColumns, limits: WindowThresholds | None = None
) -> tuple[Finding, ...]:
    """Return ``scan.port`` findings from TCP SYN packets (SYN set, ACK clear), vectorized.

    Windows are fixed (``floor(ts / window_s)``), not sliding: a batch is judged on its own, without
    state. Addresses missing from ``packets.addresses`` are shown as their 64-bit key in hex.
    """
    limits = limits or WindowThresholds(window_s=60.0, threshold=20)
    syn = (packets.proto == _TCP) & ((packets.tcp_flags & (_SYN | _ACK)) == _SYN)
    if not syn.any():
        return ()
    bucket = np.floor(packets.ts[syn] / limits.window_s).astype(np.int64)
    rows = np.stack(
        [packets.src[syn], packets.dst[syn], bucket.astype(np.uint64), packets.dport[syn].astype(np.uint64)],
        axis=1,
    )
    distinct = np.unique(rows, axis=0)
    pairs, counts = np.unique(distinct[:, :3], axis=0, return_counts=True)
    findings = []
    for (src, dst, window), count in zip(pairs.tolist(), counts.tolist(), strict=True):
        if count >= limits.threshold:
            findings.append(_packet_scan_finding(packets, syn, (src, dst, window), count, limits))
    return tuple(findings)


def _packet_scan_finding(
    packets: PacketColumns, syn: np.ndarray, key: tuple[int, int, int], count: int, limits: WindowThresholds
) -> Finding:
    src, dst, window = key
    name = {k: packets.addresses.get(k, f"{k:016x}") for k in (src, dst)}
    in_window = (
        syn & (packets.src == src) & (packets.dst == dst) & (np.floor(packets.ts / limits.window_s) == window)
    )
    index = np.flatnonzero(in_window)
    evidence = tuple(
        FlowKey("tcp", name[src], int(packets.sport[i]), name[dst], int(packets.dport[i]))
        for i in index[-MAX_EVIDENCE:]
    )
    reason = (
        f"{count} distinct ports on {name[dst]} from {name[src]} within {limits.window_s:g} s "
        f"(threshold {limits.threshold})"
    )
    first, last = _utc(float(packets.ts[index[0]])), _utc(float(packets.ts[index[-1]]))
    return Finding(
        RuleId.SCAN_PORT,
        Severity.MEDIUM,
        name[src],
        first,
        last,
        reason,
        count,
        limits.threshold,
        name[dst],
        evidence,
    )


@dataclass(frozen=True, slots=True)
class VolumeThresholds:
    """A window's bytes are anomalous when all three hold: at least ``floor_bytes``, at least ``ratio``
    times the baseline mean, and at least ``z`` standard deviations above it (the deviation is at least
    ``min_std_fraction`` of the mean, so that a constant device does not alert on a byte more)."""

    z: float = 4.0
    ratio: float = 3.0
    floor_bytes: int = 1_000_000
    min_std_fraction: float = 0.1


def detect_volume(
    flows: Iterable[FlowRecord],
    *,
    start: dt.datetime,
    end: dt.datetime,
    device_types: Mapping[str, str | None],
    device_baselines: Mapping[str, Baseline],
    type_baselines: Mapping[str, Baseline],
    thresholds: VolumeThresholds | None = None,
) -> tuple[Finding, ...]:
    """Return ``volume.device``/``volume.type`` findings for the window [start, end).

    ``device_types`` maps each device address to judge to its type (or None). A baseline that is
    still learning at ``end`` is not used. Flows count for their initiator (see ``summarize_window``).
    """
    limits = thresholds or VolumeThresholds()
    flows = list(flows)
    samples = summarize_window(flows, device_types.keys(), start=start.timestamp(), end=end.timestamp())
    findings = []
    for device, sample in sorted(samples.items()):
        device_type = device_types[device]
        judged = (
            (RuleId.VOLUME_DEVICE, device_baselines.get(device), "its baseline"),
            (RuleId.VOLUME_TYPE, type_baselines.get(device_type) if device_type else None,
             f"the baseline of type {device_type}"),
        )  # fmt: skip
        for rule, baseline, whose in judged:
            if baseline is None or baseline.phase(end) is not Phase.ENFORCING:
                continue
            finding = _judge_volume(
                rule,
                device=device,
                observed=sample.octets,
                baseline=baseline,
                whose=whose,
                window=(start, end),
                limits=limits,
            )
            if finding is not None:
                findings.append(_with_evidence(finding, flows, device, start, end))
    return tuple(findings)


def _judge_volume(
    rule: RuleId,
    *,
    device: str,
    observed: int,
    baseline: Baseline,
    whose: str,
    window: tuple[dt.datetime, dt.datetime],
    limits: VolumeThresholds,
) -> Finding | None:
    mean = baseline.octets.mean
    std = max(baseline.octets.std, limits.min_std_fraction * mean, 1.0)
    z = (observed - mean) / std
    ratio = observed / mean if mean > 0 else math.inf
    if observed < limits.floor_bytes or z < limits.z or ratio < limits.ratio:
        return None
    seconds = (window[1] - window[0]).total_seconds()
    ratio_text = f"{ratio:.1f}x" if math.isfinite(ratio) else "infinitely more than"
    reason = (
        f"{observed} bytes in {seconds:g} s from {device}: {ratio_text} {whose} mean of {mean:.0f} bytes, "
        f"z {z:.1f} (thresholds {limits.ratio:g}x, z {limits.z:g}, at least {limits.floor_bytes} bytes)"
    )
    severity = Severity.HIGH if ratio >= 10 * limits.ratio else Severity.MEDIUM
    return Finding(rule, severity, device, window[0], window[1], reason, observed, limits.floor_bytes)


def _with_evidence(
    finding: Finding, flows: Sequence[FlowRecord], device: str, start: dt.datetime, end: dt.datetime
) -> Finding:
    lo, hi = start.timestamp(), end.timestamp()
    mine = [f for f in flows if f.src == device and lo <= f.start < hi]
    largest = sorted(mine, key=lambda f: (-(f.src_bytes + f.dst_bytes), f.start))[:MAX_EVIDENCE]
    return dataclasses.replace(finding, evidence=tuple(FlowKey.of(f) for f in largest))


class AllowPolicy(Protocol):
    """The compiled MUD policy of the fleet (segmentation).

    ``allowed`` answers True or False for a device with a policy, and None for a device without one.
    """

    def allowed(self, device: str, dst: str, port: int, proto: str) -> bool | None: ...


@dataclass(slots=True)
class _Group:
    first: float
    last: float
    verdict: bool | None
    enforcing: bool
    evidence: list[FlowKey] = field(default_factory=list)
    count: int = 0


def detect_unexpected_destinations(
    flows: Iterable[FlowRecord],
    *,
    policy: AllowPolicy,
    baselines: Mapping[str, Baseline],
    now: dt.datetime,
    max_groups: int = 4096,
) -> tuple[tuple[Finding, ...], Skipped]:
    """Return ``destination.unexpected`` findings, one per (device, destination, proto, port), and
    what could not be judged.

    A flow's initiator is the device. Its destination is expected when the policy allows it, or when
    the device's enforcing baseline (at ``now``) learned it. Outside a policy that exists is HIGH;
    outside the baseline of a device without a policy is MEDIUM. A device with neither a policy nor
    an enforcing baseline is not judged (counted in the returned ``Skipped``).
    """
    groups: dict[tuple[str, str, str, int], _Group] = {}
    skipped = Skipped()
    for flow in flows:
        verdict = policy.allowed(flow.src, flow.dst, flow.dport, flow.proto)
        if verdict is True:
            continue
        baseline = baselines.get(flow.src)
        enforcing = baseline is not None and baseline.phase(now) is Phase.ENFORCING
        if enforcing and baseline is not None and baseline.knows_destination(flow.dst):
            continue
        if verdict is None and not enforcing:
            skipped.add("no policy and no enforcing baseline")
            continue
        key = (flow.src, flow.dst, flow.proto, flow.dport)
        group = groups.get(key)
        if group is None:
            if len(groups) >= max_groups:
                skipped.add("too many distinct destinations (max_groups)")
                continue
            group = groups[key] = _Group(flow.start, flow.start, verdict, enforcing)
        group.first, group.last, group.count = (
            min(group.first, flow.start),
            max(group.last, flow.start),
            group.count + 1,
        )
        if len(group.evidence) < MAX_EVIDENCE:
            group.evidence.append(FlowKey.of(flow))
    findings = tuple(_destination_finding(key, group) for key, group in sorted(groups.items()))
    return findings, skipped


def _destination_finding(key: tuple[str, str, str, int], group: _Group) -> Finding:
    device, dst, proto, port = key
    if group.verdict is False:
        learned = " and its learned baseline" if group.enforcing else " (no enforcing baseline)"
        why, severity = f"outside its MUD policy{learned}", Severity.HIGH
    else:
        why, severity = "outside its learned baseline (no MUD policy)", Severity.MEDIUM
    reason = f"{device} connected to {dst} {proto}/{port} {group.count} times, {why}"
    return Finding(
        RuleId.DESTINATION_UNEXPECTED,
        severity,
        device,
        _utc(group.first),
        _utc(group.last),
        reason,
        group.count,
        1,
        f"{dst} {proto}/{port}",
        tuple(group.evidence),
    )
