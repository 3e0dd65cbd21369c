"""The certificate service: the CA hierarchy, issuance, renewal, revocation and fleet views.

Theory of operation:

* **Hierarchy.** :meth:`CertificateService.initialize` creates the root (P-384, always a key file, so it
  can be taken offline) and the first issuing CA (P-256, a key file or a non-extractable PKCS#11 key).
  :meth:`rotate` adds a new issuing CA under the same root and retires the old one for issuance; the
  old one keeps answering OCSP and publishing CRLs until it expires, so no device loses trust.
* **Issuance.** The CSR only proves possession of a key: subject and SAN come from the inventory
  (``CN = device id``, ``spiffe://<trust domain>/device/<id>``). Every certificate is recorded, with
  its SHA-256 fingerprint and its CRL shard, in the same transaction as its ``cert.issued`` event and
  before it is returned; a serial collision (159 random bits) is retried with a new serial.
* **Renewal** is rate limited per device and for the fleet (a refusal carries ``Retry-After``), and a
  certificate that expired while its device was offline may renew within the grace window.
* **Revocation** marks the record, appends ``cert.revoked`` (published on the bus for enforcement
  points), then rebuilds the certificate's CRL shard and delta CRL and invalidates pre-signed OCSP
  responses, all before the call returns.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import ipaddress
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Row, bindparam, insert, select, tuple_, update
from sqlalchemy.orm import Session

from fleetguard.config import Settings
from fleetguard.errors import Conflict, InvalidInput
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.errors import DeviceNotFound
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.service import Inventory, device_event_subject
from fleetguard.pki.ca import CertificateAuthority, ChainFormat, create_issuing, create_root, export_chain
from fleetguard.pki.crl import crl_url, distribution_point_url
from fleetguard.pki.csr import CsrPublicKey, ValidatedCsr, validate_csr
from fleetguard.pki.errors import (
    CaNotInitialized,
    CertificateNotFound,
    IssuanceRefused,
    PkiError,
    RenewalThrottled,
    UnknownAuthority,
)
from fleetguard.pki.keyring import Keyring
from fleetguard.pki.keys import Curve
from fleetguard.pki.profile import DeviceProfile, IpAddress, PublicationUrls, ServerProfile, new_serial
from fleetguard.pki.renewal import (
    AdmissionOutcome,
    Limiter,
    RateLimit,
    RateLimiter,
    renewal_time,
    require_renewable,
)
from fleetguard.pki.revocation import RevocationReason, RevokedEntry, partition_of
from fleetguard.private_file import replace_private_file
from fleetguard.store.database import Database
from fleetguard.store.driver import DriverRow, Prepared
from fleetguard.store.errors import DuplicateKey
from fleetguard.store.models import AuthorityRow, Base, CertificateRow
from fleetguard.types import utc_now

__all__ = [
    "ROOT_ID",
    "AuthorityRecord",
    "CertificateRecord",
    "CertificateService",
    "CertificateStatus",
    "FleetView",
    "IdentityStatus",
    "SignedDevices",
]

ROOT_ID = "root"
_ADDRESSES = (ipaddress.IPv4Address, ipaddress.IPv6Address)
_SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SERIAL_ATTEMPTS = 3
_AUTHORITY_RECHECK_S = 1.0
_MAX_PAGE = 10_000
_CERTIFICATES = Base.metadata.tables["pki_certificates"]
_DEVICES = Base.metadata.tables["devices"]
# Prepared once and run on the driver (fleetguard.store.driver): on the renewal and OCSP paths,
# SQLAlchemy's execution layer costs more than the database takes to run these statements.
_BY_SERIAL = Prepared(select(_CERTIFICATES).where(_CERTIFICATES.c.serial == bindparam("serial")))
_STATUS_FOR_UPDATE = Prepared(
    select(_CERTIFICATES.c.status).where(_CERTIFICATES.c.serial == bindparam("serial")).with_for_update()
)
# Inventory.locked_state's statement, for a driver-level transaction: the device row is share-locked
# (FOR SHARE on PostgreSQL; SQLite serializes write transactions) until the certificate is recorded.
_DEVICE_STATE = Prepared(
    select(_DEVICES.c.state).where(_DEVICES.c.id == bindparam("device_id")).with_for_update(read=True)
)
_INSERT_CERTIFICATE = insert(_CERTIFICATES)
_RECORD_CERTIFICATE = Prepared(_INSERT_CERTIFICATE)
_PROGRESS_STEP = 1000


class CertificateStatus(enum.StrEnum):
    """A recorded certificate's revocation status (expiry is read from ``not_after``)."""

    VALID = "valid"
    REVOKED = "revoked"


_IN_CHUNK = 500  # ids per IN (...) query: well under SQLite's and PostgreSQL's parameter limits


class FleetView(enum.StrEnum):
    """The fleet-wide certificate listings."""

    ALL = "all"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class IdentityStatus:
    """Whether a device holds a usable certificate, and whether its certificates were revoked."""

    certificate_valid: bool
    revoked: bool


@dataclass(frozen=True, slots=True)
class AuthorityRecord:
    """A CA certificate of the installation."""

    id: str
    role: str
    status: str
    certificate: x509.Certificate
    key_ref: str


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """An issued certificate as recorded."""

    serial: int
    device_id: str | None
    profile: str
    subject: str
    issuer_id: str
    crl_partition: int
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: bytes
    status: CertificateStatus
    revoked_at: dt.datetime | None
    reason: RevocationReason | None
    renewed_from: int | None
    der: bytes

    def pem(self) -> bytes:
        """Return the certificate as PEM."""
        return x509.load_der_x509_certificate(self.der).public_bytes(serialization.Encoding.PEM)

    def revoked_entry(self) -> RevokedEntry:
        """Return this (revoked) certificate's CRL entry."""
        assert self.revoked_at is not None
        return RevokedEntry(
            serial=self.serial,
            revoked_at=self.revoked_at,
            reason=self.reason or RevocationReason.UNSPECIFIED,
            not_after=self.not_after,
        )


@dataclass(frozen=True, slots=True)
class SignedDevices:
    """Device certificates signed by one issuing CA but not recorded yet.

    Nobody may see them before :meth:`CertificateService.record_devices` has recorded them: a
    certificate that is not recorded cannot be revoked, and OCSP answers "unknown" for it.
    ``chain`` is (issuing CA, root CA), what a relying party needs above each leaf.
    """

    issuer_id: str
    chain: tuple[x509.Certificate, x509.Certificate]
    certificates: tuple[tuple[str, x509.Certificate], ...]
    issued_at: dt.datetime


class CertificateService:
    """The installation's CAs and every certificate they issue."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        settings: Settings,
        trust_domain: str,
        *,
        keyring: Keyring | None = None,
        on_commit: Callable[[], object] | None = None,
        on_revoked: Callable[[CertificateRecord], None] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        serials: Callable[[], int] = new_serial,
        limiter: Limiter | None = None,
    ) -> None:
        self._db = database
        self._serials = serials
        self._log = log
        self._inventory = inventory
        self._settings = settings
        self._trust_domain = trust_domain
        self.keyring = keyring or Keyring(settings)
        self._on_commit = on_commit
        self._on_revoked = on_revoked
        self._clock = clock
        self._authority: tuple[str, CertificateAuthority] | None = None
        self._authority_checked = 0.0
        self._lock = threading.Lock()
        self._limiter = limiter if limiter is not None else _renewal_limiter(settings)

    @property
    def server_directory(self) -> Path:
        """Where :meth:`issue_server` writes ``<name>.pem``, ``<name>.chain.pem`` and ``<name>.key.pem``."""
        return self._settings.data_dir / "pki" / "servers"

    @property
    def renewal_limiter(self) -> Limiter:
        """The per-device and fleet renewal buckets (``limiter``, else from the settings)."""
        return self._limiter

    # -- the hierarchy -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The public URL prefix of CRLs, OCSP and CA certificates."""
        return self._settings.resolved_pki_base_url

    def ca_url(self, authority_id: str) -> str:
        """Return the URL prefix under which ``authority_id`` publishes its CRLs and certificate."""
        return f"{self.base_url}/ca/{authority_id}"

    def initialize(self, *, actor: str, now: dt.datetime, hsm: bool = False) -> list[AuthorityRecord]:
        """Create the root and the first issuing CA; return both.

        Raises ``Conflict`` if the installation has a CA already, ``KeyExists`` if key material of an
        interrupted attempt is in the way, ``KeyBackendError`` if a key cannot be made or unlocked.
        """
        if self.authorities():
            raise Conflict(
                "the CA is initialized already", hint="use `fleetguard ca rotate` for a new issuing CA"
            )
        root_ref, root_key = self.keyring.create_or_reuse(ROOT_ID, Curve.P384)
        root = create_root(root_key, self._name("root CA"), now)
        issuing_id = "issuing-1"
        issuing_ref, issuing_key = self.keyring.create_or_reuse(issuing_id, Curve.P256, hsm=hsm)
        issuing = create_issuing(
            root_key, root, issuing_key.public_key(), now, name=self._name("issuing CA 1"),
            ca_issuers_url=f"{self.ca_url(ROOT_ID)}.der",
        )  # fmt: skip
        with self._db.transaction() as session:
            session.add(_authority_row(ROOT_ID, "root", root, root_ref, now))
            session.add(_authority_row(issuing_id, "issuing", issuing, issuing_ref, now))
            self._event(session, "ca.initialized", "installation", actor, now, issuing=issuing_id, hsm=hsm)
        self._committed()
        return self.authorities()

    def rotate(self, *, actor: str, now: dt.datetime, hsm: bool = False) -> AuthorityRecord:
        """Add a new issuing CA under the root and make it the one that issues; return it.

        The old issuing CA is retired for issuance only: it keeps its CRLs and OCSP until it expires.
        """
        current = self.authority()
        number = 1 + sum(1 for a in self.authorities() if a.role == "issuing")
        issuing_id = f"issuing-{number}"
        root_record = self._record(ROOT_ID)
        root_key = self.keyring.load(root_record.key_ref)
        ref, key = self.keyring.create_or_reuse(issuing_id, Curve.P256, hsm=hsm)
        issuing = create_issuing(
            root_key, current.root, key.public_key(), now, name=self._name(f"issuing CA {number}"),
            ca_issuers_url=f"{self.ca_url(ROOT_ID)}.der",
        )  # fmt: skip
        with self._db.transaction() as session:
            session.execute(
                update(AuthorityRow).where(AuthorityRow.role == "issuing").values(status="retired")
            )
            session.add(_authority_row(issuing_id, "issuing", issuing, ref, now))
            self._event(session, "ca.rotated", "installation", actor, now, issuing=issuing_id)
        with self._lock:
            self._authority = None
        self._committed()
        return self._record(issuing_id)

    def authorities(self) -> list[AuthorityRecord]:
        """Return every CA certificate, the root first, then issuing CAs oldest first."""
        with self._db.reading() as session:
            rows = session.execute(select(AuthorityRow).order_by(AuthorityRow.created_at, AuthorityRow.id))
            records = [_authority(row) for row in rows.scalars()]
        return sorted(records, key=lambda r: r.role != "root")

    def authority(self) -> CertificateAuthority:
        """Return the issuing CA that issues now, with its key (loaded once)."""
        return self._issuing_now()[1]

    def _issuing_now(self) -> tuple[str, CertificateAuthority]:
        """Return (id, CA) of the issuing CA that issues now.

        Which CA that is is re-read at most every ``_AUTHORITY_RECHECK_S`` seconds, so a rotation done
        by another process (``fleetguard ca rotate`` beside a running ``up``) takes over within that.
        """
        moment = time.monotonic()
        with self._lock:
            current = self._authority
            if current is not None and moment - self._authority_checked < _AUTHORITY_RECHECK_S:
                return current
        record = self._active_record()
        if current is None or current[0] != record.id:
            ca = CertificateAuthority(
                root=self._record(ROOT_ID).certificate,
                issuing=record.certificate,
                key=self.keyring.load(record.key_ref),
            )
            current = (record.id, ca)
        with self._lock:
            self._authority = current
            self._authority_checked = moment
        return current

    def _active_record(self) -> AuthorityRecord:
        active = [a for a in self.authorities() if a.role == "issuing" and a.status == "active"]
        if not active:
            raise CaNotInitialized
        return active[-1]

    def active_issuer_id(self) -> str:
        """Return the id of the issuing CA that issues now."""
        return self._issuing_now()[0]

    def trust_bundle(self, fmt: ChainFormat) -> bytes:
        """Return the root and every unexpired issuing CA (what relying parties must trust)."""
        now = self._clock()
        certs = [a.certificate for a in self.authorities() if a.certificate.not_valid_after_utc > now]
        issuing_first = sorted(certs, key=lambda c: c.subject == c.issuer)
        if fmt is ChainFormat.DER:
            return export_chain([self._active_record().certificate], fmt)
        return export_chain(issuing_first, fmt)

    def issuer(self, authority_id: str) -> tuple[x509.Certificate, CertificateAuthority | None]:
        """Return an issuing CA's certificate and, when its key is usable, a CA object to sign with."""
        record = self._record(authority_id)
        root = self._record(ROOT_ID).certificate
        return record.certificate, CertificateAuthority(
            root=root, issuing=record.certificate, key=self.keyring.load(record.key_ref)
        )

    # -- issuance ----------------------------------------------------------------------------

    def issue_device(
        self,
        device_id: str,
        csr: bytes,
        *,
        actor: str,
        now: dt.datetime | None = None,
        renewed_from: int | None = None,
    ) -> CertificateRecord:
        """Issue device ``device_id``'s operational certificate for the key in ``csr``; return it.

        Raises ``CsrRejected`` for a bad CSR, ``DeviceNotFound``, ``IssuanceRefused`` for a
        quarantined or decommissioned device, ``KeyBackendError`` if the CA key cannot sign.
        """
        moment = now or self._clock()
        request = validate_csr(csr)
        self._require_issuable(device_id)
        return self._issue_device(device_id, request, actor=actor, now=moment, renewed_from=renewed_from)

    def _require_issuable(self, device_id: str) -> None:
        """Raise ``DeviceNotFound``, or ``IssuanceRefused`` for a quarantined or decommissioned device."""
        _require_issuable(device_id, self._inventory.states([device_id]).get(device_id))

    def _issue_device(
        self, device_id: str, request: ValidatedCsr, *, actor: str, now: dt.datetime, renewed_from: int | None
    ) -> CertificateRecord:
        """Sign, then record in one transaction that checks the device's state (see _record_issued)."""
        issuer_id, ca = self._issuing_now()
        profile = DeviceProfile(
            trust_domain=self._trust_domain,
            urls=self._urls(issuer_id),
            validity=dt.timedelta(days=self._settings.device_certificate_days),
        )
        for _ in range(_SERIAL_ATTEMPTS):
            serial = self._serials()
            certificate = ca.issue_device_certificate(
                profile, device_id=device_id, public_key=request.public_key, serial=serial, now=now,
                crl_url=distribution_point_url(self.ca_url(issuer_id), serial, self._settings.crl_partitions),
            )  # fmt: skip
            record = self._issued_record(certificate, device_id, issuer_id, renewed_from=renewed_from)
            try:
                self._record_issued(record, actor=actor, now=now)
            except DuplicateKey:
                continue  # a serial collision: 2^-159 per pair, but the constraint decides, not hope
            self._committed()
            return record
        raise PkiError(f"no unique serial after {_SERIAL_ATTEMPTS} attempts", hint="check the random source")

    def issue_devices(
        self, requests: Sequence[tuple[str, bytes]], *, actor: str, now: dt.datetime | None = None
    ) -> list[CertificateRecord]:
        """Issue a certificate for each ``(device id, CSR)`` in one transaction; return them in order.

        For operator batches (re-issuing a fleet): one inventory query, one transaction with one
        ``cert.issued`` event per certificate, one relay pump. All or nothing: raises as
        :meth:`issue_device` for the first bad request, and then records nothing. A serial
        collision (2^-159 a pair) re-issues the batch one by one through :meth:`issue_device`.
        """
        moment = now or self._clock()
        keys = [(device_id, validate_csr(csr).public_key) for device_id, csr in requests]
        states = self._inventory.states([device_id for device_id, _ in keys])
        for device_id, _ in keys:
            state = states.get(device_id)
            if state is None:
                raise DeviceNotFound(device_id)
            if state in (State.QUARANTINED, State.DECOMMISSIONED):
                raise IssuanceRefused(f"device {device_id!r} is {state}: no certificate is issued")
        signed = self.sign_devices(keys, now=moment)
        try:
            with self._db.transaction() as session:
                records = self.record_devices(session, signed, actor=actor)
        except DuplicateKey:
            return [self.issue_device(device_id, csr, actor=actor, now=moment) for device_id, csr in requests]
        self._committed()
        return records

    def sign_devices(
        self,
        keys: Sequence[tuple[str, CsrPublicKey]],
        *,
        now: dt.datetime,
        progress: Callable[[int], None] | None = None,
    ) -> SignedDevices:
        """Sign a certificate for each ``(device id, public key)`` with the issuing CA of now; record none.

        The first half of :meth:`issue_devices`, for a caller that records the certificates in its
        own transaction together with other rows (a manufacturing batch registers its devices in
        it): pass the result to :meth:`record_devices`. The caller checks the devices; this only
        signs. ``progress`` is called with the number signed so far every 1,000 certificates and at
        the end. Raises ``CaNotInitialized``, ``ProfileInputRejected`` and ``KeyBackendError``.
        """
        issuer_id, ca = self._issuing_now()
        profile = DeviceProfile(
            trust_domain=self._trust_domain,
            urls=self._urls(issuer_id),
            validity=dt.timedelta(days=self._settings.device_certificate_days),
        )
        base = self.ca_url(issuer_id)
        certificates = []
        for done, (device_id, public_key) in enumerate(keys, start=1):
            serial = self._serials()
            certificates.append((device_id, ca.issue_device_certificate(
                profile, device_id=device_id, public_key=public_key, serial=serial, now=now,
                crl_url=distribution_point_url(base, serial, self._settings.crl_partitions),
            )))  # fmt: skip
            if progress is not None and (done % _PROGRESS_STEP == 0 or done == len(keys)):
                progress(done)
        return SignedDevices(issuer_id, ca.chain(), tuple(certificates), now)

    def record_devices(
        self, session: Session, signed: SignedDevices, *, actor: str
    ) -> list[CertificateRecord]:
        """Record ``signed`` with one ``cert.issued`` event each, in the caller's transaction; return them.

        The caller commits and then lets the relay publish. A serial taken already (2^-159 a pair)
        raises ``DuplicateKey``, and the caller's transaction rolls back; sign again then.
        """
        records = [
            self._issued_record(certificate, device_id, signed.issuer_id, renewed_from=None)
            for device_id, certificate in signed.certificates
        ]
        # Core rows, as _record_issued writes them: ORM objects would cost more than the insert.
        session.connection().execute(_INSERT_CERTIFICATE, [_row_values(r, signed.issued_at) for r in records])
        events = [_record_event(record, actor) for record in records]
        self._log.append_many(session, events, now=signed.issued_at)
        return records

    def renew_device(
        self,
        device_id: str,
        csr: bytes | ValidatedCsr,
        *,
        serial: int,
        actor: str,
        now: dt.datetime | None = None,
        current: CertificateRecord | None = None,
    ) -> CertificateRecord:
        """Renew the device's certificate ``serial`` (possibly expired within the grace window).

        ``csr`` may be validated already (:func:`~fleetguard.pki.csr.validate_csr`) and ``current``
        be the record of ``serial`` as the caller just read it, so that neither is checked twice.
        The status of ``serial`` is read again in the transaction that records the renewal: a
        revocation committed meanwhile still refuses it.

        Raises ``RenewalThrottled`` (503, Retry-After) when a rate limit is exhausted,
        ``RenewalRefused`` beyond the grace window, ``IssuanceRefused`` if ``serial`` is not the
        device's or is revoked, and as :meth:`issue_device`.
        """
        moment = now or self._clock()
        # A malformed request costs no rate-limit token.
        request = csr if isinstance(csr, ValidatedCsr) else validate_csr(csr)
        if current is None or current.serial != serial:
            current = self.certificate(serial)
        if current.device_id != device_id:
            raise IssuanceRefused(f"certificate {serial:x} does not belong to device {device_id!r}")
        if current.status is CertificateStatus.REVOKED:
            raise _revoked(serial)
        require_renewable(
            current.not_after, now=moment, grace=dt.timedelta(days=self._settings.renewal_grace_days)
        )
        admission = self._limiter.try_acquire(device_id, time.monotonic())
        if admission.outcome is not AdmissionOutcome.ADMITTED:
            raise RenewalThrottled(
                f"renewal {admission.outcome}: too many renewals", retry_after_s=admission.retry_after_s
            )
        return self._issue_device(device_id, request, actor=actor, now=moment, renewed_from=serial)

    def issue_server(
        self,
        name: str,
        dns_names: Sequence[str],
        ip_addresses: Sequence[IpAddress] = (),
        *,
        actor: str,
        now: dt.datetime | None = None,
        renewed_from: int | None = None,
    ) -> CertificateRecord:
        """Issue a TLS server certificate (broker, API) with a new P-256 key that the server keeps.

        The key (mode 0600), the certificate and its chain are written under
        ``<data dir>/pki/servers/`` as ``<name>.key.pem``, ``<name>.pem`` and ``<name>.chain.pem``,
        each replaced atomically; :meth:`renew_servers` keeps them current.
        """
        if not _SERVER_NAME.fullmatch(name):
            raise InvalidInput(f"server certificate name {name[:40]!r} must be 1-64 of a-z 0-9 . _ -")
        moment = now or self._clock()
        issuer_id, ca = self._issuing_now()
        key = ec.generate_private_key(ec.SECP256R1())
        profile = ServerProfile(urls=self._urls(issuer_id))
        for _ in range(_SERIAL_ATTEMPTS):
            certificate = ca.issue_server_certificate(
                profile, dns_names=dns_names, ip_addresses=ip_addresses, public_key=key.public_key(),
                serial=self._serials(), now=moment,
            )  # fmt: skip
            record = self._issued_record(certificate, None, issuer_id, renewed_from=renewed_from)
            try:
                self._record_issued(record, actor=actor, now=moment)
            except DuplicateKey:
                continue
            self._write_server_files(name, key, certificate, ca)
            self._committed()
            return record
        raise PkiError(f"no unique serial after {_SERIAL_ATTEMPTS} attempts", hint="check the random source")

    def renew_servers(self, *, actor: str, now: dt.datetime | None = None) -> list[CertificateRecord]:
        """Re-issue every server certificate the server manages that is due; return the new ones."""
        moment = now or self._clock()
        renewed = []
        for name, record in self._server_certificates().items():
            if record.status is CertificateStatus.VALID and self.renewal_due(record) <= moment:
                certificate = x509.load_der_x509_certificate(record.der)
                names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                renewed.append(
                    self.issue_server(
                        name, names.get_values_for_type(x509.DNSName),
                        _addresses(names),
                        actor=actor, now=moment,
                        renewed_from=record.serial,
                    )
                )  # fmt: skip
        return renewed

    def _server_certificates(self) -> dict[str, CertificateRecord]:
        """Return the newest certificate of each server name found under ``pki/servers``."""
        directory = self.server_directory
        newest: dict[str, CertificateRecord] = {}
        for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
            if path.name.endswith((".key.pem", ".chain.pem")):
                continue
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
            record = self.find_certificate(serial)
            if record is not None:
                newest[path.name.removesuffix(".pem")] = record
        return newest

    def _write_server_files(
        self,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        ca: CertificateAuthority,
    ) -> None:
        directory = self.server_directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        leaf = certificate.public_bytes(serialization.Encoding.PEM)
        replace_private_file(directory / f"{name}.key.pem", key_pem)
        replace_private_file(directory / f"{name}.chain.pem", leaf + ca.export_chain(ChainFormat.PEM))
        replace_private_file(directory / f"{name}.pem", leaf)

    def renewal_due(self, record: CertificateRecord) -> dt.datetime:
        """Return when ``record`` should be renewed (2/3 of its life, jittered stably by serial)."""
        return renewal_time(record.not_before, record.not_after, rng=random.Random(record.serial))  # noqa: S311 - jitter, not secrecy

    def _record_issued(self, record: CertificateRecord, *, actor: str, now: dt.datetime) -> None:
        """Insert ``record`` and its event in one transaction, which first reads what it depends on.

        A device certificate needs its device in an issuable state, and a renewal the certificate it
        renews unrevoked, both as of this transaction: a quarantine or revocation that commits while
        the certificate is signed refuses it (``IssuanceRefused``, ``DeviceNotFound``). Core
        statements prepared once, on the driver: on the renewal path SQLAlchemy's session and
        execution layers cost more than the rest of the transaction.
        """
        with self._db.driver_transaction() as transaction:
            if record.device_id is not None:
                device = transaction.first(_DEVICE_STATE, {"device_id": record.device_id})
                _require_issuable(record.device_id, None if device is None else State(device.state))
            if record.renewed_from is not None:
                renewed = transaction.first(_STATUS_FOR_UPDATE, {"serial": _hex(record.renewed_from)})
                if renewed is None:
                    raise CertificateNotFound(f"no certificate with serial {record.renewed_from:x} to renew")
                if renewed.status == CertificateStatus.REVOKED.value:
                    raise _revoked(record.renewed_from)
            transaction.execute(_RECORD_CERTIFICATE, _row_values(record, now))
            self._log.append_in(transaction, [_record_event(record, actor)], now=now)

    def _issued_record(
        self,
        certificate: x509.Certificate,
        device_id: str | None,
        issuer_id: str,
        *,
        renewed_from: int | None,
    ) -> CertificateRecord:
        der = certificate.public_bytes(serialization.Encoding.DER)
        serial = certificate.serial_number
        return CertificateRecord(
            serial=serial, device_id=device_id, profile="device" if device_id else "server",
            subject=certificate.subject.rfc4514_string()[:512], issuer_id=issuer_id,
            crl_partition=partition_of(serial, self._settings.crl_partitions),
            not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
            sha256=hashlib.sha256(der).digest(), status=CertificateStatus.VALID, revoked_at=None,
            reason=None, renewed_from=renewed_from, der=der,
        )  # fmt: skip

    # -- revocation --------------------------------------------------------------------------

    def revoke(
        self, serial: int, reason: RevocationReason, *, actor: str, now: dt.datetime | None = None
    ) -> CertificateRecord:
        """Revoke certificate ``serial``; return its record (unchanged if it was revoked already).

        The ``cert.revoked`` event and the new CRL shard are published before this returns.
        Raises ``CertificateNotFound``.
        """
        moment = now or self._clock()
        with self._db.transaction() as session:
            row = _row(session, serial)
            if row.status == CertificateStatus.REVOKED.value:
                return _certificate(row)
            row.status = CertificateStatus.REVOKED.value
            row.revoked_at = moment
            row.revocation_reason = reason.value
            subject = device_event_subject(row.device_id) if row.device_id else f"certificate:{row.serial}"
            self._event(
                session, "cert.revoked", subject, actor, moment, serial=row.serial, reason=reason.value
            )
            record = _certificate(row)
        self._committed()
        if self._on_revoked is not None:
            self._on_revoked(record)
        return record

    def identity_status(self, device_ids: Sequence[str], *, now: dt.datetime) -> dict[str, IdentityStatus]:
        """Return, for each of ``device_ids`` with any certificate, whether it holds a usable one.

        ``certificate_valid``: a certificate that is neither revoked nor expired at ``now``;
        ``revoked``: a revoked certificate and no usable one (the trust capability's identity input).
        """
        status: dict[str, IdentityStatus] = {}
        for start in range(0, len(device_ids), _IN_CHUNK):
            chunk = list(device_ids[start : start + _IN_CHUNK])
            with self._db.reading() as session:
                rows = session.execute(
                    select(CertificateRow.device_id, CertificateRow.status, CertificateRow.not_after).where(
                        CertificateRow.device_id.in_(chunk)
                    )
                ).all()
            usable: set[str] = set()
            revoked: set[str] = set()
            for device_id, cert_status, not_after in rows:
                if device_id is None:
                    continue
                if cert_status == CertificateStatus.REVOKED.value:
                    revoked.add(device_id)
                elif not_after > now:
                    usable.add(device_id)
            for device_id in usable | revoked:
                status[device_id] = IdentityStatus(
                    device_id in usable, device_id in revoked and device_id not in usable
                )
        return status

    def revoke_device(
        self, device_id: str, reason: RevocationReason, *, actor: str, now: dt.datetime | None = None
    ) -> list[CertificateRecord]:
        """Revoke every valid certificate of ``device_id``; return them."""
        valid = self.certificates(device_id=device_id, view=FleetView.ALL, limit=_MAX_PAGE)
        return [
            self.revoke(record.serial, reason, actor=actor, now=now)
            for record in valid
            if record.status is CertificateStatus.VALID
        ]

    def revoked_entries(
        self, issuer_id: str, partition: int | None, *, now: dt.datetime
    ) -> list[RevokedEntry]:
        """Return the unexpired revoked entries of one CRL shard (or of the whole CA)."""
        # Only the four columns an entry needs: the complete CRL of a CA reads every revoked row, and
        # loading each certificate's DER as an ORM object would take minutes and gigabytes at 1M.
        query = select(
            CertificateRow.serial,
            CertificateRow.revoked_at,
            CertificateRow.revocation_reason,
            CertificateRow.not_after,
        ).where(
            CertificateRow.issuer_id == issuer_id,
            CertificateRow.status == CertificateStatus.REVOKED.value,
            CertificateRow.not_after >= now - dt.timedelta(days=1),
        )
        if partition is not None:
            query = query.where(CertificateRow.crl_partition == partition)
        with self._db.reading() as session:
            rows = session.execute(query).all()
        entries = []
        for serial, revoked_at, reason, not_after in rows:
            assert revoked_at is not None  # set with status "revoked", in one UPDATE
            entries.append(
                RevokedEntry(
                    int(serial, 16), revoked_at, RevocationReason(reason or "unspecified"), not_after
                )
            )
        return entries

    def revoked_since(self, since: dt.datetime, *, limit: int = _MAX_PAGE) -> list[CertificateRecord]:
        """Return certificates revoked at or after ``since``, oldest revocation first."""
        query = (
            select(CertificateRow)
            .where(CertificateRow.revoked_at >= since)
            .order_by(CertificateRow.revoked_at)
            .limit(limit)
        )
        with self._db.reading() as session:
            return [_certificate(row) for row in session.execute(query).scalars()]

    # -- views -------------------------------------------------------------------------------

    def certificate(self, serial: int) -> CertificateRecord:
        """Return the record of ``serial``; raise ``CertificateNotFound``."""
        record = self.find_certificate(serial)
        if record is None:
            raise CertificateNotFound(f"no certificate with serial {serial:x} was issued here")
        return record

    def find_certificate(self, serial: int) -> CertificateRecord | None:
        """Return the record of ``serial``, or None (for OCSP's "unknown")."""
        with self._db.driver_reading() as reading:
            row = reading.first(_BY_SERIAL, {"serial": _hex(serial)})
        return None if row is None else _certificate(row)

    def certificates(
        self,
        *,
        view: FleetView = FleetView.ALL,
        device_id: str | None = None,
        within: dt.timedelta = dt.timedelta(days=7),
        now: dt.datetime | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[CertificateRecord]:
        """Return certificates of one fleet view, ordered by expiry then serial.

        ``expiring``: valid, not yet expired, expiring within ``within``; ``expired``: valid but past
        ``not_after``; ``revoked``; ``all``. ``after`` pages by serial within the same order.
        """
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {_MAX_PAGE}")
        moment = now or self._clock()
        query = select(CertificateRow).order_by(CertificateRow.not_after, CertificateRow.serial)
        valid = CertificateRow.status == CertificateStatus.VALID.value
        match view:
            case FleetView.EXPIRING:
                query = query.where(
                    valid, CertificateRow.not_after > moment, CertificateRow.not_after <= moment + within
                )
            case FleetView.EXPIRED:
                query = query.where(valid, CertificateRow.not_after <= moment)
            case FleetView.REVOKED:
                query = query.where(CertificateRow.status == CertificateStatus.REVOKED.value)
            case FleetView.ALL:
                pass
        if device_id is not None:
            query = query.where(CertificateRow.device_id == device_id)
        with self._db.reading() as session:
            if after is not None:
                # Keyset paging in the listing's own order: (not_after, serial) after the cursor's.
                cursor = _row(session, after)
                query = query.where(
                    tuple_(CertificateRow.not_after, CertificateRow.serial)
                    > (cursor.not_after, cursor.serial)
                )
            return [_certificate(row) for row in session.execute(query.limit(limit)).scalars()]

    # -- internals ---------------------------------------------------------------------------

    def _urls(self, issuer_id: str) -> PublicationUrls:
        base = self.ca_url(issuer_id)
        return PublicationUrls(
            crl=crl_url(base, None), ocsp=f"{self.base_url}/ocsp", ca_issuers=f"{base}.der"
        )

    def _name(self, role: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"fleetguard {role}"),
            ]
        )

    def _record(self, authority_id: str) -> AuthorityRecord:
        with self._db.reading() as session:
            row = session.get(AuthorityRow, authority_id)
            if row is None:
                if authority_id == ROOT_ID:
                    raise CaNotInitialized
                raise UnknownAuthority(
                    f"no CA {authority_id[:64]!r}", hint="list them with `fleetguard ca show`"
                )
            return _authority(row)

    def _event(
        self, session: Session, action: str, subject: str, actor: str, now: dt.datetime, **data: str | bool
    ) -> None:
        self._log.append(session, NewEvent(actor=actor, subject=subject, action=action, data=data), now=now)

    def _committed(self) -> None:
        publish_committed(self._on_commit)


def _renewal_limiter(settings: Settings) -> RateLimiter:
    return RateLimiter(
        per_device=RateLimit(
            rate_per_s=settings.device_renewals_per_hour / 3600, burst=settings.device_renewal_burst
        ),
        fleet=RateLimit(rate_per_s=settings.renewal_rate_per_s, burst=settings.renewal_burst),
    )


def _addresses(names: x509.SubjectAlternativeName) -> list[IpAddress]:
    return [ip for ip in names.get_values_for_type(x509.IPAddress) if isinstance(ip, _ADDRESSES)]


def _record_event(record: CertificateRecord, actor: str) -> NewEvent:
    serial = _hex(record.serial)
    subject = device_event_subject(record.device_id) if record.device_id else f"certificate:{serial}"
    data: dict[str, str | bool] = {
        "serial": serial,
        "not_after": record.not_after.isoformat(),
        "sha256": record.sha256.hex(),
    }
    action = "cert.issued" if record.renewed_from is None else "cert.renewed"
    return NewEvent(actor=actor, subject=subject, action=action, data=data)


def _row_values(record: CertificateRecord, now: dt.datetime) -> dict[str, object]:
    """Return the ``pki_certificates`` columns of ``record``, recorded at ``now``."""
    return {
        "serial": _hex(record.serial), "device_id": record.device_id, "profile": record.profile,
        "subject": record.subject, "issuer_id": record.issuer_id, "crl_partition": record.crl_partition,
        "not_before": record.not_before, "not_after": record.not_after, "sha256": record.sha256,
        "status": record.status.value, "revoked_at": record.revoked_at,
        "revocation_reason": None if record.reason is None else record.reason.value,
        "renewed_from": None if record.renewed_from is None else _hex(record.renewed_from),
        "der": record.der, "created_at": now,
    }  # fmt: skip


def _require_issuable(device_id: str, state: State | None) -> None:
    if state is None:
        raise DeviceNotFound(device_id)
    if state in (State.QUARANTINED, State.DECOMMISSIONED):
        raise IssuanceRefused(f"device {device_id!r} is {state}: no certificate is issued")


def _revoked(serial: int) -> IssuanceRefused:
    return IssuanceRefused(f"certificate {serial:x} is revoked: enrol the device again")


def _hex(serial: int) -> str:
    # Fixed width so that text order is numeric order (paging by serial).
    return f"{serial:040x}"


def _row(session: Session, serial: int) -> CertificateRow:
    row = session.get(CertificateRow, _hex(serial))
    if row is None:
        raise CertificateNotFound(f"no certificate with serial {serial:x} was issued here")
    return row


def _authority_row(
    authority_id: str, role: str, certificate: x509.Certificate, key_ref: str, now: dt.datetime
) -> AuthorityRow:
    return AuthorityRow(
        id=authority_id, role=role, status="active",
        der=certificate.public_bytes(serialization.Encoding.DER), key_ref=key_ref,
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
        created_at=now,
    )  # fmt: skip


def _authority(row: AuthorityRow) -> AuthorityRecord:
    return AuthorityRecord(row.id, row.role, row.status, x509.load_der_x509_certificate(row.der), row.key_ref)


def _certificate(row: CertificateRow | Row[Any] | DriverRow) -> CertificateRecord:
    return CertificateRecord(
        serial=int(row.serial, 16), device_id=row.device_id, profile=row.profile, subject=row.subject,
        issuer_id=row.issuer_id, crl_partition=row.crl_partition, not_before=row.not_before,
        not_after=row.not_after, sha256=bytes(row.sha256), status=CertificateStatus(row.status),
        revoked_at=row.revoked_at,
        reason=None if row.revocation_reason is None else RevocationReason(row.revocation_reason),
        renewed_from=None if row.renewed_from is None else int(row.renewed_from, 16), der=bytes(row.der),
    )  # fmt: skip
