"""Errors of the monitoring capability."""

from __future__ import annotations

from fleetguard.errors import FleetguardError, InvalidInput, LimitExceeded

__all__ = ["CaptureCorrupt", "FlowRecordInvalid", "MonitorError", "MonitorLimit", "TrainingIncomplete"]


class MonitorError(FleetguardError):
    """Base of the monitor package's errors."""

    code = "monitor"


class CaptureCorrupt(InvalidInput, MonitorError):
    """A pcap/pcapng file cannot be read at all (bad magic, truncated header). Bad packets are skipped."""

    code = "monitor-capture-corrupt"


class FlowRecordInvalid(InvalidInput, MonitorError):
    """A flow export (Zeek conn.log, NetFlow, IPFIX) cannot be read at all. Bad records are skipped."""

    code = "monitor-flow-invalid"


class MonitorLimit(LimitExceeded, MonitorError):
    """A size or count bound of the monitor was reached."""

    code = "monitor-limit"


class TrainingIncomplete(MonitorError):
    """A detector was asked to score before its training period ended."""

    status = 409
    code = "monitor-training-incomplete"
