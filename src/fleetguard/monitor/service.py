"""The monitor of an installation: flows and packets in, detectors run, alerts raised about devices.

Theory of operation. :meth:`MonitorService.ingest_flows` feeds flow records (Zeek conn.log, NetFlow,
IPFIX, or flows assembled from a capture) in time order to the rule detectors (port scan, host sweep,
brute force, beaconing: :mod:`fleetguard.monitor.rules`), whose state persists across calls, so a
collector that delivers batches sees one continuous network. Each finding becomes an alert
(:mod:`fleetguard.monitor.alerts`) about the device that owns the finding's address, by the
segmentation bindings (the only place the fleet records device addresses), or about the bare address
when no device owns it. :meth:`ingest_packets` does the same for packet batches (SYN scans, found
vectorized). Baselines are stored as JSON per device so that a restart keeps them.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from fleetguard.errors import Conflict, InvalidInput, NotFound
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.monitor.alerts import Alert, AlertInput, AlertService
from fleetguard.monitor.baseline import Baseline, Scope, summarize_window
from fleetguard.monitor.broker import BrokerEvent, BrokerFinding, BrokerMonitor
from fleetguard.monitor.discovery import Discovery
from fleetguard.monitor.flows import flows_from_packets
from fleetguard.monitor.model import FlowRecord, PacketColumns, Skipped
from fleetguard.monitor.rules import (
    BeaconDetector,
    BruteForceDetector,
    Finding,
    HostSweepDetector,
    PortScanDetector,
    Severity,
    WindowThresholds,
    detect_port_scans_in_packets,
    detect_unexpected_destinations,
    detect_volume,
)
from fleetguard.store.database import Database
from fleetguard.store.models import MonitorBaselineRow, MonitorDiscoveredRow

if TYPE_CHECKING:  # numba compiles on import: the anomaly model loads only where it is used
    from fleetguard.monitor.anomaly import AnomalyFinding, AnomalyModel

__all__ = ["AddressBook", "DiscoveryState", "IngestReport", "MonitorService", "owners_from_bindings"]

_BASELINE = "flows"
_MAX_PENDING = 1_000_000


class _NoPolicy:
    """No MUD allow-policy is consulted here: destinations are judged by the learned baselines."""

    def allowed(self, device: str, dst: str, port: int, proto: str) -> bool | None:
        return None


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


AddressBook = Callable[[], Mapping[str, str]]
"""Returns the fleet's known addresses: address text → device id."""


@dataclass(slots=True)
class IngestReport:
    """What one ingestion found and raised."""

    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    suppressed: int = 0
    skipped: Skipped = field(default_factory=Skipped)


class DiscoveryState(enum.StrEnum):
    """An operator's decision about a discovered address."""

    DISCOVERED = "discovered"
    ADOPTED = "adopted"
    REJECTED = "rejected"


class MonitorService:
    """Detectors with their state, and the alerts they raise (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        alerts: AlertService,
        addresses: AddressBook,
        *,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], None] | None = None,
        model_path: Path | None = None,
        devices: Callable[[Sequence[str]], Mapping[str, object]] | None = None,
        baseline_learning: dt.timedelta = dt.timedelta(days=7),
        baseline_window_s: float = 300.0,
        device_type: Callable[[str], str | None] | None = None,
    ) -> None:
        self._device_type = device_type
        self._devices = devices
        self._baseline_learning = baseline_learning
        self._window_s = baseline_window_s
        self._baselines: dict[str, Baseline] | None = None  # by device address; loaded once
        self._pending: list[FlowRecord] = []  # flows of windows not closed yet
        self.model_path = model_path
        self._model: AnomalyModel | None = None
        self._database = database
        self._log = log
        self._on_commit = on_commit
        self._alerts = alerts
        self._addresses = addresses
        self._clock = clock
        self._detectors = (PortScanDetector(), HostSweepDetector(), BruteForceDetector(), BeaconDetector())
        self._broker = BrokerMonitor()
        self._lock = threading.Lock()  # the collector and the capture threads share the detectors

    def ingest_flows(self, flows: Iterable[FlowRecord], *, skipped: Skipped | None = None) -> IngestReport:
        """Run the flow detectors over ``flows`` (sorted by start here); raise their alerts."""
        with self._lock:
            return self._ingest_flows(flows, skipped)

    def _ingest_flows(self, flows: Iterable[FlowRecord], skipped: Skipped | None) -> IngestReport:
        ordered = sorted(flows, key=lambda flow: flow.start)
        report = IngestReport(records=len(ordered), skipped=skipped or Skipped())
        for detector in self._detectors:
            report.findings.extend(detector.observe(ordered))
            if ordered:
                detector.advance(dt.datetime.fromtimestamp(ordered[-1].start, dt.UTC))
        report.findings.extend(self._baseline_findings(ordered))
        self._raise(report)
        return report

    def _baseline_findings(self, flows: Sequence[FlowRecord]) -> list[Finding]:
        """Learn the devices' baselines window by window and judge closed windows against them.

        Flows of the fleet's devices wait in a bounded buffer until their window
        (``baseline_window_s``) closes, i.e. a later flow starts after its end; each closed window is
        judged (volume, unexpected destinations: only by baselines past their learning period), then
        learned from, and the baselines are stored.
        """
        owners = self._addresses()
        if not owners:
            return []
        baselines = self._loaded_baselines()
        self._pending.extend(f for f in flows if f.src in owners)
        if len(self._pending) > _MAX_PENDING:
            del self._pending[: len(self._pending) - _MAX_PENDING]
        if not self._pending:
            return []
        latest = max(f.start for f in self._pending)
        closed_until = (latest // self._window_s) * self._window_s
        closed = [f for f in self._pending if f.start < closed_until]
        self._pending = [f for f in self._pending if f.start >= closed_until]
        findings: list[Finding] = []
        for start in sorted({(f.start // self._window_s) * self._window_s for f in closed}):
            window = [f for f in closed if start <= f.start < start + self._window_s]
            findings.extend(self._judge_and_learn(window, start, baselines))
        return findings

    def _judge_and_learn(
        self, window: list[FlowRecord], start: float, baselines: dict[str, Baseline]
    ) -> list[Finding]:
        """Judge one closed window by the device and device-type baselines, then learn from it."""
        begin, end = _utc(start), _utc(start + self._window_s)
        devices = {f.src for f in window}
        types = self._types_of(devices)
        for subject, scope in [(a, Scope.DEVICE) for a in devices] + [
            (f"type:{t}", Scope.TYPE) for t in set(types.values()) if t
        ]:
            if subject not in baselines:
                baselines[subject] = Baseline.new(
                    subject, scope, now=begin, learning_s=self._baseline_learning.total_seconds(),
                    window_s=self._window_s,
                )  # fmt: skip
        by_type = {t: baselines[f"type:{t}"] for t in set(types.values()) if t}
        findings = list(
            detect_volume(window, start=begin, end=end, device_types=types, device_baselines=baselines,
                          type_baselines=by_type)
        )  # fmt: skip
        unexpected, _ = detect_unexpected_destinations(
            window, policy=_NoPolicy(), baselines=baselines, now=end
        )
        findings.extend(unexpected)
        samples = summarize_window(window, devices, start=start, end=start + self._window_s)
        for address, sample in samples.items():
            subjects = [address] + ([f"type:{types[address]}"] if types.get(address) else [])
            for subject in subjects:  # a type's baseline learns each of its devices' windows
                baselines[subject] = baselines[subject].learn(sample, end)
        for subject in {s for a in samples for s in [a, f"type:{types.get(a)}"] if s in baselines}:
            self.save_baseline(baselines[subject])
        return findings

    def _types_of(self, addresses: set[str]) -> dict[str, str | None]:
        """The device type of each address's device (None: no device, no type)."""
        owners = self._addresses()
        if self._device_type is None:
            return dict.fromkeys(addresses)
        return {
            address: self._device_type(owners[address]) if address in owners else None
            for address in addresses
        }

    def _loaded_baselines(self) -> dict[str, Baseline]:
        if self._baselines is None:
            self._baselines = {baseline.subject: baseline for baseline in self.baselines()}
        return self._baselines

    def train(self, packets: PacketColumns, *, actor: str) -> AnomalyModel:
        """Learn the anomaly model from benign ``packets`` and keep it (replacing the previous one)."""
        if self.model_path is None:
            raise InvalidInput("this monitor has no place to keep a model")
        from fleetguard.monitor.anomaly import train_model

        model = train_model(packets)
        model.save(self.model_path)
        self._model = model
        with self._database.transaction() as session:
            self._log.append(
                session,
                NewEvent(actor=actor, subject="monitor:model", action="monitor.model.trained",
                         data={"packets": len(packets), "threshold": f"{model.detector.threshold:.6g}"}),
                now=self._clock(),
            )  # fmt: skip
        publish_committed(self._on_commit)
        return model

    def model(self) -> AnomalyModel | None:
        """The trained model, loaded once (None: never trained)."""
        if self._model is None and self.model_path is not None and self.model_path.exists():
            from fleetguard.monitor.anomaly import AnomalyModel

            self._model = AnomalyModel.load(self.model_path)
        return self._model

    def ingest_packets(self, packets: PacketColumns, *, skipped: Skipped | None = None) -> IngestReport:
        """Run the flow detectors over the batch's flows, the SYN-scan detector over its packets, and
        the anomaly model (when trained) over the packets: one alert per anomalous source, explained."""
        with self._lock:
            return self._ingest_packets(packets, skipped)

    def _ingest_packets(self, packets: PacketColumns, skipped: Skipped | None) -> IngestReport:
        report = self._ingest_flows(flows_from_packets(packets), skipped)
        report.records = len(packets)
        scans = detect_port_scans_in_packets(packets, WindowThresholds(60.0, 20))
        known = {(f.rule, f.device, f.target) for f in report.findings}
        extra = IngestReport(findings=[f for f in scans if (f.rule, f.device, f.target) not in known])
        self._raise(extra)
        report.findings.extend(extra.findings)
        report.alerts.extend(extra.alerts)
        report.suppressed += extra.suppressed
        model = self.model()
        if model is not None and len(packets):
            from fleetguard.monitor.anomaly import anomalies

            self._raise_anomalies(report, anomalies(model, packets))
        return report

    def _raise_anomalies(self, report: IngestReport, found: Sequence[AnomalyFinding]) -> None:
        owners = self._addresses()
        before = self._alerts.suppressed
        for finding in found:
            ratio = finding.score / finding.threshold if finding.threshold > 0 else float("inf")
            alert = self._alerts.raise_alert(
                AlertInput(
                    rule="anomaly.autoencoder", detector="autoencoder",
                    severity=Severity.HIGH if ratio >= 10 else Severity.MEDIUM, address=finding.address,
                    reason=finding.reason, at=finding.last, device_id=owners.get(finding.address),
                    evidence={
                        "packets": finding.packets, "score": finding.score, "threshold": finding.threshold,
                        "first": finding.first.isoformat(), "groups": [list(g) for g in finding.groups],
                    },
                )
            )  # fmt: skip
            if alert is not None:
                report.alerts.append(alert)
        report.suppressed += self._alerts.suppressed - before

    def ingest_broker(self, events: Sequence[BrokerEvent], *, skipped: Skipped | None = None) -> IngestReport:
        """Run the broker detectors (MQTT brute force, reconnect storms, message rates) over broker
        log events; raise their alerts (a client id that is a device id is that device)."""
        report = IngestReport(records=len(events), skipped=skipped or Skipped())
        found = self._broker.observe(events)
        owners = self._addresses()
        before = self._alerts.suppressed
        for finding in found:
            client = isinstance(finding, BrokerFinding)
            device = finding.device if client else owners.get(finding.device)
            address = finding.target if client and finding.target else finding.device
            if isinstance(finding, Finding):
                report.findings.append(finding)
            alert = self._alerts.raise_alert(
                AlertInput(
                    rule=str(finding.rule), detector="broker", severity=finding.severity,
                    address=address,
                    reason=finding.reason, at=finding.last, device_id=self._known_device(device),
                    target=str(finding.target or ""),
                    evidence={"value": finding.value, "threshold": finding.threshold,
                              "evidence": [str(e) for e in finding.evidence]},
                )
            )  # fmt: skip
            if alert is not None:
                report.alerts.append(alert)
        report.suppressed = self._alerts.suppressed - before
        return report

    def _known_device(self, device_id: str | None) -> str | None:
        """``device_id`` when the inventory (or, without one, the address book) knows it, else None."""
        if device_id is None:
            return None
        if self._devices is None:
            return device_id if device_id in self._addresses().values() else None
        return device_id if self._devices([device_id]) else None

    def save_baseline(self, baseline: Baseline) -> None:
        """Store a device's or type's baseline (replacing the previous one)."""
        now = self._clock()
        data = json.loads(baseline.to_json())
        with self._database.transaction() as session:
            row = session.get(MonitorBaselineRow, (baseline.subject, _BASELINE))
            if row is None:
                session.add(
                    MonitorBaselineRow(
                        scope=baseline.subject, kind=_BASELINE, data=baseline.to_json(), updated_at=now
                    )
                )
            else:
                row.data, row.updated_at = data, now

    def baselines(self) -> list[Baseline]:
        """Return every stored baseline (strictly parsed: a corrupt one raises ``BaselineInvalid``)."""
        with self._database.reading() as session:
            rows = session.scalars(
                select(MonitorBaselineRow).where(MonitorBaselineRow.kind == _BASELINE)
            ).all()
        return [Baseline.from_json(json.dumps(row.data)) for row in rows]

    # -- discovery ----------------------------------------------------------------------------------

    def record_discovered(self, discovery: Discovery) -> int:
        """Store what discovery found (new addresses as ``discovered``; decided ones keep their
        decision, and only their last sighting moves); return how many addresses are new."""
        now = self._clock()
        new = 0
        with self._database.transaction() as session:
            for device in discovery.devices:
                row = session.get(MonitorDiscoveredRow, device.address)
                last = dt.datetime.fromtimestamp(device.last_seen, dt.UTC)
                if row is not None:
                    row.last_seen = max(row.last_seen, last)
                    continue
                new += 1
                print_ = device.fingerprint
                session.add(
                    MonitorDiscoveredRow(
                        address=device.address, mac=device.mac, vendor=print_.vendor,
                        guessed_type=str(print_.guessed_type), confidence=round(print_.confidence * 100),
                        reasons=list(print_.reasons)[:20], state=DiscoveryState.DISCOVERED,
                        first_seen=dt.datetime.fromtimestamp(device.first_seen, dt.UTC), last_seen=last,
                    )
                )  # fmt: skip
                self._log.append(
                    session,
                    NewEvent(
                        actor="monitor", subject=f"address:{device.address}",
                        action="monitor.device.discovered",
                        data={"vendor": print_.vendor or "", "guessed_type": str(print_.guessed_type)},
                    ),
                    now=now,
                )  # fmt: skip
        publish_committed(self._on_commit)
        return new

    def discovered(self, state: DiscoveryState | None = None) -> list[MonitorDiscoveredRow]:
        """Return the discovered addresses (optionally in one state), by address."""
        query = select(MonitorDiscoveredRow).order_by(MonitorDiscoveredRow.address)
        if state is not None:
            query = query.where(MonitorDiscoveredRow.state == state)
        with self._database.reading() as session:
            return list(session.scalars(query))

    def decide(self, address: str, state: DiscoveryState, *, actor: str) -> MonitorDiscoveredRow:
        """Adopt or reject a discovered address (the caller registers and binds an adopted device)."""
        if state is DiscoveryState.DISCOVERED:
            raise InvalidInput("decide adopted or rejected")
        now = self._clock()
        with self._database.transaction() as session:
            row = session.get(MonitorDiscoveredRow, address)
            if row is None:
                raise NotFound(f"{address[:64]!r} was not discovered", hint="fleetguard monitor discovered")
            if row.state != DiscoveryState.DISCOVERED:
                raise Conflict(f"{address} is {row.state} already")
            row.state = state
            self._log.append(
                session,
                NewEvent(
                    actor=actor, subject=f"address:{address}", action=f"monitor.device.{state}", data={}
                ),
                now=now,
            )
        publish_committed(self._on_commit)
        return row

    def _raise(self, report: IngestReport) -> None:
        owners = self._addresses()
        before = self._alerts.suppressed
        for finding in report.findings:
            alert = self._alerts.raise_alert(_alert_input(finding, owners))
            if alert is not None:
                report.alerts.append(alert)
        report.suppressed = self._alerts.suppressed - before


def _alert_input(finding: Finding, owners: Mapping[str, str]) -> AlertInput:
    return AlertInput(
        rule=str(finding.rule), detector="rules", severity=finding.severity, address=finding.device,
        reason=finding.reason, at=finding.last, device_id=owners.get(finding.device),
        target=finding.target or "",
        evidence={
            "value": finding.value, "threshold": finding.threshold, "first": finding.first.isoformat(),
            "last": finding.last.isoformat(), "flows": [str(flow) for flow in finding.evidence],
        },
    )  # fmt: skip


def owners_from_bindings(bindings: Sequence[object]) -> dict[str, str]:
    """Map every bound address to its device (``fleetguard.segment.service.Binding`` values)."""
    owners: dict[str, str] = {}
    for binding in bindings:
        device_id = getattr(binding, "device_id", None)
        for attribute in ("ipv4", "ipv6"):
            address = getattr(binding, attribute, None)
            if device_id is not None and address is not None:
                owners[str(address)] = str(device_id)
    return owners
