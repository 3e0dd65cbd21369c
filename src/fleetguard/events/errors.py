"""Errors of the tamper-evident event log.

``ProofError`` and ``CheckpointError`` reject bad input from outside (a proof or a signed checkpoint
that does not verify); ``TamperDetected`` reports that the log's own stored state is inconsistent,
which is a server-side incident rather than a client mistake.
``BusError`` says the event bus cannot serve now (retry later); its subclass ``BusInputRejected``
says the caller gave it a malformed or oversize subject, filter, durable name or payload.
"""

from __future__ import annotations

from fleetguard.errors import FleetguardError

__all__ = [
    "BusError",
    "BusInputRejected",
    "CheckpointError",
    "EventLogError",
    "ProofError",
    "TamperDetected",
]


class EventLogError(FleetguardError):
    """Base of the errors raised by ``fleetguard.events``."""

    code = "event-log"


class ProofError(EventLogError):
    """A Merkle inclusion or consistency proof does not verify, or is malformed or out of range."""

    status = 422
    code = "invalid-proof"


class CheckpointError(EventLogError):
    """A checkpoint or its signing key is unusable: malformed note, bad signature, wrong key."""

    status = 422
    code = "invalid-checkpoint"


class TamperDetected(EventLogError):
    """The stored log does not match its own hashes, proofs or signed checkpoints."""

    status = 500
    code = "tamper-detected"


class BusError(EventLogError):
    """The event bus cannot publish, deliver or acknowledge now (closed, unreachable, timed out)."""

    status = 503
    code = "bus-unavailable"


class BusInputRejected(BusError):
    """A subject, filter, durable name, payload or bound given to the bus is invalid."""

    status = 422
    code = "bus-input-rejected"
