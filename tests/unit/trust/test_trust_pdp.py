"""Decisions of the policy decision point: the default set, custom policies, fail-closed forbids, caches."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from fleetguard.trust import (
    DEFAULT_POLICIES,
    Action,
    Decision,
    DeviceFacts,
    Outcome,
    PolicyDecisionPoint,
    PolicySet,
    Posture,
    RequestContext,
    Resource,
    ResourceKind,
    TrustInputInvalid,
    candidate_resources,
    device_topic,
    parse_policy_set,
    type_topic,
)

CONTEXT = RequestContext(hour=12, network="plant")
BROKER = Resource(ResourceKind.BROKER, "mqtt")
CONNECT = "active-devices-connect"
OWN = "active-devices-own-topics"
TYPE = "active-devices-type-topics"
QUARANTINED = "quarantined-devices-nothing"
UNTRUSTED = "untrusted-identity-nothing"
END_OF_LIFE = "end-of-life-firmware-nothing"
OVERFLOW = "principal.risk * 9223372036854775807 > 0"  # validates; any risk but 0 and 1 overflows at run time


def _camera(state: str = "active", device_id: str = "cam-1", **changes: Any) -> DeviceFacts:
    facts = DeviceFacts(
        device_id, state, manufacturer="Acme", model="Cam-X", device_type="camera", site="plant-1",
        labels=("lab",), certificate_valid=True, posture=Posture("2.1.0"), risk=10,
    )  # fmt: skip
    return dataclasses.replace(facts, **changes)


@pytest.fixture(scope="module")
def default_set() -> PolicySet:
    return parse_policy_set(DEFAULT_POLICIES)


@pytest.fixture
def pdp(default_set: PolicySet) -> PolicyDecisionPoint:
    return PolicyDecisionPoint(default_set)


def _with(*policies: str) -> PolicySet:
    return parse_policy_set(DEFAULT_POLICIES + "\n".join(policies))


def _summary(decisions: list[Decision]) -> list[tuple[Action, str, Outcome, tuple[str, ...]]]:
    return [(d.action, d.resource.name, d.outcome, d.policies) for d in decisions]


# --- resources ---------------------------------------------------------------------------------------


def test_topic_spaces_and_candidate_resources() -> None:
    assert device_topic("cam-1") == Resource(ResourceKind.DEVICE_TOPIC, "devices/cam-1/#", "cam-1")
    assert type_topic("camera") == Resource(ResourceKind.TYPE_TOPIC, "types/camera/#", "camera")
    assert candidate_resources(_camera()) == (BROKER, device_topic("cam-1"), type_topic("camera"))
    assert candidate_resources(_camera(device_type="")) == (BROKER, device_topic("cam-1"))


# --- the default policy set --------------------------------------------------------------------------


def test_an_active_device_may_connect_citing_the_connect_permit(pdp: PolicyDecisionPoint) -> None:
    facts = _camera()

    decision = pdp.decide(facts, Action.CONNECT, BROKER, CONTEXT)

    assert decision == Decision(
        Outcome.ALLOW, (CONNECT,), (), facts, Action.CONNECT, BROKER, CONTEXT, pdp.policies.digest
    )


@pytest.mark.parametrize("action", [Action.PUBLISH, Action.SUBSCRIBE])
def test_an_active_device_may_use_its_own_and_its_types_topics(
    pdp: PolicyDecisionPoint, action: Action
) -> None:
    own = pdp.decide(_camera(), action, device_topic("cam-1"), CONTEXT)
    shared = pdp.decide(_camera(), action, type_topic("camera"), CONTEXT)

    assert (own.outcome, own.policies, own.errors) == (Outcome.ALLOW, (OWN,), ())
    assert (shared.outcome, shared.policies, shared.errors) == (Outcome.ALLOW, (TYPE,), ())


@pytest.mark.parametrize("action", [Action.PUBLISH, Action.SUBSCRIBE])
@pytest.mark.parametrize(
    "resource",
    [device_topic("cam-2"), type_topic("thermostat")],
    ids=["other-device", "other-type"],
)
def test_other_devices_and_types_topics_are_denied_by_no_policy(
    pdp: PolicyDecisionPoint, action: Action, resource: Resource
) -> None:
    decision = pdp.decide(_camera(), action, resource, CONTEXT)

    assert (decision.outcome, decision.policies, decision.errors) == (Outcome.DENY, (), ())


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (
            Resource(ResourceKind.DEVICE_TOPIC, "devices/cam-1/#", "cam-2"),
            "topic space 'devices/cam-1/#' is not the one device 'cam-2' owns",
        ),
        (
            Resource(ResourceKind.TYPE_TOPIC, "types/camera/#", "thermostat"),
            "topic space 'types/camera/#' is not the one type 'thermostat' shares",
        ),
    ],
    ids=["own-name-other-owner", "own-type-name-other-owner"],
)
def test_a_topic_space_whose_name_and_owner_disagree_is_refused(
    pdp: PolicyDecisionPoint, resource: Resource, message: str
) -> None:
    with pytest.raises(TrustInputInvalid, match=re.escape(message)):
        pdp.decide(_camera(), Action.PUBLISH, resource, CONTEXT)


def test_decide_all_covers_every_candidate_request(pdp: PolicyDecisionPoint) -> None:
    assert _summary(pdp.decide_all(_camera(), CONTEXT)) == [
        (Action.CONNECT, "mqtt", Outcome.ALLOW, (CONNECT,)),
        (Action.PUBLISH, "devices/cam-1/#", Outcome.ALLOW, (OWN,)),
        (Action.SUBSCRIBE, "devices/cam-1/#", Outcome.ALLOW, (OWN,)),
        (Action.PUBLISH, "types/camera/#", Outcome.ALLOW, (TYPE,)),
        (Action.SUBSCRIBE, "types/camera/#", Outcome.ALLOW, (TYPE,)),
    ]
    assert _summary(pdp.decide_all(_camera(device_type=""), CONTEXT)) == [
        (Action.CONNECT, "mqtt", Outcome.ALLOW, (CONNECT,)),
        (Action.PUBLISH, "devices/cam-1/#", Outcome.ALLOW, (OWN,)),
        (Action.SUBSCRIBE, "devices/cam-1/#", Outcome.ALLOW, (OWN,)),
    ]


@pytest.mark.parametrize(
    ("facts", "policy"),
    [
        (_camera("quarantined"), QUARANTINED),
        (_camera(revoked=True), UNTRUSTED),
        (_camera(certificate_valid=False), UNTRUSTED),
        (_camera(posture=Posture("1.0.0", end_of_life=True)), END_OF_LIFE),
    ],
    ids=["quarantined", "revoked", "invalid-certificate", "end-of-life"],
)
def test_a_forbid_denies_everything_citing_itself(
    pdp: PolicyDecisionPoint, facts: DeviceFacts, policy: str
) -> None:
    decisions = pdp.decide_all(facts, CONTEXT)

    assert len(decisions) == 5
    assert {(d.outcome, d.policies, d.errors) for d in decisions} == {(Outcome.DENY, (policy,), ())}


def test_every_forbid_that_applies_is_cited(pdp: PolicyDecisionPoint) -> None:
    facts = _camera("quarantined", revoked=True, posture=Posture(end_of_life=True))

    decision = pdp.decide(facts, Action.CONNECT, BROKER, CONTEXT)

    assert decision.outcome is Outcome.DENY
    assert sorted(decision.policies) == sorted([QUARANTINED, UNTRUSTED, END_OF_LIFE])


@pytest.mark.parametrize("state", ["registered", "provisioned", "decommissioned", "suspended", "", "ACTIVE"])
def test_a_device_that_is_not_active_is_denied_by_no_policy(pdp: PolicyDecisionPoint, state: str) -> None:
    decisions = pdp.decide_all(_camera(state), CONTEXT)

    assert {(d.outcome, d.policies, d.errors) for d in decisions} == {(Outcome.DENY, (), ())}


def test_the_default_set_does_not_look_at_compliance_risk_or_context(pdp: PolicyDecisionPoint) -> None:
    facts = _camera(posture=Posture("0.1", firmware_compliant=False, known_vulnerable=True), risk=100)

    decision = pdp.decide(facts, Action.CONNECT, BROKER, RequestContext(hour=3, network="internet"))

    assert (decision.outcome, decision.policies) == (Outcome.ALLOW, (CONNECT,))


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        (Action.CONNECT, device_topic("cam-1")),
        (Action.CONNECT, type_topic("camera")),
        (Action.PUBLISH, BROKER),
        (Action.SUBSCRIBE, BROKER),
    ],
)
def test_a_request_outside_the_schema_is_refused(
    pdp: PolicyDecisionPoint, action: Action, resource: Resource
) -> None:
    # The default `connect` permit leaves the resource open: only the schema keeps it to the broker.
    with pytest.raises(TrustInputInvalid, match=f"^{action.value} does not apply to a {resource.kind.value}"):
        pdp.decide(_camera(), action, resource, CONTEXT)


def test_facts_cedar_cannot_read_are_refused(pdp: PolicyDecisionPoint) -> None:
    with pytest.raises(TrustInputInvalid, match=r"^device 'cam-1': Cedar cannot read its facts"):
        pdp.decide(_camera(risk=2**63), Action.CONNECT, BROKER, CONTEXT)


# --- custom policies ---------------------------------------------------------------------------------


def test_a_risk_forbid_denies_a_risky_device_only() -> None:
    pdp = PolicyDecisionPoint(
        _with('@id("risky") forbid (principal, action, resource) when { principal.risk >= 80 };')
    )

    risky = pdp.decide(_camera(risk=80), Action.CONNECT, BROKER, CONTEXT)
    calm = pdp.decide(_camera(risk=79), Action.CONNECT, BROKER, CONTEXT)

    assert (risky.outcome, risky.policies, risky.errors) == (Outcome.DENY, ("risky",), ())
    assert (calm.outcome, calm.policies, calm.errors) == (Outcome.ALLOW, (CONNECT,), ())


def test_context_hour_and_network_are_usable_in_a_policy() -> None:
    pdp = PolicyDecisionPoint(
        _with(
            '@id("night-or-outside") forbid (principal, action, resource)\n'
            'unless { context.hour >= 6 && context.hour < 22 && context.network == "plant" };'
        )
    )

    def outcome(context: RequestContext) -> tuple[Outcome, tuple[str, ...]]:
        decision = pdp.decide(_camera(), Action.CONNECT, BROKER, context)
        return decision.outcome, decision.policies

    assert outcome(RequestContext(6, "plant")) == (Outcome.ALLOW, (CONNECT,))
    assert outcome(RequestContext(21, "plant")) == (Outcome.ALLOW, (CONNECT,))
    assert outcome(RequestContext(22, "plant")) == (Outcome.DENY, ("night-or-outside",))
    assert outcome(RequestContext(12, "guest")) == (Outcome.DENY, ("night-or-outside",))


def test_inventory_facts_are_usable_in_a_policy() -> None:
    pdp = PolicyDecisionPoint(
        _with(
            '@id("lab-only-publishes") forbid (principal, action == Fleet::Action::"publish", resource)\n'
            'when { principal.labels.contains("lab") && principal in Fleet::Site::"plant-1" };'
        )
    )

    labelled = pdp.decide(_camera(), Action.PUBLISH, device_topic("cam-1"), CONTEXT)
    elsewhere = pdp.decide(_camera(site="plant-2"), Action.PUBLISH, device_topic("cam-1"), CONTEXT)
    reading = pdp.decide(_camera(), Action.SUBSCRIBE, device_topic("cam-1"), CONTEXT)

    assert (labelled.outcome, labelled.policies) == (Outcome.DENY, ("lab-only-publishes",))
    assert (elsewhere.outcome, elsewhere.policies) == (Outcome.ALLOW, (OWN,))
    assert (reading.outcome, reading.policies) == (Outcome.ALLOW, (OWN,))


@pytest.mark.parametrize(
    "layout",
    [
        '@id("overflow")\nforbid (principal, action, resource) when {{ {0} }};',
        '@id("overflow") forbid (principal, action, resource) when {{ {0} }};',
        '@note("x\npermit") @id("overflow")\nforbid (principal, action, resource) when {{ {0} }};',
        '@id("overflow") // permit\nforbid (principal, action, resource) when {{ {0} }};',
    ],
    ids=["own-line", "one-line", "annotation-holding-permit", "comment-holding-permit"],
)
def test_a_forbid_that_errors_makes_an_allowed_request_deny(layout: str) -> None:
    pdp = PolicyDecisionPoint(_with(layout.format(OVERFLOW)))

    decision = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    assert (decision.outcome, decision.policies) == (Outcome.DENY, ())
    assert decision.errors == (
        "error while evaluating policy `policy6`: integer overflow while attempting to multiply the values "
        "`10` and `9223372036854775807`",
    )


def test_a_forbid_that_does_not_error_leaves_the_request_allowed() -> None:
    pdp = PolicyDecisionPoint(
        _with(f'@id("overflow") forbid (principal, action, resource) when {{ {OVERFLOW} }};')
    )

    decision = pdp.decide(_camera(risk=0), Action.CONNECT, BROKER, CONTEXT)

    assert (decision.outcome, decision.policies, decision.errors) == (Outcome.ALLOW, (CONNECT,), ())


def test_a_forbid_that_errors_beside_one_that_applies_still_denies_citing_that_one() -> None:
    pdp = PolicyDecisionPoint(
        _with(f'@id("overflow") forbid (principal, action, resource) when {{ {OVERFLOW} }};')
    )

    decision = pdp.decide(_camera("quarantined"), Action.CONNECT, BROKER, CONTEXT)

    assert (decision.outcome, decision.policies, len(decision.errors)) == (Outcome.DENY, (QUARANTINED,), 1)


def test_a_permit_that_errors_only_fails_to_allow() -> None:
    pdp = PolicyDecisionPoint(
        parse_policy_set(
            f'@id("overflowing-permit") permit (principal, action, resource) when {{ {OVERFLOW} }};'
        )
    )

    decision = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    assert (decision.outcome, decision.policies) == (Outcome.DENY, ())
    assert decision.errors[0].startswith("error while evaluating policy `policy0`: integer overflow")


def test_a_permit_that_errors_beside_one_that_allows_does_not_deny() -> None:
    pdp = PolicyDecisionPoint(
        _with(f'@id("overflowing-permit") permit (principal, action, resource) when {{ {OVERFLOW} }};')
    )

    decision = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    assert (decision.outcome, decision.policies, len(decision.errors)) == (Outcome.ALLOW, (CONNECT,), 1)


# --- caches ------------------------------------------------------------------------------------------


def test_an_identical_request_is_answered_from_the_cache(pdp: PolicyDecisionPoint) -> None:
    first = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    assert pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT) is first


@pytest.mark.parametrize(
    ("changed", "outcome"),
    [
        (_camera("quarantined"), Outcome.DENY),
        (_camera(revoked=True), Outcome.DENY),
        (_camera(certificate_valid=False), Outcome.DENY),
        (_camera(posture=Posture("2.1.0", end_of_life=True)), Outcome.DENY),
        (_camera(risk=90), Outcome.DENY),
        (_camera(labels=()), Outcome.ALLOW),
        (_camera(posture=Posture("2.1.1")), Outcome.ALLOW),
    ],
    ids=["state", "revoked", "certificate", "end-of-life", "risk", "labels", "firmware"],
)
def test_any_changed_fact_gets_a_fresh_decision(changed: DeviceFacts, outcome: Outcome) -> None:
    pdp = PolicyDecisionPoint(
        _with('@id("risky") forbid (principal, action, resource) when { principal.risk >= 80 };')
    )
    before = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    after = pdp.decide(changed, Action.CONNECT, BROKER, CONTEXT)

    assert before.outcome is Outcome.ALLOW
    assert after is not before
    assert (after.outcome, after.device) == (outcome, changed)


def test_a_changed_context_gets_a_fresh_decision(pdp: PolicyDecisionPoint) -> None:
    before = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    after = pdp.decide(_camera(), Action.CONNECT, BROKER, RequestContext(13, "plant"))

    assert after is not before
    assert after.context == RequestContext(13, "plant")


def test_a_new_policy_set_is_used_at_once_and_its_decisions_are_its_own(default_set: PolicySet) -> None:
    pdp = PolicyDecisionPoint(default_set)
    strict = _with(
        '@id("no-cameras") forbid (principal, action, resource)\n'
        'when { principal in Fleet::DeviceType::"camera" };'
    )
    old = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    pdp.use(strict)
    new = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)
    pdp.use(default_set)
    again = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    assert (old.outcome, old.policy_digest) == (Outcome.ALLOW, default_set.digest)
    assert (new.outcome, new.policies, new.policy_digest) == (Outcome.DENY, ("no-cameras",), strict.digest)
    assert again == old
    assert again is not old  # the old set's cached decisions were dropped with it
    assert pdp.policies is default_set


def test_the_forbids_of_a_new_set_guard_its_errors(default_set: PolicySet) -> None:
    erroring = parse_policy_set(
        '@id("allow-connect") permit (principal, action, resource);\n'
        f'@id("overflow") forbid (principal, action, resource) when {{ {OVERFLOW} }};'
    )
    pdp = PolicyDecisionPoint(default_set)
    pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    pdp.use(erroring)

    assert pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT).outcome is Outcome.DENY


def test_the_decision_cache_is_a_bounded_lru(default_set: PolicySet) -> None:
    pdp = PolicyDecisionPoint(default_set, cache_size=2, entity_cache_size=1)
    one, two, three = (_camera(device_id=f"cam-{i}") for i in (1, 2, 3))
    first = pdp.decide(one, Action.CONNECT, BROKER, CONTEXT)
    second = pdp.decide(two, Action.CONNECT, BROKER, CONTEXT)

    assert pdp.decide(one, Action.CONNECT, BROKER, CONTEXT) is first  # now the most recent
    third = pdp.decide(three, Action.CONNECT, BROKER, CONTEXT)  # evicts two, the least recent

    assert pdp.decide(one, Action.CONNECT, BROKER, CONTEXT) is first
    assert pdp.decide(three, Action.CONNECT, BROKER, CONTEXT) is third
    evicted = pdp.decide(two, Action.CONNECT, BROKER, CONTEXT)
    assert evicted == second
    assert evicted is not second
    assert pdp.decide(one, Action.CONNECT, BROKER, CONTEXT) is not first  # evicted by two's return


def test_a_small_entity_cache_still_decides_each_device_on_its_own_facts(default_set: PolicySet) -> None:
    pdp = PolicyDecisionPoint(default_set, cache_size=1, entity_cache_size=1)
    devices = [
        _camera(device_id="cam-1"),
        _camera("quarantined", device_id="cam-2"),
        _camera(device_id="cam-3", device_type="door"),
    ]

    for _ in range(2):
        outcomes = [
            pdp.decide(d, Action.PUBLISH, type_topic(d.device_type), CONTEXT).outcome for d in devices
        ]
        assert outcomes == [Outcome.ALLOW, Outcome.DENY, Outcome.ALLOW]
