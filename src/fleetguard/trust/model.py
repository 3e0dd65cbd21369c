"""The values a decision is made from and the decision itself.

A :class:`Decision` carries its outcome, the ids of the policies that decided it (the ``permit`` that
allowed it, or every ``forbid`` that denied it; none when nothing matched), any evaluation errors,
and the inputs it used, so that an operator (and the event log) can see why. It has no ``__bool__``:
callers compare ``decision.outcome`` with :class:`Outcome`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

__all__ = [
    "Action",
    "Decision",
    "DeviceFacts",
    "Outcome",
    "Posture",
    "RequestContext",
    "Resource",
    "ResourceKind",
]


class Action(enum.StrEnum):
    """What a device asks to do (the Cedar actions of the schema)."""

    CONNECT = "connect"
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class ResourceKind(enum.StrEnum):
    """The Cedar entity type of a resource."""

    BROKER = "Broker"
    DEVICE_TOPIC = "DeviceTopic"
    TYPE_TOPIC = "TypeTopic"


class Outcome(enum.StrEnum):
    """A decision's outcome."""

    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Posture:
    """What is known about the device's software: filled by firmware, OTA and attestation capabilities."""

    firmware_version: str = ""
    firmware_compliant: bool = True
    end_of_life: bool = False
    known_vulnerable: bool = False
    attestation_fresh: bool = False

    def attributes(self) -> dict[str, str | bool]:
        """Return the posture as the schema's ``Posture`` record (what policies read)."""
        return {
            "firmware_version": self.firmware_version,
            "firmware_compliant": self.firmware_compliant,
            "end_of_life": self.end_of_life,
            "known_vulnerable": self.known_vulnerable,
            "attestation_fresh": self.attestation_fresh,
        }


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """Everything a decision about one device may use: identity, lifecycle, posture, behaviour, inventory."""

    device_id: str
    state: str
    manufacturer: str = ""
    model: str = ""
    device_type: str = ""
    site: str = ""
    labels: tuple[str, ...] = ()
    certificate_valid: bool = False
    revoked: bool = False
    posture: Posture = Posture()
    risk: int = 0


@dataclass(frozen=True, slots=True)
class Resource:
    """What the action is on: the broker, or a topic space (an MQTT topic filter) and its owner."""

    kind: ResourceKind
    name: str
    owner: str = ""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request's circumstances: the hour of day (UTC) and the network it comes from."""

    hour: int
    network: str = ""

    @classmethod
    def at(cls, now: dt.datetime, network: str = "") -> RequestContext:
        """Return the context of a request at ``now`` (aware) from ``network``."""
        return cls(now.astimezone(dt.UTC).hour, network)


@dataclass(frozen=True, slots=True)
class Decision:
    """The PDP's answer, with the policies that decided it and the inputs it used."""

    outcome: Outcome
    policies: tuple[str, ...]
    errors: tuple[str, ...]
    device: DeviceFacts
    action: Action
    resource: Resource
    context: RequestContext
    policy_digest: str
