"""The automated response to alerts: risk to the trust capability, quarantine through the inventory.

:class:`InstallationResponder` is the :class:`fleetguard.monitor.alerts.Responder` of an installation:
the risk score goes to ``TrustService.report_signals`` (the policy decision point re-decides the
device's access at once, and the enforcement points follow); a quarantine is the inventory's
lifecycle transition, which every enforcement point subscribes to. Both write the event log.
"""

from __future__ import annotations

from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.service import Inventory
from fleetguard.trust.service import TrustService

__all__ = ["InstallationResponder"]

_ACTOR = "monitor"


class InstallationResponder:
    """Risk and quarantine through the installation's services."""

    def __init__(self, trust: TrustService, inventory: Inventory) -> None:
        self._trust = trust
        self._inventory = inventory

    def report_risk(self, device_id: str, risk: int, reason: str) -> None:
        """Record the device's risk score (0..100) with the trust capability."""
        self._trust.report_signals(device_id, actor=_ACTOR, risk=risk, reason=reason)

    def quarantine(self, device_id: str, reason: str) -> bool:
        """Quarantine the device if it is active; return whether this call did."""
        if self._inventory.states([device_id]).get(device_id) is not State.ACTIVE:
            return False
        self._inventory.transition(device_id, Action.QUARANTINE, actor=_ACTOR, reason=reason)
        return True
