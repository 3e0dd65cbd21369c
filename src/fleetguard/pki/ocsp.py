"""The OCSP responder core (RFC 6960): decode requests, sign responses, and keep them pre-signed.

Theory of operation.

1. *Decode.* :func:`request_from_get` (RFC 6960 A.1.1: base64 of the DER request in the URL path,
   URL-encoded) and :func:`request_from_post` (``application/ocsp-request``) bound the input and
   hand the DER to :func:`parse_request`, which accepts one to ``MAX_CERT_IDS`` CertIDs hashed with
   SHA-1 or SHA-256 and raises :class:`~fleetguard.pki.errors.OcspMalformed` for everything else;
   the HTTP edge then answers ``unsuccessful_response(ResponseStatus.MALFORMED_REQUEST)``. The
   common request (one CertID) is decoded by ``cryptography`` in microseconds; whatever that path
   does not plainly accept goes to a full asn1crypto decoder, the reference, which decides and says
   why (a property test checks that both agree).
2. *Respond.* The issuing CA answers for itself (RFC 6960 2.6: the CA that issued the certificate
   signs; no delegated responder certificate, so ``certs`` is absent and the ResponderID is the
   hash of the CA's key, 4.2.1). :func:`respond` checks that every CertID names this CA by name
   and key hash; a CertID of any other issuer makes the whole answer ``unauthorized`` (2.3): the
   responder never makes statements about another CA's certificates. Each status comes from the
   injected ``status_lookup`` (good, revoked with time and reason, or unknown, 2.2).
   Nonces (RFC 8954) are not echoed, so that responses can be pre-signed and shared; RFC 8954 2.1
   lets a responder ignore them.
3. *Serve from memory.* :class:`PresignedCache` maps a CertID to signed bytes until a refresh time;
   revoking a serial calls :meth:`PresignedCache.invalidate`, and :func:`respond_cached` runs the
   hot path: a lookup, or a signature stored only if no revocation of that serial raced with it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import functools
import hashlib
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

# asn1crypto ships no type information (one ignore covers the package); its values are converted
# to bytes, int and str at once.
from asn1crypto import algos as asn1_algos  # type: ignore[import-untyped]
from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp as x509_ocsp

from fleetguard.pki.errors import CaError, OcspMalformed, SigningFailed
from fleetguard.pki.keys import SigningKey, SoftwareKey, signature_algorithm_oid, verify_signature
from fleetguard.pki.revocation import MAX_SERIAL, RevocationReason

__all__ = [
    "CONTENT_TYPE_REQUEST",
    "CONTENT_TYPE_RESPONSE",
    "DEFAULT_CACHE_ENTRIES",
    "MAX_CERT_IDS",
    "MAX_REQUEST_BYTES",
    "CertId",
    "CertIdHash",
    "CertStatus",
    "Good",
    "OcspQuery",
    "PresignedCache",
    "ResponseStatus",
    "Revoked",
    "Unknown",
    "parse_request",
    "request_from_get",
    "request_from_post",
    "respond",
    "respond_cached",
    "unsuccessful_response",
]

CONTENT_TYPE_REQUEST = "application/ocsp-request"  # RFC 6960 A.1.1
CONTENT_TYPE_RESPONSE = "application/ocsp-response"  # RFC 6960 A.1.2

MAX_REQUEST_BYTES = 4096
"""Largest DER request accepted: ten SHA-256 CertIDs with a nonce take about 1.2 KiB."""

MAX_CERT_IDS = 10
"""Most CertIDs answered in one request; clients send one."""

DEFAULT_CACHE_ENTRIES = 250_000
"""Pre-signed responses kept: about 500 bytes each with its index, so about 150 MB at the cap."""

# RFC 6960 4.1.1 CertID hashAlgorithm: SHA-1 (what clients send by default) and SHA-256.
_SHA1_OID = "1.3.14.3.2.26"
_SHA256_OID = "2.16.840.1.101.3.4.2.1"


class CertIdHash(enum.StrEnum):
    """The hash a CertID uses for the issuer's name and key (RFC 6960 4.1.1)."""

    SHA1 = "sha1"
    SHA256 = "sha256"

    @property
    def digest_size(self) -> int:
        """Octets in this hash's digest."""
        return 20 if self is CertIdHash.SHA1 else 32


_HASH_OIDS = {_SHA1_OID: CertIdHash.SHA1, _SHA256_OID: CertIdHash.SHA256}
_FAST_HASHES = {"sha1": CertIdHash.SHA1, "sha256": CertIdHash.SHA256}  # cryptography's hash names


@dataclass(frozen=True, slots=True)
class CertId:
    """Which certificate a request asks about: issuer name and key hashes and the serial (RFC 6960 4.1.1)."""

    hash_algorithm: CertIdHash
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class OcspQuery:
    """A decoded request: one to ``MAX_CERT_IDS`` CertIDs, in request order."""

    cert_ids: tuple[CertId, ...]


@dataclass(frozen=True, slots=True)
class Good:
    """The certificate is not revoked (RFC 6960 2.2)."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """The certificate was revoked at ``revoked_at`` (timezone-aware) for ``reason`` (RFC 6960 2.2)."""

    revoked_at: dt.datetime
    reason: RevocationReason


@dataclass(frozen=True, slots=True)
class Unknown:
    """The responder does not know the certificate, e.g. a serial this CA never issued (RFC 6960 2.2)."""


CertStatus = Good | Revoked | Unknown
"""What ``status_lookup`` returns for a serial."""


class ResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 4.2.1); only ``SUCCESSFUL`` responses are signed."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


def unsuccessful_response(status: ResponseStatus) -> bytes:
    """Return the unsigned OCSPResponse carrying only ``status``; raise ``ValueError`` for SUCCESSFUL."""
    if status is ResponseStatus.SUCCESSFUL:
        raise ValueError("a successful response must be signed: use respond()")
    return bytes((0x30, 0x03, 0x0A, 0x01, status.value))  # SEQUENCE { ENUMERATED status }


def request_from_get(path: str) -> OcspQuery:
    """Decode the request in a GET URL path segment: URL-encoded base64 of DER (RFC 6960 A.1.1).

    The segment may still be percent-encoded or already decoded by the web framework (base64 has no
    ``%``, so decoding twice is harmless); missing padding and the URL-safe alphabet are accepted.
    Raises ``OcspMalformed`` if it is too long, not base64, or not a valid request.
    """
    if len(path) > _MAX_GET_CHARS:
        raise OcspMalformed(f"GET path is {len(path)} characters, over {_MAX_GET_CHARS}")
    text = urllib.parse.unquote(path).strip("/").translate(_URLSAFE_TO_STANDARD)
    try:
        der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OcspMalformed(f"GET path is not base64: {exc}") from exc
    return parse_request(der)


def request_from_post(content_type: str | None, body: bytes) -> OcspQuery:
    """Decode a POST body of type ``application/ocsp-request`` (RFC 6960 A.1.1).

    Raises ``OcspMalformed`` for another content type, an oversized body or an invalid request.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != CONTENT_TYPE_REQUEST:
        raise OcspMalformed(f"content type is {content_type!r}, not {CONTENT_TYPE_REQUEST!r}")
    return parse_request(body)


def parse_request(der: bytes) -> OcspQuery:
    """Decode a DER OCSPRequest (RFC 6960 4.1.1); return its CertIDs.

    A requestor signature, if any, is not checked (4.1.2: optional, and this responder needs none);
    non-critical request extensions such as the nonce are ignored, and so are singleRequestExtensions
    (the one RFC 6960 defines, the service locator of 4.4.6, asks for forwarding, which an
    authoritative responder never does). Raises ``OcspMalformed`` for oversized or malformed DER, a
    version other than v1, no or too many CertIDs, a hash other than SHA-1 or SHA-256, hashes of the
    wrong length, or a critical request extension.
    """
    if len(der) > MAX_REQUEST_BYTES:
        raise OcspMalformed(f"request is {len(der)} bytes, over {MAX_REQUEST_BYTES}")
    # Fast path: cryptography's parser takes the common request (one CertID) in microseconds. Anything
    # it refuses or that is not plainly acceptable goes to the full decoder, which decides and says why.
    try:
        request = x509_ocsp.load_der_ocsp_request(der)
        hash_algorithm = _FAST_HASHES.get(request.hash_algorithm.name)
        critical = any(extension.critical for extension in request.extensions)
    except (ValueError, NotImplementedError, UnsupportedAlgorithm, x509.DuplicateExtension):
        return _parse_fully(der)
    name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
    if hash_algorithm is None or critical or not _digest_sizes_match(hash_algorithm, name_hash, key_hash):
        return _parse_fully(der)
    return OcspQuery((CertId(hash_algorithm, name_hash, key_hash, request.serial_number),))


def _parse_fully(der: bytes) -> OcspQuery:
    """Decode any OCSPRequest with asn1crypto: several CertIDs, and precise reasons for refusals."""
    try:
        tbs = asn1_ocsp.OCSPRequest.load(der, strict=True)["tbs_request"]
        if tbs["version"].native != "v1":
            raise OcspMalformed(f"version {tbs['version'].native!r} is not v1")
        _refuse_critical_extensions(tbs["request_extensions"])
        requests = tbs["request_list"]
        if not 1 <= len(requests) <= MAX_CERT_IDS:
            raise OcspMalformed(f"request has {len(requests)} CertIDs; 1 to {MAX_CERT_IDS} are answered")
        cert_ids = tuple(_cert_id(request["req_cert"]) for request in requests)
    except _ASN1_ERRORS as exc:
        raise OcspMalformed(f"undecodable DER: {exc}") from exc
    return OcspQuery(cert_ids)


def respond(
    query: OcspQuery,
    *,
    status_lookup: Callable[[int], CertStatus],
    issuer_cert: x509.Certificate,
    responder_key: SigningKey,
    now: dt.datetime,
    validity: dt.timedelta,
) -> bytes:
    """Return the DER OCSPResponse for ``query``, signed by the issuing CA's own key.

    Successful responses hold one SingleResponse per CertID, in request order, with thisUpdate =
    producedAt = ``now`` (whole seconds) and nextUpdate = thisUpdate + ``validity``. If a CertID
    names another issuer the answer is the unsigned ``unauthorized`` response. ``status_lookup`` is
    called only for serials within RFC 5280's range; others are ``unknown``. Raises ``ValueError``
    on a naive ``now`` or a validity under a second, ``CaError`` if the key is not the issuer's,
    ``SigningFailed`` if the signature does not verify, ``KeyBackendError`` if the key cannot sign.
    """
    return _respond(
        query,
        status_lookup=status_lookup,
        issuer_cert=issuer_cert,
        key=responder_key,
        now=now,
        validity=validity,
    )[1]


def respond_cached(
    query: OcspQuery,
    *,
    cache: PresignedCache,
    refresh_after: dt.timedelta,
    status_lookup: Callable[[int], CertStatus],
    issuer_cert: x509.Certificate,
    responder_key: SigningKey,
    now: dt.datetime,
    validity: dt.timedelta,
) -> bytes:
    """Return the response to ``query`` from ``cache``, or sign it with :func:`respond` and cache it.

    Only single-CertID queries with a successful answer are cached, until ``now + refresh_after``
    (which must not exceed ``validity``). A response signed while its serial was invalidated is
    returned but not stored. Raises as :func:`respond`, and ``ValueError`` if ``refresh_after`` is
    not within ``(0, validity]``.
    """
    if not dt.timedelta(0) < refresh_after <= validity:
        raise ValueError(f"refresh_after {refresh_after} must be positive and at most validity {validity}")
    single = query.cert_ids[0] if len(query.cert_ids) == 1 else None
    if single is not None:
        cached = cache.get(single, now)
        if cached is not None:
            return cached
    epoch = cache.epoch()
    status, der = _respond(
        query,
        status_lookup=status_lookup,
        issuer_cert=issuer_cert,
        key=responder_key,
        now=now,
        validity=validity,
    )
    if single is not None and status is ResponseStatus.SUCCESSFUL:
        cache.put(single, der, expires_at=now + refresh_after, since=epoch)
    return der


@dataclass(slots=True)
class _CachedResponse:
    der: bytes
    expires_at: dt.datetime


class PresignedCache:
    """Signed OCSP responses by CertID, bounded, invalidated per serial; safe to share between threads.

    Entries are grouped by serial, so that :meth:`invalidate` drops every CertID variant of a serial
    (SHA-1 and SHA-256) at once; the least recently used serial goes first when ``max_serials`` is
    reached. A writer calls :meth:`epoch` before looking up a status and passes it to :meth:`put`;
    the put is dropped if the serial was invalidated since, so a "good" response signed while the
    certificate was being revoked is never served from the cache.
    """

    def __init__(self, *, max_serials: int = DEFAULT_CACHE_ENTRIES, max_tombstones: int = 100_000) -> None:
        if max_serials < 1 or max_tombstones < 1:
            raise ValueError("max_serials and max_tombstones must be at least 1")
        self._max_serials = max_serials
        self._max_tombstones = max_tombstones
        self._entries: OrderedDict[int, dict[CertId, _CachedResponse]] = OrderedDict()
        # serial -> epoch of its latest invalidation; older tombstones are folded into _floor.
        self._tombstones: OrderedDict[int, int] = OrderedDict()
        self._floor = 0
        self._epoch = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return how many serials have cached responses."""
        return len(self._entries)

    def epoch(self) -> int:
        """Return the current invalidation epoch, to pass to :meth:`put` as ``since``."""
        with self._lock:
            return self._epoch

    def get(self, cert_id: CertId, now: dt.datetime) -> bytes | None:
        """Return the cached response for ``cert_id`` if it is still fresh at ``now``, else None."""
        with self._lock:
            responses = self._entries.get(cert_id.serial)
            if responses is None:
                return None
            cached = responses.get(cert_id)
            if cached is None:
                return None
            if now >= cached.expires_at:
                del responses[cert_id]
                if not responses:
                    del self._entries[cert_id.serial]
                return None
            self._entries.move_to_end(cert_id.serial)
            return cached.der

    def put(self, cert_id: CertId, der: bytes, *, expires_at: dt.datetime, since: int) -> bool:
        """Store ``der`` for ``cert_id`` until ``expires_at``; return whether it was stored.

        It is not stored if ``cert_id.serial`` was invalidated after epoch ``since``.
        """
        with self._lock:
            if since < self._floor or self._tombstones.get(cert_id.serial, -1) > since:
                return False
            responses = self._entries.setdefault(cert_id.serial, {})
            responses[cert_id] = _CachedResponse(der, expires_at)
            self._entries.move_to_end(cert_id.serial)
            if len(self._entries) > self._max_serials:
                self._entries.popitem(last=False)
            return True

    def invalidate(self, serial: int) -> None:
        """Drop every cached response for ``serial``; call it when the certificate is revoked."""
        with self._lock:
            self._epoch += 1
            self._entries.pop(serial, None)
            self._tombstones[serial] = self._epoch
            self._tombstones.move_to_end(serial)
            if len(self._tombstones) > self._max_tombstones:
                _, dropped = self._tombstones.popitem(last=False)
                self._floor = max(self._floor, dropped)


# --- decoding ---------------------------------------------------------------------------------

# What asn1crypto raises on malformed input, surfacing lazily as fields are read.
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)

_MAX_GET_CHARS = 3 * 4 * (MAX_REQUEST_BYTES // 3 + 1)  # base64 of the largest request, all percent-encoded
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _refuse_critical_extensions(extensions: asn1_core.Sequence) -> None:
    # RFC 6960 4.4: unrecognized non-critical extensions are ignored; none is understood here.
    if isinstance(extensions, asn1_core.Void):
        return
    for extension in extensions:
        if extension["critical"].native:
            raise OcspMalformed(f"critical extension {extension['extn_id'].dotted} is not supported")


def _cert_id(cert_id: asn1_ocsp.CertId) -> CertId:
    # The hash's parameters (absent or NULL, RFC 5754 2) are not looked at: responses echo NULL.
    oid = str(cert_id["hash_algorithm"]["algorithm"].dotted)
    hash_algorithm = _HASH_OIDS.get(oid)
    if hash_algorithm is None:
        raise OcspMalformed(f"CertID hash {oid} is not SHA-1 or SHA-256")
    name_hash = bytes(cert_id["issuer_name_hash"].native)
    key_hash = bytes(cert_id["issuer_key_hash"].native)
    if not _digest_sizes_match(hash_algorithm, name_hash, key_hash):
        raise OcspMalformed(f"CertID issuer hashes are not {hash_algorithm} digests")
    serial = cert_id["serial_number"].native
    if not isinstance(serial, int):
        raise OcspMalformed("CertID serial is not an INTEGER")
    return CertId(hash_algorithm, name_hash, key_hash, serial)


def _digest_sizes_match(hash_algorithm: CertIdHash, name_hash: bytes, key_hash: bytes) -> bool:
    return len(name_hash) == len(key_hash) == hash_algorithm.digest_size


# --- signing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Issuer:
    """The issuing CA as OCSP names it, hashed once per certificate."""

    name_hashes: dict[CertIdHash, bytes]
    key_hashes: dict[CertIdHash, bytes]
    spki: bytes

    def issued(self, cert_id: CertId) -> bool:
        algorithm = cert_id.hash_algorithm
        return (
            cert_id.issuer_name_hash == self.name_hashes[algorithm]
            and cert_id.issuer_key_hash == self.key_hashes[algorithm]
        )


@functools.lru_cache(maxsize=16)
def _issuer(issuer_cert: x509.Certificate) -> _Issuer:
    # RFC 6960 4.1.1: issuerNameHash is over the DER of the issuer's subject as encoded in its
    # certificate; issuerKeyHash over the subjectPublicKey BIT STRING's value.
    tbs = asn1_x509.Certificate.load(issuer_cert.public_bytes(serialization.Encoding.DER))["tbs_certificate"]
    name = bytes(tbs["subject"].dump())
    key_bits = bytes(tbs["subject_public_key_info"]["public_key"].contents[1:])  # after the unused-bits octet
    return _Issuer(
        name_hashes=_digests(name), key_hashes=_digests(key_bits), spki=_spki(issuer_cert.public_key())
    )


def _digests(data: bytes) -> dict[CertIdHash, bytes]:
    # SHA-1 here names a key and a name in a CertID (RFC 6960 4.1.1); it protects nothing.
    return {
        CertIdHash.SHA1: hashlib.sha1(data, usedforsecurity=False).digest(),
        CertIdHash.SHA256: hashlib.sha256(data).digest(),
    }


def _spki(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CaError("the OCSP responder key must be an EC or RSA key")
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _respond(
    query: OcspQuery,
    *,
    status_lookup: Callable[[int], CertStatus],
    issuer_cert: x509.Certificate,
    key: SigningKey,
    now: dt.datetime,
    validity: dt.timedelta,
) -> tuple[ResponseStatus, bytes]:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if validity < dt.timedelta(seconds=1):
        raise ValueError(f"validity must be at least one second, got {validity}")
    issuer = _issuer(issuer_cert)
    if not all(issuer.issued(cert_id) for cert_id in query.cert_ids):
        return ResponseStatus.UNAUTHORIZED, unsuccessful_response(ResponseStatus.UNAUTHORIZED)
    if _spki(key.public_key()) != issuer.spki:
        raise CaError(f"the responder key is not the key of issuer {issuer_cert.subject.rfc4514_string()}")
    this_update = now.astimezone(dt.UTC)
    produced_at = _generalized_time(this_update)
    next_update = _tlv(_CONTEXT_0, _generalized_time(this_update + validity))
    responses = b"".join(
        _tlv(
            _SEQUENCE,
            _encode_cert_id(cert_id)
            + _encode_status(_status_of(cert_id.serial, status_lookup))
            + produced_at
            + next_update,
        )
        for cert_id in query.cert_ids
    )
    # RFC 6960 4.2.1 ResponseData: version v1 is the DEFAULT, so it is omitted (X.690 11.5).
    responder_id = _tlv(_CONTEXT_2, _tlv(_OCTET_STRING, issuer.key_hashes[CertIdHash.SHA1]))
    tbs = _tlv(_SEQUENCE, responder_id + produced_at + _tlv(_SEQUENCE, responses))
    return ResponseStatus.SUCCESSFUL, _signed(tbs, key)


def _status_of(serial: int, status_lookup: Callable[[int], CertStatus]) -> CertStatus:
    return status_lookup(serial) if 0 < serial <= MAX_SERIAL else Unknown()


def _encode_cert_id(cert_id: CertId) -> bytes:
    """Echo the request's CertID (RFC 6960 4.2.1), with the hash's parameters as NULL."""
    return _tlv(
        _SEQUENCE,
        _HASH_ALGORITHMS[cert_id.hash_algorithm]
        + _tlv(_OCTET_STRING, cert_id.issuer_name_hash)
        + _tlv(_OCTET_STRING, cert_id.issuer_key_hash)
        + _integer(cert_id.serial),
    )


def _encode_status(status: CertStatus) -> bytes:
    # CertStatus ::= CHOICE { good [0] IMPLICIT NULL, revoked [1] IMPLICIT RevokedInfo,
    #                         unknown [2] IMPLICIT UnknownInfo }   (RFC 6960 4.2.1)
    match status:
        case Good():
            return b"\x80\x00"
        case Unknown():
            return b"\x82\x00"
        case Revoked(revoked_at=revoked_at, reason=reason):
            info = _generalized_time(revoked_at)
            if reason is not RevocationReason.UNSPECIFIED:  # left out, as in CRLs (RFC 5280 5.3.1)
                info += _tlv(_CONTEXT_0, bytes((_ENUMERATED, 1, reason.code)))  # [0] EXPLICIT CRLReason
            return _tlv(0xA1, info)
        case _:
            assert_never(status)


def _signed(tbs: bytes, key: SigningKey) -> bytes:
    signature = key.sign(tbs)
    if not isinstance(key, SoftwareKey):  # as fleetguard.pki.signing: verify what a token signed
        try:
            verify_signature(key.public_key(), signature, tbs, key.hash_algorithm)
        except InvalidSignature as exc:
            raise SigningFailed(
                "the OCSP response signature made by the key backend does not verify with its public key",
                hint="the token may hold another key under this label, or be faulty",
            ) from exc
    algorithm = _signature_algorithm(
        signature_algorithm_oid(key).dotted_string, isinstance(key.public_key(), rsa.RSAPublicKey)
    )
    # X.690 8.6.2.2: the BIT STRING's first octet counts unused bits, here none.
    basic = _tlv(_SEQUENCE, tbs + algorithm + _tlv(_BIT_STRING, b"\x00" + signature))
    response_bytes = _tlv(_SEQUENCE, _ID_PKIX_OCSP_BASIC + _tlv(_OCTET_STRING, basic))
    return _tlv(_SEQUENCE, _SUCCESSFUL + _tlv(_CONTEXT_0, response_bytes))


# --- DER (X.690), only what a BasicOCSPResponse needs ---------------------------------------------

_SEQUENCE = 0x30
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_CONTEXT_0 = 0xA0
_CONTEXT_2 = 0xA2
_SUCCESSFUL = b"\x0a\x01\x00"
_ID_PKIX_OCSP_BASIC = b"\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x01"  # 1.3.6.1.5.5.7.48.1.1
_HASH_ALGORITHMS = {
    CertIdHash.SHA1: b"\x30\x09\x06\x05\x2b\x0e\x03\x02\x1a\x05\x00",
    CertIdHash.SHA256: b"\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00",
}


def _tlv(tag: int, content: bytes) -> bytes:
    """Return a DER TLV with a definite length in the fewest octets (X.690 8.1.3, 10.1)."""
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def _integer(value: int) -> bytes:
    """Return an INTEGER in two's complement, fewest octets (X.690 8.3); CertID serials may be negative."""
    size = ((value if value >= 0 else ~value).bit_length() + 8) // 8
    return _tlv(0x02, value.to_bytes(size, "big", signed=True))


def _generalized_time(value: dt.datetime) -> bytes:
    """Return a GeneralizedTime in whole seconds, UTC, with Z (RFC 5280 4.1.2.5.2, used by RFC 6960)."""
    utc = value.astimezone(dt.UTC)
    text = b"%04d%02d%02d%02d%02d%02dZ" % (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)
    return b"\x18\x0f" + text


@functools.lru_cache(maxsize=8)
def _signature_algorithm(dotted: str, with_null: bool) -> bytes:
    # RFC 5758 3.2: ECDSA parameters absent; RFC 4055 5: RSA PKCS#1 v1.5 parameters NULL.
    algorithm: dict[str, object] = {"algorithm": dotted}
    if with_null:
        algorithm["parameters"] = asn1_core.Null()
    return bytes(asn1_algos.SignedDigestAlgorithm(algorithm).dump())
