"""A compiled evaluator for fleet policy sets: Cedar's semantics as Python closures.

Theory of operation. cedarpy parses and validates every policy set (:mod:`fleetguard.trust.policy`);
here Cedar's own JSON form of the set (the Cedar JSON policy format, "EST", from
``cedarpy.policies_to_json_str``) is compiled, policy by policy, into Python closures that evaluate
one request in microseconds, where cedarpy spends most of a decision parsing the request's entities.

Semantics follow the Cedar specification (docs.cedarpolicy.com, "Policy language reference"):

* a policy is satisfied when its scope matches and every ``when`` condition is true and every
  ``unless`` condition false, evaluated left to right; the scope never errors, so a policy whose
  scope does not match never reports an error;
* ``&&``, ``||`` and ``if-then-else`` short-circuit; every other operator evaluates its operands first;
* ``in`` is reflexive and transitive over the request's entities (an entity that is not among them has
  no ancestors), and ``has`` on an entity that does not exist is false, while ``.`` on one is an error;
* ``+``, ``-``, ``*`` and unary ``-`` on Long error on 64-bit overflow; ``==`` never errors (values of
  different types are unequal: ``1 == true`` is false); a type error is an error;
* a policy that errors is skipped and reported, with cedarpy's message format
  ("error while evaluating policy `policyN`: ..."); the outcome is Cedar's: allow when a permit is
  satisfied and no forbid is, the reasons being the satisfied forbids (deny) or permits (allow).

Values: Bool, Long and String are Python ``bool``, ``int`` and ``str``; an entity is its uid, a
``(type, id)`` tuple; a record is a ``dict``; a set is a ``frozenset`` of element *keys* (:func:`_key`,
which keeps ``true`` and ``1`` apart where Python would not).

What is not compiled is not guessed: a policy set with anything outside this evaluator (an extension
function such as ``ip`` or ``decimal``, a template, an unknown node, nesting deeper than
:data:`MAX_DEPTH`) is :class:`NotCompiled`, and the PDP decides it with cedarpy. So is a request whose
facts are not of the schema's types (:func:`compiled_request` returns ``None``): only cedarpy's own
reading of such facts is authoritative. The differential tests compare this evaluator with cedarpy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import cedarpy

from fleetguard.trust.model import Action, DeviceFacts, RequestContext, Resource, ResourceKind
from fleetguard.trust.policy import PolicySet

__all__ = [
    "MAX_DEPTH",
    "CompiledPolicySet",
    "Evaluation",
    "NotCompiled",
    "Request",
    "compile_policy_set",
    "compiled_request",
]

MAX_DEPTH = 64  # nesting of one expression; deeper falls back to cedarpy (Python's stack is bounded)
_NS = "Fleet::"
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1  # Cedar's Long is a signed 64-bit integer

Uid: TypeAlias = tuple[str, str]
_Eval: TypeAlias = Callable[["Request"], object]


class _Unsupported(Exception):
    """A node the compiler does not handle: the whole set falls back to cedarpy."""


class _EvaluationError(Exception):
    """A Cedar evaluation error: the policy is skipped and reported."""


# --- values ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BoolKey:
    value: bool


@dataclass(frozen=True, slots=True)
class _RecordKey:
    items: frozenset[tuple[str, object]]


_TRUE, _FALSE = _BoolKey(True), _BoolKey(False)


def _key(value: object) -> object:
    """Return a hashable value that is equal to another's exactly when Cedar's ``==`` says so."""
    kind = type(value)
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is dict:
        assert isinstance(value, dict)
        return _RecordKey(frozenset((name, _key(item)) for name, item in value.items()))
    return value  # Long, String, entity uid; a set already holds keys


def _type_name(value: object) -> str:
    kind = type(value)
    if kind is tuple:
        assert isinstance(value, tuple)
        return f"(entity of type `{value[0]}`)"
    names = {bool: "bool", int: "long", str: "string", frozenset: "set", dict: "record"}
    return names.get(kind, kind.__name__)


def _type_error(expected: str, value: object) -> _EvaluationError:
    return _EvaluationError(f"type error: expected {expected}, got {_type_name(value)}")


def _bool(value: object) -> bool:
    if value is True or value is False:
        return value
    raise _type_error("bool", value)


def _long(value: object) -> int:
    if type(value) is int:
        return value
    raise _type_error("long", value)


def _uid(value: object) -> Uid:
    if type(value) is tuple:
        return value  # every tuple value is an entity uid
    raise _type_error("(entity of type `any_entity_type`)", value)


def _set(value: object) -> frozenset[object]:
    if type(value) is frozenset:
        return value  # a set value is a frozenset of keys
    raise _type_error("set", value)


def _show(uid: Uid) -> str:
    return f"{uid[0]}::{json.dumps(uid[1], ensure_ascii=False)}"


# --- requests ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entity:
    attrs: Mapping[str, object]
    ancestors: frozenset[Uid]


_BROKER_ENTITY = _Entity({}, frozenset())
_KIND_TYPES = {kind: f"{_NS}{kind.value}" for kind in ResourceKind}


class Request:
    """One request in the evaluator's values: the principal, action, resource, context and entities.

    The entities are the device and the given resources (built when a policy looks at one): the same
    entities, encoded the same way, as the PDP gives cedarpy.
    """

    __slots__ = ("_device", "_resources", "action", "context", "principal", "resource")

    def __init__(
        self,
        principal: Uid,
        action: Uid,
        resource: Uid,
        context: Mapping[str, object],
        *,
        device: _Entity,
        resources: Mapping[Uid, Resource],
    ) -> None:
        self.principal, self.action, self.resource, self.context = principal, action, resource, context
        self._device, self._resources = device, resources

    def entity(self, uid: Uid) -> _Entity | None:
        """Return the entity ``uid`` among the request's entities, or ``None`` if it is not one."""
        if uid == self.principal:
            return self._device
        resource = self._resources.get(uid)
        if resource is None:
            return None
        match resource.kind:
            case ResourceKind.BROKER:
                return _BROKER_ENTITY
            case ResourceKind.DEVICE_TOPIC:
                owner: Uid = (f"{_NS}Device", resource.owner)
                # Cedar closes the hierarchy when it reads the entities: the topic space of the
                # requesting device is also in that device's type and site.
                inherited = self._device.ancestors if owner == self.principal else frozenset()
                return _Entity({"filter": resource.name}, inherited | {owner})
            case ResourceKind.TYPE_TOPIC:
                return _Entity({"filter": resource.name}, frozenset({(f"{_NS}DeviceType", resource.owner)}))

    def descends(self, child: Uid, parent: Uid) -> bool:
        """Return Cedar's ``child in parent``: equal, or an ancestor (none if ``child`` is unknown)."""
        if child == parent:
            return True
        entity = self.entity(child)
        return entity is not None and parent in entity.ancestors


def compiled_request(
    facts: DeviceFacts,
    action: Action,
    resource: Resource,
    context: RequestContext,
    resources: Sequence[Resource],
) -> Request | None:
    """Return the request with the device and ``resources`` as its entities, encoded as the PDP encodes
    them for cedarpy; ``None`` if a value is not of the schema's type (cedarpy then reads it).
    """
    if not (_readable(facts, resources) and _readable_context(context)):
        return None
    device: Uid = (f"{_NS}Device", facts.device_id)
    device_type: Uid = (f"{_NS}DeviceType", facts.device_type)
    site: Uid = (f"{_NS}Site", facts.site)
    attrs = {
        "state": facts.state,
        "manufacturer": facts.manufacturer,
        "model": facts.model,
        "type": device_type,
        "site": site,
        "labels": frozenset(facts.labels),
        "identity": {"certificate_valid": facts.certificate_valid, "revoked": facts.revoked},
        "posture": facts.posture.attributes(),
        "risk": facts.risk,
    }
    return Request(
        device,
        (f"{_NS}Action", action.value),
        (_KIND_TYPES[resource.kind], resource.name),
        {"hour": context.hour, "network": context.network},
        device=_Entity(attrs, frozenset((device_type, site))),
        resources={(_KIND_TYPES[candidate.kind], candidate.name): candidate for candidate in resources},
    )


def _readable(facts: DeviceFacts, resources: Sequence[Resource]) -> bool:
    """Return whether every value is of the schema's type, as JSON encodes it for cedarpy."""
    posture = facts.posture
    strings = [facts.device_id, facts.state, facts.manufacturer, facts.model, facts.device_type, facts.site]
    strings += (posture.firmware_version, *facts.labels)
    strings += (text for resource in resources for text in (resource.name, resource.owner))
    booleans = {
        type(facts.certificate_valid),
        type(facts.revoked),
        type(posture.firmware_compliant),
        type(posture.end_of_life),
        type(posture.known_vulnerable),
        type(posture.attestation_fresh),
    }
    return (
        type(facts.labels) is tuple
        and set(map(type, strings)) == {str}
        and _unicode("".join(strings))
        and booleans == {bool}
        and type(facts.risk) is int
        and _LONG_MIN <= facts.risk <= _LONG_MAX
    )


def _readable_context(context: RequestContext) -> bool:
    hour, network = context.hour, context.network
    return type(hour) is int and _LONG_MIN <= hour <= _LONG_MAX and type(network) is str and _unicode(network)


def _unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()  # a lone surrogate is not a Unicode scalar value: cedarpy refuses it
    except UnicodeEncodeError:
        return False
    return True


# --- compiled policy sets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Cedar's answer for one request: allowed, the deciding policies and the errors, in policy order."""

    allowed: bool
    reasons: tuple[str, ...]  # Cedar's ids, ``policyN``
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Policy:
    cedar_id: str
    forbid: bool
    scope: tuple[Callable[[Request], bool], ...]
    conditions: tuple[tuple[bool, _Eval], ...]  # (is a `when`, body)

    def satisfied(self, request: Request) -> bool:
        for check in self.scope:
            if not check(request):
                return False
        for when, body in self.conditions:  # noqa: SIM110  # a loop: the hot path, no generator
            if _bool(body(request)) is not when:
                return False
        return True


@dataclass(frozen=True, slots=True)
class NotCompiled:
    """A policy set the evaluator does not cover: cedarpy decides it."""

    reason: str


@dataclass(frozen=True, slots=True)
class CompiledPolicySet:
    """A policy set as closures; :meth:`evaluate` answers as ``cedarpy.is_authorized`` would."""

    digest: str
    policies: tuple[_Policy, ...]

    def evaluate(self, request: Request) -> Evaluation:
        """Return Cedar's decision for ``request``."""
        permits: list[str] = []
        forbids: list[str] = []
        errors: list[str] = []
        for policy in self.policies:
            try:
                if policy.satisfied(request):
                    (forbids if policy.forbid else permits).append(policy.cedar_id)
            except _EvaluationError as exc:
                errors.append(f"error while evaluating policy `{policy.cedar_id}`: {exc}")
        if forbids:
            return Evaluation(False, tuple(forbids), tuple(errors))
        return Evaluation(bool(permits), tuple(permits), tuple(errors))


def compile_policy_set(policies: PolicySet) -> CompiledPolicySet | NotCompiled:
    """Return ``policies`` compiled, or :class:`NotCompiled` saying what the evaluator does not cover."""
    try:
        est = json.loads(cedarpy.policies_to_json_str(policies.text))
    except (ValueError, RecursionError) as exc:
        return NotCompiled(f"Cedar's JSON form of the set could not be read: {exc}")
    try:
        return CompiledPolicySet(policies.digest, _compile_set(est, len(policies.ids)))
    except _Unsupported as exc:
        return NotCompiled(str(exc))


def _compile_set(est: object, count: int) -> tuple[_Policy, ...]:
    if not isinstance(est, dict) or est.get("templates") or est.get("templateLinks"):
        raise _Unsupported("templates")
    static = est.get("staticPolicies")
    if not isinstance(static, dict) or sorted(static) != sorted(f"policy{i}" for i in range(count)):
        raise _Unsupported("Cedar's policy ids do not match the set's policies")
    return tuple(_compile_policy(f"policy{i}", static[f"policy{i}"]) for i in range(count))


def _compile_policy(cedar_id: str, policy: object) -> _Policy:
    if not isinstance(policy, dict) or policy.get("effect") not in ("permit", "forbid"):
        raise _Unsupported(f"{cedar_id}: unknown effect")
    scope = (
        _compile_scope("principal", policy.get("principal")),
        _compile_scope("action", policy.get("action")),
        _compile_scope("resource", policy.get("resource")),
    )
    conditions = policy.get("conditions")
    if not isinstance(conditions, list):
        raise _Unsupported(f"{cedar_id}: conditions")
    compiled = tuple(_compile_condition(condition) for condition in conditions)
    checks = tuple(check for check in scope if check is not None)
    return _Policy(cedar_id, policy["effect"] == "forbid", checks, compiled)


def _compile_condition(condition: object) -> tuple[bool, _Eval]:
    if not isinstance(condition, dict) or condition.get("kind") not in ("when", "unless"):
        raise _Unsupported("a condition that is neither `when` nor `unless`")
    return condition["kind"] == "when", _compile(condition.get("body"), 0)


def _compile_scope(var: str, constraint: object) -> Callable[[Request], bool] | None:
    """Return the check of one scope constraint (``None`` for ``All``); a scope never errors."""
    if not isinstance(constraint, dict):
        raise _Unsupported(f"{var} scope")
    op, get = constraint.get("op"), _SCOPE_VARS[var]
    if op == "All":
        return None
    if op == "==":
        uid = _scope_uid(constraint.get("entity"))
        return lambda request: get(request) == uid
    if op == "in" and "entities" in constraint:
        entities = constraint["entities"]
        if not isinstance(entities, list):
            raise _Unsupported(f"{var} scope")
        uids = tuple(_scope_uid(entity) for entity in entities)
        return lambda request: any(request.descends(get(request), uid) for uid in uids)
    if op == "in":
        uid = _scope_uid(constraint.get("entity"))
        return lambda request: request.descends(get(request), uid)
    if op == "is" and isinstance(constraint.get("entity_type"), str):
        return _compile_is_scope(get, constraint)
    raise _Unsupported(f"{var} scope {op!r}")


def _compile_is_scope(
    get: Callable[[Request], Uid], constraint: dict[str, object]
) -> Callable[[Request], bool]:
    entity_type = constraint["entity_type"]
    within = constraint.get("in")
    if within is None:
        return lambda request: get(request)[0] == entity_type
    if not isinstance(within, dict) or "entity" not in within:
        raise _Unsupported("an `is ... in` scope with a slot")
    uid = _scope_uid(within["entity"])
    return lambda request: get(request)[0] == entity_type and request.descends(get(request), uid)


def _scope_uid(entity: object) -> Uid:
    if isinstance(entity, dict) and isinstance(entity.get("type"), str) and isinstance(entity.get("id"), str):
        return (entity["type"], entity["id"])
    raise _Unsupported("a scope with a slot or a malformed entity")


_SCOPE_VARS: dict[str, Callable[[Request], Uid]] = {
    "principal": lambda request: request.principal,
    "action": lambda request: request.action,
    "resource": lambda request: request.resource,
}
_VARS: dict[str, _Eval] = {
    "principal": lambda request: request.principal,
    "action": lambda request: request.action,
    "resource": lambda request: request.resource,
    "context": lambda request: request.context,
}


# --- expressions -------------------------------------------------------------------------------------


def _compile(node: object, depth: int) -> _Eval:
    if depth > MAX_DEPTH:
        raise _Unsupported(f"an expression nested deeper than {MAX_DEPTH}")
    if not isinstance(node, dict) or len(node) != 1:
        raise _Unsupported(f"a malformed expression: {str(node)[:80]}")
    ((op, body),) = node.items()
    compiler = _COMPILERS.get(op)
    if compiler is None:
        raise _Unsupported(f"`{op}` (an extension function or an expression the evaluator lacks)")
    return compiler(body, depth + 1)


def _operand(body: object, name: str, depth: int) -> _Eval:
    if not isinstance(body, dict) or name not in body:
        raise _Unsupported(f"an operator without `{name}`")
    return _compile(body[name], depth)


def _pair(body: object, depth: int) -> tuple[_Eval, _Eval]:
    return _operand(body, "left", depth), _operand(body, "right", depth)


def _compile_value(body: object, _depth: int) -> _Eval:
    if isinstance(body, bool | str) or (type(body) is int and _LONG_MIN <= body <= _LONG_MAX):
        return lambda _request: body
    if isinstance(body, dict) and set(body) == {"__entity"}:
        uid = _scope_uid(body["__entity"])
        return lambda _request: uid
    raise _Unsupported(f"the literal {str(body)[:80]}")


def _compile_var(body: object, _depth: int) -> _Eval:
    if not isinstance(body, str) or body not in _VARS:
        raise _Unsupported(f"the variable {body!r}")
    return _VARS[body]


def _compile_not(body: object, depth: int) -> _Eval:
    arg = _operand(body, "arg", depth)
    return lambda request: not _bool(arg(request))


def _compile_neg(body: object, depth: int) -> _Eval:
    arg = _operand(body, "arg", depth)

    def evaluate(request: Request) -> object:
        value = _long(arg(request))
        if value == _LONG_MIN:
            raise _EvaluationError(f"integer overflow while attempting to negate the value `{value}`")
        return -value

    return evaluate


def _chain(op: str, body: object, depth: int) -> list[_Eval]:
    """Return the operands of a left-nested ``&&`` or ``||`` chain, flattened (it may be long)."""
    rights = [_operand(body, "right", depth)]
    left = body["left"] if isinstance(body, dict) and "left" in body else None
    while isinstance(left, dict) and len(left) == 1 and op in left:
        rights.append(_operand(left[op], "right", depth))
        left = left[op]["left"] if isinstance(left[op], dict) and "left" in left[op] else None
    return [_compile(left, depth), *reversed(rights)]


def _compile_and(body: object, depth: int) -> _Eval:
    operands = _chain("&&", body, depth)
    if len(operands) == 2:
        first, second = operands
        return lambda request: _bool(first(request)) and _bool(second(request))

    return lambda request: all(_bool(operand(request)) for operand in operands)


def _compile_or(body: object, depth: int) -> _Eval:
    operands = _chain("||", body, depth)
    if len(operands) == 2:
        first, second = operands
        return lambda request: _bool(first(request)) or _bool(second(request))

    return lambda request: any(_bool(operand(request)) for operand in operands)


def _compile_if(body: object, depth: int) -> _Eval:
    condition = _operand(body, "if", depth)
    then, otherwise = _operand(body, "then", depth), _operand(body, "else", depth)
    return lambda request: then(request) if _bool(condition(request)) else otherwise(request)


def _compile_eq(body: object, depth: int) -> _Eval:
    left, right = _pair(body, depth)
    return lambda request: _key(left(request)) == _key(right(request))


def _compile_ne(body: object, depth: int) -> _Eval:
    left, right = _pair(body, depth)
    return lambda request: _key(left(request)) != _key(right(request))


def _comparison(test: Callable[[int, int], bool]) -> Callable[[object, int], _Eval]:
    def compile_comparison(body: object, depth: int) -> _Eval:
        left, right = _pair(body, depth)

        def evaluate(request: Request) -> object:
            a, b = left(request), right(request)
            if type(a) is not int or type(b) is not int:
                raise _type_error("one of [long, datetime, duration]", b if type(a) is int else a)
            return test(a, b)

        return evaluate

    return compile_comparison


def _arithmetic(verb: str, apply: Callable[[int, int], int]) -> Callable[[object, int], _Eval]:
    def compile_arithmetic(body: object, depth: int) -> _Eval:
        left, right = _pair(body, depth)

        def evaluate(request: Request) -> object:
            a, b = _long(left(request)), _long(right(request))
            result = apply(a, b)
            if _LONG_MIN <= result <= _LONG_MAX:
                return result
            raise _EvaluationError(f"integer overflow while attempting to {verb} the values `{a}` and `{b}`")

        return evaluate

    return compile_arithmetic


def _compile_in(body: object, depth: int) -> _Eval:
    left, right = _pair(body, depth)

    def evaluate(request: Request) -> object:
        child, parent = _uid(left(request)), right(request)
        if type(parent) is tuple:
            return request.descends(child, parent)
        if type(parent) is frozenset:
            parents = [_uid(member) for member in parent]  # every member must be an entity (Cedar)
            return any(request.descends(child, uid) for uid in parents)
        raise _type_error("one of [set, (entity of type `any_entity_type`)]", parent)

    return evaluate


def _attribute(body: object, depth: int) -> tuple[_Eval, str]:
    left = _operand(body, "left", depth)
    attr = body.get("attr") if isinstance(body, dict) else None
    if not isinstance(attr, str):
        raise _Unsupported("an attribute without a name")
    return left, attr


def _compile_get(body: object, depth: int) -> _Eval:
    left, attr = _attribute(body, depth)

    def evaluate(request: Request) -> object:
        target = left(request)
        if type(target) is dict:
            if attr in target:
                return target[attr]
            raise _EvaluationError(f"record does not have the attribute `{attr}`")
        uid = _attributed(target)
        entity = request.entity(uid)
        if entity is None:
            raise _EvaluationError(f"entity `{_show(uid)}` does not exist")
        if attr in entity.attrs:
            return entity.attrs[attr]
        raise _EvaluationError(f"`{_show(uid)}` does not have the attribute `{attr}`")

    return evaluate


def _compile_has(body: object, depth: int) -> _Eval:
    left, attr = _attribute(body, depth)

    def evaluate(request: Request) -> object:
        target = left(request)
        if type(target) is dict:
            return attr in target
        entity = request.entity(_attributed(target))
        return entity is not None and attr in entity.attrs

    return evaluate


def _attributed(value: object) -> Uid:
    if type(value) is tuple:
        return value
    raise _type_error("one of [record, (entity of type `any_entity_type`)]", value)


def _compile_like(body: object, depth: int) -> _Eval:
    left = _operand(body, "left", depth)
    pattern = body.get("pattern") if isinstance(body, dict) else None
    if not isinstance(pattern, list):
        raise _Unsupported("a `like` without a pattern")
    segments = _glob_segments(pattern)

    def evaluate(request: Request) -> object:
        text = left(request)
        if type(text) is not str:
            raise _type_error("string", text)
        return _glob(segments, text)

    return evaluate


def _glob_segments(pattern: Iterable[object]) -> tuple[str, ...]:
    """Return a ``like`` pattern's literal text between its wildcards (one more piece than wildcards)."""
    segments: list[str] = []
    current: list[str] = []
    for element in pattern:
        if element == "Wildcard":
            segments.append("".join(current))
            current = []
        elif isinstance(element, dict) and isinstance(element.get("Literal"), str) and len(element) == 1:
            current.append(element["Literal"])
        else:
            raise _Unsupported(f"the pattern element {str(element)[:80]}")
    return (*segments, "".join(current))


def _glob(segments: tuple[str, ...], text: str) -> bool:
    """Match Cedar's ``like``: each piece at its leftmost place (linear; no regex backtracking)."""
    if len(segments) == 1:
        return text == segments[0]
    first, *middle, last = segments
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in middle:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _compile_is(body: object, depth: int) -> _Eval:
    left = _operand(body, "left", depth)
    entity_type = body.get("entity_type") if isinstance(body, dict) else None
    if not isinstance(entity_type, str):
        raise _Unsupported("an `is` without a type")
    within = _operand(body, "in", depth) if isinstance(body, dict) and "in" in body else None

    def evaluate(request: Request) -> object:
        uid = _uid(left(request))
        if uid[0] != entity_type:
            return False
        if within is None:
            return True
        parent = within(request)
        if type(parent) is frozenset:
            parents = [_uid(member) for member in parent]  # every member must be an entity (Cedar)
            return any(request.descends(uid, member) for member in parents)
        return request.descends(uid, _uid(parent))

    return evaluate


def _compile_set_literal(body: object, depth: int) -> _Eval:
    if not isinstance(body, list):
        raise _Unsupported("a malformed set")
    elements = tuple(_compile(element, depth) for element in body)
    return lambda request: frozenset(_key(element(request)) for element in elements)


def _compile_record(body: object, depth: int) -> _Eval:
    if not isinstance(body, dict):
        raise _Unsupported("a malformed record")
    fields = tuple((name, _compile(value, depth)) for name, value in body.items())
    return lambda request: {name: value(request) for name, value in fields}


def _set_operation(
    test: Callable[[frozenset[object], frozenset[object]], bool],
) -> Callable[[object, int], _Eval]:
    def compile_operation(body: object, depth: int) -> _Eval:
        left, right = _pair(body, depth)
        return lambda request: test(_set(left(request)), _set(right(request)))

    return compile_operation


def _compile_contains(body: object, depth: int) -> _Eval:
    left, right = _pair(body, depth)
    return lambda request: _key(right(request)) in _set(left(request))


def _compile_is_empty(body: object, depth: int) -> _Eval:
    arg = _operand(body, "arg", depth)
    return lambda request: not _set(arg(request))


_COMPILERS: dict[str, Callable[[object, int], _Eval]] = {
    "Value": _compile_value,
    "Var": _compile_var,
    "!": _compile_not,
    "neg": _compile_neg,
    "&&": _compile_and,
    "||": _compile_or,
    "if-then-else": _compile_if,
    "==": _compile_eq,
    "!=": _compile_ne,
    "<": _comparison(lambda a, b: a < b),
    "<=": _comparison(lambda a, b: a <= b),
    ">": _comparison(lambda a, b: a > b),
    ">=": _comparison(lambda a, b: a >= b),
    "+": _arithmetic("add", lambda a, b: a + b),
    "-": _arithmetic("subtract", lambda a, b: a - b),
    "*": _arithmetic("multiply", lambda a, b: a * b),
    "in": _compile_in,
    ".": _compile_get,
    "has": _compile_has,
    "like": _compile_like,
    "is": _compile_is,
    "Set": _compile_set_literal,
    "Record": _compile_record,
    "contains": _compile_contains,
    "containsAll": _set_operation(lambda a, b: b <= a),
    "containsAny": _set_operation(lambda a, b: not a.isdisjoint(b)),
    "isEmpty": _compile_is_empty,
}
