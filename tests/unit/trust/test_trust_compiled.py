"""The compiled evaluator against cedarpy: generated policies and requests, each construct, the fallback."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetguard.trust import (
    DEFAULT_POLICIES,
    Action,
    DeviceFacts,
    Outcome,
    PolicyDecisionPoint,
    PolicyInvalid,
    PolicySet,
    Posture,
    RequestContext,
    Resource,
    ResourceKind,
    candidate_resources,
    device_topic,
    parse_policy_set,
    type_topic,
)
from fleetguard.trust.compiled import (
    MAX_DEPTH,
    CompiledPolicySet,
    Evaluation,
    NotCompiled,
    compile_policy_set,
    compiled_request,
)
from fleetguard.trust.pdp import _entities  # the PDP's JSON encoding for cedarpy: the reference's input

BROKER = Resource(ResourceKind.BROKER, "mqtt")
CONTEXT = RequestContext(12, "lan")
LONG_MAX = 2**63 - 1


def _camera(**changes: Any) -> DeviceFacts:
    facts = DeviceFacts(
        "cam-1", "active", manufacturer="Acme", model="Cam-X", device_type="camera", site="plant-1",
        labels=("lab",), certificate_valid=True, posture=Posture("2.1.0"), risk=10,
    )  # fmt: skip
    return dataclasses.replace(facts, **changes)


def _store(facts: DeviceFacts, resource: Resource) -> tuple[Resource, ...]:
    candidates = candidate_resources(facts)
    return candidates if resource in candidates else (*candidates, resource)


def _compiled(policies: PolicySet) -> CompiledPolicySet:
    compiled = compile_policy_set(policies)
    assert isinstance(compiled, CompiledPolicySet), compiled
    return compiled


def _ours(
    compiled: CompiledPolicySet,
    facts: DeviceFacts,
    action: Action,
    resource: Resource,
    context: RequestContext,
) -> Evaluation:
    request = compiled_request(facts, action, resource, context, _store(facts, resource))
    assert request is not None
    return compiled.evaluate(request)


def _cedarpy(
    policies: PolicySet, facts: DeviceFacts, action: Action, resource: Resource, context: RequestContext
) -> Evaluation:
    entities = cedarpy.Entities.from_json_str(json.dumps(_entities(facts, _store(facts, resource))))
    request = {
        "principal": {"type": "Fleet::Device", "id": facts.device_id},
        "action": {"type": "Fleet::Action", "id": action.value},
        "resource": {"type": f"Fleet::{resource.kind.value}", "id": resource.name},
        "context": {"hour": context.hour, "network": context.network},
    }
    result = cedarpy.is_authorized(request, policies.handle, entities)
    errors = tuple(str(error) for error in result.diagnostics.errors)
    return Evaluation(result.allowed, tuple(result.diagnostics.reasons), errors)


def _assert_same(
    policies: PolicySet, facts: DeviceFacts, action: Action, resource: Resource, context: RequestContext
) -> Evaluation:
    """Assert the compiled evaluator's outcome, reasons and errors (messages too) are cedarpy's."""
    ours = _ours(_compiled(policies), facts, action, resource, context)
    reference = _cedarpy(policies, facts, action, resource, context)
    # cedarpy's order is not defined (a hash set): compare as sets; ours is the set's order
    assert (ours.allowed, set(ours.reasons), set(ours.errors)) == (
        reference.allowed,
        set(reference.reasons),
        set(reference.errors),
    ), policies.text
    assert list(ours.reasons) == sorted(ours.reasons, key=lambda cedar_id: int(cedar_id[6:]))
    return ours


# --- a grammar of policies over the schema -----------------------------------------------------------

STRINGS = st.sampled_from(["active", "quarantined", "", "Acme", "lab", "2.1.0", "lan", "a*b", "cam-1"])
LONGS = st.sampled_from([0, 1, -1, 10, 80, 100, 2**31, LONG_MAX, -LONG_MAX, 3037000500])
ENTITIES = st.sampled_from(
    [
        "principal",
        "resource",
        "principal.type",
        "principal.site",
        'Fleet::Site::"plant-1"',
        'Fleet::Site::"plant-2"',
        'Fleet::DeviceType::"camera"',
        'Fleet::Device::"cam-1"',
        'Fleet::Device::"cam-2"',
        'Fleet::Broker::"mqtt"',
        'Fleet::DeviceTopic::"devices/cam-1/#"',
    ]
)
GROUPS = st.one_of(  # Cedar refuses empty and mixed set literals
    st.lists(
        st.sampled_from(['Fleet::Site::"plant-1"', 'Fleet::Site::"plant-2"', "principal.site"]), min_size=1
    ),
    st.lists(st.sampled_from(['Fleet::DeviceType::"camera"', "principal.type"]), min_size=1, max_size=2),
)
PATTERNS = st.sampled_from(['"act*"', '"*"', '"*a*e"', '"a\\*b"', '"*.1.*"', '""', '"l*b"', '"*i*v*e"'])


def _string_term() -> st.SearchStrategy[str]:
    attributes = st.sampled_from(
        [
            "principal.state",
            "principal.manufacturer",
            "principal.model",
            "principal.posture.firmware_version",
            "context.network",
        ]
    )
    return st.one_of(attributes, STRINGS.map(json.dumps))


def _long_term(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    leaves = st.one_of(st.sampled_from(["principal.risk", "context.hour"]), LONGS.map(str))
    return st.one_of(
        leaves,
        st.tuples(children, st.sampled_from(["+", "-", "*"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        children.map(lambda c: f"(-{c})" if not c.startswith("-") else f"(- ({c}))"),
    )


def _bool_term(longs: st.SearchStrategy[str], children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    strings = _string_term()
    comparisons = st.tuples(longs, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), longs)
    label_sets = st.lists(STRINGS.map(json.dumps), min_size=1, max_size=3).map(
        lambda items: f"[{', '.join(items)}]"
    )
    erroring = st.sampled_from(  # each errors for some facts: overflow, a missing entity
        [
            "principal.risk * 3037000500 > 0",
            "principal.risk + 9223372036854775000 > 0",
            "-principal.risk < 0",
            "context.hour * context.hour > 0",
            'Fleet::Device::"cam-2".state == "active"',
            'Fleet::DeviceTopic::"devices/cam-2/#".filter like "*"',
        ]
    )
    leaves = st.one_of(
        erroring,
        erroring,  # twice: errors are what most needs checking
        st.sampled_from(
            [
                "true",
                "false",
                "principal.identity.revoked",
                "principal.identity.certificate_valid",
                "principal.posture.end_of_life",
                "principal.posture.attestation_fresh",
                "principal is Fleet::Device",
                "resource is Fleet::DeviceTopic",
                "resource is Fleet::TypeTopic in principal.type",
                "principal has state",
                "principal has posture.end_of_life",
                'Fleet::Device::"cam-2" has state',
                "principal.labels.isEmpty()",
                'Fleet::Device::"cam-2".risk > 0',
                "principal.identity == {certificate_valid: true, revoked: false}",
                "principal.type == principal.site",
            ]
        ),
        comparisons.map(" ".join),
        st.tuples(strings, st.sampled_from(["==", "!="]), strings).map(" ".join),
        st.tuples(strings, PATTERNS).map(lambda t: f"{t[0]} like {t[1]}"),
        st.tuples(ENTITIES, ENTITIES).map(lambda t: f"{t[0]} in {t[1]}"),
        st.tuples(ENTITIES, GROUPS).map(lambda t: f"{t[0]} in [{', '.join(t[1])}]"),
        STRINGS.map(lambda s: f"principal.labels.contains({json.dumps(s)})"),
        st.tuples(st.sampled_from(["containsAll", "containsAny"]), label_sets).map(
            lambda t: f"principal.labels.{t[0]}({t[1]})"
        ),
        label_sets.map(lambda s: f"{s}.isEmpty()"),
    )
    return st.one_of(
        leaves,
        children.map(lambda c: f"!({c})"),
        st.tuples(children, st.sampled_from(["&&", "||"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(children, children, children).map(lambda t: f"(if {t[0]} then {t[1]} else {t[2]})"),
    )


LONG_EXPRESSIONS = st.recursive(
    st.one_of(st.sampled_from(["principal.risk", "context.hour"]), LONGS.map(str)), _long_term, max_leaves=4
)
BOOL_EXPRESSIONS = st.recursive(
    _bool_term(LONG_EXPRESSIONS, st.just("true")),
    lambda children: _bool_term(LONG_EXPRESSIONS, children),
    max_leaves=5,
)
SCOPES = st.sampled_from(
    [
        "principal, action, resource",
        'principal, action == Fleet::Action::"connect", resource',
        'principal, action in [Fleet::Action::"publish", Fleet::Action::"subscribe"], resource',
        "principal is Fleet::Device, action, resource",
        'principal in Fleet::Site::"plant-1", action, resource',
        'principal is Fleet::Device in Fleet::DeviceType::"camera", action, resource',
        'principal == Fleet::Device::"cam-1", action, resource',
        'principal, action, resource in Fleet::Device::"cam-1"',
        'principal, action, resource in Fleet::DeviceType::"camera"',
        "principal, action, resource is Fleet::DeviceTopic",
        'principal, action, resource is Fleet::TypeTopic in Fleet::DeviceType::"meter"',
        'principal, action, resource == Fleet::Broker::"mqtt"',
    ]
)
POLICIES = st.tuples(
    st.sampled_from(["permit", "forbid"]),
    SCOPES,
    st.lists(st.tuples(st.sampled_from(["when", "unless"]), BOOL_EXPRESSIONS), max_size=2),
)
FACTS = st.builds(
    DeviceFacts,
    device_id=st.sampled_from(["cam-1", "cam-2"]),
    state=st.sampled_from(["active", "quarantined", "lab"]),
    manufacturer=st.sampled_from(["Acme", "a*b"]),
    model=st.sampled_from(["Cam-X", ""]),
    device_type=st.sampled_from(["camera", "meter", ""]),
    site=st.sampled_from(["plant-1", "plant-2"]),
    labels=st.lists(st.sampled_from(["lab", "", "a*b", "ring=1"]), max_size=3, unique=True).map(tuple),
    certificate_valid=st.booleans(),
    revoked=st.booleans(),
    posture=st.builds(
        Posture,
        firmware_version=st.sampled_from(["2.1.0", "1.0"]),
        firmware_compliant=st.booleans(),
        end_of_life=st.booleans(),
        known_vulnerable=st.booleans(),
        attestation_fresh=st.booleans(),
    ),
    risk=st.sampled_from([0, 1, -1, 10, 80, 2**40, LONG_MAX, -LONG_MAX - 1]),
)
CONTEXTS = st.builds(
    RequestContext, hour=st.sampled_from([0, 12, 23, LONG_MAX]), network=st.sampled_from(["lan", ""])
)


def _text(policies: list[tuple[str, str, list[tuple[str, str]]]]) -> str:
    return "\n".join(
        f'@id("p{index}") {effect} ({scope})'
        + "".join(f" {kind} {{ {body} }}" for kind, body in conditions)
        + ";"
        for index, (effect, scope, conditions) in enumerate(policies)
    )


def _requests(facts: DeviceFacts) -> list[tuple[Action, Resource]]:
    topics = [device_topic(facts.device_id), device_topic("cam-2"), type_topic("meter")]
    if facts.device_type:
        topics.append(type_topic(facts.device_type))
    return [(Action.CONNECT, BROKER)] + [
        (action, t) for t in topics for action in (Action.PUBLISH, Action.SUBSCRIBE)
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(POLICIES, min_size=1, max_size=4), st.lists(FACTS, min_size=1, max_size=2), CONTEXTS)
def test_generated_policies_decide_as_cedarpy_decides(
    policies: list[tuple[str, str, list[tuple[str, str]]]], fleet: list[DeviceFacts], context: RequestContext
) -> None:
    try:
        policy_set = parse_policy_set(_text(policies))
    except PolicyInvalid:
        return  # the grammar can write what the schema refuses (e.g. `resource.filter` on the broker)
    for facts in fleet:
        for action, resource in _requests(facts):
            _assert_same(policy_set, facts, action, resource, context)


# --- each construct ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "allowed", "error"),
    [
        ('principal.state == "active"', True, None),
        ('principal.state != "active"', False, None),
        (
            "principal.risk < 11 && principal.risk <= 10 && principal.risk > 9 && principal.risk >= 10",
            True,
            None,
        ),
        ("principal.risk + 1 == 11 && principal.risk - 11 == -1 && principal.risk * 3 == 30", True, None),
        ("-principal.risk == -10", True, None),
        (
            "principal.risk + 9223372036854775807 > 0",
            False,
            "integer overflow while attempting to add the values `10` and `9223372036854775807`",
        ),
        (
            "-9223372036854775807 - principal.risk > 0",
            False,
            "integer overflow while attempting to subtract the values `-9223372036854775807` and `10`",
        ),
        (
            "principal.risk * 9223372036854775807 > 0",
            False,
            "integer overflow while attempting to multiply the values `10` and `9223372036854775807`",
        ),
        (
            "-(-9223372036854775807 - 1) > 0",
            False,
            "integer overflow while attempting to negate the value `-9223372036854775808`",
        ),
        ("false && principal.risk * 9223372036854775807 > 0", False, None),
        ("true || principal.risk * 9223372036854775807 > 0", True, None),
        ("if principal.identity.revoked then principal.risk * 9223372036854775807 > 0 else true", True, None),
        ("!principal.identity.revoked", True, None),
        ("principal has state && principal has posture.end_of_life", True, None),
        ('Fleet::Device::"cam-2" has state', False, None),
        ('Fleet::Device::"cam-2".state == "active"', False, 'entity `Fleet::Device::"cam-2"` does not exist'),
        ('principal.state like "act*"', True, None),
        ('principal.state like "*c*i*"', True, None),
        ('principal.state like "a\\*"', False, None),
        ('principal.manufacturer like "A*me"', True, None),
        ("resource in principal && resource in principal.type && resource in principal.site", True, None),
        ('principal in [Fleet::Site::"plant-2", Fleet::Site::"plant-1"]', True, None),
        ('resource in Fleet::Device::"cam-2"', False, None),
        ("principal is Fleet::Device && resource is Fleet::DeviceTopic", True, None),
        ("resource is Fleet::DeviceTopic in principal", True, None),
        ('principal.labels.contains("lab") && !principal.labels.contains("x")', True, None),
        ('principal.labels.containsAll(["lab"]) && principal.labels.containsAny(["x", "lab"])', True, None),
        ('principal.labels.isEmpty() || !["x"].isEmpty()', True, None),
        ("principal.identity == {revoked: false, certificate_valid: true}", True, None),
        ("[1, 2] == [2, 1] && [1] != [2]", True, None),
        ('context.hour == 12 && context.network == "lan"', True, None),
        ('principal.type == Fleet::DeviceType::"camera" && principal.site != Fleet::Site::"x"', True, None),
        ('Fleet::DeviceTopic::"devices/cam-1/#".filter == "devices/cam-1/#"', True, None),
        ('Fleet::Broker::"mqtt" in principal', False, None),
    ],
)
def test_each_construct_decides_as_cedar(condition: str, allowed: bool, error: str | None) -> None:
    policies = parse_policy_set(f'@id("p") permit (principal, action, resource) when {{ {condition} }};')

    ours = _assert_same(policies, _camera(), Action.PUBLISH, device_topic("cam-1"), CONTEXT)

    assert ours.allowed is allowed
    expected = () if error is None else (f"error while evaluating policy `policy0`: {error}",)
    assert ours.errors == expected
    assert ours.errors == _cedarpy(policies, _camera(), Action.PUBLISH, device_topic("cam-1"), CONTEXT).errors


@pytest.mark.parametrize(
    ("scope", "resource", "allowed"),
    [
        ('principal == Fleet::Device::"cam-1", action, resource', BROKER, True),
        ('principal == Fleet::Device::"cam-2", action, resource', BROKER, False),
        ('principal in Fleet::Site::"plant-1", action == Fleet::Action::"connect", resource', BROKER, True),
        ('principal, action == Fleet::Action::"publish", resource', BROKER, False),
        ('principal, action in [Fleet::Action::"connect"], resource == Fleet::Broker::"mqtt"', BROKER, True),
        ('principal is Fleet::Device in Fleet::DeviceType::"camera", action, resource', BROKER, True),
        ('principal is Fleet::Device in Fleet::DeviceType::"meter", action, resource', BROKER, False),
        ("principal, action, resource is Fleet::DeviceTopic", device_topic("cam-1"), True),
        ('principal, action, resource in Fleet::Site::"plant-1"', device_topic("cam-1"), True),
        ('principal, action, resource in Fleet::Site::"plant-1"', device_topic("cam-2"), False),
        (
            'principal, action, resource is Fleet::TypeTopic in Fleet::DeviceType::"camera"',
            type_topic("camera"),
            True,
        ),
    ],
)
def test_each_scope_constraint_decides_as_cedar(scope: str, resource: Resource, allowed: bool) -> None:
    policies = parse_policy_set(f'@id("p") permit ({scope});')
    action = Action.CONNECT if resource.kind is ResourceKind.BROKER else Action.PUBLISH

    assert _assert_same(policies, _camera(), action, resource, CONTEXT).allowed is allowed


def test_a_forbid_wins_and_every_satisfied_policy_is_a_reason_in_policy_order() -> None:
    policies = parse_policy_set(
        "\n".join(
            f'@id("f{i}") forbid (principal, action, resource) when {{ principal.risk > {i} }};'
            for i in range(12)
        )
        + '\n@id("p") permit (principal, action, resource);'
    )

    ours = _assert_same(policies, _camera(), Action.CONNECT, BROKER, CONTEXT)

    assert ours == Evaluation(False, tuple(f"policy{i}" for i in range(10)), ())


# --- fallback to cedarpy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "named"),
    [
        ('ip("10.0.0.1").isIpv4()', "isIpv4"),
        ('decimal("1.5").lessThan(decimal("2.0"))', "lessThan"),
        ('principal.risk > 0 && ip("10.1.2.3").isInRange(ip("10.0.0.0/8"))', "isInRange"),
    ],
)
def test_an_extension_function_falls_back_to_cedarpy_and_still_decides(condition: str, named: str) -> None:
    policies = parse_policy_set(
        DEFAULT_POLICIES + f'\n@id("ext") forbid (principal, action, resource) when {{ {condition} }};'
    )
    pdp = PolicyDecisionPoint(policies)

    decision = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

    assert isinstance(pdp.compiled, NotCompiled)
    assert named in pdp.compiled.reason
    assert (decision.outcome, decision.policies, decision.errors) == (Outcome.DENY, ("ext",), ())


def test_nesting_deeper_than_the_bound_falls_back_to_cedarpy() -> None:
    deep = "(" * (MAX_DEPTH + 5) + "principal.risk" + ")" * (MAX_DEPTH + 5)
    nested = "principal.risk" + "".join(f" + {i}" for i in range(MAX_DEPTH + 5))
    for condition in (f"{deep} > 5", f"{nested} > 0"):
        policies = parse_policy_set(
            f'@id("deep") permit (principal, action, resource) when {{ {condition} }};'
        )
        pdp = PolicyDecisionPoint(policies)

        decision = pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT)

        assert decision.outcome is Outcome.ALLOW
    assert isinstance(pdp.compiled, NotCompiled)
    assert "deeper than" in pdp.compiled.reason


def test_a_long_chain_of_conditions_is_flattened_and_compiled() -> None:
    chain = " && ".join(f"principal.risk > {-i}" for i in range(3 * MAX_DEPTH))
    policies = parse_policy_set(f'@id("long") permit (principal, action, resource) when {{ {chain} }};')

    assert _assert_same(policies, _camera(), Action.CONNECT, BROKER, CONTEXT).allowed


@pytest.mark.parametrize(
    "changes",
    [{"risk": 2**63}, {"state": "a\ud800"}, {"labels": (1,)}, {"certificate_valid": 1}, {"risk": True}],
    ids=["risk-beyond-long", "lone-surrogate", "label-not-a-string", "int-for-bool", "bool-for-long"],
)
def test_facts_outside_the_schemas_types_are_left_to_cedarpy(changes: dict[str, Any]) -> None:
    facts = _camera(**changes)

    assert compiled_request(facts, Action.CONNECT, BROKER, CONTEXT, candidate_resources(facts)) is None


@pytest.mark.parametrize("context", [RequestContext(2**63, "lan"), RequestContext(1, "\udc00")])
def test_a_context_outside_the_schemas_types_is_left_to_cedarpy(context: RequestContext) -> None:
    pdp = PolicyDecisionPoint(parse_policy_set(DEFAULT_POLICIES))
    reference = PolicyDecisionPoint(parse_policy_set(DEFAULT_POLICIES), compile=False)

    decision = pdp.decide(_camera(), Action.CONNECT, BROKER, context)

    assert decision.outcome is Outcome.DENY
    assert decision.errors[0].startswith("failed to build request")
    assert decision == reference.decide(_camera(), Action.CONNECT, BROKER, context)


# --- the PDP: compiled and cedarpy agree -------------------------------------------------------------


def _fleet(count: int) -> list[DeviceFacts]:
    states = ("active",) * 6 + ("quarantined", "provisioned", "suspended", "")
    return [
        _camera(
            device_id=f"dev-{i}", state=states[i % len(states)], device_type=("camera", "meter", "")[i % 3],
            site=f"site-{i % 4}", revoked=i % 11 == 0, certificate_valid=i % 13 != 0, risk=i % 100,
            posture=Posture("1.0", end_of_life=i % 17 == 0),
        )
        for i in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        "",
        '@id("risky") forbid (principal, action, resource)\n'
        "when { principal.risk * 92233720368547758 > 5000 };",
        '@id("night") forbid (principal, action, resource)\n'
        "unless { context.hour >= 6 && context.hour < 22 };",
    ],
    ids=["default", "overflowing-forbid", "context"],
)
def test_the_pdp_decides_a_fleet_as_cedarpy_does(extra: str) -> None:
    policies = parse_policy_set(DEFAULT_POLICIES + extra)
    compiled = PolicyDecisionPoint(policies)
    reference = PolicyDecisionPoint(policies, compile=False)
    assert isinstance(compiled.compiled, CompiledPolicySet)

    for facts in _fleet(120):
        ours = compiled.decide_all(facts, CONTEXT)
        assert ours == reference.decide_all(facts, CONTEXT)
        other = device_topic("dev-x")
        assert compiled.decide(facts, Action.SUBSCRIBE, other, CONTEXT) == reference.decide(
            facts, Action.SUBSCRIBE, other, CONTEXT
        )


def test_a_new_set_that_does_not_compile_is_decided_by_cedarpy() -> None:
    pdp = PolicyDecisionPoint(parse_policy_set(DEFAULT_POLICIES))
    assert isinstance(pdp.compiled, CompiledPolicySet)

    pdp.use(
        parse_policy_set('@id("ext") permit (principal, action, resource) when { ip("10.0.0.1").isIpv4() };')
    )

    assert isinstance(pdp.compiled, NotCompiled)
    assert pdp.decide(_camera(), Action.CONNECT, BROKER, CONTEXT).policies == ("ext",)
