"""Zero-touch rules: what happens to a device that presents a valid factory certificate.

Theory of operation. A rule is keyed by manufacturer (the trust-store name its chain verified to)
and model (read from the factory certificate, :mod:`fleetguard.enroll.identity`); a rule for model
``*`` covers every model of the manufacturer that has no rule of its own. There is no default rule:
a manufacturer and model without one is refused (an empty policy is an error, not "allow").

:func:`decide` is the whole policy, as a table over the rule and what the inventory knows:

===========================  ===============================  ===========================
rule                         device in the inventory          verdict
===========================  ===============================  ===========================
none                         any                              refuse
any                          of another model                 refuse
any                          quarantined or decommissioned    refuse
auto                         yes                              enroll
auto, register_unknown       no                               register, then enroll
auto                         no                               refuse
approve                      yes or no                        queue for an operator
===========================  ===============================  ===========================

An operator's approval of a queued request registers an unknown device: the approval is the claim.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetguard.enroll.errors import EnrollmentInputRejected, EnrollmentNotFound
from fleetguard.enroll.identity import MAX_MODEL, FactoryIdentity
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device
from fleetguard.store.database import Database
from fleetguard.store.models import EnrollmentRuleRow

__all__ = [
    "ANY_MODEL",
    "Decision",
    "EnrollmentRule",
    "EnrollmentRules",
    "RuleMode",
    "Verdict",
    "decide",
    "device_refusal",
    "validate_manufacturer",
]

ANY_MODEL = "*"
"""The model of a rule that covers every model of its manufacturer without a rule of its own."""

_MAX_MANUFACTURER = 64  # fleetguard.pki.manufacturer: trust-store names are 1-64 printable characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REFUSED_STATES = frozenset({State.QUARANTINED, State.DECOMMISSIONED})


class RuleMode(enum.StrEnum):
    """What a rule does with a device that has a valid factory certificate."""

    AUTO = "auto"
    APPROVE = "approve"


class Verdict(enum.StrEnum):
    """The outcome of :func:`decide`."""

    ENROLL = "enroll"
    REGISTER = "register"
    QUEUE = "queue"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and the reason for it (recorded in the event log)."""

    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class EnrollmentRule:
    """One zero-touch rule."""

    manufacturer: str
    model: str
    mode: RuleMode
    register_unknown: bool
    created_at: dt.datetime
    updated_at: dt.datetime


def decide(rule: EnrollmentRule | None, identity: FactoryIdentity, device: Device | None) -> Decision:
    """Return what to do with the device ``identity`` names (``device``: its inventory record, if any)."""
    refusal = _refusal(rule, identity, device)
    if refusal is not None or rule is None:
        return Decision(Verdict.REFUSE, refusal or "no rule")
    name = f"rule {rule.manufacturer}/{rule.model}"
    match rule.mode:
        case RuleMode.APPROVE:
            return Decision(Verdict.QUEUE, f"{name} needs an operator's approval")
        case RuleMode.AUTO if device is not None:
            return Decision(Verdict.ENROLL, f"{name}: the serial is registered")
        case RuleMode.AUTO if rule.register_unknown:
            return Decision(Verdict.REGISTER, f"{name} registers unknown devices")
        case RuleMode.AUTO:
            return Decision(
                Verdict.REFUSE, f"serial {identity.serial!r} of {identity.manufacturer!r} is not registered"
            )


def _refusal(rule: EnrollmentRule | None, identity: FactoryIdentity, device: Device | None) -> str | None:
    """Return why the table refuses whatever the rule's mode, or None."""
    if rule is None:
        return f"no enrollment rule for {identity.manufacturer!r} model {identity.model!r}"
    if device is None:
        return None
    return device_refusal(device, identity.model)


def device_refusal(device: Device, model: str | None) -> str | None:
    """Return why ``device`` may not enroll (as a device of ``model``, if given), or None."""
    if model is not None and device.model and device.model != model:
        return f"the factory certificate is for model {model!r}; the inventory records {device.model!r}"
    if device.state in _REFUSED_STATES:
        return f"device {device.id!r} is {device.state}"
    return None


def validate_manufacturer(name: str) -> str:
    """Return ``name`` if it is 1-64 printable characters; raise ``EnrollmentInputRejected``."""
    if not 0 < len(name) <= _MAX_MANUFACTURER or not name.isprintable() or not name.strip():
        raise EnrollmentInputRejected(f"manufacturer name {name[:_MAX_MANUFACTURER]!r} is not 1-64 printable")
    return name


def _validate_model(model: str) -> str:
    if not 0 < len(model) <= MAX_MODEL or _CONTROL.search(model) or not model.strip():
        raise EnrollmentInputRejected(f"model {model[:80]!r} must be 1-{MAX_MODEL} characters, or '*'")
    return model


class EnrollmentRules:
    """The zero-touch rules in ``database``; each change is in ``log``."""

    def __init__(self, database: Database, log: EventLog) -> None:
        self._db = database
        self._log = log

    def set(
        self,
        manufacturer: str,
        model: str,
        mode: RuleMode,
        *,
        register_unknown: bool,
        actor: str,
        now: dt.datetime,
    ) -> EnrollmentRule:
        """Create or replace the rule for ``manufacturer`` and ``model``; return it.

        Raises ``EnrollmentInputRejected`` for a bad name, or ``register_unknown`` on an approve rule.
        """
        validate_manufacturer(manufacturer)
        _validate_model(model)
        if register_unknown and mode is not RuleMode.AUTO:
            raise EnrollmentInputRejected("register_unknown applies to auto rules only")
        with self._db.transaction() as session:
            row = session.get(EnrollmentRuleRow, (manufacturer, model))
            if row is None:
                row = EnrollmentRuleRow(manufacturer=manufacturer, model=model, created_at=now)
                session.add(row)
            row.mode = mode.value
            row.register_unknown = register_unknown
            row.updated_at = now
            self._event(session, "enroll.rule-set", row, actor, now)
            return _rule(row)

    def match(self, manufacturer: str, model: str) -> EnrollmentRule | None:
        """Return the rule for ``model`` of ``manufacturer``, else its ``*`` rule, else None."""
        with self._db.reading() as session:
            row = session.get(EnrollmentRuleRow, (manufacturer, model))
            if row is None:
                row = session.get(EnrollmentRuleRow, (manufacturer, ANY_MODEL))
            return None if row is None else _rule(row)

    def rules(self) -> list[EnrollmentRule]:
        """Return every rule, by manufacturer and model."""
        query = select(EnrollmentRuleRow).order_by(EnrollmentRuleRow.manufacturer, EnrollmentRuleRow.model)
        with self._db.reading() as session:
            return [_rule(row) for row in session.execute(query).scalars()]

    def remove(self, manufacturer: str, model: str, *, actor: str, now: dt.datetime) -> EnrollmentRule:
        """Delete the rule; return it. Raises ``EnrollmentNotFound``."""
        with self._db.transaction() as session:
            row = session.get(EnrollmentRuleRow, (manufacturer, model))
            if row is None:
                raise EnrollmentNotFound(f"no enrollment rule for {manufacturer[:64]!r} model {model[:80]!r}")
            rule = _rule(row)
            session.delete(row)
            self._event(session, "enroll.rule-removed", row, actor, now)
            return rule

    def _event(
        self, session: Session, action: str, row: EnrollmentRuleRow, actor: str, now: dt.datetime
    ) -> None:
        self._log.append(
            session,
            NewEvent(actor=actor, subject=f"manufacturer:{row.manufacturer}", action=action,
                     data={"model": row.model, "mode": row.mode, "register_unknown": row.register_unknown}),
            now=now,
        )  # fmt: skip


def _rule(row: EnrollmentRuleRow) -> EnrollmentRule:
    return EnrollmentRule(
        manufacturer=row.manufacturer, model=row.model, mode=RuleMode(row.mode),
        register_unknown=row.register_unknown, created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip
