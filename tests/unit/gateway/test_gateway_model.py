"""Grants, device access requests, enforcement results and their event-log entries."""

from __future__ import annotations

import datetime as dt

import pytest

from fleetguard.errors import InvalidInput, LimitExceeded
from fleetguard.gateway.errors import TopicFilterInvalid
from fleetguard.gateway.model import (
    MAX_GRANTS,
    Access,
    DeviceAccess,
    EnforcementAction,
    EnforcementResult,
    Outcome,
    TopicGrant,
    enforcement_event,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_a_grant_validates_its_filter_as_a_pattern() -> None:
    assert TopicGrant(Access.BOTH, "devices/%u/#").filter == "devices/%u/#"
    with pytest.raises(TopicFilterInvalid, match="at position 5"):
        TopicGrant(Access.PUBLISH, "a/b/c#")


@pytest.mark.parametrize("broker_topic", ["$CONTROL/dynamic-security/v1", "$SYS/#", "$share/g/x"])
def test_a_grant_on_a_dollar_topic_is_refused(broker_topic: str) -> None:
    with pytest.raises(TopicFilterInvalid, match="belong to the broker"):
        TopicGrant(Access.BOTH, broker_topic)


def test_access_coverage() -> None:
    assert Access.BOTH.covers(Access.PUBLISH)
    assert Access.BOTH.covers(Access.SUBSCRIBE)
    assert Access.PUBLISH.covers(Access.PUBLISH)
    assert not Access.PUBLISH.covers(Access.BOTH)
    assert not Access.SUBSCRIBE.covers(Access.PUBLISH)
    assert Access.PUBLISH.publishes
    assert not Access.PUBLISH.subscribes


@pytest.mark.parametrize("bad_id", ["", "a/b", "dev 1", "fleetguard admin", "+", "x" * 129, "export"])
def test_device_access_refuses_ids_that_cannot_be_usernames(bad_id: str) -> None:
    with pytest.raises(InvalidInput):
        DeviceAccess(bad_id)


def test_device_access_bounds_its_grants() -> None:
    grant = TopicGrant(Access.BOTH, "types/sensor/#")
    assert len(DeviceAccess("dev-1", (grant,) * MAX_GRANTS).grants) == MAX_GRANTS
    with pytest.raises(LimitExceeded, match=f"at most {MAX_GRANTS}"):
        DeviceAccess("dev-1", (grant,) * (MAX_GRANTS + 1))


def _result(outcome: Outcome, *, verified: bool, detail: str = "ok") -> EnforcementResult:
    return EnforcementResult(
        device_id="dev-1", action=EnforcementAction.QUARANTINE, outcome=outcome, verified=verified,
        detail=detail, at=NOW, retryable=False, elapsed_s=0.0123,
    )  # fmt: skip


def test_an_unverified_result_cannot_be_enforced() -> None:
    with pytest.raises(InvalidInput, match="until it is verified"):
        _result(Outcome.ENFORCED, verified=False)
    assert _result(Outcome.NOT_ENFORCED, verified=False).outcome is Outcome.NOT_ENFORCED


def test_a_result_needs_an_aware_time() -> None:
    with pytest.raises(InvalidInput, match="timezone-aware"):
        EnforcementResult(
            "dev-1", EnforcementAction.APPLY, Outcome.NOT_ENFORCED, False, "x", NOW.replace(tzinfo=None)
        )


def test_the_event_names_action_and_outcome_and_keeps_the_detail() -> None:
    event = enforcement_event(_result(Outcome.ENFORCED, verified=True, detail="probe 0x87"), actor="gateway")
    assert event.subject == "device:dev-1"
    assert event.action == "gateway.quarantine.enforced"
    assert event.reason == "probe 0x87"
    assert dict(event.data) == {"verified": True, "retryable": False, "elapsed_ms": 12}


def test_a_long_detail_is_cut_to_what_the_event_log_takes() -> None:
    result = _result(Outcome.NOT_ENFORCED, verified=False, detail="x" * 10_000)
    assert len(enforcement_event(result, actor="gateway").reason) == 4096
