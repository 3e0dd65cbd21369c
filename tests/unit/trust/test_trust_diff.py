"""Change analysis: which requests of which devices a proposed policy set changes, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleetguard.trust import (
    DEFAULT_POLICIES,
    Action,
    DeviceFacts,
    Outcome,
    OutcomeChange,
    PolicySet,
    RequestContext,
    diff_policies,
    parse_policy_set,
)

CONTEXT = RequestContext(hour=12, network="plant")
NO_DOORS = (
    '@id("no-doors") forbid (principal, action, resource) when { principal in Fleet::DeviceType::"door" };'
)


def _device(device_id: str, device_type: str, state: str = "active") -> DeviceFacts:
    return DeviceFacts(device_id, state, device_type=device_type, certificate_valid=True)


FLEET = (
    _device("cam-1", "camera"),
    _device("door-1", "door"),
    _device("cam-2", "camera"),
    _device("door-2", "door", state="quarantined"),  # already denied: no change
    _device("door-3", "door", state="registered"),  # already denied: no change
    _device("door-4", "door"),
)


@pytest.fixture(scope="module")
def current() -> PolicySet:
    return parse_policy_set(DEFAULT_POLICIES)


def _denied(device_id: str, device_type: str) -> list[OutcomeChange]:
    def change(action: Action, resource: str, policy: str) -> OutcomeChange:
        return OutcomeChange(
            device_id, action, resource, Outcome.ALLOW, Outcome.DENY, (policy,), ("no-doors",)
        )

    own, shared = f"devices/{device_id}/#", f"types/{device_type}/#"
    return [
        change(Action.CONNECT, "mqtt", "active-devices-connect"),
        change(Action.PUBLISH, own, "active-devices-own-topics"),
        change(Action.SUBSCRIBE, own, "active-devices-own-topics"),
        change(Action.PUBLISH, shared, "active-devices-type-topics"),
        change(Action.SUBSCRIBE, shared, "active-devices-type-topics"),
    ]


def test_a_forbid_for_one_type_changes_exactly_that_types_allowed_requests(current: PolicySet) -> None:
    proposed = parse_policy_set(DEFAULT_POLICIES + NO_DOORS)

    changes = list(diff_policies(current, proposed, FLEET, CONTEXT))

    assert changes == _denied("door-1", "door") + _denied("door-4", "door")


def test_a_new_permit_lists_deny_to_allow(current: PolicySet) -> None:
    proposed = parse_policy_set(
        DEFAULT_POLICIES
        + '@id("registered-connect") permit (principal, action == Fleet::Action::"connect", resource)\n'
        'when { principal.state == "registered" };'
    )

    changes = list(diff_policies(current, proposed, FLEET, CONTEXT))

    assert changes == [
        OutcomeChange(
            "door-3", Action.CONNECT, "mqtt", Outcome.DENY, Outcome.ALLOW, (), ("registered-connect",)
        )
    ]


def test_identical_sets_change_nothing(current: PolicySet) -> None:
    reworded = parse_policy_set(DEFAULT_POLICIES.replace("// fleetguard's default", "// our"))

    assert list(diff_policies(current, current, FLEET, CONTEXT)) == []
    assert list(diff_policies(current, reworded, FLEET, CONTEXT)) == []


def test_progress_counts_every_device(current: PolicySet) -> None:
    counts: list[int] = []
    proposed = parse_policy_set(DEFAULT_POLICIES + NO_DOORS)

    list(diff_policies(current, proposed, FLEET, CONTEXT, progress=counts.append))

    assert counts == [1, 2, 3, 4, 5, 6]


def test_an_empty_fleet_changes_nothing_and_reports_no_progress(current: PolicySet) -> None:
    counts: list[int] = []

    assert list(diff_policies(current, current, [], CONTEXT, progress=counts.append)) == []
    assert counts == []


def test_the_fleet_is_read_one_device_at_a_time(current: PolicySet) -> None:
    read: list[str] = []

    def fleet() -> Iterator[DeviceFacts]:
        for facts in FLEET:
            read.append(facts.device_id)
            yield facts

    changes = diff_policies(current, parse_policy_set(DEFAULT_POLICIES + NO_DOORS), fleet(), CONTEXT)

    assert read == []  # nothing happens before the first change is asked for
    assert next(changes).device_id == "door-1"
    assert read == ["cam-1", "door-1"]
    assert [c.device_id for c in changes] == ["door-1"] * 4 + ["door-4"] * 5
    assert read == [f.device_id for f in FLEET]
