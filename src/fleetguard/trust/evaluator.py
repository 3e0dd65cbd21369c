"""Continuous evaluation: re-decide a device whenever an input changes, drive the enforcement points,
and record whether they confirmed it.

Theory of operation. The evaluator is a durable consumer of the event bus. An event about a device
(``device.*`` lifecycle and inventory changes, ``cert.issued``/``cert.renewed``/``cert.revoked``,
``trust.signals_changed``) re-decides that device; ``trust.policy_applied`` re-decides every device.
Re-deciding means computing the device's :class:`AccessPlan` and comparing its digest with the
last enforced one in ``trust_enforcement``: an unchanged, enforced plan costs nothing more. That
comparison runs on every event about a device (each certificate renewal is one), so the row is read
with a prepared statement on the driver (:mod:`fleetguard.store.driver`), as are the device's facts.

Each enforcement point (the MQTT broker; later the firewall) gets the plan and answers with an
:class:`EnforcementReport`. The plan counts as enforced only if every point verified it (PEPs
confirm, e.g. a probe publish is refused after quarantine). Otherwise the row is ``failed``: the
attempt count rises, ``next_attempt_at`` backs off exponentially (1 s to 5 min), the failure is in
the event log (``trust.enforcement_failed``), and after :data:`ALERT_AFTER` failed attempts an
``trust.enforcement_alert`` event says that enforcement is not holding. A failed plan is never
reported as done. :meth:`ContinuousEvaluator.retry_due` retries failed rows whose time has come.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import bindparam, delete, select

from fleetguard.errors import FleetguardError
from fleetguard.events.bus import EventBus
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.errors import DeviceNotFound
from fleetguard.inventory.service import device_event_subject
from fleetguard.store.database import Database
from fleetguard.store.driver import Prepared
from fleetguard.store.models import EnforcementRow
from fleetguard.trust.service import AccessPlan, TrustService

__all__ = [
    "ALERT_AFTER",
    "ContinuousEvaluator",
    "EnforcementOutcome",
    "EnforcementPoint",
    "EnforcementReport",
    "EnforcementStatus",
]

ALERT_AFTER = 3
_BACKOFF_INITIAL_S = 1.0
_BACKOFF_MAX_S = 300.0
_ACTOR = "trust:evaluator"
_DEVICE_ACTIONS = ("device.", "cert.issued", "cert.renewed", "cert.revoked", "trust.signals_changed")
_FETCH = 256
# How often the background loop looks for failed rows due again: well under the first backoff (1 s),
# and not after every fetch (under load a fetch returns one event, and the look-up costs as much).
_RETRY_EVERY_S = 0.2
_ENFORCEMENT = EnforcementRow.__table__
_PREVIOUS = Prepared(
    select(_ENFORCEMENT.c.desired_digest, _ENFORCEMENT.c.status, _ENFORCEMENT.c.attempts).where(
        _ENFORCEMENT.c.device_id == bindparam("device_id")
    )
)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EnforcementReport:
    """One enforcement point's answer: did it apply *and verify* the plan."""

    point: str
    verified: bool
    detail: str


class EnforcementPoint(Protocol):
    """Something that enforces access plans (the MQTT broker, the firewall)."""

    @property
    def name(self) -> str:
        """Return the point's name for reports."""
        ...

    def enforce(self, plan: AccessPlan) -> EnforcementReport:
        """Make the point hold ``plan`` and verify it; report, do not raise, when it cannot."""
        ...


class EnforcementStatus:
    """The values of ``trust_enforcement.status``."""

    ENFORCED = "enforced"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EnforcementOutcome:
    """What one reconciliation of one device did."""

    device_id: str
    status: str
    changed: bool
    reports: tuple[EnforcementReport, ...]


@dataclass(frozen=True, slots=True)
class _Previous:
    """What ``trust_enforcement`` holds for a device: the digest of the plan last sent, and its outcome."""

    digest: str
    status: str
    attempts: int


class ContinuousEvaluator:
    """Re-decides devices on events and drives the enforcement points."""

    def __init__(
        self,
        trust: TrustService,
        points: Sequence[EnforcementPoint],
        database: Database,
        log: EventLog,
        *,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], object] | None = None,
        all_devices: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._trust, self._points, self._db, self._log = trust, tuple(points), database, log
        self._clock, self._on_commit = clock, on_commit
        self._all_devices = all_devices
        self._lock = threading.Lock()  # one reconciliation at a time: PEP calls for a device never interleave
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- reconciliation ---------------------------------------------------------------------------

    def reconcile(self, device_ids: Iterable[str], *, force: bool = False) -> list[EnforcementOutcome]:
        """Re-decide each device and enforce a changed (or, with ``force``, any) plan."""
        outcomes = []
        for device_id in dict.fromkeys(device_ids):
            outcome = self._reconcile_one(device_id, force=force)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def retry_due(self) -> list[EnforcementOutcome]:
        """Retry every failed device whose backoff has passed."""
        now = self._clock()
        with self._db.reading() as session:
            due = session.scalars(
                select(EnforcementRow.device_id).where(
                    EnforcementRow.status == EnforcementStatus.FAILED, EnforcementRow.next_attempt_at <= now
                )
            ).all()
        return self.reconcile(due, force=True)

    def status(self, device_id: str) -> EnforcementRow | None:
        """Return the enforcement row of a device (detached), or ``None`` if never enforced."""
        with self._db.reading() as session:
            row = session.get(EnforcementRow, device_id)
            if row is not None:
                session.expunge(row)
            return row

    def forget_all(self) -> None:
        """Forget what every enforcement point was believed to hold (its state was lost): re-enforce all."""
        with self._db.transaction() as session:
            session.execute(delete(EnforcementRow))

    def affected_by(self, event: dict[str, object]) -> list[str] | None:
        """Return the devices an event (``EventEntry.to_json()``) affects; ``None`` for every device."""
        action, subject = str(event.get("action", "")), str(event.get("subject", ""))
        if action == "trust.policy_applied":
            return None
        kind, _, device_id = subject.partition(":")
        if kind == "device" and device_id and action.startswith(_DEVICE_ACTIONS):
            return [device_id]
        return []

    def handle(self, event: dict[str, object]) -> list[EnforcementOutcome]:
        """Reconcile what ``event`` affects."""
        affected = self.affected_by(event)
        if affected is None:
            if self._all_devices is None:
                return []
            return self.reconcile(self._all_devices())
        return self.reconcile(affected)

    # -- background -----------------------------------------------------------------------------

    def start(self, bus: EventBus, *, durable: str = "trust-evaluator") -> None:
        """Consume the bus from a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        subscription = bus.subscribe("fleetguard.>", durable)
        self._stop.clear()

        def run() -> None:
            retry_at = 0.0
            try:
                while not self._stop.is_set():
                    for delivery in subscription.fetch(_FETCH, timeout_s=0.2):
                        self._handle_delivery(delivery.payload)
                        delivery.ack()
                    if time.monotonic() >= retry_at:
                        self.retry_due()
                        retry_at = time.monotonic() + _RETRY_EVERY_S
            except FleetguardError:
                _log.exception("the trust evaluator stopped; enforcement is not kept current")
                raise
            finally:
                subscription.close()

        self._thread = threading.Thread(target=run, name="fleetguard-trust-evaluator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(10)

    def _handle_delivery(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            _log.warning("trust evaluator: skipped a bus message that is not JSON")
            return
        if isinstance(event, dict):
            self.handle(event)

    # -- internals --------------------------------------------------------------------------------

    def _reconcile_one(self, device_id: str, *, force: bool) -> EnforcementOutcome | None:
        with self._lock:
            try:
                plan = self._trust.access(device_id)
            except DeviceNotFound:
                return None
            desired = _desired(plan)
            digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()
            previous = self._previous(device_id)
            if (
                not force
                and previous is not None
                and previous.digest == digest
                and previous.status == EnforcementStatus.ENFORCED
            ):
                return EnforcementOutcome(device_id, previous.status, False, ())
            reports = tuple(self._enforce(point, plan) for point in self._points)
            verified = all(report.verified for report in reports)
            self._record(plan, desired, digest, reports, verified=verified, previous=previous)
            status = EnforcementStatus.ENFORCED if verified else EnforcementStatus.FAILED
            return EnforcementOutcome(device_id, status, True, reports)

    def _previous(self, device_id: str) -> _Previous | None:
        with self._db.driver_reading() as reading:
            row = reading.first(_PREVIOUS, {"device_id": device_id})
        return None if row is None else _Previous(row.desired_digest, row.status, row.attempts)

    def _enforce(self, point: EnforcementPoint, plan: AccessPlan) -> EnforcementReport:
        try:
            return point.enforce(plan)
        except (FleetguardError, OSError, TimeoutError) as exc:  # the point failed: not enforced
            return EnforcementReport(point.name, False, f"{type(exc).__name__}: {exc}")

    def _record(
        self,
        plan: AccessPlan,
        desired: dict[str, object],
        digest: str,
        reports: tuple[EnforcementReport, ...],
        *,
        verified: bool,
        previous: _Previous | None,
    ) -> None:
        now = self._clock()
        detail = "; ".join(f"{r.point}: {r.detail}" for r in reports)[:2000]
        same_plan = previous is not None and previous.digest == digest
        attempts = 0 if verified else (previous.attempts if previous is not None and same_plan else 0) + 1
        with self._db.transaction() as session:
            row = session.get(EnforcementRow, plan.device_id)
            if row is None:
                row = EnforcementRow(device_id=plan.device_id)
                session.add(row)
            row.desired, row.desired_digest, row.detail, row.updated_at = desired, digest, detail, now
            row.status = EnforcementStatus.ENFORCED if verified else EnforcementStatus.FAILED
            row.attempts = attempts
            row.next_attempt_at = None if verified else now + dt.timedelta(seconds=_backoff(attempts))
            events = [_event(plan, verified, attempts, detail)]
            if not verified and attempts == ALERT_AFTER:
                events.append(
                    NewEvent(
                        actor=_ACTOR,
                        subject=device_event_subject(plan.device_id),
                        action="trust.enforcement_alert",
                        reason=f"enforcement failed {attempts} times: {detail}"[:1000],
                        data={"attempts": attempts, "policy_version": plan.policy_version},
                    )
                )
            self._log.append_many(session, events, now=now)
        publish_committed(self._on_commit)


def _desired(plan: AccessPlan) -> dict[str, object]:
    return {
        "connect": plan.connect.value,
        "grants": sorted(f"{grant.action.value} {grant.topic_filter}" for grant in plan.grants),
        "policy_version": plan.policy_version,
    }


def _backoff(attempts: int) -> float:
    return float(min(_BACKOFF_MAX_S, _BACKOFF_INITIAL_S * 2.0 ** min(max(0, attempts - 1), 32)))


def _event(plan: AccessPlan, verified: bool, attempts: int, detail: str) -> NewEvent:
    policies = sorted({policy for decision in plan.decisions for policy in decision.policies})
    return NewEvent(
        actor=_ACTOR,
        subject=device_event_subject(plan.device_id),
        action="trust.enforced" if verified else "trust.enforcement_failed",
        reason=detail[:1000],
        data={
            "connect": plan.connect.value,
            "grants": len(plan.grants),
            "policy_version": plan.policy_version,
            "policies": ",".join(policies)[:1000],
            "attempts": attempts,
        },
    )
