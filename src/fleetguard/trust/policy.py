"""A fleet policy set: Cedar text, parsed and validated against the schema, every policy with an ``@id``.

:func:`parse_policy_set` is the only way to get a :class:`PolicySet`, so every set the PDP holds has
passed these checks (fail closed):

1. at most :data:`MAX_POLICY_BYTES` and :data:`MAX_POLICIES`;
2. at least one policy: an empty set is refused (:class:`PolicySetEmpty`), never read as "allow all";
3. every policy parses, and has a unique ``@id("...")`` (decisions cite these ids);
4. the whole set validates against :data:`fleetguard.trust.schema.SCHEMA`: an unknown attribute,
   entity type or action, or a type error, is refused.

A failure raises :class:`PolicyInvalid` with the line and column (see :mod:`fleetguard.trust.source`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import cedarpy

from fleetguard.trust.errors import PolicyInvalid, PolicySetEmpty
from fleetguard.trust.schema import cedar_schema
from fleetguard.trust.source import (
    Statement,
    annotation_id,
    line_column,
    locate_failure,
    locate_name,
    locate_start,
    split_statements,
)

__all__ = ["MAX_POLICIES", "MAX_POLICY_BYTES", "PolicySet", "parse_policy_set"]

MAX_POLICY_BYTES = 256 * 1024
MAX_POLICIES = 1000
_MAX_ID = 128
_EFFECT = re.compile(r"^\s*(permit|forbid)\b", re.MULTILINE)
_FOR_POLICY = re.compile(r"^for policy `[^`]*`, ")
_NAMED = re.compile(r"(?:attribute|action|entity type|type) `([^`]+)`")


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A validated policy set: its text, its policy ids in order, a digest, and Cedar's parsed handle."""

    text: str
    ids: tuple[str, ...]
    statements: tuple[str, ...] = field(repr=False)
    digest: str
    handle: cedarpy.PolicySet = field(compare=False, repr=False)

    def policy_id(self, cedar_id: str) -> str:
        """Return the ``@id`` of Cedar's generated id ``policyN`` (Cedar numbers policies in order)."""
        if cedar_id.startswith("policy") and cedar_id[6:].isdigit() and int(cedar_id[6:]) < len(self.ids):
            return self.ids[int(cedar_id[6:])]
        return cedar_id


def parse_policy_set(text: str) -> PolicySet:
    """Return ``text`` as a validated :class:`PolicySet`; raise ``PolicyInvalid`` or ``PolicySetEmpty``."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise PolicyInvalid(f"the policy set is larger than {MAX_POLICY_BYTES} bytes", line=1, column=1)
    if "\x00" in text:
        line, column = line_column(text, text.index("\x00"))
        raise PolicyInvalid("the policy set contains a NUL character", line=line, column=column)
    statements = split_statements(text)
    if not statements:
        raise PolicySetEmpty()
    if len(statements) > MAX_POLICIES:
        line, column = line_column(text, locate_start(statements[MAX_POLICIES]))
        raise PolicyInvalid(f"more than {MAX_POLICIES} policies", line=line, column=column)
    ids = tuple(_checked_id(text, statement, index) for index, statement in enumerate(statements))
    _require_unique(text, statements, ids)
    _require_valid(text, statements, ids)
    handle = cedarpy.PolicySet.from_str(text)
    if len(handle) != len(statements):  # our statement split and Cedar's must agree
        raise PolicyInvalid(
            f"Cedar reads {len(handle)} policies where fleetguard reads {len(statements)}", line=1, column=1
        )
    bodies = tuple(_without_annotations(statement.text) for statement in statements)
    return PolicySet(text, ids, bodies, hashlib.sha256(text.encode()).hexdigest(), handle)


def _checked_id(text: str, statement: Statement, index: int) -> str:
    message = _parse_failure(statement.text)
    if message is not None:
        line, column = line_column(text, locate_failure(statement, _parse_failure))
        raise PolicyInvalid(f"parse error: {message}", line=line, column=column)
    found = annotation_id(statement)
    if found is None:
        line, column = line_column(
            text, locate_name(statement, "permit" if "permit" in statement.text else "forbid")
        )
        raise PolicyInvalid(f'policy {index + 1} has no @id("...") annotation', line=line, column=column)
    policy_id, offset = found
    # Cedar decodes escapes (`\u{41}` is `A`): an id with one could repeat another id unnoticed.
    if not policy_id or len(policy_id) > _MAX_ID or not policy_id.isprintable() or "\\" in policy_id:
        line, column = line_column(text, offset)
        raise PolicyInvalid(
            f"a policy id must be 1-{_MAX_ID} printable characters, without escapes", line=line, column=column
        )
    return policy_id


def _require_unique(text: str, statements: list[Statement], ids: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for statement, policy_id in zip(statements, ids, strict=True):
        if policy_id in seen:
            found = annotation_id(statement)
            line, column = line_column(text, statement.start if found is None else found[1])
            raise PolicyInvalid(f"policy id {policy_id!r} is used twice", line=line, column=column)
        seen.add(policy_id)


def _require_valid(text: str, statements: list[Statement], ids: tuple[str, ...]) -> None:
    result = cedarpy.validate_policies(text, cedar_schema())
    if result.validation_passed:
        return
    if not result.errors:
        raise PolicyInvalid("the policy set does not validate against the schema", line=1, column=1)
    # Cedar lists its errors in no fixed order: report the first policy's, the one that names what is
    # wrong first (`unrecognized action` rather than `unable to find an applicable action`), every run.
    index, _, offset, message = min(_placed(error, statements) for error in result.errors)
    line, column = line_column(text, offset)
    raise PolicyInvalid(message, line=line, column=column, policy_id=ids[index] if index < len(ids) else None)


def _placed(error: cedarpy.ValidationError, statements: list[Statement]) -> tuple[int, bool, int, str]:
    """Return a validation error's sort key: policy index, names nothing, source offset, message."""
    index = _index_of(error.policy_id, len(statements))
    statement = statements[0 if index is None else index]
    named = _NAMED.search(error.error)
    offset = locate_start(statement)
    if named is not None:
        offset = locate_name(statement, named.group(1).split("::")[-1].strip('"'))
    order = len(statements) if index is None else index
    return order, named is None, offset, _FOR_POLICY.sub("", error.error)


def _without_annotations(text: str) -> str:
    """Return a statement's code from its effect keyword on (comments and annotations dropped)."""
    match = _EFFECT.search(text)
    return text[match.start() :] if match else text


def _index_of(cedar_id: str, count: int) -> int | None:
    if cedar_id.startswith("policy") and cedar_id[6:].isdigit() and int(cedar_id[6:]) < count:
        return int(cedar_id[6:])
    return None


def _parse_failure(text: str) -> str | None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        return str(exc)
    return None
