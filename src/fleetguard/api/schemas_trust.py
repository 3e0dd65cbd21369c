"""The JSON shapes of the zero-trust API (:mod:`fleetguard.api.routers.trust`), kept apart from
:mod:`fleetguard.api.schemas` so that each file stays about one concept.

Requests forbid unknown fields and bound every string and collection; the trust service validates the
same values again (a policy's size in bytes, firmware versions, risk). Responses are built from the
service's frozen values. :func:`requested_resource` turns a decision request (device, action, optional
topic filter) into the PDP's :class:`~fleetguard.trust.Resource`; the CLI uses it too, so that both
edges ask the PDP the same question.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from fleetguard.trust import (
    Action,
    Decision,
    DeviceFacts,
    FirmwarePolicy,
    Outcome,
    OutcomeChange,
    PolicyInvalid,
    Resource,
    ResourceKind,
    TrustInputInvalid,
    candidate_resources,
    device_topic,
    type_topic,
)
from fleetguard.trust.policy import MAX_POLICY_BYTES
from fleetguard.trust.service import AccessPlan, EnforcementState, StoredPolicy

__all__ = [
    "MAX_TOPIC_FILTER",
    "AccessPlanView",
    "DecisionBrief",
    "DecisionRequest",
    "DecisionView",
    "DeviceTrust",
    "EnforcementView",
    "FactsView",
    "FirmwareView",
    "OutcomeChangeView",
    "PolicyApplication",
    "PolicyDiff",
    "PolicyProposal",
    "PolicySummary",
    "PolicyValidation",
    "PolicyView",
    "PostureView",
    "ResourceView",
    "SignalReport",
    "TopicGrantView",
    "broker_resource",
    "policy_text",
    "requested_resource",
    "topic_resource",
]

MAX_TOPIC_FILTER = 1024
"""Longest topic filter a decision request names (MQTT 5.0 1.5.4 allows 65,535 bytes; the topic spaces
fleetguard grants are ``devices/<id>/#`` and ``types/<type>/#``, ids of at most 128 characters)."""

_MAX_FIRMWARE_ENTRIES = 1000
_MAX_REASON = 1000  # fleetguard.trust.service._MAX_REASON
_Reason = Annotated[
    str, StringConstraints(max_length=_MAX_REASON), Field(description="Why; recorded in the event log.")
]
_PolicyText = Annotated[
    str,
    StringConstraints(max_length=MAX_POLICY_BYTES),
    Field(description=f"The Cedar policy set, at most {MAX_POLICY_BYTES} bytes as UTF-8."),
]
_DeviceType = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_Version = Annotated[str, StringConstraints(min_length=1, max_length=64)]
_EndOfLife = Annotated[str, StringConstraints(min_length=1, max_length=200)]
_TOPIC_SPACES = {"devices": device_topic, "types": type_topic}
_WILDCARDS = {"", "+", "#"}


def policy_text(data: bytes) -> str:
    """Return a policy file's bytes as text; raise ``PolicyInvalid`` (where) unless it is UTF-8 and at
    most ``MAX_POLICY_BYTES``."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyInvalid(f"the policy set is larger than {MAX_POLICY_BYTES} bytes", line=1, column=1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1  # bytes into the line, from 1
        raise PolicyInvalid("the policy set is not UTF-8 text", line=line, column=column) from exc


def topic_resource(topic_filter: str) -> Resource:
    """Return the topic space ``topic_filter`` lies in, which is what the PDP decides on:
    ``devices/<id>/...`` lies in device ``id``'s space ``devices/<id>/#``, ``types/<type>/...`` in
    ``types/<type>/#``. Raise ``TrustInputInvalid`` for a filter in neither (or with a wildcard owner)."""
    levels = topic_filter.split("/", 2)
    if (
        len(topic_filter) > MAX_TOPIC_FILTER
        or "\x00" in topic_filter
        or len(levels) < 2  # a topic space and its owner
        or levels[0] not in _TOPIC_SPACES
        or levels[1] in _WILDCARDS
    ):
        raise TrustInputInvalid(
            f"topic filter {topic_filter[:80]!r} is in no topic space",
            hint="name one under devices/<device id>/ or types/<device type>/",
        )
    return _TOPIC_SPACES[levels[0]](levels[1])


def requested_resource(device_id: str, action: Action, topic_filter: str | None) -> Resource:
    """Return what a decision request is about: the topic space of ``topic_filter``; without one, the
    broker for ``connect`` and the device's own topic space (``devices/<id>/#``) otherwise."""
    if topic_filter is not None:
        return topic_resource(topic_filter)
    if action is Action.CONNECT:
        return broker_resource(device_id)
    return device_topic(device_id)


def broker_resource(device_id: str) -> Resource:
    """Return the broker as the PDP names it (the first of every device's candidate resources)."""
    return candidate_resources(DeviceFacts(device_id=device_id, state=""))[0]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- policies --------------------------------------------------------------------------------


class FirmwareView(BaseModel):
    """The firmware posture policy: a minimum version per device type (`*`: any type) and the
    versions at end of life (`VERSION`, or `TYPE@VERSION` for one type)."""

    minimum: dict[str, str]
    end_of_life: list[str]

    @classmethod
    def of(cls, firmware: FirmwarePolicy) -> FirmwareView:
        """Return the API view of a firmware policy."""
        return cls(minimum=dict(sorted(firmware.minimum.items())), end_of_life=sorted(firmware.end_of_life))


class PolicySummary(BaseModel):
    """A version of the fleet policy, without its text. Version 0 is the shipped default, never stored."""

    version: int
    digest: str = Field(description="SHA-256 of the Cedar text, hex.")
    policies: list[str] = Field(description="The `@id` of every policy, in order.")
    firmware: FirmwareView
    actor: str
    reason: str
    created_at: dt.datetime | None = Field(description="When it was applied; null for the default.")

    @classmethod
    def of(cls, stored: StoredPolicy) -> PolicySummary:
        """Return the API summary of a stored policy version."""
        return cls.model_validate(_summary_fields(stored))


class PolicyView(PolicySummary):
    """A version of the fleet policy with its Cedar text; `version` is also sent as the `ETag`."""

    text: str

    @classmethod
    def of(cls, stored: StoredPolicy) -> PolicyView:
        """Return the API view of a stored policy version."""
        return cls.model_validate({**_summary_fields(stored), "text": stored.policies.text})


class PolicyProposal(_Request):
    """A policy set to validate or compare, and optionally a firmware policy to go with it.

    `firmware_minimum` and `end_of_life` each replace that part of the firmware policy in force when
    given (an empty one clears it); when omitted, that part stays as it is.
    """

    text: _PolicyText
    firmware_minimum: (
        Annotated[dict[_DeviceType, _Version], Field(max_length=_MAX_FIRMWARE_ENTRIES)] | None
    ) = Field(default=None, description="Minimum firmware version by device type; `*` for any type.")
    end_of_life: Annotated[list[_EndOfLife], Field(max_length=_MAX_FIRMWARE_ENTRIES)] | None = Field(
        default=None, description="Versions at end of life: `VERSION` or `TYPE@VERSION`."
    )

    def firmware(self, current: FirmwarePolicy) -> FirmwarePolicy:
        """Return the firmware policy this proposal makes of ``current``; raise ``TrustInputInvalid``."""
        return FirmwarePolicy(
            current.minimum if self.firmware_minimum is None else dict(self.firmware_minimum),
            current.end_of_life if self.end_of_life is None else frozenset(self.end_of_life),
        )


class PolicyApplication(PolicyProposal):
    """A policy set to apply; `expected_version` (or `If-Match`) makes it conditional."""

    reason: _Reason = ""
    expected_version: int | None = Field(
        default=None, ge=0, description='The version in force as read; alternatively If-Match: "<version>".'
    )


class PolicyValidation(BaseModel):
    """A policy set that parses and validates against the schema (nothing is stored)."""

    valid: Literal[True]
    digest: str = Field(description="SHA-256 of the Cedar text, hex.")
    policies: list[str] = Field(description="The `@id` of every policy, in order.")


class OutcomeChangeView(BaseModel):
    """One request whose outcome the proposed set changes, with the policies that decide each side."""

    device_id: str
    action: Action
    resource: str
    before: Outcome
    after: Outcome
    before_policies: list[str]
    after_policies: list[str]

    @classmethod
    def of(cls, change: OutcomeChange) -> OutcomeChangeView:
        """Return the API view of an outcome change."""
        return cls(
            device_id=change.device_id,
            action=change.action,
            resource=change.resource,
            before=change.before,
            after=change.after,
            before_policies=list(change.before_policies),
            after_policies=list(change.after_policies),
        )


class PolicyDiff(BaseModel):
    """What applying a proposal would change across the fleet; nothing was applied."""

    current_version: int = Field(description="The version the proposal was compared with.")
    devices: int = Field(description="Devices evaluated.")
    changed_devices: int = Field(description="Devices with at least one changed decision.")
    changed_decisions: int = Field(description="Requests whose outcome changes; `changes` lists the first.")
    changes: list[OutcomeChangeView]


# -- facts and decisions ---------------------------------------------------------------------


class PostureView(BaseModel):
    """What is known about the device's software, as decisions see it."""

    firmware_version: str
    firmware_compliant: bool
    end_of_life: bool
    known_vulnerable: bool
    attestation_fresh: bool


class FactsView(BaseModel):
    """Every input a decision about the device uses: identity, lifecycle, posture, risk, inventory."""

    device_id: str
    state: str
    manufacturer: str
    model: str
    device_type: str
    site: str
    labels: list[str] = Field(description="`key=value`, sorted.")
    certificate_valid: bool
    revoked: bool
    posture: PostureView
    risk: int = Field(description="Behaviour risk, 0-100.")

    @classmethod
    def of(cls, facts: DeviceFacts) -> FactsView:
        """Return the API view of a device's facts."""
        posture = facts.posture
        return cls(
            device_id=facts.device_id, state=facts.state, manufacturer=facts.manufacturer,
            model=facts.model, device_type=facts.device_type, site=facts.site, labels=list(facts.labels),
            certificate_valid=facts.certificate_valid, revoked=facts.revoked,
            posture=PostureView(
                firmware_version=posture.firmware_version, firmware_compliant=posture.firmware_compliant,
                end_of_life=posture.end_of_life, known_vulnerable=posture.known_vulnerable,
                attestation_fresh=posture.attestation_fresh,
            ),
            risk=facts.risk,
        )  # fmt: skip


class ResourceView(BaseModel):
    """What a request is on: the broker, or a topic space and its owner."""

    kind: ResourceKind
    name: str
    owner: str


class DecisionBrief(BaseModel):
    """One decision of an access plan."""

    action: Action
    resource: ResourceView
    outcome: Outcome
    policies: list[str] = Field(description="The policies that decided it; none when nothing matched.")
    errors: list[str]

    @classmethod
    def of(cls, decision: Decision) -> DecisionBrief:
        """Return the brief view of a decision."""
        return cls.model_validate(_brief_fields(decision))


class DecisionView(DecisionBrief):
    """The PDP's answer with every input it used."""

    hour: int = Field(description="The request's hour of day, UTC.")
    policy_digest: str = Field(description="SHA-256 of the policy set that decided, hex.")
    facts: FactsView

    @classmethod
    def of(cls, decision: Decision) -> DecisionView:
        """Return the full view of a decision."""
        return cls.model_validate(
            {
                **_brief_fields(decision),
                "hour": decision.context.hour,
                "policy_digest": decision.policy_digest,
                "facts": FactsView.of(decision.device),
            }
        )


class DecisionRequest(_Request):
    """A request to decide: without `topic`, `connect` is on the broker and `publish`/`subscribe` on
    the device's own topic space."""

    device_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    action: Action
    topic: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOPIC_FILTER)] | None = Field(
        default=None,
        description="A topic filter under `devices/<id>/` or `types/<type>/`; decided on that topic space.",
    )

    def resource(self) -> Resource:
        """Return the resource the request is on; raise ``TrustInputInvalid``."""
        return requested_resource(self.device_id, self.action, self.topic)


class TopicGrantView(BaseModel):
    """An allowed action on an MQTT topic filter."""

    action: Action
    topic_filter: str


class AccessPlanView(BaseModel):
    """What the enforcement points must hold for the device, and the decisions behind it."""

    connect: Outcome
    grants: list[TopicGrantView]
    policy_version: int
    decisions: list[DecisionBrief]

    @classmethod
    def of(cls, plan: AccessPlan) -> AccessPlanView:
        """Return the API view of an access plan."""
        return cls(
            connect=plan.connect,
            grants=[TopicGrantView(action=g.action, topic_filter=g.topic_filter) for g in plan.grants],
            policy_version=plan.policy_version,
            decisions=[DecisionBrief.of(decision) for decision in plan.decisions],
        )


class EnforcementView(BaseModel):
    """What the enforcement points last confirmed (`enforced`) or failed to (`failed`, retried)."""

    status: str
    policy_version: int | None
    attempts: int
    next_attempt_at: dt.datetime | None
    detail: str
    updated_at: dt.datetime

    @classmethod
    def of(cls, state: EnforcementState) -> EnforcementView:
        """Return the API view of a device's enforcement record."""
        return cls(
            status=state.status, policy_version=state.policy_version, attempts=state.attempts,
            next_attempt_at=state.next_attempt_at, detail=state.detail, updated_at=state.updated_at,
        )  # fmt: skip


class DeviceTrust(BaseModel):
    """A device's facts, its access plan under the policy in force, and its enforcement status."""

    facts: FactsView
    access: AccessPlanView
    enforcement: EnforcementView | None = Field(description="Null when enforcement never ran for it.")


class SignalReport(_Request):
    """New trust inputs about a device from another capability or an operator; omitted ones stay."""

    risk: int | None = Field(default=None, ge=0, le=100, description="Behaviour risk, 0-100.")
    known_vulnerable: bool | None = Field(default=None, description="Its firmware is known vulnerable.")
    attested_at: AwareDatetime | None = Field(
        default=None, description="When its attestation was verified (not in the future)."
    )
    reason: _Reason = ""


def _summary_fields(stored: StoredPolicy) -> dict[str, object]:
    return {
        "version": stored.version,
        "digest": stored.policies.digest,
        "policies": list(stored.policies.ids),
        "firmware": FirmwareView.of(stored.firmware),
        "actor": stored.actor,
        "reason": stored.reason,
        "created_at": stored.created_at,
    }


def _brief_fields(decision: Decision) -> dict[str, object]:
    resource = decision.resource
    return {
        "action": decision.action,
        "resource": ResourceView(kind=resource.kind, name=resource.name, owner=resource.owner),
        "outcome": decision.outcome,
        "policies": list(decision.policies),
        "errors": list(decision.errors),
    }
