"""The policy decision point: Cedar evaluation of one request, with a bounded cache.

Theory of operation. A request names a device (its :class:`DeviceFacts`), an action and a resource.
The device and its candidate resources become Cedar entities once per distinct set of facts
(parsed by cedarpy into an ``Entities`` handle, kept in a small LRU), so a decision costs one
``is_authorized`` call against pre-parsed policies and entities. Decisions are cached by
``(policy digest, facts, action, resource, context)``: any change of an input (a state change, a
revocation, a posture or risk change, a new policy set) is a different key, so the cache never
answers from stale inputs, and it is bounded (LRU).

Fail closed: an evaluation error makes Cedar skip that policy (Cedar's semantics); if the result is
"allow" while a ``forbid`` policy failed to evaluate, the decision is a deny, since that forbid might
have applied. A decision that cannot be made at all (a Cedar failure) raises.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

import cedarpy

from fleetguard.trust.errors import TrustError, TrustInputInvalid
from fleetguard.trust.model import (
    Action,
    Decision,
    DeviceFacts,
    Outcome,
    RequestContext,
    Resource,
    ResourceKind,
)
from fleetguard.trust.policy import PolicySet

__all__ = ["PolicyDecisionPoint", "candidate_resources", "device_topic", "type_topic"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_NS = "Fleet::"
_BROKER = Resource(ResourceKind.BROKER, "mqtt")
_TOPICS = frozenset({ResourceKind.DEVICE_TOPIC, ResourceKind.TYPE_TOPIC})
# The schema's `appliesTo`: a request outside it is malformed (a policy with an unconstrained resource,
# such as the default `connect` permit, would otherwise allow `connect` on a topic space).
_APPLIES_TO = {
    Action.CONNECT: frozenset({ResourceKind.BROKER}),
    Action.PUBLISH: _TOPICS,
    Action.SUBSCRIBE: _TOPICS,
}


def device_topic(device_id: str) -> Resource:
    """Return the topic space a device owns: ``devices/<id>/#``."""
    return Resource(ResourceKind.DEVICE_TOPIC, f"devices/{device_id}/#", device_id)


def type_topic(device_type: str) -> Resource:
    """Return the topic space a device type shares: ``types/<type>/#``."""
    return Resource(ResourceKind.TYPE_TOPIC, f"types/{device_type}/#", device_type)


def candidate_resources(facts: DeviceFacts) -> tuple[Resource, ...]:
    """Return what a device may ask for: the broker, its own topics, and its type's topics."""
    own = (_BROKER, device_topic(facts.device_id))
    return (*own, type_topic(facts.device_type)) if facts.device_type else own


class _Lru(Generic[_K, _V]):
    """A bounded, thread-safe least-recently-used map."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class PolicyDecisionPoint:
    """Decides requests against one policy set; swap the set with :meth:`use`."""

    def __init__(
        self, policies: PolicySet, *, cache_size: int = 100_000, entity_cache_size: int = 10_000
    ) -> None:
        self._current = (policies, _forbid_ids(policies))  # swapped as one: a set and its forbids
        self._decisions: _Lru[tuple[str, DeviceFacts, Action, Resource, RequestContext], Decision] = _Lru(
            cache_size
        )
        self._entities: _Lru[DeviceFacts, cedarpy.Entities] = _Lru(entity_cache_size)

    @property
    def policies(self) -> PolicySet:
        """Return the policy set in force."""
        return self._current[0]

    def use(self, policies: PolicySet) -> None:
        """Decide with ``policies`` from now on (cached decisions of the old set are not used)."""
        self._current = (policies, _forbid_ids(policies))
        self._decisions.clear()

    def decide(
        self, facts: DeviceFacts, action: Action, resource: Resource, context: RequestContext
    ) -> Decision:
        """Return the decision for ``facts``' device doing ``action`` on ``resource``.

        Raises ``TrustInputInvalid`` for a request the schema does not allow (``connect`` on a topic
        space, ``publish`` on the broker) or facts Cedar cannot read, and ``TrustError`` if Cedar fails.
        """
        if resource.kind not in _APPLIES_TO[action]:
            raise TrustInputInvalid(
                f"{action.value} does not apply to a {resource.kind.value} ({resource.name!r})"
            )
        current = self._current
        key = (current[0].digest, facts, action, resource, context)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        decision = self._evaluate(current, facts, action, resource, context)
        self._decisions.put(key, decision)
        return decision

    def decide_all(self, facts: DeviceFacts, context: RequestContext) -> list[Decision]:
        """Return the decisions for every action on every candidate resource of the device."""
        self._device_entities(facts)  # one parse of the device and all its candidates, for all of them
        decisions = [self.decide(facts, Action.CONNECT, _BROKER, context)]
        for resource in candidate_resources(facts)[1:]:
            decisions += [
                self.decide(facts, action, resource, context) for action in (Action.PUBLISH, Action.SUBSCRIBE)
            ]
        return decisions

    def _evaluate(
        self,
        current: tuple[PolicySet, frozenset[str]],
        facts: DeviceFacts,
        action: Action,
        resource: Resource,
        context: RequestContext,
    ) -> Decision:
        policies, forbids = current
        if resource.kind is ResourceKind.DEVICE_TOPIC and resource != device_topic(resource.owner):
            raise TrustInputInvalid(
                f"topic space {resource.name!r} is not the one device {resource.owner!r} owns"
            )
        if resource.kind is ResourceKind.TYPE_TOPIC and resource != type_topic(resource.owner):
            raise TrustInputInvalid(
                f"topic space {resource.name!r} is not the one type {resource.owner!r} shares"
            )
        try:
            # A device decided in full (decide_all) has its entities cached; a single request needs
            # only the device and that resource, which parses faster than every candidate.
            entities = self._entities.get(facts) or cedarpy.Entities.from_json_str(
                json.dumps(_entities(facts, (resource,)))
            )
        except ValueError as exc:  # e.g. a risk outside Cedar's 64-bit Long
            raise TrustInputInvalid(
                f"device {facts.device_id!r}: Cedar cannot read its facts: {exc}"
            ) from exc
        request = {
            "principal": {"type": f"{_NS}Device", "id": facts.device_id},
            "action": {"type": f"{_NS}Action", "id": action.value},
            "resource": {"type": f"{_NS}{resource.kind.value}", "id": resource.name},
            "context": {"hour": context.hour, "network": context.network},
        }
        try:
            result = cedarpy.is_authorized(request, policies.handle, entities)
        except (ValueError, RuntimeError) as exc:
            raise TrustError(f"Cedar could not evaluate the request: {exc}") from exc
        reasons = tuple(policies.policy_id(reason) for reason in result.diagnostics.reasons)
        errors = tuple(str(error) for error in result.diagnostics.errors)
        outcome = Outcome.ALLOW if result.allowed else Outcome.DENY
        if outcome is Outcome.ALLOW and any(_failed_policy(error) in forbids for error in errors):
            outcome, reasons = Outcome.DENY, ()  # a forbid that could not be evaluated might have applied
        return Decision(outcome, reasons, errors, facts, action, resource, context, policies.digest)

    def _device_entities(self, facts: DeviceFacts) -> cedarpy.Entities:
        cached = self._entities.get(facts)
        if cached is None:
            cached = cedarpy.Entities.from_json_str(json.dumps(_entities(facts, candidate_resources(facts))))
            self._entities.put(facts, cached)
        return cached


def _forbid_ids(policies: PolicySet) -> frozenset[str]:
    # Cedar's own parse says which policies are forbids: a scan of the text can be misled by annotations
    # (`@id("x") forbid` on one line, an annotation value holding a line that starts with `permit`).
    static = policies.handle.to_pst().static_policies
    return frozenset(cedar_id for cedar_id, policy in static.items() if policy.effect == "forbid")


def _failed_policy(error: str) -> str:
    # cedarpy: "error while evaluating policy `policy3`: ..."
    start = error.find("`")
    end = error.find("`", start + 1)
    return error[start + 1 : end] if 0 <= start < end else ""


def _entities(facts: DeviceFacts, resources: Sequence[Resource]) -> list[dict[str, object]]:
    device = {"type": f"{_NS}Device", "id": facts.device_id}
    device_type = {"type": f"{_NS}DeviceType", "id": facts.device_type}
    site = {"type": f"{_NS}Site", "id": facts.site}
    posture = facts.posture
    entities: list[dict[str, object]] = [
        {
            "uid": device,
            "attrs": {
                "state": facts.state,
                "manufacturer": facts.manufacturer,
                "model": facts.model,
                "type": {"__entity": device_type},
                "site": {"__entity": site},
                "labels": list(facts.labels),
                "identity": {"certificate_valid": facts.certificate_valid, "revoked": facts.revoked},
                "posture": {
                    "firmware_version": posture.firmware_version,
                    "firmware_compliant": posture.firmware_compliant,
                    "end_of_life": posture.end_of_life,
                    "known_vulnerable": posture.known_vulnerable,
                    "attestation_fresh": posture.attestation_fresh,
                },
                "risk": facts.risk,
            },
            "parents": [device_type, site],
        },
    ]  # DeviceType and Site have no attributes: as parents and references they need no entry of their own
    for resource in resources:
        uid = {"type": f"{_NS}{resource.kind.value}", "id": resource.name}
        match resource.kind:
            case ResourceKind.BROKER:
                entities.append({"uid": uid, "attrs": {}, "parents": []})
            case ResourceKind.DEVICE_TOPIC:
                owner = {"type": f"{_NS}Device", "id": resource.owner}
                entities.append({"uid": uid, "attrs": {"filter": resource.name}, "parents": [owner]})
            case ResourceKind.TYPE_TOPIC:
                owner = {"type": f"{_NS}DeviceType", "id": resource.owner}
                entities.append({"uid": uid, "attrs": {"filter": resource.name}, "parents": [owner]})
    return entities
