"""The monitor's part of ``fleetguard up``: the NetFlow/IPFIX collector, live capture, the broker's
log and segmentation's violations feeding the detectors; alerts exported to the configured SIEM
sinks (``FLEETGUARD_ALERT_SYSLOG``, ``FLEETGUARD_ALERT_WEBHOOK``).

:func:`open_flow_collector` starts :class:`fleetguard.monitor.collector.FlowCollector` on
``FLEETGUARD_NETFLOW_PORT`` for the exporters in ``FLEETGUARD_NETFLOW_EXPORTERS``; every batch of
flows goes to :meth:`fleetguard.monitor.service.MonitorService.ingest_flows`, whose alerts raise the
devices' risk (and quarantine them above ``FLEETGUARD_MONITOR_QUARANTINE_AT``). It never raises for
a port that cannot be bound or a bad setting: ``up`` reports why the collector did not start.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetguard.config import Settings
from fleetguard.errors import FleetguardError
from fleetguard.installation import Runtime
from fleetguard.monitor.alerts import AlertInput, AlertSink, ResponsePolicy, SyslogSink, WebhookSink
from fleetguard.monitor.broker import MosquittoLogParser
from fleetguard.monitor.collector import FlowCollector
from fleetguard.monitor.live import LiveCapture
from fleetguard.monitor.model import FlowRecord
from fleetguard.monitor.rules import Severity
from fleetguard.types import parse_utc

__all__ = [
    "BrokerFeed",
    "FlowEndpoint",
    "LiveEndpoint",
    "ViolationWatcher",
    "open_flow_collector",
    "open_live_capture",
    "violation_alert",
]

_MAX_QUEUED_LINES = 100_000

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlowEndpoint:
    """A started collector, or why there is none."""

    collector: FlowCollector | None
    summary: str

    def stop(self) -> None:
        """Stop the collector, if one runs."""
        if self.collector is not None:
            self.collector.stop()


def _sinks(settings: Settings) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    if settings.alert_syslog:
        host, _, port = settings.alert_syslog.rpartition(":")
        sinks.append(SyslogSink(host, int(port)))
    if settings.alert_webhook:
        sinks.append(WebhookSink(settings.alert_webhook))
    return sinks


def open_flow_collector(runtime: Runtime) -> FlowEndpoint:
    """Start the collector when configured; return it with a one-line summary for the banner."""
    settings = runtime.settings
    runtime.alerts.configure(ResponsePolicy(quarantine_at=settings.monitor_quarantine_at), _sinks(settings))
    if settings.netflow_port == 0:
        return FlowEndpoint(None, "flow collector off (FLEETGUARD_NETFLOW_PORT=0)")
    exporters = [value.strip() for value in settings.netflow_exporters.split(",") if value.strip()]

    def ingest(records: Sequence[FlowRecord]) -> None:
        report = runtime.monitor.ingest_flows(records)
        if report.alerts:
            _log.info("monitor: %d flows, %d alerts", report.records, len(report.alerts))

    try:
        collector = FlowCollector(
            ingest, allowed_exporters=exporters, host=settings.netflow_host, port=settings.netflow_port
        )
        collector.start()
    except (ValueError, OSError, FleetguardError) as exc:
        _log.warning("flow collector not started: %s", exc)
        return FlowEndpoint(None, f"flow collector not started: {exc}")
    host, port = collector.address[:2]
    return FlowEndpoint(collector, f"NetFlow/IPFIX on udp://{host}:{port} from {', '.join(exporters)}")


class LiveEndpoint:
    """A thread feeding one interface's packets to the monitor, or why there is none."""

    def __init__(self, runtime: Runtime | None, capture: LiveCapture | None, summary: str) -> None:
        self.summary = summary
        self._runtime = runtime
        self._capture = capture
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if runtime is not None and capture is not None:
            self._thread = threading.Thread(target=self._run, name="monitor-capture", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._runtime is not None
        assert self._capture is not None
        with self._capture as capture:
            while not self._stop.is_set():
                packets, _skipped = capture.read_batch()
                if len(packets):
                    try:
                        report = self._runtime.monitor.ingest_packets(packets)
                    except FleetguardError as exc:  # the capture goes on; the failure is reported
                        _log.warning("monitor: a captured batch was not analysed: %s", exc)
                        continue
                    if report.alerts:
                        _log.info("monitor: %d packets, %d alerts", len(packets), len(report.alerts))

    def stop(self) -> None:
        """Stop capturing (within the capture's timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def open_live_capture(runtime: Runtime) -> LiveEndpoint:
    """Capture ``FLEETGUARD_MONITOR_INTERFACE`` into the monitor; never raises (the summary says why not)."""
    interface = runtime.settings.monitor_interface
    if not interface:
        return LiveEndpoint(None, None, "live capture off (FLEETGUARD_MONITOR_INTERFACE unset)")
    capture = LiveCapture(interface)
    try:
        capture.__enter__()  # fail here, not in the thread: a missing interface or no root is reported
    except FleetguardError as exc:
        _log.warning("live capture not started: %s", exc)
        return LiveEndpoint(None, None, f"live capture not started: {exc}")
    capture.__exit__(None, None, None)
    return LiveEndpoint(runtime, capture, f"live capture on {interface}")


class BrokerFeed:
    """The supervised broker's log lines into the monitor: queued by the log reader (never blocking
    it, at most 100,000 waiting; more are counted and dropped), parsed and analysed every second."""

    def __init__(self, runtime: Runtime, *, interval_s: float = 1.0) -> None:
        self._runtime = runtime
        self._interval_s = interval_s
        self._lines: collections.deque[str] = collections.deque()
        self._parser = MosquittoLogParser()
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-broker", daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        """Queue one raw log line (called from the broker's log reader)."""
        if len(self._lines) >= _MAX_QUEUED_LINES:
            self.dropped += 1
            return
        self._lines.append(text)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.drain()

    def drain(self) -> None:
        """Analyse what is queued now."""
        lines = [self._lines.popleft() for _ in range(len(self._lines))]
        if not lines:
            return
        events, skipped = self._parser.feed(lines)
        try:
            report = self._runtime.monitor.ingest_broker(events, skipped=skipped)
        except FleetguardError as exc:
            _log.warning("monitor: broker log lines not analysed: %s", exc)
            return
        if report.alerts:
            _log.info("monitor: %d broker events, %d alerts", len(events), len(report.alerts))

    def stop(self) -> None:
        """Stop the thread after analysing what is queued."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.drain()


def violation_alert(event: Mapping[str, object]) -> AlertInput | None:
    """An alert for a ``segment.violation`` event (the firewall dropped traffic outside the device's
    MUD policy), or None for any other event. The destination rule's MUD half lives here: the
    segmentation capability judges flows against the compiled policy where they happen."""
    if event.get("action") != "segment.violation":
        return None
    kind, _, device_id = str(event.get("subject", "")).partition(":")
    data = event.get("data")
    if kind != "device" or not device_id or not isinstance(data, Mapping):
        return None
    try:
        at = parse_utc(str(event.get("time", "")))
    except ValueError:
        return None
    target = f"{data.get('destination')} {data.get('protocol')}/{data.get('destination_port')}"
    return AlertInput(
        rule="destination.mud", detector="segment", severity=Severity.HIGH, address=str(data.get("source")),
        reason=f"{data.get('source')} -> {target} is outside the device's MUD policy "
        f"({data.get('direction')}; dropped at the firewall)",
        at=at, device_id=device_id, target=target, evidence=dict(data),
    )  # fmt: skip


class ViolationWatcher:
    """Consumes the event bus (durable ``monitor-violations``) and raises an alert per MUD violation."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._stop = threading.Event()
        self._subscription = runtime.bus.subscribe("fleetguard.>", "monitor-violations")
        self._thread = threading.Thread(target=self._run, name="monitor-violations", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for delivery in self._subscription.fetch(64, timeout_s=0.2):
                    self._handle(delivery.payload)
                    delivery.ack()
        finally:
            self._subscription.close()

    def _handle(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        alert = violation_alert(event) if isinstance(event, dict) else None
        if alert is not None:
            self._runtime.alerts.raise_alert(alert)

    def stop(self) -> None:
        """Stop consuming."""
        self._stop.set()
        self._thread.join(timeout=5)
