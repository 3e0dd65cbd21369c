"""The broker as an enforcement point of the trust capability: access plans in, verified results out.

The PDP (:mod:`fleetguard.trust`) hands over an :class:`~fleetguard.trust.service.AccessPlan`; this
adapter turns it into what Mosquitto can hold and asks :class:`BrokerEnforcer` to apply it:

* a device whose identity is revoked is **revoked** at the broker: quarantined (kicked, every
  publish and subscribe denied) and the current CRL installed and reloaded, so it cannot reconnect;
* a device that may not connect, or may do nothing, is **quarantined**;
* otherwise the plan's grants beyond the broker-wide ``devices/%u/#`` pattern (its type's topics)
  are **applied** as the device's dynamic-security role (which also carries its own subtree, so the
  plugin decides its everyday traffic: :mod:`fleetguard.gateway.roles`), and any quarantine is lifted.

The broker-wide pattern grants every device its own subtree, so a plan that allows the device to
connect but denies part of its own subtree cannot be expressed per device: the device is then
quarantined (fail closed), and the report says why.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetguard.gateway.config import DEFAULT_GRANTS
from fleetguard.gateway.enforcement import BrokerEnforcer
from fleetguard.gateway.model import Access, DeviceAccess, EnforcementResult, Outcome, TopicGrant
from fleetguard.trust.evaluator import EnforcementReport
from fleetguard.trust.model import Action
from fleetguard.trust.model import Outcome as Decision
from fleetguard.trust.pdp import device_topic
from fleetguard.trust.service import AccessPlan

__all__ = ["BrokerEnforcementPoint", "device_access"]

_NAME = "mosquitto"


class BrokerEnforcementPoint:
    """Implements the trust capability's ``EnforcementPoint`` with a :class:`BrokerEnforcer`."""

    def __init__(self, enforcer: BrokerEnforcer, crl_pem: Callable[[], bytes]) -> None:
        self._enforcer = enforcer
        self._crl_pem = crl_pem

    @property
    def name(self) -> str:
        """Return ``mosquitto``."""
        return _NAME

    def enforce(self, plan: AccessPlan) -> EnforcementReport:
        """Apply ``plan`` at the broker; report whether the broker confirmed it."""
        if plan.decisions and plan.decisions[0].device.revoked:
            result = self._enforcer.revoke(plan.device_id, self._crl_pem())
            return _report(result, "revoked")
        access, why = device_access(plan)
        if access.quarantined:
            return _report(self._enforcer.quarantine(plan.device_id), why)
        return _report(self._enforcer.apply(access), why)


def device_access(plan: AccessPlan) -> tuple[DeviceAccess, str]:
    """Return what the broker must hold for ``plan``, and why, in words."""
    if plan.connect is Decision.DENY or not plan.grants:
        return DeviceAccess(plan.device_id, quarantined=True), "the device may not connect"
    own = device_topic(plan.device_id).name
    own_actions = {grant.action for grant in plan.grants if grant.topic_filter == own}
    if own_actions != {Action.PUBLISH, Action.SUBSCRIBE}:
        return (
            DeviceAccess(plan.device_id, quarantined=True),
            "the policy denies part of the device's own topics, which the broker-wide pattern "
            "grants: quarantined",
        )
    extra: dict[str, set[Action]] = {}
    for grant in plan.grants:
        if grant.topic_filter != own:
            extra.setdefault(grant.topic_filter, set()).add(grant.action)
    grants = tuple(TopicGrant(_access(actions), topic) for topic, actions in sorted(extra.items()))
    covered = {grant.filter for grant in DEFAULT_GRANTS}
    return DeviceAccess(plan.device_id, tuple(g for g in grants if g.filter not in covered)), "allowed"


def _access(actions: set[Action]) -> Access:
    if actions >= {Action.PUBLISH, Action.SUBSCRIBE}:
        return Access.BOTH
    return Access.PUBLISH if Action.PUBLISH in actions else Access.SUBSCRIBE


def _report(result: EnforcementResult, why: str) -> EnforcementReport:
    verified = result.outcome is Outcome.ENFORCED and result.verified
    detail = f"{result.action} ({why}): {result.detail}; {result.elapsed_s * 1000:.0f} ms"
    return EnforcementReport(_NAME, verified, detail)
