"""The device lifecycle as an explicit transition table.

Theory of operation: a device is ``registered`` when the inventory learns of it, ``provisioned`` once an
identity (certificate) has been issued, ``active`` when it may connect, ``quarantined`` when access is
cut pending investigation (and ``released`` back to active), and ``decommissioned`` for good — a
terminal state from which nothing leads out. Every transition goes through :func:`next_state`; there is
no other way to change a device's state, so the table below is the whole policy.

Decommissioning is allowed from every non-terminal state, not only from ``active`` as the architecture
diagram draws it: a quarantined (compromised) or never-activated device must be retirable too.
"""

from __future__ import annotations

import enum

__all__ = ["Action", "State", "allowed_actions", "next_state"]


class State(enum.StrEnum):
    """Where a device is in its life."""

    REGISTERED = "registered"
    PROVISIONED = "provisioned"
    ACTIVE = "active"
    QUARANTINED = "quarantined"
    DECOMMISSIONED = "decommissioned"


class Action(enum.StrEnum):
    """What an operator or a capability does to a device's lifecycle."""

    PROVISION = "provision"
    ACTIVATE = "activate"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    DECOMMISSION = "decommission"


_TRANSITIONS: dict[tuple[State, Action], State] = {
    (State.REGISTERED, Action.PROVISION): State.PROVISIONED,
    (State.PROVISIONED, Action.ACTIVATE): State.ACTIVE,
    (State.ACTIVE, Action.QUARANTINE): State.QUARANTINED,
    (State.QUARANTINED, Action.RELEASE): State.ACTIVE,
    (State.REGISTERED, Action.DECOMMISSION): State.DECOMMISSIONED,
    (State.PROVISIONED, Action.DECOMMISSION): State.DECOMMISSIONED,
    (State.ACTIVE, Action.DECOMMISSION): State.DECOMMISSIONED,
    (State.QUARANTINED, Action.DECOMMISSION): State.DECOMMISSIONED,
}


def next_state(state: State, action: Action) -> State | None:
    """Return the state ``action`` leads to from ``state``, or None when the table forbids it."""
    return _TRANSITIONS.get((state, action))


def allowed_actions(state: State) -> list[Action]:
    """Return the actions the table allows from ``state``, in declaration order."""
    return [action for (source, action) in _TRANSITIONS if source is state]
