"""Re-enrollment (``simplereenroll``) with the current operational certificate, on a real installation.

The device cam-1 holds a certificate issued by the installation's CA for its key; it presents that
certificate as its TLS client certificate with a CSR for the same subject and key. Every refusal is
checked for its exact reason, for no certificate issued, and for its ``enroll.refused`` entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core  # type: ignore[import-untyped]
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.config import Settings
from fleetguard.enroll import (
    EnrollmentLimits,
    EnrollmentRequest,
    EnrollmentService,
    EnrollmentThrottled,
    EnrollmentUnauthenticated,
    ReenrollRefused,
    reenrollment,
)
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.renewal import RateLimit
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord, FleetView
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"
DER = serialization.Encoding.DER
SOURCE = "203.0.113.5"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Device:
    runtime: Runtime
    service: EnrollmentService
    key: ec.EllipticCurvePrivateKey
    record: CertificateRecord
    now: dt.datetime

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.record.der)

    def request(
        self,
        csr: bytes | None = None,
        *,
        chain: tuple[x509.Certificate, ...] | None = None,
        source: str = SOURCE,
    ) -> EnrollmentRequest:
        return EnrollmentRequest(
            csr=csr or _csr(self.key),
            client_chain=(self.certificate,) if chain is None else chain,
            token=None,
            claimed_device_id=None,
            source=source,
        )

    def certificates(self) -> list[int]:
        return [r.serial for r in self.runtime.pki.certificates(view=FleetView.ALL, limit=1000)]

    def refusals(self) -> list[tuple[str, str, str]]:
        entries = self.runtime.log.entries(action="enroll.refused", limit=1000)
        return [(e.subject, e.reason, str(e.details()["operation"])) for e in entries]


def _csr(key: ec.EllipticCurvePrivateKey, name: x509.Name | None = None) -> bytes:
    subject = name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(DER)
    )


def _service(runtime: Runtime, limits: EnrollmentLimits | None = None) -> EnrollmentService:
    return EnrollmentService(
        runtime.database, runtime.log, runtime.inventory, runtime.pki, runtime.settings,
        limits=limits, monotonic=FakeMonotonic(),
    )  # fmt: skip


@pytest.fixture
def device(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Device]:
    """cam-1 with a certificate for its P-256 key, issued now."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    now = utc_now()
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, TRUST_DOMAIN, now=now)
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=now)
    runtime.inventory.register(DeviceSpec(id="cam-1", serial="SN-1", manufacturer="Acme"), actor="ops")
    key = ec.generate_private_key(ec.SECP256R1())
    record = runtime.pki.issue_device("cam-1", _csr(key), actor="ops", now=now)
    yield Device(runtime, _service(runtime), key, record, now)
    runtime.close()


def test_current_certificate_renews_with_the_same_key(device: Device) -> None:
    renewed = device.service.reenroll(device.request(), now=device.now)

    assert (renewed.device_id, renewed.renewed_from) == ("cam-1", device.record.serial)
    certificate = x509.load_der_x509_certificate(renewed.der)
    assert certificate.public_key() == device.key.public_key()
    assert certificate.subject == device.certificate.subject
    [entry] = device.runtime.log.entries(action="cert.renewed", limit=10)
    assert entry.actor == f"est:{SOURCE}"


def test_expired_certificate_renews_within_the_grace_window(device: Device) -> None:
    late = device.record.not_after + dt.timedelta(days=device.runtime.settings.renewal_grace_days)

    renewed = device.service.reenroll(device.request(), now=late)

    assert renewed.renewed_from == device.record.serial
    assert renewed.not_before == late.replace(microsecond=0)


def test_expired_certificate_beyond_the_grace_window_is_refused(device: Device) -> None:
    late = device.record.not_after + dt.timedelta(days=device.runtime.settings.renewal_grace_days, seconds=1)

    with pytest.raises(ReenrollRefused, match="beyond the renewal grace of 30 days") as refused:
        device.service.reenroll(device.request(), now=late)

    assert refused.value.status == 403
    assert refused.value.hint == "enrol the device again with its factory identity"
    assert device.certificates() == [device.record.serial]
    [(subject, reason, operation)] = device.refusals()
    assert (subject, operation) == ("device:cam-1", "simplereenroll")
    assert reason.startswith("certificate expired at ")


def test_revoked_certificate_is_refused(device: Device) -> None:
    device.runtime.pki.revoke(device.record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")

    with pytest.raises(ReenrollRefused, match=f"certificate {device.record.serial:x} is revoked"):
        device.service.reenroll(device.request(), now=device.now)

    assert device.certificates() == [device.record.serial]
    assert device.refusals() == [
        ("device:cam-1", f"certificate {device.record.serial:x} is revoked", "simplereenroll")
    ]


def test_csr_with_another_key_is_refused(device: Device) -> None:
    other = ec.generate_private_key(ec.SECP256R1())

    with pytest.raises(ReenrollRefused, match="the CSR's key differs from the certificate's"):
        device.service.reenroll(device.request(_csr(other)), now=device.now)

    assert device.certificates() == [device.record.serial]
    assert [reason for _, reason, _ in device.refusals()] == [
        "the CSR's key differs from the certificate's: re-enrollment renews the same key"
    ]


@pytest.mark.parametrize(
    "subject",
    [
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-2")]),
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                x509.NameAttribute(NameOID.COMMON_NAME, "cam-1"),
            ]
        ),
        # Same text, another string type: not identical (RFC 7030 4.2.2).
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1", _type=_ASN1Type.PrintableString)]),
    ],
    ids=["other-cn", "extra-o", "printable-string"],
)
def test_csr_with_another_subject_is_refused(device: Device, subject: x509.Name) -> None:
    with pytest.raises(ReenrollRefused, match=r"the CSR's subject differs from the certificate's \(RFC 7030"):
        device.service.reenroll(device.request(_csr(device.key, subject)), now=device.now)
    assert device.certificates() == [device.record.serial]


def test_tpm_style_csr_with_null_ecdsa_parameters_renews(device: Device) -> None:
    request = asn1_csr.CertificationRequest.load(_csr(device.key))
    tpm_style = bytes(
        asn1_csr.CertificationRequest(
            {
                "certification_request_info": request["certification_request_info"],
                "signature_algorithm": {
                    "algorithm": request["signature_algorithm"]["algorithm"].dotted,
                    "parameters": asn1_core.Null(),
                },
                "signature": request["signature"],
            }
        ).dump()
    )
    with pytest.raises(ValueError, match="Csr::signature_alg"):  # cryptography cannot load it
        x509.load_der_x509_csr(tpm_style)

    renewed = device.service.reenroll(device.request(tpm_style), now=device.now)
    assert renewed.renewed_from == device.record.serial


def test_certificate_not_issued_here_is_refused_even_with_our_serial(device: Device) -> None:
    # Same subject, key and serial as cam-1's certificate, but signed by someone else.
    impostor_ca = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(device.certificate.subject)
        .issuer_name(device.certificate.issuer)
        .public_key(device.key.public_key())
        .serial_number(device.record.serial)
        .not_valid_before(device.certificate.not_valid_before_utc)
        .not_valid_after(device.certificate.not_valid_after_utc)
        .sign(impostor_ca, hashes.SHA256())
    )

    with pytest.raises(ReenrollRefused, match="the client certificate was not issued by this installation"):
        device.service.reenroll(device.request(chain=(forged,)), now=device.now)

    assert device.certificates() == [device.record.serial]
    assert device.refusals() == [
        (
            f"enroll-source:{SOURCE}",
            "the client certificate was not issued by this installation",
            "simplereenroll",
        )
    ]


def test_reenroll_without_a_client_certificate_is_unauthenticated(device: Device) -> None:
    with pytest.raises(EnrollmentUnauthenticated, match="needs the current certificate") as caught:
        device.service.reenroll(device.request(chain=()), now=device.now)
    assert caught.value.status == 401
    assert device.certificates() == [device.record.serial]


def test_quarantined_device_cannot_renew(device: Device) -> None:
    for action in (Action.PROVISION, Action.ACTIVATE, Action.QUARANTINE):
        device.runtime.inventory.transition("cam-1", action, actor="ops")

    with pytest.raises(ReenrollRefused, match="device 'cam-1' is quarantined: no certificate is issued"):
        device.service.reenroll(device.request(), now=device.now)
    assert device.certificates() == [device.record.serial]


def test_renewal_burst_of_one_device_is_throttled(device: Device) -> None:
    for _ in range(device.runtime.settings.device_renewal_burst):
        device.service.reenroll(device.request(), now=device.now)

    with pytest.raises(EnrollmentThrottled, match="renewal device-limited: too many renewals") as throttled:
        device.service.reenroll(device.request(), now=device.now)

    assert throttled.value.status == 503
    assert 0 < (throttled.value.retry_after_s or 0) <= 3600 / device.runtime.settings.device_renewals_per_hour


def test_a_source_flooding_refused_reenrollments_is_throttled(device: Device) -> None:
    service = _service(device.runtime, EnrollmentLimits(per_source=RateLimit(rate_per_s=0.1, burst=2)))
    stranger = ec.generate_private_key(ec.SECP256R1())
    not_ours = (
        x509.CertificateBuilder()
        .subject_name(device.certificate.subject)
        .issuer_name(device.certificate.subject)
        .public_key(stranger.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(device.now - dt.timedelta(days=1))
        .not_valid_after(device.now + dt.timedelta(days=1))
        .sign(stranger, hashes.SHA256())
    )
    for _ in range(2):
        with pytest.raises(ReenrollRefused):
            service.reenroll(device.request(_csr(stranger), chain=(not_ours,)), now=device.now)

    for _ in range(3):
        with pytest.raises(
            EnrollmentThrottled, match=f"too many enrollment requests from {SOURCE}"
        ) as throttled:
            service.reenroll(device.request(_csr(stranger), chain=(not_ours,)), now=device.now)
        assert 0 < (throttled.value.retry_after_s or 0) <= 10.0

    # The flood is logged once; the device's own renewal, from the same address, still succeeds.
    assert len(device.refusals()) == 2 + 1
    assert service.reenroll(device.request(), now=device.now).renewed_from == device.record.serial


_KEY = ec.generate_private_key(ec.SECP256R1())
_PRINTABLE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"  # X.680 41.4
_ATTRIBUTE = st.builds(
    lambda oid, value: x509.NameAttribute(oid, value[0], _type=value[1]),
    st.sampled_from([NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME]),
    st.one_of(
        st.tuples(st.text(alphabet=_PRINTABLE, min_size=1, max_size=64), st.just(_ASN1Type.PrintableString)),
        st.tuples(
            st.text(
                st.characters(min_codepoint=0x20, max_codepoint=0x7FF, exclude_categories=["Cs"]),
                min_size=1,
                max_size=64,
            ),
            st.just(_ASN1Type.UTF8String),
        ),
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ATTRIBUTE, min_size=1, max_size=4), st.booleans())
def test_subjects_are_cut_out_exactly_as_encoded(
    attributes: list[x509.NameAttribute], long_serial: bool
) -> None:
    # The header walk of fleetguard.enroll.reenrollment against asn1crypto's full decode.
    subject = x509.Name(attributes)
    now = utc_now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "an issuing CA of some length")]))
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number() if long_serial else 1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(_KEY, hashes.SHA256())
    )
    csr = _csr(_KEY, subject)

    tbs = asn1_x509.Certificate.load(certificate.public_bytes(DER))["tbs_certificate"]
    assert reenrollment._certificate_subject(certificate) == tbs["subject"].dump()
    info = asn1_csr.CertificationRequest.load(csr)["certification_request_info"]
    assert reenrollment._csr_subject(csr) == info["subject"].dump()
