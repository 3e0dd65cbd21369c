"""The persisted trust store of manufacturer CAs, used for enrollment and for nothing else.

Operators register each manufacturer's CA certificates under a name (``fleetguard enroll manufacturer
add``); a device's factory (IDevID) chain must then verify, by RFC 5280 path validation in
:class:`fleetguard.pki.manufacturer.ManufacturerTrustStore`, to the CAs of one manufacturer. That name
becomes the device's manufacturer (see :mod:`fleetguard.enroll.identity` for why the subject's O is
not used). These CAs are never part of fleetguard's own chain: a factory certificate opens no broker
or API connection.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetguard.enroll.errors import (
    EnrollmentConflict,
    EnrollmentInputRejected,
    EnrollmentNotFound,
    FactoryCertificateRefused,
)
from fleetguard.enroll.identity import FactoryIdentity, ModelAttribute, factory_identity
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.pki.errors import FactoryCertificateRejected, ProfileInputRejected
from fleetguard.pki.manufacturer import MAX_CHAIN_DEPTH, ManufacturerTrustStore
from fleetguard.store.database import Database
from fleetguard.store.models import ManufacturerCaRow

__all__ = ["MAX_PRESENTED_CHAIN", "ManufacturerCa", "ManufacturerCas", "identify_device"]

MAX_PRESENTED_CHAIN = 1 + 2 * MAX_CHAIN_DEPTH
"""Most certificates a device may present (its own, then intermediates, perhaps the root)."""

_MAX_REASON = 512


@dataclass(frozen=True, slots=True)
class ManufacturerCa:
    """A registered manufacturer CA; ``id`` is the hex SHA-256 of its DER encoding."""

    id: str
    manufacturer: str
    model_attribute: ModelAttribute
    certificate: x509.Certificate
    subject: str
    not_after: dt.datetime
    added_at: dt.datetime


def identify_device(
    cas: Sequence[ManufacturerCa], chain: Sequence[x509.Certificate], now: dt.datetime
) -> FactoryIdentity:
    """Return the identity of the device whose factory certificate is ``chain[0]``.

    ``chain[1:]`` are untrusted intermediates the device sent. The chain is tried against each
    manufacturer one of whose CAs is named as an issuer in it, in name order, and must verify to that
    manufacturer's CAs at ``now``. Raises ``FactoryCertificateRefused`` if no chain is given, it is
    too long, its first certificate is a CA, no registered CA issued it, it does not verify, or its
    subject lacks a serial number or model.
    """
    if not chain:
        raise FactoryCertificateRefused("no client certificate was presented")
    if len(chain) > MAX_PRESENTED_CHAIN:
        raise FactoryCertificateRefused(f"{len(chain)} certificates presented; at most {MAX_PRESENTED_CHAIN}")
    leaf, intermediates = chain[0], list(chain[1:])
    if _is_ca(leaf):
        raise FactoryCertificateRefused("the client certificate is a CA certificate, not a device's")
    groups = _by_manufacturer(cas)
    issuers = {certificate.issuer for certificate in chain}
    candidates = [m for m in sorted(groups) if any(ca.certificate.subject in issuers for ca in groups[m])]
    if not candidates:
        issuer = leaf.issuer.rfc4514_string()[:200]
        raise FactoryCertificateRefused(f"no registered manufacturer CA issued it (issuer {issuer!r})")
    reasons = []
    for manufacturer in candidates:
        store = ManufacturerTrustStore({manufacturer: tuple(ca.certificate for ca in groups[manufacturer])})
        try:
            store.require_factory_certificate(leaf, manufacturer, now, intermediates=intermediates)
        except FactoryCertificateRejected as exc:
            reasons.append(f"{manufacturer}: {exc.reason}")
            continue
        return factory_identity(leaf, manufacturer, groups[manufacturer][0].model_attribute)
    raise FactoryCertificateRefused(f"the chain does not verify ({'; '.join(reasons)})"[:_MAX_REASON])


class ManufacturerCas:
    """The manufacturer CAs in ``database``; each change is in ``log``."""

    def __init__(self, database: Database, log: EventLog) -> None:
        self._db = database
        self._log = log

    def add(
        self,
        manufacturer: str,
        pem: bytes,
        *,
        model_attribute: ModelAttribute,
        actor: str,
        now: dt.datetime,
    ) -> list[ManufacturerCa]:
        """Register every CA certificate in the PEM bundle ``pem`` under ``manufacturer``; return them.

        Raises ``EnrollmentInputRejected`` for a bad name or bundle (too large, not PEM, not a CA,
        expired), ``EnrollmentConflict`` if a certificate is registered already or the manufacturer's
        other CAs name the model with another attribute.
        """
        try:
            store = ManufacturerTrustStore.from_pem_bundles({manufacturer: pem})
        except ProfileInputRejected as exc:
            raise EnrollmentInputRejected(exc.message) from exc
        certificates = store.anchors[manufacturer]
        for certificate in certificates:
            if certificate.not_valid_after_utc <= now:
                raise EnrollmentInputRejected(
                    f"CA {certificate.subject.rfc4514_string()[:200]!r} expired at "
                    f"{certificate.not_valid_after_utc.isoformat()}"
                )
        with self._db.transaction() as session:
            _require_attribute(session, manufacturer, model_attribute)
            rows = list(
                {
                    row.id: row for row in (_row(manufacturer, model_attribute, c, now) for c in certificates)
                }.values()
            )
            for row in rows:
                if session.get(ManufacturerCaRow, row.id) is not None:
                    raise EnrollmentConflict(f"CA {row.subject!r} is registered already")
                session.add(row)
                self._event(session, "enroll.manufacturer-ca-added", row, actor, now)
            return [_record(row) for row in rows]

    def cas(self) -> list[ManufacturerCa]:
        """Return every registered CA, by manufacturer, oldest first."""
        query = select(ManufacturerCaRow).order_by(ManufacturerCaRow.manufacturer, ManufacturerCaRow.added_at)
        with self._db.reading() as session:
            return [_record(row) for row in session.execute(query).scalars()]

    def remove(self, ca_id: str, *, actor: str, now: dt.datetime) -> ManufacturerCa:
        """Remove the CA ``ca_id``; return it. Raises ``EnrollmentNotFound``."""
        with self._db.transaction() as session:
            row = session.get(ManufacturerCaRow, ca_id)
            if row is None:
                raise EnrollmentNotFound(f"no manufacturer CA {ca_id[:64]!r}")
            record = _record(row)
            session.delete(row)
            self._event(session, "enroll.manufacturer-ca-removed", row, actor, now)
            return record

    def _event(
        self, session: Session, action: str, row: ManufacturerCaRow, actor: str, now: dt.datetime
    ) -> None:
        self._log.append(
            session,
            NewEvent(actor=actor, subject=f"manufacturer:{row.manufacturer}", action=action,
                     data={"ca": row.id, "subject": row.subject, "model_attribute": row.model_attribute}),
            now=now,
        )  # fmt: skip


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _by_manufacturer(cas: Sequence[ManufacturerCa]) -> dict[str, list[ManufacturerCa]]:
    groups: dict[str, list[ManufacturerCa]] = defaultdict(list)
    for ca in cas:
        groups[ca.manufacturer].append(ca)
    return groups


def _require_attribute(session: Session, manufacturer: str, attribute: ModelAttribute) -> None:
    query = select(ManufacturerCaRow.model_attribute).where(ManufacturerCaRow.manufacturer == manufacturer)
    existing = set(session.execute(query).scalars())
    if existing - {attribute.value}:
        raise EnrollmentConflict(
            f"manufacturer {manufacturer!r} names models by {', '.join(sorted(existing))}, not {attribute}",
            hint="use the same model attribute for every CA of a manufacturer",
        )


def _row(
    manufacturer: str, attribute: ModelAttribute, certificate: x509.Certificate, now: dt.datetime
) -> ManufacturerCaRow:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return ManufacturerCaRow(
        id=hashlib.sha256(der).hexdigest(), manufacturer=manufacturer, model_attribute=attribute.value,
        subject=certificate.subject.rfc4514_string()[:512], der=der,
        not_after=certificate.not_valid_after_utc, added_at=now,
    )  # fmt: skip


def _record(row: ManufacturerCaRow) -> ManufacturerCa:
    return ManufacturerCa(
        id=row.id, manufacturer=row.manufacturer, model_attribute=ModelAttribute(row.model_attribute),
        certificate=x509.load_der_x509_certificate(row.der), subject=row.subject, not_after=row.not_after,
        added_at=row.added_at,
    )  # fmt: skip
