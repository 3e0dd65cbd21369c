"""What the gateway is asked to enforce, and what it reports back.

The policy decision point hands the gateway a :class:`DeviceAccess` per device: the topic filters the
device may use beyond the broker-wide patterns, and whether it is quarantined. The gateway answers with
an :class:`EnforcementResult`, which is ``enforced`` only once the broker itself has confirmed the state
(a probe connected as the device and read the broker's answer); anything less is ``not_enforced`` with
``retryable`` saying whether trying again later may help. :func:`enforcement_event` turns a result into
an event-log entry for the caller to append in its own transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from fleetguard.errors import InvalidInput, LimitExceeded
from fleetguard.events.entry import NewEvent
from fleetguard.gateway.errors import TopicFilterInvalid
from fleetguard.gateway.topics import validate_topic_filter
from fleetguard.inventory.model import validate_device_id

__all__ = [
    "MAX_GRANTS",
    "Access",
    "DeviceAccess",
    "EnforcementAction",
    "EnforcementResult",
    "Outcome",
    "TopicGrant",
    "enforcement_event",
]

MAX_GRANTS = 256
"""Grants per device: far above what a device type needs, low enough to bound a role's ACL list."""

_MAX_DETAIL = 4096  # the event log's reason limit (fleetguard.events.entry)


class Access(enum.StrEnum):
    """What a grant allows on its filter."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    BOTH = "both"

    @property
    def publishes(self) -> bool:
        """Whether the grant allows publishing."""
        return self is not Access.SUBSCRIBE

    @property
    def subscribes(self) -> bool:
        """Whether the grant allows subscribing and receiving."""
        return self is not Access.PUBLISH

    def covers(self, other: Access) -> bool:
        """Whether this access includes everything ``other`` allows."""
        return self is Access.BOTH or self is other


@dataclass(frozen=True, slots=True)
class TopicGrant:
    """Permission to publish and/or subscribe on ``filter`` (an MQTT topic filter or pattern).

    ``filter`` may use whole-level ``%u``/``%c`` (see :mod:`fleetguard.gateway.topics`). Filters on
    ``$`` topics (``$SYS``, ``$CONTROL``) are refused: they are the broker's, never a device's.
    Raises :class:`TopicFilterInvalid`.
    """

    access: Access
    filter: str

    def __post_init__(self) -> None:
        validate_topic_filter(self.filter, patterns=True)
        if self.filter.startswith("$"):
            raise TopicFilterInvalid(self.filter, 0, "'$' topics belong to the broker, not to devices")


@dataclass(frozen=True, slots=True)
class DeviceAccess:
    """The enforcement state the policy decision point wants for one device.

    ``grants`` are what the device may use in addition to the broker-wide patterns; ``quarantined``
    overrides every grant and pattern. Raises ``InvalidInput`` for a bad device id and
    ``LimitExceeded`` for more than :data:`MAX_GRANTS` grants.
    """

    device_id: str
    grants: tuple[TopicGrant, ...] = ()
    quarantined: bool = False

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if len(self.grants) > MAX_GRANTS:
            raise LimitExceeded(f"{len(self.grants)} grants for {self.device_id}; at most {MAX_GRANTS}")


class EnforcementAction(enum.StrEnum):
    """What the gateway was asked to do."""

    QUARANTINE = "quarantine"
    RELEASE = "release"
    REVOKE = "revoke"
    APPLY = "apply"


class Outcome(enum.StrEnum):
    """Whether the broker enforces the requested state, as confirmed by verification."""

    ENFORCED = "enforced"
    NOT_ENFORCED = "not_enforced"


@dataclass(frozen=True, slots=True)
class EnforcementResult:
    """What became of one enforcement request.

    ``verified`` says the broker confirmed the requested state (the probe's answer and, where it
    applies, a read-back of the broker's configuration); ``outcome`` is ``enforced`` only then.
    ``retryable`` is False when retrying the same request cannot help (the input was refused).
    ``detail`` says what was done, or what failed and where. ``elapsed_s`` is the wall time taken.
    """

    device_id: str
    action: EnforcementAction
    outcome: Outcome
    verified: bool
    detail: str
    at: dt.datetime
    retryable: bool = False
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome is Outcome.ENFORCED and not self.verified:
            raise InvalidInput("an enforcement is not 'enforced' until it is verified")
        if self.at.tzinfo is None:
            raise InvalidInput("EnforcementResult.at must be timezone-aware")
        object.__setattr__(self, "detail", self.detail[:_MAX_DETAIL])


def enforcement_event(result: EnforcementResult, *, actor: str) -> NewEvent:
    """Return the event-log entry for ``result``: ``gateway.<action>.<outcome>`` on ``device:<id>``."""
    return NewEvent(
        actor=actor,
        subject=f"device:{result.device_id}",
        action=f"gateway.{result.action}.{result.outcome}",
        reason=result.detail,
        data={
            "verified": result.verified,
            "retryable": result.retryable,
            "elapsed_ms": round(result.elapsed_s * 1000),
        },
    )
