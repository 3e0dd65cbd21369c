"""The enrollment service: who gets a first operational certificate, and who may renew one.

Theory of operation. The EST edge (``fleetguard.enroll.est*``) decodes HTTP and TLS into an
:class:`EnrollmentRequest` and calls :meth:`EnrollmentService.enroll` (``simpleenroll``) or
:meth:`EnrollmentService.reenroll` (``simplereenroll``); everything else is decided here.

``enroll`` takes a token from the source's flood bucket, validates the CSR, then authenticates:

1. With an enrollment token (HTTP Basic: user name = device id, password = token): the token must be
   known, unused, unexpired, unrevoked and bound to that device (:mod:`fleetguard.enroll.tokens`). A
   client certificate sent alongside is not used: the token is the operator's explicit authorization.
2. Else with a factory certificate chain: it must verify to a registered manufacturer CA
   (:mod:`fleetguard.enroll.manufacturers`), which names the device's manufacturer, model and serial
   (:mod:`fleetguard.enroll.identity`); the zero-touch rules (:mod:`fleetguard.enroll.rules`) then
   enroll it, register and enroll it, queue it for approval (:mod:`fleetguard.enroll.approvals`) or
   refuse it.
3. Else the request is unauthenticated (401).

Before a certificate is issued the decision (``enroll.accepted``) is appended to the event log, in
the same transaction that consumes the token or claims the approval; if issuing then fails on the
server's side the token or the request is given back and ``enroll.failed`` records why. A device
enrolled for the first time moves from ``registered`` to ``provisioned``.

``reenroll`` requires the TLS client certificate to be one this installation issued (the same DER as
recorded, so the serial alone proves nothing), of a device, not revoked; the CSR must carry its subject
and key (:mod:`fleetguard.enroll.reenrollment`); the PKI then applies the grace window after expiry
and its per-device and fleet rate limits.

Every refusal (an :class:`~fleetguard.enroll.errors.EnrollmentError`) is appended to the event log as
``enroll.refused`` with its reason, actor ``est:<source>`` (throttled requests: see
:mod:`fleetguard.enroll.flood`). The edge must have completed the TLS handshake with the client
certificate it passes: the handshake is what proves possession of the certificate's key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetguard.config import Settings
from fleetguard.enroll.approvals import ApprovalQueue, QueuedRequest, RequestStatus, request_subject
from fleetguard.enroll.errors import (
    BadEnrollmentRequest,
    EnrollmentConflict,
    EnrollmentError,
    EnrollmentRefused,
    EnrollmentThrottled,
    EnrollmentUnauthenticated,
    ReenrollRefused,
)
from fleetguard.enroll.flood import EnrollmentLimits, FloodGuard
from fleetguard.enroll.identity import FactoryIdentity, ModelAttribute
from fleetguard.enroll.manufacturers import ManufacturerCa, ManufacturerCas, identify_device
from fleetguard.enroll.reenrollment import require_same_subject_and_key
from fleetguard.enroll.rules import (
    Decision,
    EnrollmentRule,
    EnrollmentRules,
    RuleMode,
    Verdict,
    decide,
    device_refusal,
    validate_manufacturer,
)
from fleetguard.enroll.tokens import EnrollmentToken, EnrollmentTokens
from fleetguard.events.entry import DataValue, NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.errors import IllegalTransition
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import Device, DeviceChanges, DeviceFilter, DeviceSpec
from fleetguard.inventory.service import Inventory, device_event_subject
from fleetguard.pki.csr import ValidatedCsr, validate_csr
from fleetguard.pki.errors import CsrRejected, IssuanceRefused, RenewalRefused, RenewalThrottled
from fleetguard.pki.service import CertificateRecord, CertificateService, CertificateStatus
from fleetguard.store.database import Database
from fleetguard.store.errors import ConcurrentUpdate
from fleetguard.types import utc_now

__all__ = [
    "EnrollmentOutcome",
    "EnrollmentRequest",
    "EnrollmentService",
    "Issued",
    "Pending",
]

_MAX_SOURCE = 128
STALE_APPROVAL = dt.timedelta(minutes=1)
"""An approval claimed longer ago than this without a recorded certificate crashed while issuing."""
_REFUSED_STATES = frozenset({State.QUARANTINED, State.DECOMMISSIONED})


@dataclass(frozen=True, slots=True)
class EnrollmentRequest:
    """One ``simpleenroll`` or ``simplereenroll`` request as the EST edge received it.

    ``csr``: the PKCS#10 request, DER (the edge base64-decoded it); ``client_chain``: the TLS client
    certificate first, then any intermediates it sent, empty without one; ``token`` and
    ``claimed_device_id``: the password and user name of HTTP Basic authentication, if any;
    ``source``: the client's IP address, for the event log and flood limits.
    """

    csr: bytes
    client_chain: tuple[x509.Certificate, ...]
    token: str | None
    claimed_device_id: str | None
    source: str


@dataclass(frozen=True, slots=True)
class Issued:
    """The certificate was issued (200, RFC 7030 4.2.3)."""

    certificate: CertificateRecord


@dataclass(frozen=True, slots=True)
class Pending:
    """The request awaits an operator (202 with ``Retry-After: retry_after_s``, RFC 7030 4.2.3)."""

    request_id: str
    retry_after_s: int


EnrollmentOutcome: TypeAlias = Issued | Pending
"""What ``simpleenroll`` answers: match on it and ``assert_never`` the rest."""


class EnrollmentService:
    """First enrollment and re-enrollment of devices, and the operator's controls over them.

    ``flood`` replaces the flood limits made from ``limits`` (the EST worker processes share their
    parent's: ``fleetguard.enroll.est_workers``).
    """

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        pki: CertificateService,
        settings: Settings,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        on_commit: Callable[[], object] | None = None,
        limits: EnrollmentLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        flood: FloodGuard | None = None,
    ) -> None:
        self._db = database
        self._log = log
        self._inventory = inventory
        self._pki = pki
        self._settings = settings
        self._clock = clock
        self._on_commit = on_commit
        self._limits = limits or EnrollmentLimits()
        self.flood = flood if flood is not None else FloodGuard(self._limits, monotonic=monotonic)
        self._manufacturers = ManufacturerCas(database, log)
        self._rules = EnrollmentRules(database, log)
        self._tokens = EnrollmentTokens(database, log)
        self._queue = ApprovalQueue(
            database,
            log,
            max_pending=self._limits.max_pending,
            retry_after_s=self._limits.pending_retry_after_s,
        )

    # -- the EST operations ------------------------------------------------------------------

    def enroll(self, request: EnrollmentRequest, *, now: dt.datetime) -> EnrollmentOutcome:
        """Answer ``simpleenroll``: return the issued certificate, or the pending request.

        Raises ``EnrollmentThrottled`` (503), ``BadEnrollmentRequest`` (400, a bad CSR),
        ``EnrollmentUnauthenticated``/``TokenRejected`` (401), ``EnrollmentRefused`` and its leaves
        (403), ``EnrollmentConflict`` (409, a pending request holds another key); server-side
        faults (``CaNotInitialized``, ``KeyBackendError``, ``StoreUnavailable``) pass through.
        """
        _require_aware(now)
        try:
            self.flood.admit(request.source)
            csr = _validated(request.csr)
            if request.token is not None:
                return Issued(self._enroll_with_token(request, csr, now))
            if request.client_chain:
                return self._enroll_with_factory_certificate(request, csr, now)
            raise EnrollmentUnauthenticated(
                "no client certificate and no enrollment token",
                hint="present a factory certificate, or the device id and a token as HTTP Basic credentials",
            )
        except EnrollmentError as exc:
            self._refused(exc, request, "simpleenroll", now)
            raise

    def reenroll(self, request: EnrollmentRequest, *, now: dt.datetime) -> CertificateRecord:
        """Answer ``simplereenroll``: renew the client certificate's device certificate; return the new one.

        Raises ``EnrollmentUnauthenticated`` (401, no client certificate), ``BadEnrollmentRequest``
        (400), ``ReenrollRefused`` (403: not ours, revoked, expired beyond the grace window, another
        subject or key, device quarantined), ``EnrollmentThrottled`` (503).
        """
        _require_aware(now)
        try:
            current = self._current_certificate(request.client_chain)
            csr = _validated(request.csr)
            # The client certificate is the recorded one, byte for byte (_current_certificate).
            require_same_subject_and_key(request.client_chain[0], csr, device_id=_device_of(current))
            return self._renew(current, csr, request, now)
        except EnrollmentError as exc:
            # A refused re-enrollment costs its source a token: see fleetguard.enroll.flood.
            throttled = None if isinstance(exc, EnrollmentThrottled) else self.flood.check(request.source)
            self._refused(throttled or exc, request, "simplereenroll", now)
            if throttled is not None:
                raise throttled from exc
            raise

    # -- manufacturer CAs, rules, tokens -----------------------------------------------------

    def add_manufacturer_ca(
        self,
        manufacturer: str,
        pem: bytes,
        *,
        actor: str,
        now: dt.datetime | None = None,
        model_attribute: ModelAttribute = ModelAttribute.OU,
    ) -> list[ManufacturerCa]:
        """Trust the CA certificates in ``pem`` for ``manufacturer``'s factory certificates; return them.

        ``model_attribute`` is the subject attribute that names the device model. Raises
        ``EnrollmentInputRejected`` or ``EnrollmentConflict`` (see ``ManufacturerCas.add``).
        """
        validate_manufacturer(manufacturer)
        added = self._manufacturers.add(
            manufacturer, pem, model_attribute=model_attribute, actor=actor, now=now or self._clock()
        )
        self._committed()
        return added

    def manufacturer_cas(self) -> list[ManufacturerCa]:
        """Return every registered manufacturer CA, by manufacturer."""
        return self._manufacturers.cas()

    def remove_manufacturer_ca(
        self, ca_id: str, *, actor: str, now: dt.datetime | None = None
    ) -> ManufacturerCa:
        """Stop trusting the manufacturer CA ``ca_id``; return it. Raises ``EnrollmentNotFound``."""
        removed = self._manufacturers.remove(ca_id, actor=actor, now=now or self._clock())
        self._committed()
        return removed

    def set_rule(
        self,
        manufacturer: str,
        model: str,
        mode: RuleMode,
        *,
        actor: str,
        register_unknown: bool = False,
        now: dt.datetime | None = None,
    ) -> EnrollmentRule:
        """Create or replace the rule for ``manufacturer`` and ``model`` (``*``: any model); return it."""
        rule = self._rules.set(
            manufacturer,
            model,
            mode,
            register_unknown=register_unknown,
            actor=actor,
            now=now or self._clock(),
        )
        self._committed()
        return rule

    def rules(self) -> list[EnrollmentRule]:
        """Return every zero-touch rule."""
        return self._rules.rules()

    def remove_rule(
        self, manufacturer: str, model: str, *, actor: str, now: dt.datetime | None = None
    ) -> EnrollmentRule:
        """Delete a rule; return it. Raises ``EnrollmentNotFound``."""
        rule = self._rules.remove(manufacturer, model, actor=actor, now=now or self._clock())
        self._committed()
        return rule

    def create_token(
        self, device_id: str, *, ttl: dt.timedelta, actor: str, now: dt.datetime | None = None
    ) -> tuple[EnrollmentToken, str]:
        """Create a one-time token for ``device_id``; return it and its text ``fge_<id>_<secret>``.

        Raises ``DeviceNotFound``, ``EnrollmentConflict`` for a device that may not enroll
        (quarantined, decommissioned), ``EnrollmentInputRejected`` for a lifetime out of bounds.
        """
        device = self._inventory.get(device_id)
        if device.state in _REFUSED_STATES:
            raise EnrollmentConflict(f"device {device_id!r} is {device.state}: it may not enroll")
        created = self._tokens.create(device.id, ttl=ttl, actor=actor, now=now or self._clock())
        self._committed()
        return created

    def tokens(self, *, device_id: str | None = None) -> list[EnrollmentToken]:
        """Return enrollment tokens (of one device, or all), newest first; never their secrets."""
        return self._tokens.tokens(device_id=device_id, limit=self._settings.max_page_size)

    def revoke_token(self, token_id: str, *, actor: str, now: dt.datetime | None = None) -> EnrollmentToken:
        """Revoke an enrollment token (idempotent); return it. Raises ``EnrollmentNotFound``."""
        token = self._tokens.revoke(token_id, actor=actor, now=now or self._clock())
        self._committed()
        return token

    # -- the approval queue ------------------------------------------------------------------

    def requests(
        self,
        *,
        status: RequestStatus | None = RequestStatus.PENDING,
        limit: int = 100,
        after: str | None = None,
    ) -> list[QueuedRequest]:
        """Return queued requests with ``status`` (None: any), oldest first, after id ``after``."""
        return self._queue.requests(status=status, limit=limit, after=after)

    def request(self, request_id: str) -> QueuedRequest:
        """Return one queued request; raise ``EnrollmentNotFound``."""
        return self._queue.get(request_id)

    def approve(self, request_id: str, *, actor: str, now: dt.datetime | None = None) -> CertificateRecord:
        """Approve a pending request: register the device if it is unknown, issue its certificate; return it.

        The device receives the certificate when it repeats its request. Raises ``EnrollmentNotFound``,
        ``EnrollmentConflict`` (not pending), ``EnrollmentRefused`` (the inventory records another model,
        or the device is quarantined or decommissioned), and the PKI's errors.
        """
        moment = now or self._clock()
        queued = self._queue.get(request_id)
        if queued.status is not RequestStatus.PENDING:
            raise EnrollmentConflict(f"enrollment request {request_id!r} is {queued.status} already")
        csr = _validated(queued.csr)
        identity = FactoryIdentity(
            queued.manufacturer, queued.model, queued.device_serial, queued.factory_fingerprint
        )
        device = self._find_device(identity)
        _require_enrollable(device, identity.model)
        self._pki.authority()  # CaNotInitialized before anything is written
        if device is None:
            device = self._register(identity, actor, f"approved enrollment request {request_id}")
        self._queue.claim(request_id, device_id=device.id, actor=actor, now=moment)
        try:
            record = self._issue(device, csr, actor, moment)
        except Exception as exc:
            self._queue.unclaim(
                request_id, _failure(request_subject(request_id, device.id), exc, actor), now=moment
            )
            self._committed()
            raise
        self._queue.record_certificate(request_id, record.serial)
        self._committed()
        return record

    def reject(
        self, request_id: str, reason: str, *, actor: str, now: dt.datetime | None = None
    ) -> QueuedRequest:
        """Reject a pending request; the same factory certificate is refused from then on. Return it."""
        rejected = self._queue.reject(request_id, reason, actor=actor, now=now or self._clock())
        self._committed()
        return rejected

    # -- enroll: tokens ----------------------------------------------------------------------

    def _enroll_with_token(
        self, request: EnrollmentRequest, csr: ValidatedCsr, now: dt.datetime
    ) -> CertificateRecord:
        assert request.token is not None
        token = self._tokens.verify(request.token, device_id=request.claimed_device_id, now=now)
        device = self._inventory.get(token.device_id)
        _require_enrollable(device, None)
        self._pki.authority()  # CaNotInitialized before the token is spent
        actor = _actor(request.source)
        decision = _accepted(
            device.id, actor, "one-time enrollment token", csr, method="token", token=token.id
        )
        self._tokens.claim(token.id, decision, source=request.source, now=now)
        try:
            record = self._issue(device, csr, actor, now)
        except Exception as exc:
            self._tokens.release(token.id, _failure(device_event_subject(device.id), exc, actor), now=now)
            self._committed()
            raise
        self._committed()
        return record

    # -- enroll: factory certificates --------------------------------------------------------

    def _enroll_with_factory_certificate(
        self, request: EnrollmentRequest, csr: ValidatedCsr, now: dt.datetime
    ) -> EnrollmentOutcome:
        identity = identify_device(self._manufacturers.cas(), request.client_chain, now)
        device = self._find_device(identity)
        decision = decide(self._rules.match(identity.manufacturer, identity.model), identity, device)
        match decision.verdict:
            case Verdict.REFUSE:
                raise EnrollmentRefused(decision.reason, device_id=None if device is None else device.id)
            case Verdict.QUEUE:
                return self._queued(
                    request=request, identity=identity, csr=csr, device=device, decision=decision, now=now
                )
            case Verdict.REGISTER:
                self._pki.authority()  # CaNotInitialized before the device is registered
                enrolled = self._register(identity, _actor(request.source), decision.reason)
            case Verdict.ENROLL:
                assert device is not None
                enrolled = self._record_mud_url(device, identity, _actor(request.source))
        return Issued(
            self._auto_enroll(
                request=request, identity=identity, csr=csr, device=enrolled, decision=decision, now=now
            )
        )

    def _auto_enroll(
        self,
        *,
        request: EnrollmentRequest,
        identity: FactoryIdentity,
        csr: ValidatedCsr,
        device: Device,
        decision: Decision,
        now: dt.datetime,
    ) -> CertificateRecord:
        self._pki.authority()
        actor = _actor(request.source)
        accepted = _accepted(
            device.id, actor, decision.reason, csr, method="factory", **_identity_data(identity)
        )
        with self._db.transaction() as session:
            self._log.append(session, accepted, now=now)
        try:
            record = self._issue(device, csr, actor, now)
        except Exception as exc:
            with self._db.transaction() as session:
                self._log.append(session, _failure(device_event_subject(device.id), exc, actor), now=now)
            self._committed()
            raise
        self._committed()
        return record

    def _queued(
        self,
        *,
        request: EnrollmentRequest,
        identity: FactoryIdentity,
        csr: ValidatedCsr,
        device: Device | None,
        decision: Decision,
        now: dt.datetime,
    ) -> EnrollmentOutcome:
        latest = self._queue.latest(identity.manufacturer, identity.serial)
        answer = None if latest is None else self._answer_from(latest, identity, csr, now)
        if answer is not None:
            return answer
        queued = self._queue.enqueue(
            identity, csr, device_id=None if device is None else device.id, source=request.source,
            reason=decision.reason, now=now,
        )  # fmt: skip
        self._committed()
        return Pending(queued.id, self._limits.pending_retry_after_s)

    def _answer_from(
        self, latest: QueuedRequest, identity: FactoryIdentity, csr: ValidatedCsr, now: dt.datetime
    ) -> EnrollmentOutcome | None:
        """Answer a repeated request from the device's newest queued one; None: queue a new one."""
        same_key = latest.key_fingerprint == csr.spki_sha256
        match latest.status:
            case RequestStatus.PENDING if same_key:
                return Pending(latest.id, self._limits.pending_retry_after_s)
            case RequestStatus.PENDING:
                raise EnrollmentConflict(
                    f"request {latest.id} of this device awaits approval with another key",
                    device_id=latest.device_id,
                    hint="repeat the request with the same key, or ask an operator to reject the pending one",
                )
            case RequestStatus.APPROVED if same_key and latest.certificate_serial is None:
                return self._finish_approval(latest, csr, now)
            case RequestStatus.APPROVED if same_key:
                assert latest.certificate_serial is not None
                record = self._pki.find_certificate(latest.certificate_serial)
                usable = (
                    record is not None and record.status is CertificateStatus.VALID and record.not_after > now
                )
                return Issued(record) if usable and record is not None else None
            case RequestStatus.APPROVED:
                return None
            case RequestStatus.REJECTED if latest.factory_fingerprint == identity.fingerprint:
                raise EnrollmentRefused(
                    f"request {latest.id} was rejected by an operator: {latest.reason}",
                    device_id=latest.device_id,
                )
            case RequestStatus.REJECTED:
                return None

    def _finish_approval(
        self, latest: QueuedRequest, csr: ValidatedCsr, now: dt.datetime
    ) -> EnrollmentOutcome:
        """Answer a repeat of an approved request whose certificate is not recorded yet.

        Normally the operator's :meth:`approve` is issuing it right now: the device waits. If the
        claim is older than :data:`STALE_APPROVAL` the approval crashed between claiming and
        recording; the device's request then finishes it (the approval stands; the key is the same).
        """
        resumed = self._queue.resume_stale(latest.id, now=now, stale_after=STALE_APPROVAL)
        if resumed is None or resumed.device_id is None:
            return Pending(latest.id, self._limits.pending_retry_after_s)  # approval being issued
        device = self._inventory.get(resumed.device_id)
        record = self._issue(device, csr, resumed.decided_by or "fleetguard", now)
        self._queue.record_certificate(resumed.id, record.serial)
        self._committed()
        return Issued(record)

    # -- reenroll ----------------------------------------------------------------------------

    def _current_certificate(self, chain: tuple[x509.Certificate, ...]) -> CertificateRecord:
        if not chain:
            raise EnrollmentUnauthenticated(
                "re-enrollment needs the current certificate as the TLS client certificate"
            )
        leaf = chain[0]
        record = self._pki.find_certificate(leaf.serial_number)
        if record is None or record.der != leaf.public_bytes(serialization.Encoding.DER):
            raise ReenrollRefused(
                "the client certificate was not issued by this installation",
                hint="enroll with a factory certificate or a token first",
            )
        device_id = _device_of(record)
        if record.status is CertificateStatus.REVOKED:
            raise ReenrollRefused(
                f"certificate {record.serial:x} is revoked",
                device_id=device_id,
                hint="enroll the device again",
            )
        return record

    def _renew(
        self, current: CertificateRecord, csr: ValidatedCsr, request: EnrollmentRequest, now: dt.datetime
    ) -> CertificateRecord:
        device_id = _device_of(current)
        try:
            return self._pki.renew_device(
                device_id, csr, serial=current.serial, actor=_actor(request.source), now=now, current=current
            )
        except RenewalThrottled as exc:
            retry_after_s = 1.0 if exc.retry_after_s is None else exc.retry_after_s
            raise EnrollmentThrottled(exc.message, retry_after_s=retry_after_s) from exc
        except (RenewalRefused, IssuanceRefused) as exc:
            raise ReenrollRefused(exc.message, device_id=device_id, hint=exc.hint) from exc

    # -- shared ------------------------------------------------------------------------------

    def _find_device(self, identity: FactoryIdentity) -> Device | None:
        found = self._inventory.find(
            DeviceFilter(manufacturer=identity.manufacturer, serial=identity.serial), limit=1
        )
        return found[0] if found else None

    def _record_mud_url(self, device: Device, identity: FactoryIdentity, actor: str) -> Device:
        # RFC 8520 section 10: the MUD URL the manufacturer put in the factory certificate is the
        # device's; a pre-registered device takes it at its first enrollment.
        if identity.mud_url is None or identity.mud_url == device.mud_url:
            return device
        return self._inventory.update(
            device.id, DeviceChanges(mud_url=identity.mud_url), actor=actor,
            reason="MUD URL from the factory certificate (RFC 8520 section 10)",
        )  # fmt: skip

    def _register(self, identity: FactoryIdentity, actor: str, reason: str) -> Device:
        spec = DeviceSpec(
            serial=identity.serial, manufacturer=identity.manufacturer, model=identity.model,
            mud_url=identity.mud_url,
        )  # fmt: skip
        return self._inventory.register(spec, actor=actor, reason=reason)

    def _issue(self, device: Device, csr: ValidatedCsr, actor: str, now: dt.datetime) -> CertificateRecord:
        try:
            record = self._pki.issue_device(device.id, csr.der, actor=actor, now=now)
        except IssuanceRefused as exc:
            raise EnrollmentRefused(exc.message, device_id=device.id) from exc
        if device.state is State.REGISTERED:
            # Another writer may have moved the device on meanwhile: it is provisioned or beyond already.
            with contextlib.suppress(IllegalTransition, ConcurrentUpdate):
                self._inventory.transition(device.id, Action.PROVISION, actor=actor, reason="identity issued")
        return record

    def _refused(
        self, error: EnrollmentError, request: EnrollmentRequest, operation: str, now: dt.datetime
    ) -> None:
        if isinstance(error, EnrollmentThrottled) and not self.flood.should_log_throttle(request.source):
            return
        subject = (
            device_event_subject(error.device_id) if error.device_id else f"enroll-source:{_source(request)}"
        )
        data: dict[str, DataValue] = {
            "operation": operation, "code": error.code, "status": error.status, "source": _source(request),
        }  # fmt: skip
        event = NewEvent(
            actor=_actor(request.source), subject=subject, action="enroll.refused",
            reason=error.reason[:4096], data=data,
        )  # fmt: skip
        with self._db.transaction() as session:
            self._log.append(session, event, now=now)
        self._committed()

    def _committed(self) -> None:
        publish_committed(self._on_commit)


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


def _validated(data: bytes) -> ValidatedCsr:
    try:
        return validate_csr(data)
    except CsrRejected as exc:
        raise BadEnrollmentRequest(exc.reason, message=exc.message, hint=exc.hint) from exc


def _require_enrollable(device: Device | None, model: str | None) -> None:
    refusal = None if device is None else device_refusal(device, model)
    if refusal is not None:
        assert device is not None
        raise EnrollmentRefused(refusal, device_id=device.id)


def _device_of(record: CertificateRecord) -> str:
    if record.device_id is None:
        raise ReenrollRefused(f"certificate {record.serial:x} is not a device certificate")
    return record.device_id


def _source(request: EnrollmentRequest) -> str:
    return request.source[:_MAX_SOURCE]


def _actor(source: str) -> str:
    return f"est:{source[:_MAX_SOURCE]}"


def _identity_data(identity: FactoryIdentity) -> dict[str, DataValue]:
    return {
        "manufacturer": identity.manufacturer,
        "model": identity.model,
        "serial": identity.serial,
        "factory_sha256": identity.fingerprint.hex(),
    }


def _accepted(device_id: str, actor: str, reason: str, csr: ValidatedCsr, **data: DataValue) -> NewEvent:
    return NewEvent(
        actor=actor, subject=device_event_subject(device_id), action="enroll.accepted", reason=reason,
        data={**data, "key_sha256": csr.spki_sha256.hex()},
    )  # fmt: skip


def _failure(subject: str, error: Exception, actor: str) -> NewEvent:
    return NewEvent(
        actor=actor, subject=subject, action="enroll.failed", reason=str(error)[:4096],
        data={"error": type(error).__name__},
    )  # fmt: skip
