"""The monitor's part of ``fleetguard up``: the NetFlow/IPFIX collector feeding the detectors.

:func:`open_flow_collector` starts :class:`fleetguard.monitor.collector.FlowCollector` on
``FLEETGUARD_NETFLOW_PORT`` for the exporters in ``FLEETGUARD_NETFLOW_EXPORTERS``; every batch of
flows goes to :meth:`fleetguard.monitor.service.MonitorService.ingest_flows`, whose alerts raise the
devices' risk (and quarantine them above ``FLEETGUARD_MONITOR_QUARANTINE_AT``). It never raises for
a port that cannot be bound or a bad setting: ``up`` reports why the collector did not start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fleetguard.errors import FleetguardError
from fleetguard.installation import Runtime
from fleetguard.monitor.alerts import ResponsePolicy
from fleetguard.monitor.collector import FlowCollector
from fleetguard.monitor.model import FlowRecord

__all__ = ["FlowEndpoint", "open_flow_collector"]

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


def open_flow_collector(runtime: Runtime) -> FlowEndpoint:
    """Start the collector when configured; return it with a one-line summary for the banner."""
    settings = runtime.settings
    runtime.alerts.policy = ResponsePolicy(quarantine_at=settings.monitor_quarantine_at)
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
