"""Errors of the MQTT gateway: bad input, a broker that cannot be reached, a broker that says no.

``TopicFilterInvalid`` and ``CrlRejected`` reject what a caller asked for, and nothing was changed.
``BrokerUnavailable`` and its leaves mean the broker could not be reached or did not answer in time:
retrying later may work. ``BrokerCommandFailed`` carries the error text the broker's
dynamic-security plugin answered with. ``ProbeInconclusive`` means a probe reached the broker but its
answer says neither "allowed" nor "not authorized"; an enforcement is never "done" on such an answer.
"""

from __future__ import annotations

from fleetguard.errors import FleetguardError, InvalidInput, Unavailable

__all__ = [
    "BrokerCommandFailed",
    "BrokerReloadFailed",
    "BrokerStartFailed",
    "BrokerUnavailable",
    "CrlRejected",
    "GatewayError",
    "ProbeInconclusive",
    "TopicFilterInvalid",
]

_SHOWN = 80


class GatewayError(FleetguardError):
    """Base of the errors raised by ``fleetguard.gateway``."""

    code = "gateway"


class TopicFilterInvalid(InvalidInput, GatewayError):
    """A topic filter breaks MQTT 4.7 or fleetguard's stricter rules; ``position`` is 0-based or None."""

    code = "topic-filter-invalid"

    def __init__(self, topic_filter: str, position: int | None, reason: str) -> None:
        where = "" if position is None else f" at position {position}"
        super().__init__(f"topic filter {topic_filter[:_SHOWN]!r} is invalid{where}: {reason}")
        self.topic_filter = topic_filter
        self.position = position
        self.reason = reason


class CrlRejected(InvalidInput, GatewayError):
    """A CRL does not parse, is not signed by a trusted CA, is not current, or a CA has none."""

    code = "crl-rejected"


class BrokerUnavailable(Unavailable, GatewayError):
    """The broker cannot be reached, refused the control connection, or did not answer in time."""

    code = "broker-unavailable"


class BrokerStartFailed(BrokerUnavailable):
    """Mosquitto exited or did not listen in time; the message ends with its last log lines."""

    code = "broker-start-failed"


class BrokerReloadFailed(BrokerUnavailable):
    """Mosquitto reported an error while reloading, or the reload could not be confirmed."""

    code = "broker-reload-failed"


class BrokerCommandFailed(GatewayError):
    """The dynamic-security plugin answered a command with an error; ``error`` is its text."""

    status = 502
    code = "broker-command-failed"

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"broker refused {command}: {error[:200]}")
        self.command = command
        self.error = error


class ProbeInconclusive(GatewayError):
    """The probe's publish got an answer that is neither success nor 'not authorized' (0x87)."""

    status = 502
    code = "probe-inconclusive"
