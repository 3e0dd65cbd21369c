"""Certificate revocation lists (RFC 5280 section 5): partitioned full CRLs and their delta CRLs.

Theory of operation.

*Partitions.* Every serial belongs to one shard, ``partition_of(serial, partitions)``. A device
certificate's CRL distribution point (RFC 5280 4.2.1.13) is its shard's URL,
:func:`distribution_point_url`, and the shard's CRL carries the same URL in a critical
IssuingDistributionPoint (5.2.5) with onlyContainsUserCerts, so a relying party fetches one small
file and knows its scope. With ``DEFAULT_PARTITIONS`` shards, 1M revoked certificates leave every
shard far below 100 KiB (:func:`partitions_for` computes the count for other goals). Revoking a
certificate only changes its own shard, which is what makes publishing within a second cheap. The
partition count is fixed for the life of an issuing CA: issued certificates carry their shard's URL.
A complete CRL (``partition=None``) has an IssuingDistributionPoint without a distribution point
name, so it covers every certificate of the CA; it is what a broker's ``crlfile`` loads.

*Deltas.* A delta CRL (5.2.4) lists what was revoked since a complete CRL, names that CRL's number in
a critical DeltaCRLIndicator, and has the same scope (the same IssuingDistributionPoint). Full and
delta CRLs share one CRL number sequence (5.2.3). A full CRL may point at its delta with a
FreshestCRL extension (5.2.6).

*Expiry.* An entry leaves the CRL once its certificate has expired, but not before it has appeared on
one CRL issued after that expiry (RFC 5280 3.3). Since a CRL is reissued before its nextUpdate, an
entry is kept while ``not_after >= this_update - (next_update - this_update)``.

*Encoding.* ``cryptography``'s CRL builder copies its entry list on every addition, which makes 1M
entries take minutes. The TBSCertList is therefore encoded here in DER (X.690) in one pass, using
``cryptography`` for every extension value and name, and its bytes are signed by the
:class:`~fleetguard.pki.keys.SigningKey` directly; the signature is verified before the CRL is
returned (fail closed).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleetguard.pki.errors import CaError, SigningFailed
from fleetguard.pki.keys import SigningKey, signature_algorithm_oid, verify_signature
from fleetguard.pki.revocation import RevocationReason, RevokedEntry, partition_of

__all__ = [
    "DEFAULT_PARTITIONS",
    "MAX_CRL_NUMBER",
    "SignedCrl",
    "build_crl",
    "build_crl_shards",
    "build_delta_crl",
    "crl_url",
    "distribution_point_url",
    "partitions_for",
]

DEFAULT_PARTITIONS = 1024
"""Shards per issuing CA: ``partitions_for(1_000_000, 100 * 1024)`` is 617; the next power of two."""

MAX_CRL_NUMBER = 2**159 - 1
"""RFC 5280 5.2.3: a CRL number is a non-negative INTEGER of at most 20 octets."""

# Bounds used by partitions_for: the largest entry fleetguard encodes (a 20-octet serial, a
# GeneralizedTime and a reasonCode extension) and the largest fixed part of a CRL (issuer name,
# URLs, extensions, a P-384 or RSA-4096 signature).
_MAX_ENTRY_BYTES = 2 + 22 + 17 + 14
_MAX_OVERHEAD_BYTES = 2048
# Shards of random serials are binomially filled; five standard deviations over the mean leaves a
# chance of about 3e-7 per shard of exceeding the bound.
_SIGMAS = 5

_CRL_PATH = "crl"


@dataclass(frozen=True, slots=True)
class SignedCrl:
    """A signed CRL to publish: ``der`` is served at ``url`` as ``application/pkix-crl`` (RFC 5280 4.2.1.13).

    ``partition`` is None for the complete CRL; ``base_number`` is the complete CRL a delta CRL
    updates, None for a full CRL; ``entries`` counts the revoked certificates it lists.
    """

    der: bytes
    url: str
    number: int
    partition: int | None
    base_number: int | None
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int

    def pem(self) -> bytes:
        """Return the CRL as PEM ("X509 CRL", RFC 7468 6), the form Mosquitto's ``crlfile`` reads."""
        crl = x509.load_der_x509_crl(self.der)
        return crl.public_bytes(serialization.Encoding.PEM)


def crl_url(base_url: str, partition: int | None, *, delta: bool = False) -> str:
    """Return where a CRL is published: ``{base}/crl/{partition}.crl``, ``{base}/crl/full.crl``,
    and ``-delta`` before ``.crl`` for the delta CRL of either.

    ``base_url`` is per issuing CA (e.g. ``http://pki.example.org/ca/<ca-id>``), without a trailing
    slash. Raises ``ValueError`` on a negative partition or a base URL ending in ``/``.
    """
    if base_url.endswith("/"):
        raise ValueError(f"base_url must not end with '/': {base_url!r}")
    if partition is not None and partition < 0:
        raise ValueError(f"partition must not be negative, got {partition}")
    name = "full" if partition is None else str(partition)
    suffix = "-delta" if delta else ""
    return f"{base_url}/{_CRL_PATH}/{name}{suffix}.crl"


def distribution_point_url(base_url: str, serial: int, partitions: int) -> str:
    """Return the CRL distribution point URL to put in the certificate with ``serial``: its shard's CRL."""
    return crl_url(base_url, partition_of(serial, partitions))


def partitions_for(expected_revoked: int, max_shard_bytes: int) -> int:
    """Return the fewest shards that keep every CRL under ``max_shard_bytes`` for ``expected_revoked``.

    Counts each entry at its largest encoding and a fixed 2 KiB per CRL, and requires the mean shard
    plus five standard deviations to fit. Raises ``ValueError`` if even one entry per shard cannot fit.
    """
    capacity = (max_shard_bytes - _MAX_OVERHEAD_BYTES) // _MAX_ENTRY_BYTES
    if capacity < 1:
        raise ValueError(f"max_shard_bytes {max_shard_bytes} leaves no room for entries")
    if expected_revoked <= 0:
        return 1
    # Solve mean + SIGMAS * sqrt(mean) <= capacity for the largest mean, then divide.
    root = (-_SIGMAS + math.sqrt(_SIGMAS**2 + 4 * capacity)) / 2
    return max(1, math.ceil(expected_revoked / (root * root)))


def build_crl(
    entries: Iterable[RevokedEntry],
    *,
    issuer_cert: x509.Certificate,
    key: SigningKey,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    partition: int | None,
    partitions: int = DEFAULT_PARTITIONS,
    base_url: str,
    with_delta: bool = False,
) -> SignedCrl:
    """Return the complete CRL of one shard (or of the whole CA when ``partition`` is None).

    Entries of other shards and entries expired long enough (see the module docstring) are left out;
    the rest appear in the order given. ``with_delta`` adds a FreshestCRL extension pointing at the
    shard's delta CRL. Raises ``ValueError`` on an out-of-range number, partition or period,
    ``CaError`` if ``key`` is not the key of ``issuer_cert``, ``SigningFailed`` if the signature does
    not verify, and ``KeyBackendError`` if the key cannot sign now.
    """
    context = _Context.create(
        issuer_cert=issuer_cert,
        key=key,
        this_update=this_update,
        next_update=next_update,
        partitions=partitions,
        base_url=base_url,
    )
    selected = context.select(entries, partition)
    return context.sign(selected, number=number, partition=partition, base_number=None, with_delta=with_delta)


def build_crl_shards(
    entries: Iterable[RevokedEntry],
    *,
    issuer_cert: x509.Certificate,
    key: SigningKey,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    partitions: int = DEFAULT_PARTITIONS,
    base_url: str,
    with_delta: bool = False,
) -> list[SignedCrl]:
    """Return the complete CRL of every shard, ``0 .. partitions - 1``, all with CRL number ``number``.

    Equivalent to :func:`build_crl` for each partition, with one pass over ``entries``; raises the same.
    """
    context = _Context.create(
        issuer_cert=issuer_cert,
        key=key,
        this_update=this_update,
        next_update=next_update,
        partitions=partitions,
        base_url=base_url,
    )
    shards: list[list[bytes]] = [[] for _ in range(partitions)]
    for entry in entries:
        if entry.not_after >= context.keep_after:
            shards[entry.serial % partitions].append(_encode_entry(entry))
    return [
        context.sign(encoded, number=number, partition=index, base_number=None, with_delta=with_delta)
        for index, encoded in enumerate(shards)
    ]


def build_delta_crl(
    entries: Iterable[RevokedEntry],
    *,
    issuer_cert: x509.Certificate,
    key: SigningKey,
    number: int,
    base_number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    partition: int | None,
    partitions: int = DEFAULT_PARTITIONS,
    base_url: str,
) -> SignedCrl:
    """Return the delta CRL of one shard: ``entries`` are those revoked since complete CRL ``base_number``.

    The caller passes what was revoked after that complete CRL was built; entries of other shards and
    long-expired ones are left out as in :func:`build_crl`. ``number`` continues the sequence the
    complete CRLs use, so it must exceed ``base_number`` (RFC 5280 5.2.4). Raises as :func:`build_crl`.
    """
    if not 0 <= base_number < number:
        raise ValueError(f"delta CRL number {number} must exceed its base CRL number {base_number} >= 0")
    context = _Context.create(
        issuer_cert=issuer_cert,
        key=key,
        this_update=this_update,
        next_update=next_update,
        partitions=partitions,
        base_url=base_url,
    )
    selected = context.select(entries, partition)
    return context.sign(
        selected, number=number, partition=partition, base_number=base_number, with_delta=False
    )


@dataclass(frozen=True, slots=True)
class _Context:
    """What every CRL of one issuing CA and one period shares, encoded once."""

    key: SigningKey
    issuer: bytes
    authority_key_identifier: bytes
    algorithm: bytes
    this_update: dt.datetime
    next_update: dt.datetime
    keep_after: dt.datetime
    partitions: int
    base_url: str

    @classmethod
    def create(
        cls,
        *,
        issuer_cert: x509.Certificate,
        key: SigningKey,
        this_update: dt.datetime,
        next_update: dt.datetime,
        partitions: int,
        base_url: str,
    ) -> _Context:
        _require_period(this_update, next_update)
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        crl_url(base_url, None)  # validates the base URL
        _require_key_of(issuer_cert, key)
        return cls(
            key=key,
            issuer=issuer_cert.subject.public_bytes(),
            authority_key_identifier=_authority_key_identifier(issuer_cert).public_bytes(),
            algorithm=_algorithm_identifier(key),
            this_update=this_update,
            next_update=next_update,
            # RFC 5280 3.3: an expired entry stays on at least one CRL issued after the expiry.
            keep_after=this_update - (next_update - this_update),
            partitions=partitions,
            base_url=base_url,
        )

    def select(self, entries: Iterable[RevokedEntry], partition: int | None) -> list[bytes]:
        if partition is None:
            return [_encode_entry(entry) for entry in entries if entry.not_after >= self.keep_after]
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is outside 0..{self.partitions - 1}")
        return [
            _encode_entry(entry)
            for entry in entries
            if entry.serial % self.partitions == partition and entry.not_after >= self.keep_after
        ]

    def sign(
        self,
        encoded_entries: Sequence[bytes],
        *,
        number: int,
        partition: int | None,
        base_number: int | None,
        with_delta: bool,
    ) -> SignedCrl:
        if not 0 <= number <= MAX_CRL_NUMBER:
            raise ValueError(f"CRL number {number} is outside 0..2**159-1 (RFC 5280 5.2.3)")
        url = crl_url(self.base_url, partition, delta=base_number is not None)
        tbs = self._tbs(encoded_entries, number, partition, base_number, with_delta)
        signature = self.key.sign(tbs)
        try:
            verify_signature(self.key.public_key(), signature, tbs, self.key.hash_algorithm)
        except InvalidSignature as exc:
            raise SigningFailed(
                "the CRL signature made by the key backend does not verify with its public key",
                hint="the token may hold another key under this label, or be faulty",
            ) from exc
        # X.690 8.6.2.2: the BIT STRING's first octet counts unused bits, here none.
        der = _tlv(_SEQUENCE, tbs + self.algorithm + _tlv(_BIT_STRING, b"\x00" + signature))
        return SignedCrl(
            der=der,
            url=url,
            number=number,
            partition=partition,
            base_number=base_number,
            this_update=self.this_update,
            next_update=self.next_update,
            entries=len(encoded_entries),
        )

    def _tbs(
        self,
        encoded_entries: Sequence[bytes],
        number: int,
        partition: int | None,
        base_number: int | None,
        with_delta: bool,
    ) -> bytes:
        # RFC 5280 5.1: TBSCertList. version v2 (INTEGER 1) because extensions are present (5.1.2.1).
        parts = [_V2, self.algorithm, self.issuer, _time(self.this_update), _time(self.next_update)]
        if encoded_entries:  # 5.1.2.6: an empty list MUST be absent, not empty
            parts.append(_tlv(_SEQUENCE, b"".join(encoded_entries)))
        extensions = self._extensions(number, partition, base_number, with_delta)
        parts.append(_tlv(_CONTEXT_0, _tlv(_SEQUENCE, extensions)))
        return _tlv(_SEQUENCE, b"".join(parts))

    def _extensions(
        self, number: int, partition: int | None, base_number: int | None, with_delta: bool
    ) -> bytes:
        point = (
            None if partition is None else [x509.UniformResourceIdentifier(crl_url(self.base_url, partition))]
        )
        scope = x509.IssuingDistributionPoint(
            full_name=point,
            relative_name=None,
            only_contains_user_certs=True,  # the issuing CA issues end-entity certificates only
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        extensions = [
            _extension(_OID_AUTHORITY_KEY_IDENTIFIER, self.authority_key_identifier, critical=False),  # 5.2.1
            _extension(_OID_CRL_NUMBER, x509.CRLNumber(number).public_bytes(), critical=False),  # 5.2.3
            _extension(_OID_ISSUING_DISTRIBUTION_POINT, scope.public_bytes(), critical=True),  # 5.2.5
        ]
        if base_number is not None:  # 5.2.4: critical
            indicator = x509.DeltaCRLIndicator(base_number).public_bytes()
            extensions.append(_extension(_OID_DELTA_CRL_INDICATOR, indicator, critical=True))
        if with_delta:  # 5.2.6: non-critical
            delta = x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(crl_url(self.base_url, partition, delta=True))],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
            extensions.append(
                _extension(_OID_FRESHEST_CRL, x509.FreshestCRL([delta]).public_bytes(), critical=False)
            )
        return b"".join(extensions)


def _require_period(this_update: dt.datetime, next_update: dt.datetime) -> None:
    if this_update.tzinfo is None or next_update.tzinfo is None:
        raise ValueError("this_update and next_update must be timezone-aware")
    # Times are encoded in whole seconds (5.1.2.4); the period must survive the truncation.
    if next_update.replace(microsecond=0) <= this_update.replace(microsecond=0):
        raise ValueError(
            f"next_update {next_update} must be at least a second after this_update {this_update}"
        )


def _require_key_of(issuer_cert: x509.Certificate, key: SigningKey) -> None:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = issuer_cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    if ours != theirs:
        raise CaError(f"the signing key is not the key of issuer {issuer_cert.subject.rfc4514_string()}")


def _authority_key_identifier(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 5.2.1 / 4.2.1.1: the keyIdentifier matches the issuer's subjectKeyIdentifier.
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer_cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CaError("issuer certificate has no subjectKeyIdentifier and no EC or RSA key") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _algorithm_identifier(key: SigningKey) -> bytes:
    oid = _encode_oid(signature_algorithm_oid(key).dotted_string)
    if isinstance(key.public_key(), ec.EllipticCurvePublicKey):
        return _tlv(_SEQUENCE, oid)  # RFC 5758 3.2: parameters absent
    return _tlv(_SEQUENCE, oid + _NULL)  # RFC 4055 5: parameters NULL


# DER (X.690) encoding: only what a CRL needs.

_BOOLEAN_TRUE = b"\x01\x01\xff"
_NULL = b"\x05\x00"
_SEQUENCE = 0x30
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_CONTEXT_0 = 0xA0
_V2 = b"\x02\x01\x01"

_OID_CRL_NUMBER = "2.5.29.20"
_OID_REASON_CODE = "2.5.29.21"
_OID_DELTA_CRL_INDICATOR = "2.5.29.27"
_OID_ISSUING_DISTRIBUTION_POINT = "2.5.29.28"
_OID_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
_OID_FRESHEST_CRL = "2.5.29.46"


def _tlv(tag: int, content: bytes) -> bytes:
    """Return a DER TLV with a definite length in the fewest octets (X.690 8.1.3, 10.1)."""
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def _encode_oid(dotted: str) -> bytes:
    """Return an OBJECT IDENTIFIER TLV (X.690 8.19): the first two arcs joined, each arc in base 128."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = b"".join(_base128(arc) for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]])
    return _tlv(0x06, body)


def _base128(value: int) -> bytes:
    septets = [value & 0x7F]
    remaining = value >> 7
    while remaining:
        septets.append(0x80 | (remaining & 0x7F))
        remaining >>= 7
    return bytes(reversed(septets))


def _extension(oid: str, value: bytes, *, critical: bool) -> bytes:
    """Return an Extension (RFC 5280 4.1); DER omits ``critical`` when it is the default FALSE."""
    flag = _BOOLEAN_TRUE if critical else b""
    return _tlv(_SEQUENCE, _encode_oid(oid) + flag + _tlv(_OCTET_STRING, value))


def _time(value: dt.datetime) -> bytes:
    """Return a Time in whole seconds: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 5.1.2.4)."""
    utc = value if value.tzinfo is dt.UTC else value.astimezone(dt.UTC)
    if utc.year < 2050:
        text = b"%02d%02d%02d%02d%02d%02dZ" % (
            utc.year % 100,
            utc.month,
            utc.day,
            utc.hour,
            utc.minute,
            utc.second,
        )
        return b"\x17\x0d" + text
    text = b"%04d%02d%02d%02d%02d%02dZ" % (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)
    return b"\x18\x0f" + text


def _reason_extensions() -> dict[RevocationReason, bytes]:
    # RFC 5280 5.3.1: the reasonCode is left out rather than given as unspecified.
    table = {RevocationReason.UNSPECIFIED: b""}
    for reason in RevocationReason:
        if reason is not RevocationReason.UNSPECIFIED:
            enumerated = bytes((0x0A, 0x01, reason.code))
            table[reason] = _tlv(_SEQUENCE, _extension(_OID_REASON_CODE, enumerated, critical=False))
    return table


_REASON_EXTENSIONS = _reason_extensions()


def _encode_entry(entry: RevokedEntry) -> bytes:
    """Return one revokedCertificates element (RFC 5280 5.1): serial, revocationDate, reasonCode."""
    serial = entry.serial
    # 8.3.2: two's complement in the fewest octets; a leading 0 keeps a set top bit positive.
    octets = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    body = (
        b"\x02" + bytes((len(octets),)) + octets + _time(entry.revoked_at) + _REASON_EXTENSIONS[entry.reason]
    )
    return _tlv(_SEQUENCE, body)
