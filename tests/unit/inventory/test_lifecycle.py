"""The lifecycle transition table, checked exhaustively."""

from __future__ import annotations

import itertools

import pytest

from fleetguard.inventory.lifecycle import Action, State, allowed_actions, next_state

EXPECTED = {
    (State.REGISTERED, Action.PROVISION): State.PROVISIONED,
    (State.PROVISIONED, Action.ACTIVATE): State.ACTIVE,
    (State.ACTIVE, Action.QUARANTINE): State.QUARANTINED,
    (State.QUARANTINED, Action.RELEASE): State.ACTIVE,
    (State.REGISTERED, Action.DECOMMISSION): State.DECOMMISSIONED,
    (State.PROVISIONED, Action.DECOMMISSION): State.DECOMMISSIONED,
    (State.ACTIVE, Action.DECOMMISSION): State.DECOMMISSIONED,
    (State.QUARANTINED, Action.DECOMMISSION): State.DECOMMISSIONED,
}


@pytest.mark.parametrize(("state", "action"), list(itertools.product(State, Action)))
def test_every_pair_follows_the_table(state: State, action: Action) -> None:
    assert next_state(state, action) == EXPECTED.get((state, action))


def test_decommissioned_is_terminal() -> None:
    assert allowed_actions(State.DECOMMISSIONED) == []


def test_allowed_actions_from_active() -> None:
    assert allowed_actions(State.ACTIVE) == [Action.QUARANTINE, Action.DECOMMISSION]
