"""The approval queue: factory-certificate enrollments that wait for an operator.

Theory of operation. A device whose rule says ``approve`` gets ``202 Accepted`` with ``Retry-After``
(RFC 7030 4.2.3) and a request in this queue holding its CSR (at most ``MAX_CSR_BYTES``), the
fingerprints of its factory certificate and of its key, and where it came from. The device repeats
the same request until it gets an answer; :meth:`ApprovalQueue.latest` finds its request by
(manufacturer, serial) so that a repeat adds nothing. Each request moves once:

==========  ===========  =========================================================
from        to           by
==========  ===========  =========================================================
(new)       pending      a device, when its rule says ``approve``
pending     approved     an operator; the certificate is issued at once and handed
                         out when the device asks again with the same key
pending     rejected     an operator, with a reason; the same factory certificate
                         is refused from then on
==========  ===========  =========================================================

Approval is claimed (pending to approved, with its event) before the certificate is issued, so two
operators approving at once issue one certificate; if issuing fails, the claim is undone.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetguard.enroll.errors import (
    EnrollmentConflict,
    EnrollmentInputRejected,
    EnrollmentNotFound,
    EnrollmentThrottled,
)
from fleetguard.enroll.identity import FactoryIdentity
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.inventory.service import device_event_subject
from fleetguard.pki.csr import ValidatedCsr
from fleetguard.store.database import Database
from fleetguard.store.errors import DuplicateKey
from fleetguard.store.models import EnrollmentRequestRow
from fleetguard.types import Sha256

__all__ = ["MAX_REASON", "ApprovalQueue", "QueuedRequest", "RequestStatus", "request_subject"]

MAX_REASON = 1024
"""Longest rejection reason an operator may give."""

_MAX_SOURCE = 128
_MAX_PAGE = 10_000


class RequestStatus(enum.StrEnum):
    """Where a queued request is (see the module docstring's table)."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A factory-certificate enrollment as queued; ``csr`` is the DER request."""

    id: str
    status: RequestStatus
    manufacturer: str
    model: str
    device_serial: str
    device_id: str | None
    factory_fingerprint: Sha256
    key_fingerprint: Sha256
    csr: bytes
    source: str
    created_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    reason: str
    certificate_serial: int | None


def request_subject(request_id: str, device_id: str | None) -> str:
    """Return the event-log subject of a request: its device's, or the request's while it has none."""
    return device_event_subject(device_id) if device_id else f"enroll-request:{request_id}"


class ApprovalQueue:
    """Queued requests in ``database``; at most ``max_pending`` wait at once."""

    def __init__(self, database: Database, log: EventLog, *, max_pending: int, retry_after_s: int) -> None:
        self._db = database
        self._log = log
        self._max_pending = max_pending
        self._retry_after_s = retry_after_s

    def latest(self, manufacturer: str, serial: str) -> QueuedRequest | None:
        """Return the newest request for the device ``serial`` of ``manufacturer``, or None."""
        with self._db.reading() as session:
            row = _latest(session, manufacturer, serial)
            return None if row is None else _request(row)

    def enqueue(
        self,
        identity: FactoryIdentity,
        csr: ValidatedCsr,
        *,
        device_id: str | None,
        source: str,
        reason: str,
        now: dt.datetime,
    ) -> QueuedRequest:
        """Queue a request (or return the device's pending one) and log ``enroll.queued``.

        Raises ``EnrollmentThrottled`` when ``max_pending`` requests wait already. Two first requests
        of one device at once queue one request: the database holds at most one pending request per
        (manufacturer, serial), and the request that loses the race is answered with the winner's.
        """
        try:
            with self._db.transaction() as session:
                latest = _latest(session, identity.manufacturer, identity.serial)
                if latest is not None and latest.status == RequestStatus.PENDING.value:
                    return _request(latest)  # a concurrent repeat of the same request got there first
                pending = (
                    select(func.count())
                    .select_from(EnrollmentRequestRow)
                    .where(EnrollmentRequestRow.status == RequestStatus.PENDING.value)
                )
                if session.execute(pending).scalar_one() >= self._max_pending:
                    raise EnrollmentThrottled(
                        f"{self._max_pending} enrollment requests await approval already",
                        retry_after_s=self._retry_after_s,
                    )
                row = _new_row(identity, csr, device_id=device_id, source=source, now=now)
                session.add(row)
                session.flush()  # a concurrent first request of the same device is refused here
                self._log.append(
                    session,
                    NewEvent(actor=f"est:{row.source}", subject=request_subject(row.id, device_id),
                             action="enroll.queued", reason=reason, data=_data(row)),
                    now=now,
                )  # fmt: skip
                return _request(row)
        except DuplicateKey:
            winner = self.latest(identity.manufacturer, identity.serial)
            if winner is None or winner.status is not RequestStatus.PENDING:
                raise  # a refusal for another reason: nothing to answer with
            return winner

    def get(self, request_id: str) -> QueuedRequest:
        """Return the request; raise ``EnrollmentNotFound``."""
        with self._db.reading() as session:
            return _request(_row(session, request_id))

    def requests(
        self,
        *,
        status: RequestStatus | None = RequestStatus.PENDING,
        limit: int = 100,
        after: str | None = None,
    ) -> list[QueuedRequest]:
        """Return up to ``limit`` requests with ``status`` (None: any), oldest first, after id ``after``."""
        if not 1 <= limit <= _MAX_PAGE:
            raise EnrollmentInputRejected(f"limit must be between 1 and {_MAX_PAGE}")
        query = select(EnrollmentRequestRow).order_by(
            EnrollmentRequestRow.created_at, EnrollmentRequestRow.id
        )
        if status is not None:
            query = query.where(EnrollmentRequestRow.status == status.value)
        with self._db.reading() as session:
            if after is not None:
                cursor = _row(session, after)
                query = query.where(
                    (EnrollmentRequestRow.created_at > cursor.created_at)
                    | (
                        (EnrollmentRequestRow.created_at == cursor.created_at)
                        & (EnrollmentRequestRow.id > after)
                    )
                )
            return [_request(row) for row in session.execute(query.limit(limit)).scalars()]

    def claim(self, request_id: str, *, device_id: str, actor: str, now: dt.datetime) -> QueuedRequest:
        """Move a pending request to approved for ``device_id`` and log ``enroll.approved``; return it.

        Raises ``EnrollmentNotFound``, or ``EnrollmentConflict`` if it is not pending.
        """
        with self._db.transaction() as session:
            row = _row(session, request_id, for_update=True)
            _require_pending(row)
            row.status = RequestStatus.APPROVED.value
            row.device_id = device_id
            row.decided_at = now
            row.decided_by = actor
            self._decision(session, row, "enroll.approved", actor, now, reason="approved by an operator")
            return _request(row)

    def unclaim(self, request_id: str, failure: NewEvent, *, now: dt.datetime) -> None:
        """Return a claimed request to pending and append ``failure`` (issuing failed server-side)."""
        with self._db.transaction() as session:
            row = _row(session, request_id, for_update=True)
            row.status = RequestStatus.PENDING.value
            row.decided_at = None
            row.decided_by = None
            self._log.append(session, failure, now=now)

    def resume_stale(
        self, request_id: str, *, now: dt.datetime, stale_after: dt.timedelta
    ) -> QueuedRequest | None:
        """Take over an approval whose issuance never finished (a crash after :meth:`claim`).

        Returns the request, re-claimed at ``now`` (so that a concurrent caller waits another
        ``stale_after``), if it is approved, has no certificate, and was claimed before
        ``now - stale_after``; otherwise ``None``. Logs ``enroll.approval_resumed``.
        """
        with self._db.transaction() as session:
            row = _row(session, request_id, for_update=True)
            claimed = row.decided_at
            if (
                row.status != RequestStatus.APPROVED.value
                or row.certificate_serial is not None
                or claimed is None
                or claimed > now - stale_after
            ):
                return None
            row.decided_at = now
            self._decision(
                session, row, "enroll.approval_resumed", "fleetguard", now,
                reason=f"the certificate of the approval at {claimed.isoformat()} was never recorded",
            )  # fmt: skip
            return _request(row)

    def record_certificate(self, request_id: str, serial: int) -> None:
        """Record the serial of the certificate issued for an approved request."""
        with self._db.transaction() as session:
            _row(session, request_id, for_update=True).certificate_serial = f"{serial:040x}"

    def reject(self, request_id: str, reason: str, *, actor: str, now: dt.datetime) -> QueuedRequest:
        """Reject a pending request with ``reason`` and log ``enroll.rejected``; return it.

        Raises ``EnrollmentInputRejected`` for an empty or overlong reason, ``EnrollmentNotFound``, or
        ``EnrollmentConflict`` if the request is not pending.
        """
        if not reason.strip() or len(reason) > MAX_REASON:
            raise EnrollmentInputRejected(f"a rejection needs a reason of 1-{MAX_REASON} characters")
        with self._db.transaction() as session:
            row = _row(session, request_id, for_update=True)
            _require_pending(row)
            row.status = RequestStatus.REJECTED.value
            row.decided_at = now
            row.decided_by = actor
            row.reason = reason
            self._decision(session, row, "enroll.rejected", actor, now, reason=reason)
            return _request(row)

    def _decision(
        self,
        session: Session,
        row: EnrollmentRequestRow,
        action: str,
        actor: str,
        now: dt.datetime,
        *,
        reason: str,
    ) -> None:
        self._log.append(
            session,
            NewEvent(actor=actor, subject=request_subject(row.id, row.device_id), action=action,
                     reason=reason, data=_data(row)),
            now=now,
        )  # fmt: skip


def _latest(session: Session, manufacturer: str, serial: str) -> EnrollmentRequestRow | None:
    query = (
        select(EnrollmentRequestRow)
        .where(
            EnrollmentRequestRow.manufacturer == manufacturer, EnrollmentRequestRow.device_serial == serial
        )
        .order_by(EnrollmentRequestRow.created_at.desc(), EnrollmentRequestRow.id.desc())
        .limit(1)
    )
    return session.execute(query).scalar_one_or_none()


def _row(session: Session, request_id: str, *, for_update: bool = False) -> EnrollmentRequestRow:
    row = session.get(EnrollmentRequestRow, request_id, with_for_update=for_update)
    if row is None:
        raise EnrollmentNotFound(f"no enrollment request {request_id[:32]!r}")
    return row


def _require_pending(row: EnrollmentRequestRow) -> None:
    if row.status != RequestStatus.PENDING.value:
        raise EnrollmentConflict(f"enrollment request {row.id!r} is {row.status} already")


def _new_row(
    identity: FactoryIdentity, csr: ValidatedCsr, *, device_id: str | None, source: str, now: dt.datetime
) -> EnrollmentRequestRow:
    return EnrollmentRequestRow(
        id=secrets.token_hex(8), status=RequestStatus.PENDING.value, manufacturer=identity.manufacturer,
        model=identity.model, device_serial=identity.serial, device_id=device_id,
        factory_sha256=identity.fingerprint, key_sha256=csr.spki_sha256, csr=csr.der,
        source=source[:_MAX_SOURCE], created_at=now, decided_at=None, decided_by=None, reason="",
        certificate_serial=None,
    )  # fmt: skip


def _data(row: EnrollmentRequestRow) -> dict[str, str | None]:
    return {
        "request": row.id,
        "manufacturer": row.manufacturer,
        "model": row.model,
        "serial": row.device_serial,
        "device": row.device_id,
        "factory_sha256": bytes(row.factory_sha256).hex(),
        "key_sha256": bytes(row.key_sha256).hex(),
        "source": row.source,
    }


def _request(row: EnrollmentRequestRow) -> QueuedRequest:
    return QueuedRequest(
        id=row.id, status=RequestStatus(row.status), manufacturer=row.manufacturer, model=row.model,
        device_serial=row.device_serial, device_id=row.device_id,
        factory_fingerprint=Sha256(bytes(row.factory_sha256)), key_fingerprint=Sha256(bytes(row.key_sha256)),
        csr=bytes(row.csr), source=row.source, created_at=row.created_at, decided_at=row.decided_at,
        decided_by=row.decided_by, reason=row.reason,
        certificate_serial=None if row.certificate_serial is None else int(row.certificate_serial, 16),
    )  # fmt: skip
