"""The certificate service on a real installation: issuance, refusals, serial collisions, renewal,
revocation records, rotation and the PKCS#11 issuing key.

Each test opens a :class:`~fleetguard.installation.Runtime` on SQLite and (through scripts/test) on
PostgreSQL, initializes its CA with encrypted key files, and registers a few devices. CRL and OCSP
publication is tested in ``test_pki_publication.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.csr import MAX_CSR_BYTES
from fleetguard.pki.errors import (
    CaNotInitialized,
    CsrRejected,
    IssuanceRefused,
    PkiError,
    RenewalRefused,
    RenewalThrottled,
)
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord, CertificateService, CertificateStatus, FleetView
from fleetguard.store.models import CertificateRow
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"
PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"
PIN_ENV = "FLEETGUARD_PKCS11_PIN"
# conftest.py's SoftHSM tokens: fg-pin is opened and closed by tests, fg-test stays open all session.
HSM_TOKEN = "fg-pin"
HSM_PIN = "1234"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
OpenSsl = Callable[..., subprocess.CompletedProcess[str]]
Lint = Callable[[bytes, str], list[str]]


# --- an installation with a CA and three devices ---------------------------------------------------


def _open_runtime(settings: Settings) -> Runtime:
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=utc_now())
    for device_id in ("cam-1", "cam-2", "cam-3"):
        runtime.inventory.register(
            DeviceSpec(id=device_id, serial=f"SN-{device_id}", manufacturer="Acme"), actor="ops"
        )
    return runtime


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """An initialized installation with a CA (encrypted key files) and devices cam-1..cam-3."""
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    runtime = _open_runtime(Settings(data_dir=tmp_path / "data", database_url=database_url))
    yield runtime
    runtime.close()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    common_name: str = "cam-1",
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key or _key(), hashes.SHA256()).public_bytes(PEM)


def _rows(runtime: Runtime) -> int:
    with runtime.database.reading() as session:
        return int(session.execute(select(func.count()).select_from(CertificateRow)).scalar_one())


def _rows_with_serial(runtime: Runtime, serial: int) -> int:
    query = select(func.count()).select_from(CertificateRow).where(CertificateRow.serial == f"{serial:040x}")
    with runtime.database.reading() as session:
        return int(session.execute(query).scalar_one())


def _events(runtime: Runtime, action: str) -> list[dict[str, object]]:
    return [dict(entry.details()) for entry in runtime.log.entries(action=action, limit=1000)]


def _issue(runtime: Runtime, device_id: str = "cam-1", **kwargs: dt.datetime) -> CertificateRecord:
    return runtime.pki.issue_device(device_id, _csr(), actor="enrollment", **kwargs)


# --- issuance --------------------------------------------------------------------------------------


def test_identity_comes_from_the_inventory_and_only_the_key_from_the_csr(runtime: Runtime) -> None:
    key = _key()
    csr = _csr(
        key,
        common_name="cam-2",
        extensions=(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/device/cam-2"),
                    x509.DNSName("api.fleet.example.org"),
                ]
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ),
    )

    record = runtime.pki.issue_device("cam-1", csr, actor="enrollment")

    certificate = x509.load_der_x509_certificate(record.der)
    assert certificate.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/device/cam-1")]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certificate.public_key() == key.public_key()
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_every_certificate_is_recorded_with_its_event_before_it_is_returned(
    runtime: Runtime, database_url: str
) -> None:
    record = _issue(runtime)

    certificate = x509.load_der_x509_certificate(record.der)
    assert record.serial == certificate.serial_number
    assert record.device_id == "cam-1"
    assert record.issuer_id == runtime.pki.active_issuer_id()
    assert (record.not_before, record.not_after) == (
        certificate.not_valid_before_utc,
        certificate.not_valid_after_utc,
    )
    assert record.not_after - record.not_before == dt.timedelta(days=30)
    assert record.sha256 == hashlib.sha256(record.der).digest()
    assert record.status is CertificateStatus.VALID
    # Committed, not just staged: a second process (here a second Runtime) sees row and event.
    other = Runtime(runtime.settings)
    try:
        assert other.pki.certificate(record.serial) == record
        [event] = _events(other, "cert.issued")
        assert event == {
            "serial": f"{record.serial:040x}",
            "not_after": record.not_after.isoformat(),
            "sha256": record.sha256.hex(),
        }
        [entry] = other.log.entries(action="cert.issued")
        assert (entry.subject, entry.actor) == ("device:cam-1", "enrollment")
    finally:
        other.close()


def test_issued_certificates_are_listed_in_the_fleet_views(runtime: Runtime) -> None:
    now = utc_now()
    first, second = _issue(runtime, now=now), _issue(runtime, "cam-2", now=now)
    runtime.pki.revoke(second.serial, RevocationReason.SUPERSEDED, actor="ops")

    assert [r.serial for r in runtime.pki.certificates(device_id="cam-1")] == [first.serial]
    assert [r.serial for r in runtime.pki.certificates(view=FleetView.REVOKED)] == [second.serial]
    expiring = runtime.pki.certificates(view=FleetView.EXPIRING, within=dt.timedelta(days=31), now=now)
    assert [r.serial for r in expiring] == [first.serial]
    later = now + dt.timedelta(days=31)
    assert [r.serial for r in runtime.pki.certificates(view=FleetView.EXPIRED, now=later)] == [first.serial]


def test_issuing_before_the_ca_is_initialized_is_refused_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    try:
        runtime.inventory.register(DeviceSpec(id="cam-1", serial="SN-1", manufacturer="Acme"), actor="ops")
        log_size = runtime.log.size()

        with pytest.raises(
            CaNotInitialized, match=r"^the CA is not initialized \(run `fleetguard ca init`\)$"
        ):
            _issue(runtime)

        assert (_rows(runtime), runtime.log.size()) == (0, log_size)
    finally:
        runtime.close()


def _quarantine(runtime: Runtime, device_id: str) -> None:
    for action in (Action.PROVISION, Action.ACTIVATE, Action.QUARANTINE):
        runtime.inventory.transition(device_id, action, actor="ops")


def _decommission(runtime: Runtime, device_id: str) -> None:
    runtime.inventory.transition(device_id, Action.DECOMMISSION, actor="ops")


@pytest.mark.parametrize(
    ("move", "state"), [(_quarantine, "quarantined"), (_decommission, "decommissioned")], ids=["q", "d"]
)
def test_quarantined_or_decommissioned_device_gets_no_certificate(
    runtime: Runtime, move: Callable[[Runtime, str], None], state: str
) -> None:
    move(runtime, "cam-2")
    log_size = runtime.log.size()

    with pytest.raises(IssuanceRefused, match=f"^device 'cam-2' is {state}: no certificate is issued"):
        _issue(runtime, "cam-2")

    assert _rows(runtime) == 0
    assert runtime.log.size() == log_size


def _rsa_1024_csr() -> bytes:
    return _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505 - the weak key under test


def _badly_signed_csr() -> bytes:
    der = x509.load_pem_x509_csr(_csr()).public_bytes(DER)
    # The last octet is the low end of the ECDSA signature's s: the structure stays valid DER.
    return der[:-1] + bytes([der[-1] ^ 0x01])


def _ca_csr() -> bytes:
    return _csr(extensions=(x509.BasicConstraints(ca=True, path_length=None),))


def _oversized_csr() -> bytes:
    return _csr() + b"\n" * MAX_CSR_BYTES


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"\x30\x03garbage", r"malformed DER: .+"),
        (
            _badly_signed_csr,
            r"signature does not verify with the request's public key \(no proof of possession\)",
        ),
        (_rsa_1024_csr, r"RSA-1024 key is too weak: RSA keys need at least 2048 bits"),
        (
            _ca_csr,
            r"request asks for a CA certificate \(BasicConstraints CA:TRUE\); devices are never CAs",
        ),
        (_oversized_csr, r"request is 1\d{4} bytes, over the limit of 16384 bytes"),
    ],
    ids=["garbage", "bad-signature", "rsa-1024", "ca-true", "over-16KiB"],
)
def test_bad_csr_is_rejected_and_nothing_is_recorded(
    runtime: Runtime, make: Callable[[], bytes], reason: str
) -> None:
    csr = make()
    log_size = runtime.log.size()

    with pytest.raises(CsrRejected, match=r"^CSR rejected: ") as rejected:
        runtime.pki.issue_device("cam-1", csr, actor="enrollment")

    assert re.fullmatch(reason, rejected.value.reason), rejected.value.reason
    assert rejected.value.status == 422
    assert _rows(runtime) == 0
    assert runtime.log.size() == log_size
    assert _events(runtime, "cert.issued") == []


# --- serial collisions -----------------------------------------------------------------------------


def _service_with_serials(runtime: Runtime, serials: Iterator[int]) -> CertificateService:
    """A second service over the runtime's database, log and inventory, with a scripted serial source."""
    return CertificateService(
        runtime.database, runtime.log, runtime.inventory, runtime.settings, TRUST_DOMAIN,
        serials=lambda: next(serials),
    )  # fmt: skip


def test_serial_collision_is_retried_with_a_fresh_serial(runtime: Runtime) -> None:
    taken = _issue(runtime).serial
    fresh = taken ^ 1  # differs from the taken one; still 159 bits and positive
    service = _service_with_serials(runtime, iter([taken, fresh]))

    record = service.issue_device("cam-2", _csr(), actor="enrollment")

    assert record.serial == fresh
    assert x509.load_der_x509_certificate(record.der).serial_number == fresh
    assert _rows_with_serial(runtime, taken) == 1
    assert _rows_with_serial(runtime, fresh) == 1
    assert runtime.pki.certificate(taken).device_id == "cam-1"  # the first holder keeps its record
    assert [event["serial"] for event in _events(runtime, "cert.issued")] == [
        f"{taken:040x}",
        f"{fresh:040x}",
    ]
    service.keyring.close()


def test_serial_source_that_only_repeats_is_an_error_and_records_nothing(runtime: Runtime) -> None:
    taken = _issue(runtime).serial
    service = _service_with_serials(runtime, itertools.repeat(taken))
    log_size = runtime.log.size()

    with pytest.raises(PkiError, match=r"^no unique serial after 3 attempts "):
        service.issue_device("cam-2", _csr(), actor="enrollment")

    assert _rows(runtime) == 1
    assert runtime.log.size() == log_size
    service.keyring.close()


# --- renewal ---------------------------------------------------------------------------------------


def test_renewal_at_the_end_of_the_grace_window_is_allowed(runtime: Runtime) -> None:
    original = _issue(runtime)
    boundary = original.not_after + dt.timedelta(days=runtime.settings.renewal_grace_days)

    renewed = runtime.pki.renew_device(
        "cam-1", _csr(), serial=original.serial, actor="device:cam-1", now=boundary
    )

    assert renewed.renewed_from == original.serial
    assert renewed.not_before == boundary.replace(microsecond=0)
    assert renewed.device_id == "cam-1"
    [event] = _events(runtime, "cert.renewed")
    assert event["serial"] == f"{renewed.serial:040x}"


def test_renewal_past_the_grace_window_is_refused_and_records_nothing(runtime: Runtime) -> None:
    original = _issue(runtime)
    late = original.not_after + dt.timedelta(days=runtime.settings.renewal_grace_days, seconds=1)
    log_size = runtime.log.size()

    with pytest.raises(RenewalRefused, match=r"beyond the renewal grace of 30 days, 0:00:00") as refused:
        runtime.pki.renew_device("cam-1", _csr(), serial=original.serial, actor="device:cam-1", now=late)

    assert (refused.value.not_after, refused.value.now) == (original.not_after, late)
    assert _rows(runtime) == 1
    assert runtime.log.size() == log_size


def test_renewal_burst_of_one_device_is_throttled_with_a_retry_after(runtime: Runtime) -> None:
    original = _issue(runtime)
    burst = runtime.settings.device_renewal_burst
    for _ in range(burst):
        runtime.pki.renew_device("cam-1", _csr(), serial=original.serial, actor="device:cam-1")
    rows, log_size = _rows(runtime), runtime.log.size()

    with pytest.raises(RenewalThrottled, match=r"^renewal device-limited: too many renewals ") as throttled:
        runtime.pki.renew_device("cam-1", _csr(), serial=original.serial, actor="device:cam-1")

    # One token comes back every 3600 / device_renewals_per_hour seconds.
    assert 0 < throttled.value.retry_after_s <= 3600 / runtime.settings.device_renewals_per_hour
    assert throttled.value.status == 503
    assert (_rows(runtime), runtime.log.size()) == (rows, log_size)
    # Another device is not held back by cam-1's bucket.
    other = _issue(runtime, "cam-2")
    runtime.pki.renew_device("cam-2", _csr(), serial=other.serial, actor="device:cam-2")


def test_revoked_certificate_cannot_be_renewed(runtime: Runtime) -> None:
    original = _issue(runtime)
    runtime.pki.revoke(original.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    rows, log_size = _rows(runtime), runtime.log.size()

    with pytest.raises(IssuanceRefused, match=f"^certificate {original.serial:x} is revoked: enrol"):
        runtime.pki.renew_device("cam-1", _csr(), serial=original.serial, actor="device:cam-1")

    assert (_rows(runtime), runtime.log.size()) == (rows, log_size)


# --- revocation records ----------------------------------------------------------------------------


def test_revocation_is_recorded_with_its_event(runtime: Runtime) -> None:
    record = _issue(runtime)
    at = utc_now()

    revoked = runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops", now=at)

    assert revoked.status is CertificateStatus.REVOKED
    assert (revoked.revoked_at, revoked.reason) == (at, RevocationReason.KEY_COMPROMISE)
    assert runtime.pki.certificate(record.serial) == revoked
    [event] = _events(runtime, "cert.revoked")
    assert event == {"serial": f"{record.serial:040x}", "reason": "keyCompromise"}
    # Revoking again changes nothing and appends nothing.
    log_size = runtime.log.size()
    assert runtime.pki.revoke(record.serial, RevocationReason.SUPERSEDED, actor="ops") == revoked
    assert runtime.log.size() == log_size


def test_revoking_a_device_revokes_each_of_its_valid_certificates(runtime: Runtime) -> None:
    first, second, other = _issue(runtime), _issue(runtime), _issue(runtime, "cam-2")

    revoked = runtime.pki.revoke_device("cam-1", RevocationReason.CESSATION_OF_OPERATION, actor="ops")

    assert {r.serial for r in revoked} == {first.serial, second.serial}
    assert runtime.pki.certificate(other.serial).status is CertificateStatus.VALID
    assert len(_events(runtime, "cert.revoked")) == 2


# --- rotation --------------------------------------------------------------------------------------


def test_rotation_issues_from_the_new_ca_and_old_certificates_still_verify(
    runtime: Runtime, openssl: OpenSsl, tmp_path: Path
) -> None:
    old = _issue(runtime)
    old_issuer = runtime.pki.active_issuer_id()

    rotated = runtime.pki.rotate(actor="ops", now=utc_now())
    new = _issue(runtime, "cam-2")

    assert rotated.id != old_issuer
    assert new.issuer_id == rotated.id == runtime.pki.active_issuer_id()
    new_certificate = x509.load_der_x509_certificate(new.der)
    new_certificate.verify_directly_issued_by(rotated.certificate)
    statuses = {a.id: a.status for a in runtime.pki.authorities()}
    assert statuses == {"root": "active", old_issuer: "retired", rotated.id: "active"}
    bundle = tmp_path / "trust.pem"
    bundle.write_bytes(runtime.pki.trust_bundle(ChainFormat.PEM))
    for record in (old, new):
        leaf = tmp_path / f"{record.serial:x}.pem"
        leaf.write_bytes(record.pem())
        result = openssl("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", bundle, leaf)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{leaf}: OK"


# --- an issuing key in a PKCS#11 token ---------------------------------------------------------------


@pytest.fixture
def hsm_runtime(tmp_path: Path, softhsm: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """An installation whose issuing CA key is generated in SoftHSM (SQLite only: key labels are per token).

    It uses the ``fg-pin`` token: ``fg-test`` stays open in this process for the whole session
    (``hsm_token``), and a token is opened once per process.
    """
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    monkeypatch.setenv(PIN_ENV, HSM_PIN)
    module = softhsm.module  # type: ignore[attr-defined]
    settings = Settings(data_dir=tmp_path / "data", pkcs11_module=module, pkcs11_token=HSM_TOKEN)
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.inventory.register(DeviceSpec(id="cam-1", serial="SN-cam-1", manufacturer="Acme"), actor="ops")
    yield runtime
    runtime.close()


def test_hsm_issuing_key_signs_device_certificates(
    hsm_runtime: Runtime, openssl: OpenSsl, tmp_path: Path, pkilint_findings: Lint
) -> None:
    authorities = hsm_runtime.pki.initialize(actor="ops", now=utc_now(), hsm=True)

    [root, issuing] = authorities
    assert issuing.key_ref == f"pkcs11:{HSM_TOKEN}/{issuing.id}"
    assert root.key_ref.startswith("file:")  # the root stays a key file, so it can go offline
    record = _issue(hsm_runtime)
    certificate = x509.load_der_x509_certificate(record.der)
    certificate.verify_directly_issued_by(issuing.certificate)
    assert pkilint_findings(record.der, "cert") == []
    bundle, leaf = tmp_path / "trust.pem", tmp_path / "leaf.pem"
    bundle.write_bytes(hsm_runtime.pki.trust_bundle(ChainFormat.PEM))
    leaf.write_bytes(record.pem())
    assert openssl("verify", "-CAfile", bundle, leaf).returncode == 0
    hsm_runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    crl = x509.load_der_x509_crl(hsm_runtime.revocation.crl(issuing.id, record.crl_partition).der)
    assert crl.is_signature_valid(issuing.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(record.serial) is not None


# --- every certificate the service issues passes pkilint -------------------------------------------


def test_device_certificates_pass_pkilint(runtime: Runtime, pkilint_findings: Lint) -> None:
    p256, p384 = (
        _issue(runtime),
        runtime.pki.issue_device("cam-2", _csr(ec.generate_private_key(ec.SECP384R1())), actor="enrollment"),
    )
    rsa_record = runtime.pki.issue_device(
        "cam-3", _csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)), actor="enrollment"
    )
    renewed = runtime.pki.renew_device("cam-1", _csr(), serial=p256.serial, actor="device:cam-1")
    runtime.pki.rotate(actor="ops", now=utc_now())
    after_rotation = _issue(runtime)

    for record in (p256, p384, rsa_record, renewed, after_rotation):
        assert pkilint_findings(record.der, "cert") == [], record.serial
