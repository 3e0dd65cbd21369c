"""The firewall as an enforcement point of the trust capability.

The trust PDP re-decides a device on every change (state, revocation, posture, risk, a new policy)
and hands each enforcement point an :class:`~fleetguard.trust.service.AccessPlan`. Here a device
that may not connect at all is put in the firewall's quarantine set, which cuts its live flows; a
device that may connect is released, unless the inventory holds it in quarantine or it is
decommissioned. The result counts as enforced only when the quarantine set, read back from nft,
agrees.
"""

from __future__ import annotations

from fleetguard.segment.errors import SegmentError
from fleetguard.segment.service import SegmentationService
from fleetguard.trust.evaluator import EnforcementReport
from fleetguard.trust.model import Outcome
from fleetguard.trust.service import AccessPlan

__all__ = ["FirewallEnforcementPoint"]

_NAME = "nftables"


class FirewallEnforcementPoint:
    """Implements the trust capability's ``EnforcementPoint`` with the segmentation service."""

    def __init__(self, segment: SegmentationService, *, actor: str = "fleetguard trust") -> None:
        self._segment = segment
        self._actor = actor

    @property
    def name(self) -> str:
        """The point's name in reports."""
        return _NAME

    def enforce(self, plan: AccessPlan) -> EnforcementReport:
        """Quarantine or release the device's addresses; report whether nft confirms it."""
        quarantine = plan.connect is Outcome.DENY or plan.denied_everything
        try:
            verified, detail = self._segment.hold(plan.device_id, quarantine=quarantine, actor=self._actor)
        except SegmentError as exc:
            return EnforcementReport(_NAME, False, str(exc)[:500])
        return EnforcementReport(_NAME, verified, detail)
