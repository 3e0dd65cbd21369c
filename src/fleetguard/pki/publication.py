"""Publication of revocation status: partitioned full and delta CRLs, and the OCSP responder.

Theory of operation: every issuing CA publishes one complete CRL per shard (the shard a certificate
names in its CRL distribution point, fixed at issuance) plus a delta CRL per shard listing what was
revoked since the shard's *base* CRL, the full CRL that relying parties are expected to hold
(RFC 5280 5.2.4). Signed CRLs are kept in memory and rebuilt when half their validity has passed,
or at once, for the affected shard, when a certificate is revoked: a revocation is visible on its
shard's CRL and in OCSP before :meth:`RevocationPublisher.revoked` returns. The complete CRL of a
CA is built only on request (with a million entries it is 50 MB and takes seconds).

Several processes may share the database (``fleetguard up`` and a CLI revoking, or API replicas):
each publisher polls for revocations made elsewhere at most every ``_SYNC_INTERVAL_S`` seconds,
before it serves a CRL or an OCSP answer, and drops what they make stale. So a revocation reaches
every process's CRLs and OCSP within about half a second, not at the next scheduled rebuild.

CRL numbers come from one monotonic counter per issuing CA in the database, shared by full and
delta CRLs, so numbers never repeat across restarts (RFC 5280 5.2.3).

OCSP answers are pre-signed and cached (:class:`~fleetguard.pki.ocsp.PresignedCache`); revocation
invalidates the serial's cached answer before the revoking call returns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from fleetguard.config import Settings
from fleetguard.pki.ca import CertificateAuthority
from fleetguard.pki.crl import SignedCrl, build_crl, build_delta_crl
from fleetguard.pki.errors import CertificateNotFound, OcspMalformed
from fleetguard.pki.ocsp import (
    CertId,
    CertIdHash,
    CertStatus,
    Good,
    OcspQuery,
    PresignedCache,
    ResponseStatus,
    Revoked,
    Unknown,
    parse_request,
    respond_cached,
    unsuccessful_response,
)
from fleetguard.pki.service import CertificateRecord, CertificateService, CertificateStatus
from fleetguard.store.database import Database
from fleetguard.store.models import CrlCounterRow
from fleetguard.types import utc_now

__all__ = ["RevocationPublisher"]

_Shard = tuple[str, int | None]
# A delta lists entries revoked at or after its base's thisUpdate, which has whole seconds only.
_BASE_SLACK = dt.timedelta(seconds=1)
_SYNC_INTERVAL_S = 0.5
# Revocations are found by revoked_at, stamped by each writer's clock: look back this far.
_SYNC_SLACK = dt.timedelta(seconds=5)


class RevocationPublisher:
    """Signs, caches and serves the CRLs and OCSP responses of every issuing CA."""

    def __init__(
        self,
        service: CertificateService,
        database: Database,
        settings: Settings,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._service = service
        self._db = database
        self._partitions = settings.crl_partitions
        self._crl_validity = dt.timedelta(hours=settings.crl_validity_hours)
        self._ocsp_validity = dt.timedelta(hours=settings.ocsp_validity_hours)
        self._clock = clock
        self._full: dict[_Shard, SignedCrl] = {}
        self._delta: dict[_Shard, SignedCrl] = {}
        self._base: dict[_Shard, SignedCrl] = {}
        self._lock = threading.RLock()
        self._ocsp_cache = PresignedCache()
        # Issuer lookups on the OCSP hot path: (hash algorithm, key hash) -> CA id, and CA id -> CA.
        self._issuer_ids: dict[tuple[CertIdHash, bytes], str] = {}
        self._issuers: dict[str, tuple[x509.Certificate, CertificateAuthority]] = {}
        self._synced_at = -_SYNC_INTERVAL_S
        self._rescanned_at = -_SYNC_INTERVAL_S
        self._watermark = clock()
        self._seen: dict[int, dt.datetime] = {}

    # -- CRLs --------------------------------------------------------------------------------

    def crl(self, issuer_id: str, partition: int | None, *, delta: bool = False) -> SignedCrl:
        """Return the current full (or delta) CRL of one shard, or of the whole CA when None.

        Raises ``CertificateNotFound`` for a partition out of range, ``PkiError`` for an unknown CA.
        """
        if partition is not None and not 0 <= partition < self._partitions:
            raise CertificateNotFound(f"no CRL shard {partition}: shards are 0..{self._partitions - 1}")
        self._sync()
        now = self._clock()
        shard = (issuer_id, partition)
        with self._lock:
            cache = self._delta if delta else self._full
            current = cache.get(shard)
            if current is None or now >= current.this_update + self._crl_validity / 2:
                self._rebuild(shard, now)
            return (self._delta if delta else self._full)[shard]

    def revoked(self, record: CertificateRecord) -> None:
        """Publish ``record``'s revocation: invalidate its OCSP answers, re-sign its CRL shard."""
        self._forget(record)
        with self._lock:
            self._rebuild((record.issuer_id, record.crl_partition), self._clock())

    def _forget(self, record: CertificateRecord) -> None:
        self._ocsp_cache.invalidate(record.serial)
        with self._lock:
            if record.revoked_at is not None:
                self._seen[record.serial] = record.revoked_at
            for shard in ((record.issuer_id, record.crl_partition), (record.issuer_id, None)):
                self._full.pop(shard, None)
                self._delta.pop(shard, None)

    def _sync(self) -> None:
        """Drop what revocations by other processes made stale (at most every half second)."""
        moment = time.monotonic()
        with self._lock:
            if moment - self._synced_at < _SYNC_INTERVAL_S:
                return
            self._synced_at = moment
            since = self._watermark - _SYNC_SLACK
        for record in self._service.revoked_since(since):
            if record.serial not in self._seen:
                self._forget(record)
        with self._lock:
            if self._seen:
                self._watermark = max(self._watermark, *self._seen.values())
            horizon = self._watermark - _SYNC_SLACK
            self._seen = {serial: at for serial, at in self._seen.items() if at >= horizon}

    def _rebuild(self, shard: _Shard, now: dt.datetime) -> None:
        issuer_id, partition = shard
        certificate, ca = self._issuer(issuer_id)
        entries = self._service.revoked_entries(issuer_id, partition, now=now)
        common = {
            "issuer_cert": certificate,
            "key": ca.key,
            "this_update": now,
            "next_update": now + self._crl_validity,
            "partition": partition,
            "partitions": self._partitions,
            "base_url": self._service.ca_url(issuer_id),
        }
        full = build_crl(entries, number=self._next_number(issuer_id), with_delta=True, **common)  # type: ignore[arg-type]
        base = self._base.get(shard)
        if base is None or now >= base.this_update + self._crl_validity / 2:
            base = self._base[shard] = full
        since = base.this_update - _BASE_SLACK
        fresh = [entry for entry in entries if entry.revoked_at >= since]
        delta = build_delta_crl(
            fresh,
            number=self._next_number(issuer_id),
            base_number=base.number,
            **common,  # type: ignore[arg-type]
        )
        self._full[shard] = full
        self._delta[shard] = delta

    def _next_number(self, issuer_id: str) -> int:
        with self._db.transaction() as session:
            row = session.execute(
                select(CrlCounterRow).where(CrlCounterRow.issuer_id == issuer_id).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                row = CrlCounterRow(issuer_id=issuer_id, number=0)
                session.add(row)
            row.number += 1
            return row.number

    # -- OCSP --------------------------------------------------------------------------------

    def ocsp(self, request: bytes | OcspQuery) -> bytes:
        """Return the DER OCSPResponse for a DER request (or a decoded one).

        Malformed requests get the unsigned ``malformedRequest`` answer and requests about another
        CA's certificates ``unauthorized`` (RFC 6960 2.3); nothing raises for bad client input.
        """
        try:
            query = request if isinstance(request, OcspQuery) else parse_request(request)
        except OcspMalformed:
            return unsuccessful_response(ResponseStatus.MALFORMED_REQUEST)
        self._sync()
        issuer_id = self._issuer_of(query.cert_ids[0])
        if issuer_id is None:
            return unsuccessful_response(ResponseStatus.UNAUTHORIZED)
        certificate, ca = self._issuer(issuer_id)
        return respond_cached(
            query,
            cache=self._ocsp_cache,
            refresh_after=self._ocsp_validity / 4,
            status_lookup=lambda serial: self._status(serial, issuer_id),
            issuer_cert=certificate,
            responder_key=ca.key,
            now=self._clock(),
            validity=self._ocsp_validity,
        )

    def _status(self, serial: int, issuer_id: str) -> CertStatus:
        record = self._service.find_certificate(serial)
        if record is None or record.issuer_id != issuer_id:
            return Unknown()
        if record.status is CertificateStatus.REVOKED:
            assert record.revoked_at is not None
            return Revoked(revoked_at=record.revoked_at, reason=record.revoked_entry().reason)
        return Good()

    def forget_issuers(self) -> None:
        """Drop the cached CA lookups (after a rotation)."""
        with self._lock:
            self._issuer_ids.clear()
            self._issuers.clear()
            self._rescanned_at = -_SYNC_INTERVAL_S

    def _issuer(self, issuer_id: str) -> tuple[x509.Certificate, CertificateAuthority]:
        cached = self._issuers.get(issuer_id)
        if cached is None:
            certificate, ca = self._service.issuer(issuer_id)
            assert ca is not None
            cached = self._issuers[issuer_id] = (certificate, ca)
        return cached

    def _issuer_of(self, cert_id: CertId) -> str | None:
        key = (cert_id.hash_algorithm, cert_id.issuer_key_hash)
        found = self._issuer_ids.get(key)
        if found is not None:
            return found
        # An unknown key hash is a stranger's CA or one rotated in since the last scan. The rescan
        # reads and parses every CA, so it runs at most every _SYNC_INTERVAL_S: otherwise requests
        # naming random key hashes would each cost a database read.
        moment = time.monotonic()
        with self._lock:
            if moment - self._rescanned_at < _SYNC_INTERVAL_S:
                return None
            self._rescanned_at = moment
        for authority in self._service.authorities():
            if authority.role == "issuing":
                digest = _key_hash(authority.certificate, cert_id.hash_algorithm)
                self._issuer_ids[(cert_id.hash_algorithm, digest)] = authority.id
        return self._issuer_ids.get(key)


def _key_hash(certificate: x509.Certificate, algorithm: CertIdHash) -> bytes:
    # RFC 6960 4.1.1: the hash of the issuer's subjectPublicKey BIT STRING value (for EC, the point).
    key_bits = certificate.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.new(algorithm.value, key_bits).digest()
