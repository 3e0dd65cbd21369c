"""The trust service: the policy in force, the facts decisions use, decisions, and signals.

Theory of operation. The policy in force is the newest row of ``trust_policy_sets`` (version 0, the
shipped default, when there is none). Applying a policy validates it first (nothing is stored if it
is invalid), stores a new version and appends ``trust.policy_applied`` in the same transaction.

A device's :class:`DeviceFacts` are assembled from the inventory (state, type, site, labels,
firmware), the PKI (a valid unexpired certificate; a revoked one and nothing valid), the firmware
policy of the set in force (posture), and the signals other capabilities report (risk, known
vulnerable firmware, attestation time). :meth:`TrustService.access` decides every candidate request
of a device and returns an :class:`AccessPlan` for the enforcement points.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from sqlalchemy import bindparam, func, select

from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.errors import DeviceNotFound
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device
from fleetguard.inventory.service import Inventory, device_event_subject
from fleetguard.pki.service import CertificateStatus, IdentityStatus
from fleetguard.store.database import Database
from fleetguard.store.driver import DriverRow, Prepared
from fleetguard.store.models import CertificateRow, DeviceRow, DeviceSignalRow, EnforcementRow, PolicySetRow
from fleetguard.trust.diff import OutcomeChange, diff_policies
from fleetguard.trust.errors import PolicyConflict, PolicyVersionNotFound, TrustInputInvalid
from fleetguard.trust.model import (
    Action,
    Decision,
    DeviceFacts,
    Outcome,
    RequestContext,
    Resource,
    ResourceKind,
)
from fleetguard.trust.pdp import PolicyDecisionPoint
from fleetguard.trust.policy import PolicySet, parse_policy_set
from fleetguard.trust.posture import FirmwarePolicy, posture_of
from fleetguard.trust.schema import DEFAULT_POLICIES

__all__ = [
    "ATTESTATION_FRESH_FOR",
    "AccessPlan",
    "EnforcementState",
    "IdentitySource",
    "IdentityStatus",
    "StoredPolicy",
    "TopicGrant",
    "TrustService",
]

ATTESTATION_FRESH_FOR = dt.timedelta(hours=24)
_MAX_REASON = 1000
_CLOCK_SKEW = dt.timedelta(minutes=5)

_DEVICES = DeviceRow.__table__
_SIGNALS = DeviceSignalRow.__table__
_CERTIFICATES = CertificateRow.__table__
# One device's inventory facts, its signals (none: a row of NULLs) and the policy version in force.
_DEVICE_INPUTS = Prepared(
    select(
        _DEVICES.c.state, _DEVICES.c.manufacturer, _DEVICES.c.model, _DEVICES.c.device_type_id,
        _DEVICES.c.site_id, _DEVICES.c.labels, _DEVICES.c.firmware_version,
        _SIGNALS.c.risk, _SIGNALS.c.known_vulnerable, _SIGNALS.c.attested_at,
        select(func.max(PolicySetRow.version)).scalar_subquery().label("policy_version"),
    )
    .select_from(_DEVICES.outerjoin(_SIGNALS, _SIGNALS.c.device_id == _DEVICES.c.id))
    .where(_DEVICES.c.id == bindparam("device_id"))
)  # fmt: skip
_DEVICE_CERTIFICATES = Prepared(
    select(_CERTIFICATES.c.status, _CERTIFICATES.c.not_after).where(
        _CERTIFICATES.c.device_id == bindparam("device_id")
    )
)


class IdentitySource(Protocol):
    """The PKI's view of device identities."""

    def identity_status(self, device_ids: Sequence[str], *, now: dt.datetime) -> Mapping[str, IdentityStatus]:
        """Return the status of each device that has any certificate."""
        ...


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """A version of the fleet policy: Cedar set, firmware policy, who applied it and when."""

    version: int
    policies: PolicySet
    firmware: FirmwarePolicy
    actor: str
    reason: str
    created_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class TopicGrant:
    """An allowed action on an MQTT topic filter."""

    action: Action
    topic_filter: str


@dataclass(frozen=True, slots=True)
class AccessPlan:
    """What the enforcement points must hold for one device, with the decisions behind it."""

    device_id: str
    connect: Outcome
    grants: tuple[TopicGrant, ...]
    decisions: tuple[Decision, ...]
    policy_version: int

    @property
    def denied_everything(self) -> bool:
        """Return whether the device may do nothing at all (quarantine at the enforcement points)."""
        return self.connect is Outcome.DENY and not self.grants


@dataclass(frozen=True, slots=True)
class EnforcementState:
    """A device's row of ``trust_enforcement``: the plan last sent to the enforcement points, and
    whether they confirmed it (``enforced``) or not (``failed``, retried at ``next_attempt_at``)."""

    status: str
    policy_version: int | None
    attempts: int
    next_attempt_at: dt.datetime | None
    detail: str
    updated_at: dt.datetime


class TrustService:
    """Policies, facts and decisions over one installation's store."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        identities: IdentitySource,
        *,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], object] | None = None,
    ) -> None:
        self._db, self._log, self._inventory, self._identities = database, log, inventory, identities
        self._clock, self._on_commit = clock, on_commit
        self._lock = threading.Lock()
        self._current = self._load()
        self._pdp = PolicyDecisionPoint(self._current.policies)

    # -- policies -------------------------------------------------------------------------------

    def policy(self) -> StoredPolicy:
        """Return the policy in force (another process's apply is seen: the version is re-read)."""
        with self._db.reading() as session:
            latest = session.scalar(select(func.max(PolicySetRow.version))) or 0
        return self._in_force(latest)

    def history(self, *, limit: int = 50) -> list[StoredPolicy]:
        """Return stored versions, newest first (the default is version 0, never stored)."""
        with self._db.reading() as session:
            rows = session.scalars(
                select(PolicySetRow).order_by(PolicySetRow.version.desc()).limit(limit)
            ).all()
            return [_stored(row) for row in rows]

    def version(self, version: int) -> StoredPolicy:
        """Return one stored version; raise ``PolicyVersionNotFound``."""
        if version == 0:
            return _default()
        with self._db.reading() as session:
            row = session.get(PolicySetRow, version)
            if row is None:
                raise PolicyVersionNotFound(f"no policy version {version}")
            return _stored(row)

    def apply(
        self,
        text: str,
        *,
        actor: str,
        reason: str = "",
        firmware: FirmwarePolicy | None = None,
        expected_version: int | None = None,
    ) -> StoredPolicy:
        """Validate and apply a policy set; return the new version.

        ``firmware`` defaults to the firmware policy in force. Raises ``PolicyInvalid``,
        ``PolicySetEmpty``, and ``PolicyConflict`` when ``expected_version`` is not the version in force.
        """
        policies = parse_policy_set(text)  # raises before anything is stored
        if len(reason) > _MAX_REASON:
            raise TrustInputInvalid(f"the reason is longer than {_MAX_REASON} characters")
        firmware = firmware or self.policy().firmware
        now = self._clock()
        with self._db.transaction() as session:
            current = session.scalar(select(func.max(PolicySetRow.version))) or 0
            if expected_version is not None and expected_version != current:
                raise PolicyConflict(
                    f"policy version {current} is in force, not {expected_version}",
                    hint="review `fleetguard policy diff` against the current version and apply again",
                )
            row = PolicySetRow(
                version=current + 1, text=text, digest=policies.digest,
                firmware_minimum=dict(firmware.minimum), end_of_life=sorted(firmware.end_of_life),
                actor=actor, reason=reason, created_at=now,
            )  # fmt: skip
            session.add(row)
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject="trust:policy",
                    action="trust.policy_applied",
                    reason=reason,
                    data={
                        "version": current + 1,
                        "digest": policies.digest,
                        "policies": ",".join(policies.ids)[:2000],
                    },
                ),
                now=now,
            )
        publish_committed(self._on_commit)
        return self.policy()

    def diff(
        self,
        text: str,
        *,
        firmware: FirmwarePolicy | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[OutcomeChange]:
        """Return the decisions ``text`` would change across the fleet; nothing is applied."""
        proposed = parse_policy_set(text)
        current = self.policy()
        now = self._clock()
        context = RequestContext.at(now)
        before = self._fleet_facts(current.firmware, now)
        if firmware is None or firmware == current.firmware:
            return list(diff_policies(current.policies, proposed, before, context, progress=progress))
        after = self._fleet_facts(firmware, now)
        changes = [
            change
            for old, new in zip(before, after, strict=True)
            for change in _changes(current.policies, proposed, old, new, context)
        ]
        if progress is not None:
            progress(len(before))
        return changes

    # -- facts and decisions --------------------------------------------------------------------

    def facts(self, device_id: str, *, now: dt.datetime | None = None) -> DeviceFacts:
        """Return the inputs of decisions about ``device_id``; raise ``DeviceNotFound``."""
        return self._device_facts(device_id, now or self._clock())[1]

    def decide(
        self,
        device_id: str,
        action: Action,
        resource: Resource,
        *,
        now: dt.datetime | None = None,
        network: str = "",
    ) -> Decision:
        """Decide one request of ``device_id``."""
        moment = now or self._clock()
        _, facts = self._device_facts(device_id, moment)
        return self._pdp.decide(facts, action, resource, RequestContext.at(moment, network))

    def access(self, device_id: str, *, now: dt.datetime | None = None) -> AccessPlan:
        """Decide every candidate request of the device; return what enforcement must hold."""
        moment = now or self._clock()
        current, facts = self._device_facts(device_id, moment)
        decisions = tuple(self._pdp.decide_all(facts, RequestContext.at(moment)))
        connect = decisions[0].outcome
        grants = tuple(
            TopicGrant(decision.action, decision.resource.name)
            for decision in decisions[1:]
            if decision.outcome is Outcome.ALLOW and decision.resource.kind is not ResourceKind.BROKER
        )
        if connect is Outcome.DENY:
            grants = ()  # a device that may not connect holds no topic grant either
        return AccessPlan(device_id, connect, grants, decisions, current.version)

    def enforcement(self, device_id: str) -> EnforcementState | None:
        """Return what enforcement last recorded for ``device_id``, or ``None`` if it never ran for it."""
        with self._db.reading() as session:
            row = session.get(EnforcementRow, device_id)
            if row is None:
                return None
            version = row.desired.get("policy_version")
            return EnforcementState(
                row.status, version if isinstance(version, int) else None, row.attempts,
                row.next_attempt_at, row.detail, row.updated_at,
            )  # fmt: skip

    # -- signals --------------------------------------------------------------------------------

    def report_signals(
        self,
        device_id: str,
        *,
        actor: str,
        risk: int | None = None,
        known_vulnerable: bool | None = None,
        attested_at: dt.datetime | None = None,
        reason: str = "",
    ) -> None:
        """Record new risk, vulnerability or attestation facts for a device; decisions follow at once."""
        if risk is not None and not 0 <= risk <= 100:
            raise TrustInputInvalid(f"risk must be 0-100, not {risk}")
        self._inventory.get(device_id)
        now = self._clock()
        if attested_at is not None and attested_at > now + _CLOCK_SKEW:
            raise TrustInputInvalid(
                "an attestation time in the future would keep the attestation fresh forever"
            )
        with self._db.transaction() as session:
            row = session.get(DeviceSignalRow, device_id)
            if row is None:
                row = DeviceSignalRow(device_id=device_id, risk=0, known_vulnerable=False, updated_at=now)
                session.add(row)
            if risk is not None:
                row.risk = risk
            if known_vulnerable is not None:
                row.known_vulnerable = known_vulnerable
            if attested_at is not None:
                row.attested_at = attested_at
            row.updated_at = now
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject=device_event_subject(device_id),
                    action="trust.signals_changed",
                    reason=reason[:_MAX_REASON],
                    data={
                        "risk": row.risk,
                        "known_vulnerable": row.known_vulnerable,
                        "attested_at": None if row.attested_at is None else row.attested_at.isoformat(),
                    },
                ),
                now=now,
            )
        publish_committed(self._on_commit)

    # -- internals ------------------------------------------------------------------------------

    def _in_force(self, latest: int) -> StoredPolicy:
        """Return the policy in force, reloaded (and given to the PDP) when ``latest`` is a new version."""
        with self._lock:
            if latest != self._current.version:
                self._current = self._load()
                self._pdp.use(self._current.policies)
            return self._current

    def _device_facts(self, device_id: str, now: dt.datetime) -> tuple[StoredPolicy, DeviceFacts]:
        """Return the policy in force and the device's facts, read in one transaction."""
        with self._db.driver_reading() as reading:
            row = reading.first(_DEVICE_INPUTS, {"device_id": device_id})
            if row is None:
                raise DeviceNotFound(device_id)
            certificates = reading.rows(_DEVICE_CERTIFICATES, {"device_id": device_id})
        current = self._in_force(row.policy_version or 0)
        facts = _facts(_inputs_of_row(device_id, row), _identity(certificates, now), current.firmware, now)
        return current, facts

    def _fleet_facts(self, firmware: FirmwarePolicy, now: dt.datetime) -> list[DeviceFacts]:
        facts: list[DeviceFacts] = []
        batch: list[Device] = []
        for device in self._inventory.iterate():
            batch.append(device)
            if len(batch) == 1000:
                facts += self._facts_of(batch, firmware, now)
                batch = []
        return facts + (self._facts_of(batch, firmware, now) if batch else [])

    def _facts_of(
        self, devices: Sequence[Device], firmware: FirmwarePolicy, now: dt.datetime
    ) -> list[DeviceFacts]:
        ids = [device.id for device in devices]
        identities = self._identities.identity_status(ids, now=now)
        with self._db.reading() as session:
            signals = {
                row.device_id: row
                for row in session.scalars(select(DeviceSignalRow).where(DeviceSignalRow.device_id.in_(ids)))
            }
        return [
            _facts(
                _inputs_of_device(device, signals.get(device.id)), identities.get(device.id), firmware, now
            )
            for device in devices
        ]

    def _load(self) -> StoredPolicy:
        with self._db.reading() as session:
            row = session.scalars(select(PolicySetRow).order_by(PolicySetRow.version.desc()).limit(1)).first()
            return _default() if row is None else _stored(row)


def _changes(
    current: PolicySet, proposed: PolicySet, old: DeviceFacts, new: DeviceFacts, context: RequestContext
) -> Iterator[OutcomeChange]:
    before = PolicyDecisionPoint(current, cache_size=16, entity_cache_size=2).decide_all(old, context)
    after = PolicyDecisionPoint(proposed, cache_size=16, entity_cache_size=2).decide_all(new, context)
    for a, b in zip(before, after, strict=True):
        if a.outcome is not b.outcome:
            yield OutcomeChange(
                old.device_id, a.action, a.resource.name, a.outcome, b.outcome, a.policies, b.policies
            )


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What a device's facts are made of: its inventory record and its signals (the defaults when it
    has no signals row)."""

    device_id: str
    state: State
    manufacturer: str
    model: str
    device_type: str | None
    site: str | None
    labels: Mapping[str, str]
    firmware_version: str
    risk: int = 0
    known_vulnerable: bool = False
    attested_at: dt.datetime | None = None


def _inputs_of_device(device: Device, signals: DeviceSignalRow | None) -> _Inputs:
    inputs = _Inputs(
        device.id, device.state, device.manufacturer, device.model, device.device_type, device.site,
        device.labels, device.firmware_version,
    )  # fmt: skip
    if signals is None:
        return inputs
    return replace(
        inputs, risk=signals.risk, known_vulnerable=signals.known_vulnerable, attested_at=signals.attested_at
    )


def _inputs_of_row(device_id: str, row: DriverRow) -> _Inputs:
    """Return the inputs in a row of ``_DEVICE_INPUTS`` (its signal columns are NULL without signals)."""
    inputs = _Inputs(
        device_id, State(row.state), row.manufacturer, row.model, row.device_type_id, row.site_id,
        dict(row.labels or {}), row.firmware_version,
    )  # fmt: skip
    if row.risk is None:
        return inputs
    return replace(
        inputs, risk=row.risk, known_vulnerable=bool(row.known_vulnerable), attested_at=row.attested_at
    )


def _identity(certificates: Sequence[DriverRow], now: dt.datetime) -> IdentityStatus | None:
    """Return a device's identity from its certificates' (status, not_after), ``None`` without any:
    the rule of ``CertificateService.identity_status``."""
    usable = revoked = False
    for status, not_after in certificates:
        if status == CertificateStatus.REVOKED.value:
            revoked = True
        elif not_after > now:
            usable = True
    if not (usable or revoked):
        return None
    return IdentityStatus(usable, revoked and not usable)


def _facts(
    inputs: _Inputs, identity: IdentityStatus | None, firmware: FirmwarePolicy, now: dt.datetime
) -> DeviceFacts:
    device_type = inputs.device_type or ""
    attested = inputs.attested_at is not None and now - inputs.attested_at <= ATTESTATION_FRESH_FOR
    posture = posture_of(
        firmware, device_type, inputs.firmware_version,
        known_vulnerable=inputs.known_vulnerable, attestation_fresh=attested,
    )  # fmt: skip
    return DeviceFacts(
        device_id=inputs.device_id, state=inputs.state.value, manufacturer=inputs.manufacturer,
        model=inputs.model, device_type=device_type, site=inputs.site or "",
        labels=tuple(sorted(f"{key}={value}" for key, value in inputs.labels.items())),
        certificate_valid=identity is not None and identity.certificate_valid,
        revoked=identity is not None and identity.revoked,
        posture=posture, risk=inputs.risk,
    )  # fmt: skip


def _default() -> StoredPolicy:
    return StoredPolicy(
        0, parse_policy_set(DEFAULT_POLICIES), FirmwarePolicy(), "fleetguard", "the shipped default", None
    )


def _stored(row: PolicySetRow) -> StoredPolicy:
    firmware = FirmwarePolicy(dict(row.firmware_minimum), frozenset(row.end_of_life))
    return StoredPolicy(
        row.version, parse_policy_set(row.text), firmware, row.actor, row.reason, row.created_at
    )
