"""Certificate profiles: the exact content of each certificate, pkilint on every one, bad input, serials."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Callable
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    SignatureAlgorithmOID,
)

from fleetguard.pki.ca import CertificateAuthority, create_issuing
from fleetguard.pki.errors import CaError, ProfileInputRejected
from fleetguard.pki.keys import Curve, SoftwareKey, generate_software_key
from fleetguard.pki.profile import (
    DEVICE_VALIDITY,
    ISSUING_CA_VALIDITY,
    ROOT_CA_VALIDITY,
    SERIAL_BITS,
    DeviceProfile,
    IssuingCaProfile,
    PublicationUrls,
    RootCaProfile,
    ServerProfile,
    device_certificate_builder,
    device_spiffe_id,
    new_serial,
    server_certificate_builder,
)

DER = serialization.Encoding.DER
SERIAL = 0x1234_5678_9ABC_DEF0_1122_3344_5566_7788_99AA  # 152 bits


T = TypeVar("T", bound=x509.ExtensionType)


def _ext(certificate: x509.Certificate, kind: type[T]) -> x509.Extension[T]:
    return certificate.extensions.get_extension_for_class(kind)


@pytest.fixture
def device_key() -> ec.EllipticCurvePublicKey:
    return generate_software_key(Curve.P256).public_key()


def test_device_certificate_has_exactly_the_identity_profile_fields(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    device_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
) -> None:
    cert = ca.issue_device_certificate(
        device_profile, device_id="dev-0042", public_key=device_key, serial=SERIAL, now=now
    )

    assert cert.version is x509.Version.v3
    assert cert.serial_number == SERIAL
    assert cert.issuer == ca.issuing.subject
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-0042")])
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert cert.not_valid_before_utc == now.replace(microsecond=0)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30)
    assert [e.oid for e in cert.extensions] == [
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectAlternativeName.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
        x509.CRLDistributionPoints.oid,
        x509.AuthorityInformationAccess.oid,
    ]
    san = _ext(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://fleet.example.org/device/dev-0042")]
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key_usage = _ext(cert, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not any(
        getattr(key_usage.value, flag)
        for flag in ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    )
    assert not key_usage.value.key_cert_sign
    assert not key_usage.value.crl_sign
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=False, path_length=None)
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        device_key
    )
    issuer_ski = _ext(ca.issuing, x509.SubjectKeyIdentifier).value
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    assert aki.authority_cert_issuer is None
    assert aki.authority_cert_serial_number is None
    (point,) = _ext(cert, x509.CRLDistributionPoints).value
    assert point.full_name == [x509.UniformResourceIdentifier("http://pki.fleet.example.org/crl/issuing.crl")]
    access = {(d.access_method, d.access_location) for d in _ext(cert, x509.AuthorityInformationAccess).value}
    assert access == {
        (
            AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier("http://pki.fleet.example.org/ocsp"),
        ),
        (
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier("http://pki.fleet.example.org/ca/issuing.der"),
        ),
    }
    cert.verify_directly_issued_by(ca.issuing)


def test_device_certificate_with_organization_and_shard_url(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    device_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
) -> None:
    profile = dataclasses.replace(device_profile, organization="Acme Fleet", validity=dt.timedelta(days=7))

    cert = ca.issue_device_certificate(
        profile,
        device_id="dev-1",
        public_key=device_key,
        serial=SERIAL,
        now=now,
        crl_url="http://pki.fleet.example.org/crl/7.crl",
    )

    assert cert.subject.rfc4514_string() == "CN=dev-1,O=Acme Fleet"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=7)
    (point,) = _ext(cert, x509.CRLDistributionPoints).value
    assert point.full_name == [x509.UniformResourceIdentifier("http://pki.fleet.example.org/crl/7.crl")]


def test_server_certificate_names_and_usage(
    ca: CertificateAuthority, publication_urls: PublicationUrls, now: dt.datetime
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()

    cert = ca.issue_server_certificate(
        ServerProfile(urls=publication_urls),
        dns_names=["broker.fleet.example.org", "localhost"],
        ip_addresses=[ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::1")],
        public_key=key,
        serial=SERIAL,
        now=now,
    )

    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker.fleet.example.org")])
    assert list(_ext(cert, x509.SubjectAlternativeName).value) == [
        x509.DNSName("broker.fleet.example.org"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90)


def test_server_certificate_for_an_address_only(
    ca: CertificateAuthority, publication_urls: PublicationUrls, now: dt.datetime
) -> None:
    cert = ca.issue_server_certificate(
        ServerProfile(urls=publication_urls),
        dns_names=[],
        ip_addresses=[ipaddress.ip_address("10.0.0.1")],
        public_key=generate_software_key(Curve.P256).public_key(),
        serial=SERIAL,
        now=now,
    )

    assert cert.subject.rfc4514_string() == "CN=10.0.0.1"


def test_root_and_issuing_ca_profiles(ca: CertificateAuthority, now: dt.datetime) -> None:
    root, issuing = ca.root, ca.issuing
    root_ski = _ext(root, x509.SubjectKeyIdentifier).value

    assert root.issuer == root.subject
    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    assert root.not_valid_after_utc - root.not_valid_before_utc == ROOT_CA_VALIDITY
    assert _ext(root, x509.BasicConstraints).critical
    assert _ext(root, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=1)
    root_usage = _ext(root, x509.KeyUsage)
    assert root_usage.critical
    assert (
        root_usage.value.key_cert_sign,
        root_usage.value.crl_sign,
        root_usage.value.digital_signature,
    ) == (
        True,
        True,
        False,
    )
    assert _ext(root, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest

    assert isinstance(issuing.public_key(), ec.EllipticCurvePublicKey)
    assert issuing.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384  # signed by P-384
    assert issuing.not_valid_before_utc == now.replace(microsecond=0)
    assert issuing.not_valid_after_utc - issuing.not_valid_before_utc == ISSUING_CA_VALIDITY
    assert _ext(issuing, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    assert _ext(issuing, x509.BasicConstraints).critical
    usage = _ext(issuing, x509.KeyUsage).value
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, True)
    assert _ext(issuing, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    with pytest.raises(x509.ExtensionNotFound):
        _ext(issuing, x509.CRLDistributionPoints)


def test_issuing_ca_with_the_roots_publication_urls(
    root_key: SoftwareKey,
    root_cert: x509.Certificate,
    make_ca_name: Callable[[str], x509.Name],
    now: dt.datetime,
) -> None:
    issuing = create_issuing(
        root_key,
        root_cert,
        generate_software_key(Curve.P256).public_key(),
        now,
        name=make_ca_name("issuing with urls"),
        crl_url="http://pki.fleet.example.org/crl/root.crl",
        ca_issuers_url="http://pki.fleet.example.org/ca/root.der",
    )

    (point,) = _ext(issuing, x509.CRLDistributionPoints).value
    assert point.full_name == [x509.UniformResourceIdentifier("http://pki.fleet.example.org/crl/root.crl")]
    (access,) = _ext(issuing, x509.AuthorityInformationAccess).value
    assert access.access_method == AuthorityInformationAccessOID.CA_ISSUERS


# --- pkilint -------------------------------------------------------------------------------------


def _every_profile(
    ca: CertificateAuthority,
    root_key: SoftwareKey,
    device_profile: DeviceProfile,
    make_ca_name: Callable[[str], x509.Name],
    now: dt.datetime,
) -> dict[str, x509.Certificate]:
    p256 = generate_software_key(Curve.P256).public_key()
    p384 = generate_software_key(Curve.P384).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    server = ServerProfile(urls=device_profile.urls, organization="Acme Fleet")
    return {
        "root": ca.root,
        "issuing": ca.issuing,
        "issuing with urls": create_issuing(
            root_key,
            ca.root,
            p256,
            now,
            name=make_ca_name("issuing with urls"),
            crl_url="http://pki.fleet.example.org/crl/root.crl",
            ca_issuers_url="http://pki.fleet.example.org/ca/root.der",
        ),
        "device P-256": ca.issue_device_certificate(
            device_profile, device_id="dev-1", public_key=p256, serial=new_serial(), now=now
        ),
        "device P-384 with O": ca.issue_device_certificate(
            dataclasses.replace(device_profile, organization="Acme Fleet"),
            device_id="3f2b8c4e-1d2a-4b6c-9e8f-0a1b2c3d4e5f",
            public_key=p384,
            serial=new_serial(),
            now=now,
        ),
        "device RSA": ca.issue_device_certificate(
            device_profile, device_id="SN-000123", public_key=rsa_key, serial=new_serial(), now=now
        ),
        "server DNS + IP": ca.issue_server_certificate(
            server,
            dns_names=["broker.fleet.example.org"],
            ip_addresses=[ipaddress.ip_address("192.0.2.1")],
            public_key=p256,
            serial=new_serial(),
            now=now,
        ),
        "server IP only": ca.issue_server_certificate(
            server,
            dns_names=[],
            ip_addresses=[ipaddress.ip_address("2001:db8::1")],
            public_key=rsa_key,
            serial=new_serial(),
            now=now,
        ),
    }


def test_every_profile_passes_pkilint(
    *,
    ca: CertificateAuthority,
    root_key: SoftwareKey,
    device_profile: DeviceProfile,
    make_ca_name: Callable[[str], x509.Name],
    now: dt.datetime,
    pkilint_findings: Callable[..., list[str]],
) -> None:
    certificates = _every_profile(ca, root_key, device_profile, make_ca_name, now)

    findings = {name: pkilint_findings(cert.public_bytes(DER), "cert") for name, cert in certificates.items()}

    assert findings == {name: [] for name in certificates}


def test_pkilint_only_objects_to_the_spiffe_uri_scheme(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    device_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    pkilint_findings: Callable[..., list[str]],
) -> None:
    # If pkilint learns that spiffe:// is a URI, this fails: drop the exception in conftest.py.
    cert = ca.issue_device_certificate(
        device_profile, device_id="dev-1", public_key=device_key, serial=SERIAL, now=now
    )

    assert pkilint_findings(cert.public_bytes(DER), "cert", strict=True) == [
        "certificate.tbsCertificate.extensions.3.extnValue.subjectAltName.0.uniformResourceIdentifier: "
        'pkix.invalid_uri_syntax (ERROR): Invalid URI syntax: "spiffe://fleet.example.org/device/dev-1"'
    ]


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id",
    ["", ".", "..", ".hidden", "a/b", "dev 1", "dev:1", "dév", "x" * 65, "dev\n1", "%2e%2e"],
)
def test_bad_device_ids_are_refused(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    device_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    device_id: str,
) -> None:
    with pytest.raises(ProfileInputRejected, match="device id"):
        device_certificate_builder(
            device_profile,
            device_id=device_id,
            public_key=device_key,
            issuer=ca.issuing,
            serial=SERIAL,
            now=now,
        )


@pytest.mark.parametrize(
    "device_id", ["a", "x" * 64, "3f2b8c4e-1d2a-4b6c-9e8f-0a1b2c3d4e5f", "SN_0001.rev-b"]
)
def test_good_device_ids(device_id: str) -> None:
    assert device_spiffe_id("example.org", device_id) == f"spiffe://example.org/device/{device_id}"


@pytest.mark.parametrize(
    "trust_domain", ["", "Example.org", "example.org:8443", "a/b", "exämple.org", "x" * 256]
)
def test_bad_trust_domains_are_refused(publication_urls: PublicationUrls, trust_domain: str) -> None:
    with pytest.raises(ProfileInputRejected, match="trust domain"):
        DeviceProfile(trust_domain=trust_domain, urls=publication_urls)


@pytest.mark.parametrize(
    "url",
    [
        "https://pki.example.org/crl",
        "ldap://pki.example.org/crl",
        "http://",
        "http:///crl",
        "http://pki.example.org/a b",
        "http://pki.exämple.org/crl",
        "http://pki.example.org/" + "x" * 2048,
    ],
)
def test_bad_publication_urls_are_refused(url: str) -> None:
    good = "http://pki.example.org/x"
    for urls in ((url, good, good), (good, url, good), (good, good, url)):
        with pytest.raises(ProfileInputRejected, match="is not an http:// URL"):
            PublicationUrls(*urls)


@pytest.mark.parametrize("validity", [dt.timedelta(0), dt.timedelta(seconds=-1), dt.timedelta(days=399)])
def test_end_entity_validity_is_bounded(publication_urls: PublicationUrls, validity: dt.timedelta) -> None:
    with pytest.raises(ProfileInputRejected, match="validity must be positive and at most 398 days"):
        DeviceProfile(trust_domain="example.org", urls=publication_urls, validity=validity)
    with pytest.raises(ProfileInputRejected, match="validity must be positive"):
        ServerProfile(urls=publication_urls, validity=validity)


def test_ca_profiles_need_a_subject(make_ca_name: Callable[[str], x509.Name]) -> None:
    with pytest.raises(ProfileInputRejected, match="non-empty subject"):
        RootCaProfile(subject=x509.Name([]))
    with pytest.raises(ProfileInputRejected, match="validity must be positive"):
        IssuingCaProfile(subject=make_ca_name("issuing"), validity=dt.timedelta(0))


def test_organization_is_bounded(publication_urls: PublicationUrls) -> None:
    with pytest.raises(ProfileInputRejected, match="organization must be 1-64"):
        DeviceProfile(trust_domain="example.org", urls=publication_urls, organization="x" * 65)


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: ec.generate_private_key(ec.SECP521R1()).public_key(), "secp521r1 is not allowed"),
        (lambda: ec.generate_private_key(ec.SECP192R1()).public_key(), "secp192r1 is not allowed"),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),  # noqa: S505
            "RSA key of 1024 bits is too small",
        ),
    ],
)
def test_weak_or_unexpected_subject_keys_are_refused(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    make_key: Callable[[], ec.EllipticCurvePublicKey | rsa.RSAPublicKey],
    message: str,
) -> None:
    with pytest.raises(ProfileInputRejected, match=message):
        ca.issue_device_certificate(
            device_profile, device_id="d", public_key=make_key(), serial=SERIAL, now=now
        )


@pytest.mark.parametrize("serial", [0, -1, 1 << SERIAL_BITS])
def test_serials_outside_159_bits_are_refused(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    device_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    serial: int,
) -> None:
    with pytest.raises(ProfileInputRejected, match="at most 159 bits"):
        ca.issue_device_certificate(
            device_profile, device_id="d", public_key=device_key, serial=serial, now=now
        )


def test_naive_now_is_refused(
    ca: CertificateAuthority, device_profile: DeviceProfile, device_key: ec.EllipticCurvePublicKey
) -> None:
    with pytest.raises(ProfileInputRejected, match="timezone-aware"):
        ca.issue_device_certificate(
            device_profile,
            device_id="d",
            public_key=device_key,
            serial=SERIAL,
            now=dt.datetime(2026, 3, 14, 12, 0),  # noqa: DTZ001 - the naive time is the point
        )


def test_server_certificate_needs_a_good_name(
    ca: CertificateAuthority,
    publication_urls: PublicationUrls,
    device_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
) -> None:
    profile = ServerProfile(urls=publication_urls)
    for dns_names, message in [
        ([], "at least one DNS name or IP address"),
        (["a..b"], "is not a DNS host name"),
        (["-broker.example.org"], "is not a DNS host name"),
        (["*.example.org"], "is not a DNS host name"),
        (["under_score.example.org"], "is not a DNS host name"),
        (["x" * 65 + ".example.org"], "is not a DNS host name"),
        (["a" * 60 + ".example.org"], "at most 64 characters"),
    ]:
        with pytest.raises(ProfileInputRejected, match=message):
            server_certificate_builder(
                profile,
                dns_names=dns_names,
                ip_addresses=[],
                public_key=device_key,
                issuer=ca.issuing,
                serial=SERIAL,
                now=now,
            )


def test_certificate_outliving_its_issuer_is_refused(
    ca: CertificateAuthority, device_profile: DeviceProfile, device_key: ec.EllipticCurvePublicKey
) -> None:
    late = ca.issuing.not_valid_after_utc - DEVICE_VALIDITY + dt.timedelta(seconds=1)

    with pytest.raises(CaError, match="is outside issuer") as raised:
        ca.issue_device_certificate(
            device_profile, device_id="d", public_key=device_key, serial=SERIAL, now=late
        )

    assert raised.value.hint == "rotate the issuing CA ('fleetguard ca rotate') or shorten the validity"


def test_certificate_before_its_issuer_is_refused(
    ca: CertificateAuthority, device_profile: DeviceProfile, device_key: ec.EllipticCurvePublicKey
) -> None:
    early = ca.issuing.not_valid_before_utc - dt.timedelta(seconds=1)

    with pytest.raises(CaError, match="is outside issuer"):
        ca.issue_device_certificate(
            device_profile, device_id="d", public_key=device_key, serial=SERIAL, now=early
        )


def test_last_full_validity_before_the_issuer_expires_is_allowed(
    ca: CertificateAuthority, device_profile: DeviceProfile, device_key: ec.EllipticCurvePublicKey
) -> None:
    last = ca.issuing.not_valid_after_utc - DEVICE_VALIDITY

    cert = ca.issue_device_certificate(
        device_profile, device_id="d", public_key=device_key, serial=SERIAL, now=last
    )

    assert cert.not_valid_after_utc == ca.issuing.not_valid_after_utc


# --- serial numbers ------------------------------------------------------------------------------


def test_serials_are_positive_distinct_and_at_most_159_bits() -> None:
    serials = [new_serial() for _ in range(10_000)]

    assert len(set(serials)) == len(serials)
    assert all(0 < serial < 1 << SERIAL_BITS for serial in serials)
    assert max(serial.bit_length() for serial in serials) == SERIAL_BITS
    # 20 octets at most once DER-encoded as a positive INTEGER (RFC 5280 4.1.2.2).
    assert all(len(serial.to_bytes(20, "big", signed=True)) == 20 for serial in serials)
