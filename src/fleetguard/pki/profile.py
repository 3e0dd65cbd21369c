"""Certificate profiles: what goes into each certificate fleetguard issues, as unsigned builders.

Pure: every function takes ``now`` and returns a ``cryptography`` builder; signing is
``fleetguard.pki.signing``'s job. The hierarchy (ARCHITECTURE.md, Identity) is

* root CA: P-384, self-signed, 20 years, ``pathLen 1``;
* issuing CA: P-256, signed by the root, 5 years, ``pathLen 0``;
* device operational certificate: CN = device id, URI SAN ``spiffe://<trust-domain>/device/<id>``
  (the SPIFFE X.509-SVID shape), clientAuth, 30 days by default;
* server certificate for the broker and the API: DNS and IP SANs, serverAuth.

Each end-entity certificate carries a CRL distribution point and AIA (OCSP responder and the
issuer's certificate) so that relying parties can check revocation. Validity starts at ``now``
truncated to whole seconds (X.509 times have no fractions) and must lie within the issuer's.
Every profile's output passes pkilint's RFC 5280 checks with no warning (tests/unit/pki).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from fleetguard.pki.errors import CaError, ProfileInputRejected

__all__ = [
    "DEVICE_VALIDITY",
    "ISSUING_CA_VALIDITY",
    "ROOT_CA_VALIDITY",
    "SERIAL_BITS",
    "SERVER_VALIDITY",
    "DeviceProfile",
    "IpAddress",
    "IssuingCaProfile",
    "PublicationUrls",
    "RootCaProfile",
    "ServerProfile",
    "SubjectPublicKey",
    "device_certificate_builder",
    "device_spiffe_id",
    "issuing_ca_builder",
    "new_serial",
    "root_ca_builder",
    "server_certificate_builder",
]

ROOT_CA_VALIDITY = dt.timedelta(days=7305)  # 20 years of 365.25 days
ISSUING_CA_VALIDITY = dt.timedelta(days=1826)  # 5 years
DEVICE_VALIDITY = dt.timedelta(days=30)
SERVER_VALIDITY = dt.timedelta(days=90)
MAX_END_ENTITY_VALIDITY = dt.timedelta(days=398)  # the CA/B Forum TLS ceiling; devices renew long before

SERIAL_BITS = 159
"""RFC 5280 4.1.2.2: a positive INTEGER of at most 20 octets, so at most 159 bits; the CA/B Forum
Baseline Requirements 7.1 ask for at least 64 bits from a CSPRNG."""

_Z = "%Y-%m-%dT%H:%M:%SZ"
_MIN_RSA_BITS = 2048
_UB_COMMON_NAME = 64  # RFC 5280 Appendix A.1, ub-common-name
_UB_ORGANIZATION = 64  # ub-organization-name
_UB_URL = 2048
# SPIFFE ID spec 2.1 (trust domain) and 2.2 (path segments); a device id is one segment, and also
# the CN and the MQTT username, so it is kept to the characters safe in all three.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

SubjectPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class PublicationUrls:
    """Where relying parties fetch revocation data and the issuer's certificate (plain http, RFC 5280
    4.2.1.13 and 4.2.2.1: the data is signed, and https would need revocation checks of its own)."""

    crl: str
    ocsp: str
    ca_issuers: str

    def __post_init__(self) -> None:
        for url in (self.crl, self.ocsp, self.ca_issuers):
            _require_http_url(url)


@dataclass(frozen=True, slots=True)
class RootCaProfile:
    """The self-signed root: a trust anchor, offline-capable."""

    subject: x509.Name
    validity: dt.timedelta = ROOT_CA_VALIDITY

    def __post_init__(self) -> None:
        _require_ca_name(self.subject)
        _require_positive(self.validity)


@dataclass(frozen=True, slots=True)
class IssuingCaProfile:
    """An issuing CA under the root; ``crl_url`` and ``ca_issuers_url`` point at the root's CRL and
    certificate, when published."""

    subject: x509.Name
    validity: dt.timedelta = ISSUING_CA_VALIDITY
    crl_url: str | None = None
    ca_issuers_url: str | None = None

    def __post_init__(self) -> None:
        _require_ca_name(self.subject)
        _require_positive(self.validity)
        for url in (self.crl_url, self.ca_issuers_url):
            if url is not None:
                _require_http_url(url)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device's operational certificate for mTLS to the broker and the API."""

    trust_domain: str
    urls: PublicationUrls
    validity: dt.timedelta = DEVICE_VALIDITY
    organization: str | None = None

    def __post_init__(self) -> None:
        if _TRUST_DOMAIN.fullmatch(self.trust_domain) is None:
            raise ProfileInputRejected(
                f"trust domain {self.trust_domain[:64]!r} is not 1-255 of a-z 0-9 . _ -",
                hint="use a lowercase DNS-like name such as example.org",
            )
        _require_end_entity_validity(self.validity)
        _require_organization(self.organization)


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """A TLS server certificate for the MQTT broker or the API."""

    urls: PublicationUrls
    validity: dt.timedelta = SERVER_VALIDITY
    organization: str | None = None

    def __post_init__(self) -> None:
        _require_end_entity_validity(self.validity)
        _require_organization(self.organization)


def new_serial() -> int:
    """Return a random positive serial number of at most :data:`SERIAL_BITS` bits (never 0)."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


def device_spiffe_id(trust_domain: str, device_id: str) -> str:
    """Return ``spiffe://<trust_domain>/device/<device_id>``; raise ``ProfileInputRejected`` if one is bad."""
    if _TRUST_DOMAIN.fullmatch(trust_domain) is None:
        raise ProfileInputRejected(f"trust domain {trust_domain[:64]!r} is not 1-255 of a-z 0-9 . _ -")
    _require_device_id(device_id)
    return f"spiffe://{trust_domain}/device/{device_id}"


def root_ca_builder(
    profile: RootCaProfile, *, public_key: SubjectPublicKey, serial: int, now: dt.datetime
) -> x509.CertificateBuilder:
    """Return the builder of a self-signed root CA certificate."""
    not_before = _second(now)
    ski = x509.SubjectKeyIdentifier.from_public_key(_require_key(public_key))
    return (
        _base(
            profile.subject, profile.subject, public_key, serial, (not_before, not_before + profile.validity)
        )
        # RFC 5280 4.2.1.9: CA:true, critical; pathLen 1 allows only the issuing CA tier below.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(digital_signature=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )


def issuing_ca_builder(
    profile: IssuingCaProfile,
    *,
    public_key: SubjectPublicKey,
    issuer: x509.Certificate,
    serial: int,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    """Return the builder of an issuing CA certificate signed by ``issuer`` (the root).

    Raises ``CaError`` if the validity would not lie within the root's.
    """
    not_before, not_after = _validity_within(issuer, now, profile.validity)
    builder = (
        _base(profile.subject, issuer.subject, public_key, serial, (not_before, not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # digitalSignature too: the issuing CA signs OCSP responses itself (RFC 5280 4.2.1.3).
        .add_extension(_ca_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(_require_key(public_key)), critical=False)
        .add_extension(_authority_key_identifier(issuer), critical=False)
    )
    if profile.crl_url is not None:
        builder = builder.add_extension(_distribution_point(profile.crl_url), critical=False)
    if profile.ca_issuers_url is not None:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(profile.ca_issuers_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return builder


def device_certificate_builder(
    profile: DeviceProfile,
    *,
    device_id: str,
    public_key: SubjectPublicKey,
    issuer: x509.Certificate,
    serial: int,
    now: dt.datetime,
    crl_url: str | None = None,
) -> x509.CertificateBuilder:
    """Return the builder of device ``device_id``'s operational certificate, issued by ``issuer``.

    ``crl_url`` replaces ``profile.urls.crl`` when CRLs are partitioned and the serial's shard has
    its own URL. Raises ``ProfileInputRejected`` for a bad device id, key or URL, and ``CaError`` if
    the validity would not lie within the issuer's.
    """
    spiffe_id = device_spiffe_id(profile.trust_domain, device_id)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, device_id)]
    if profile.organization is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.organization))
    return _end_entity(
        x509.Name(attributes),
        # RFC 5280 4.2.1.6: non-critical because the subject is not empty.
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        public_key=public_key,
        issuer=issuer,
        serial=serial,
        not_before_after=_validity_within(issuer, now, profile.validity),
        urls=profile.urls,
        crl_url=profile.urls.crl if crl_url is None else _require_http_url(crl_url),
    )


def server_certificate_builder(
    profile: ServerProfile,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[IpAddress],
    public_key: SubjectPublicKey,
    issuer: x509.Certificate,
    serial: int,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    """Return the builder of a TLS server certificate for ``dns_names`` and ``ip_addresses``.

    The CN repeats the first name (the first DNS name, else the first address) for old clients;
    clients match the SANs (RFC 9525 6.3). Raises ``ProfileInputRejected`` for no names, a bad DNS
    name or key, and ``CaError`` if the validity would not lie within the issuer's.
    """
    for name in dns_names:
        _require_dns_name(name)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(address) for address in ip_addresses]
    if not names:
        raise ProfileInputRejected("a server certificate needs at least one DNS name or IP address")
    common_name = dns_names[0] if dns_names else str(ip_addresses[0])
    if len(common_name) > _UB_COMMON_NAME:
        raise ProfileInputRejected(
            f"the first name must be at most {_UB_COMMON_NAME} characters: it is the CN"
        )
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if profile.organization is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.organization))
    return _end_entity(
        x509.Name(attributes),
        x509.SubjectAlternativeName(names),
        ExtendedKeyUsageOID.SERVER_AUTH,
        public_key=public_key,
        issuer=issuer,
        serial=serial,
        not_before_after=_validity_within(issuer, now, profile.validity),
        urls=profile.urls,
        crl_url=profile.urls.crl,
    )


def _end_entity(
    subject: x509.Name,
    san: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    *,
    public_key: SubjectPublicKey,
    issuer: x509.Certificate,
    serial: int,
    not_before_after: tuple[dt.datetime, dt.datetime],
    urls: PublicationUrls,
    crl_url: str,
) -> x509.CertificateBuilder:
    """Return the builder of an end-entity certificate: the extensions devices and servers share."""
    key = _require_key(public_key)
    access = [
        x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp)),
        x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(urls.ca_issuers)
        ),
    ]
    return (
        _base(subject, issuer.subject, key, serial, not_before_after)
        # SPIFFE X.509-SVID 4.1 and 4.3: CA:false and digitalSignature, both critical.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_end_entity_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(_authority_key_identifier(issuer), critical=False)
        .add_extension(_distribution_point(crl_url), critical=False)
        .add_extension(x509.AuthorityInformationAccess(access), critical=False)
    )


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: SubjectPublicKey,
    serial: int,
    validity: tuple[dt.datetime, dt.datetime],
) -> x509.CertificateBuilder:
    not_before, not_after = validity
    if not 0 < serial < 1 << SERIAL_BITS:
        raise ProfileInputRejected(f"serial number must be a positive integer of at most {SERIAL_BITS} bits")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(_require_key(public_key))
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _ca_key_usage(*, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _end_entity_key_usage() -> x509.KeyUsage:
    # digitalSignature only: TLS 1.2 ECDHE and TLS 1.3 sign with the key for either key type.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """RFC 5280 4.2.1.1: the issuer's subject key identifier (keyIdentifier only)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound as exc:
        raise CaError(f"issuer {issuer.subject.rfc4514_string()} has no subject key identifier") from exc
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _distribution_point(url: str) -> x509.CRLDistributionPoints:
    name = x509.UniformResourceIdentifier(url)
    return x509.CRLDistributionPoints([x509.DistributionPoint([name], None, None, None)])


def _validity_within(
    issuer: x509.Certificate, now: dt.datetime, validity: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    """Return (notBefore, notAfter) starting at ``now``; raise ``CaError`` unless the issuer covers it."""
    not_before = _second(now)
    not_after = not_before + validity
    if not_before < issuer.not_valid_before_utc or not_after > issuer.not_valid_after_utc:
        raise CaError(
            f"validity {not_before:{_Z}} to {not_after:{_Z}} is outside issuer "
            f"{issuer.subject.rfc4514_string()}'s ({issuer.not_valid_before_utc:{_Z}} to "
            f"{issuer.not_valid_after_utc:{_Z}})",
            hint="rotate the issuing CA ('fleetguard ca rotate') or shorten the validity",
        )
    return not_before, not_after


def _second(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ProfileInputRejected("now must be a timezone-aware datetime")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _require_key(public_key: SubjectPublicKey) -> SubjectPublicKey:
    """Allow P-256, P-384 and RSA of at least 2048 bits (the issue's key policy)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise ProfileInputRejected(
                f"EC key on {public_key.curve.name} is not allowed: use P-256 or P-384"
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise ProfileInputRejected(
                f"RSA key of {public_key.key_size} bits is too small (minimum {_MIN_RSA_BITS})"
            )
    else:
        raise ProfileInputRejected(f"{type(public_key).__name__} keys are not allowed")
    return public_key


def _require_device_id(device_id: str) -> None:
    if _DEVICE_ID.fullmatch(device_id) is None:
        raise ProfileInputRejected(
            f"device id {device_id[:64]!r} is not 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')"
        )


def _require_dns_name(name: str) -> None:
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ProfileInputRejected(f"{name[:64]!r} is not a DNS host name (LDH labels, A-labels for IDNs)")


def _require_http_url(url: str) -> str:
    printable = url.isascii() and url.isprintable() and " " not in url
    if not printable or len(url) > _UB_URL or not (parts := urlsplit(url)).hostname or parts.scheme != "http":
        raise ProfileInputRejected(
            f"{url[:64]!r} is not an http:// URL of at most {_UB_URL} printable ASCII bytes"
        )
    return url


def _require_organization(organization: str | None) -> None:
    if organization is not None and not 0 < len(organization) <= _UB_ORGANIZATION:
        raise ProfileInputRejected(f"organization must be 1-{_UB_ORGANIZATION} characters")


def _require_ca_name(name: x509.Name) -> None:
    # RFC 5280 4.1.2.6: a CA's subject is a non-empty distinguished name.
    if not name.rdns:
        raise ProfileInputRejected("a CA needs a non-empty subject name")


def _require_positive(validity: dt.timedelta) -> None:
    if validity <= dt.timedelta(0):
        raise ProfileInputRejected("validity must be positive")


def _require_end_entity_validity(validity: dt.timedelta) -> None:
    if not dt.timedelta(0) < validity <= MAX_END_ENTITY_VALIDITY:
        raise ProfileInputRejected(
            f"validity must be positive and at most {MAX_END_ENTITY_VALIDITY.days} days"
        )
