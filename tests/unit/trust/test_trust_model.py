"""The values a decision is made from, and the decision itself."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from fleetguard.trust import Action, Decision, DeviceFacts, Outcome, Posture, RequestContext, ResourceKind


@pytest.mark.parametrize(
    ("now", "hour"),
    [
        (dt.datetime(2026, 3, 14, 23, 59, tzinfo=dt.UTC), 23),
        (
            dt.datetime(2026, 3, 14, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=5))),
            20,
        ),  # the day before, UTC
        (dt.datetime(2026, 3, 14, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))), 1),
    ],
)
def test_a_request_context_takes_the_utc_hour(now: dt.datetime, hour: int) -> None:
    assert RequestContext.at(now, "plant") == RequestContext(hour, "plant")
    assert RequestContext.at(now).network == ""


def test_facts_are_frozen_and_hashable_with_safe_defaults() -> None:
    facts = DeviceFacts("cam-1", "active")

    assert (facts.certificate_valid, facts.revoked, facts.risk, facts.labels) == (False, False, 0, ())
    assert facts.posture == Posture("", firmware_compliant=True, end_of_life=False)
    assert hash(facts) == hash(DeviceFacts("cam-1", "active"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.state = "quarantined"  # type: ignore[misc]


def test_a_decision_has_no_truth_value_of_its_own() -> None:
    # Callers compare `decision.outcome`: a deny must never read as true through `if decision:`.
    assert "__bool__" not in vars(Decision)
    assert "__len__" not in vars(Decision)


def test_closed_sets_match_the_schema_names() -> None:
    assert [a.value for a in Action] == ["connect", "publish", "subscribe"]
    assert [k.value for k in ResourceKind] == ["Broker", "DeviceTopic", "TypeTopic"]
    assert [o.value for o in Outcome] == ["allow", "deny"]
