"""The policy decision point: Cedar's decision for one request, compiled, with a bounded cache.

Theory of operation. A request names a device (its :class:`DeviceFacts`), an action and a resource.
Its entities are the device and every resource the device may ask for (the broker, its own topics
and its type's topics) plus the requested resource: the same entities whichever request is asked
first, so a decision depends on its inputs only.

A policy set is decided by one of two evaluators with the same answers:

* the compiled evaluator (:mod:`fleetguard.trust.compiled`): Cedar's own JSON form of the set,
  compiled into Python closures when the set is loaded, so an uncached decision costs microseconds;
* cedarpy, the reference: the request and its entities are encoded as JSON and parsed by cedarpy
  (the parse of a device's entities is kept in a small LRU), then ``is_authorized`` decides against
  the pre-parsed policies. cedarpy decides every set the compiler does not cover (an extension
  function such as ``ip`` or ``decimal``, a template, deep nesting), and every request whose facts
  are not of the schema's types (cedarpy's reading of those is the one that counts: a risk outside
  Cedar's 64-bit Long is refused as ``TrustInputInvalid``).

cedarpy parses and validates every set either way (:mod:`fleetguard.trust.policy`); the differential
tests hold the compiled evaluator to cedarpy's outcomes, reasons and errors. Both paths list the
deciding policies and the errors in policy order (Cedar's own order is not defined).

Decisions are cached by ``(policy digest, facts, action, resource, context)``: any change of an input
(a state change, a revocation, a posture or risk change, a new policy set) is a different key, so the
cache never answers from stale inputs, and it is bounded (LRU).

Fail closed: an evaluation error makes Cedar skip that policy (Cedar's semantics); if the result is
"allow" while a ``forbid`` policy failed to evaluate, the decision is a deny, since that forbid might
have applied. A decision that cannot be made at all (a Cedar failure) raises.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import cedarpy

from fleetguard.trust.compiled import (
    CompiledPolicySet,
    NotCompiled,
    compile_policy_set,
    compiled_request,
)
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


@dataclass(frozen=True, slots=True)
class _InForce:
    """A policy set with what deciding it needs: its forbids, and its compiled form if it compiles."""

    policies: PolicySet
    forbids: frozenset[str]
    compiled: CompiledPolicySet | NotCompiled

    @classmethod
    def of(cls, policies: PolicySet, *, compile: bool) -> _InForce:
        compiled = compile_policy_set(policies) if compile else NotCompiled("compilation is off")
        return cls(policies, _forbid_ids(policies), compiled)


class PolicyDecisionPoint:
    """Decides requests against one policy set; swap the set with :meth:`use`.

    ``compile=False`` decides every request with cedarpy (the reference the compiled evaluator is
    compared with; the benchmark prints both).
    """

    def __init__(
        self,
        policies: PolicySet,
        *,
        cache_size: int = 100_000,
        entity_cache_size: int = 10_000,
        compile: bool = True,
    ) -> None:
        self._compile = compile
        self._current = _InForce.of(
            policies, compile=compile
        )  # swapped as one: a set, its forbids and its compiled form
        self._decisions: _Lru[tuple[str, DeviceFacts, Action, Resource, RequestContext], Decision] = _Lru(
            cache_size
        )
        self._entities: _Lru[DeviceFacts, cedarpy.Entities] = _Lru(entity_cache_size)

    @property
    def policies(self) -> PolicySet:
        """Return the policy set in force."""
        return self._current.policies

    @property
    def compiled(self) -> CompiledPolicySet | NotCompiled:
        """Return the set in force compiled, or why it is not (then cedarpy decides it)."""
        return self._current.compiled

    def use(self, policies: PolicySet) -> None:
        """Decide with ``policies`` from now on (cached decisions of the old set are not used)."""
        self._current = _InForce.of(policies, compile=self._compile)
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
        key = (current.policies.digest, facts, action, resource, context)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        decision = self._evaluate(current, facts, action, resource, context)
        self._decisions.put(key, decision)
        return decision

    def decide_all(self, facts: DeviceFacts, context: RequestContext) -> list[Decision]:
        """Return the decisions for every action on every candidate resource of the device."""
        decisions = [self.decide(facts, Action.CONNECT, _BROKER, context)]
        for resource in candidate_resources(facts)[1:]:
            decisions += [
                self.decide(facts, action, resource, context) for action in (Action.PUBLISH, Action.SUBSCRIBE)
            ]
        return decisions

    def _evaluate(
        self,
        current: _InForce,
        facts: DeviceFacts,
        action: Action,
        resource: Resource,
        context: RequestContext,
    ) -> Decision:
        if resource.kind is ResourceKind.DEVICE_TOPIC and resource != device_topic(resource.owner):
            raise TrustInputInvalid(
                f"topic space {resource.name!r} is not the one device {resource.owner!r} owns"
            )
        if resource.kind is ResourceKind.TYPE_TOPIC and resource != type_topic(resource.owner):
            raise TrustInputInvalid(
                f"topic space {resource.name!r} is not the one type {resource.owner!r} shares"
            )
        verdict = _compiled_verdict(current.compiled, facts, action, resource, context)
        if verdict is None:  # a set or facts the compiled evaluator does not cover: cedarpy decides
            verdict = self._cedar(current.policies, facts, action, resource, context)
        allowed, reasons, errors = verdict
        outcome = Outcome.ALLOW if allowed else Outcome.DENY
        if outcome is Outcome.ALLOW and any(_failed_policy(error) in current.forbids for error in errors):
            outcome, reasons = Outcome.DENY, ()  # a forbid that could not be evaluated might have applied
        policy_ids = tuple(current.policies.policy_id(reason) for reason in reasons)
        return Decision(
            outcome, policy_ids, errors, facts, action, resource, context, current.policies.digest
        )

    def _cedar(
        self,
        policies: PolicySet,
        facts: DeviceFacts,
        action: Action,
        resource: Resource,
        context: RequestContext,
    ) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
        """Return cedarpy's decision: allowed, the deciding policies and the errors, in policy order."""
        candidates = candidate_resources(facts)
        try:
            if resource in candidates:  # one parse of the device and its candidates, for all of them
                entities = self._device_entities(facts, candidates)
            else:
                entities = _parsed(facts, _with(candidates, resource))
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
        reasons = sorted(result.diagnostics.reasons, key=_policy_order)
        errors = sorted(
            (str(error) for error in result.diagnostics.errors),
            key=lambda e: _policy_order(_failed_policy(e)),
        )
        return result.allowed, tuple(reasons), tuple(errors)

    def _device_entities(self, facts: DeviceFacts, candidates: Sequence[Resource]) -> cedarpy.Entities:
        cached = self._entities.get(facts)
        if cached is None:
            cached = _parsed(facts, candidates)
            self._entities.put(facts, cached)
        return cached


def _compiled_verdict(
    compiled: CompiledPolicySet | NotCompiled,
    facts: DeviceFacts,
    action: Action,
    resource: Resource,
    context: RequestContext,
) -> tuple[bool, tuple[str, ...], tuple[str, ...]] | None:
    if isinstance(compiled, NotCompiled):
        return None
    resources = _with(candidate_resources(facts), resource)
    request = compiled_request(facts, action, resource, context, resources)
    if request is None:
        return None
    evaluation = compiled.evaluate(request)
    return evaluation.allowed, evaluation.reasons, evaluation.errors


def _with(resources: tuple[Resource, ...], resource: Resource) -> tuple[Resource, ...]:
    return resources if resource in resources else (*resources, resource)


def _parsed(facts: DeviceFacts, resources: Sequence[Resource]) -> cedarpy.Entities:
    return cedarpy.Entities.from_json_str(json.dumps(_entities(facts, resources)))


def _policy_order(cedar_id: str) -> tuple[int, str]:
    # Cedar's ids are `policyN`, N in the set's order; anything else (a request error) sorts last.
    index = cedar_id[6:]
    return (int(index), "") if cedar_id.startswith("policy") and index.isdigit() else (1 << 62, cedar_id)


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
                "posture": facts.posture.attributes(),
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
