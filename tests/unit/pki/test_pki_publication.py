"""Revocation publication on a real installation: CRL shards, delta CRLs, CRL numbers and OCSP.

Everything here is what :class:`~fleetguard.pki.publication.RevocationPublisher` serves for the
certificates the service issued, read back with ``cryptography``'s parsers and checked with pkilint.
Each test runs on SQLite and (through scripts/test) PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import create_issuing, create_root
from fleetguard.pki.crl import SignedCrl
from fleetguard.pki.errors import CertificateNotFound
from fleetguard.pki.keys import Curve, generate_software_key
from fleetguard.pki.publication import RevocationPublisher
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"
DER = serialization.Encoding.DER
SHA1 = hashes.SHA1()  # noqa: S303 - the CertID hash OCSP clients send by default (RFC 6960 4.1.1)
Lint = Callable[[bytes, str], list[str]]


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """An initialized installation with a CA (encrypted key files) and devices cam-1..cam-3."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=utc_now())
    for device_id in ("cam-1", "cam-2", "cam-3"):
        runtime.inventory.register(
            DeviceSpec(id=device_id, serial=f"SN-{device_id}", manufacturer="Acme"), actor="ops"
        )
    yield runtime
    runtime.close()


def _issue(runtime: Runtime, device_id: str = "cam-1") -> CertificateRecord:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(DER)
    )
    return runtime.pki.issue_device(device_id, csr, actor="enrollment")


def _issuer(runtime: Runtime, record: CertificateRecord) -> x509.Certificate:
    return runtime.pki.issuer(record.issuer_id)[0]


def _crl(signed: SignedCrl, issuer: x509.Certificate) -> x509.CertificateRevocationList:
    crl = x509.load_der_x509_crl(signed.der)
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == signed.number
    return crl


def _ocsp_request(record: CertificateRecord, issuer: x509.Certificate) -> bytes:
    certificate = x509.load_der_x509_certificate(record.der)
    return ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, SHA1).build().public_bytes(DER)


def _signed_response(der: bytes, issuer: x509.Certificate) -> ocsp.OCSPResponse:
    """Decode a successful response and check that ``issuer``'s own key signed it (RFC 6960 2.6)."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    public_key = issuer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public_key.verify(
        response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm)
    )
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    assert response.certificates == []  # no delegated responder certificate
    return response


def _ocsp(runtime: Runtime, record: CertificateRecord) -> ocsp.OCSPResponse:
    issuer = _issuer(runtime, record)
    return _signed_response(runtime.revocation.ocsp(_ocsp_request(record, issuer)), issuer)


# --- CRLs ------------------------------------------------------------------------------------------


def test_revocation_is_on_the_certificates_crl_shard_when_revoke_returns(runtime: Runtime) -> None:
    record, bystander = _issue(runtime), _issue(runtime, "cam-2")
    issuer = _issuer(runtime, record)
    before = runtime.revocation.crl(record.issuer_id, record.crl_partition)  # built and cached now
    assert _crl(before, issuer).get_revoked_certificate_by_serial_number(record.serial) is None

    revoked_at = utc_now()
    runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops", now=revoked_at)

    after = runtime.revocation.crl(record.issuer_id, record.crl_partition)
    assert after.number > before.number
    crl = _crl(after, issuer)
    entry = crl.get_revoked_certificate_by_serial_number(record.serial)
    assert entry is not None
    assert entry.revocation_date_utc == revoked_at.replace(microsecond=0)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    assert crl.get_revoked_certificate_by_serial_number(bystander.serial) is None
    # The certificate's distribution point is the shard that lists it, and the shard says so.
    certificate = x509.load_der_x509_certificate(record.der)
    [point] = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert point.full_name == [x509.UniformResourceIdentifier(after.url)]
    scope = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert scope.critical
    assert scope.value.full_name == [x509.UniformResourceIdentifier(after.url)]
    assert scope.value.only_contains_user_certs


def test_complete_crl_lists_revocations_of_every_shard(runtime: Runtime) -> None:
    records = [_issue(runtime, device_id) for device_id in ("cam-1", "cam-2", "cam-3")]
    for record in records:
        runtime.pki.revoke(record.serial, RevocationReason.SUPERSEDED, actor="ops")

    complete = runtime.revocation.crl(records[0].issuer_id, None)

    crl = _crl(complete, _issuer(runtime, records[0]))
    assert {entry.serial_number for entry in crl} == {record.serial for record in records}
    assert complete.url.endswith("/crl/full.crl")


def test_delta_crl_lists_the_new_revocation_against_its_base(runtime: Runtime) -> None:
    record = _issue(runtime)
    issuer = _issuer(runtime, record)
    base = runtime.revocation.crl(record.issuer_id, record.crl_partition)

    runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")

    delta = runtime.revocation.crl(record.issuer_id, record.crl_partition, delta=True)
    assert delta.base_number == base.number
    assert delta.number > base.number
    crl = _crl(delta, issuer)
    indicator = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical
    assert indicator.value.crl_number == base.number
    assert [entry.serial_number for entry in crl] == [record.serial]
    assert delta.url.endswith(f"/crl/{record.crl_partition}-delta.crl")
    # The full CRL points at its delta (RFC 5280 5.2.6).
    full = _crl(runtime.revocation.crl(record.issuer_id, record.crl_partition), issuer)
    [freshest] = full.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest.full_name == [x509.UniformResourceIdentifier(delta.url)]


def test_crl_numbers_strictly_increase_across_a_restart(runtime: Runtime) -> None:
    record = _issue(runtime)
    numbers = [runtime.revocation.crl(record.issuer_id, record.crl_partition).number]
    runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    numbers.append(runtime.revocation.crl(record.issuer_id, record.crl_partition).number)
    numbers.append(runtime.revocation.crl(record.issuer_id, record.crl_partition, delta=True).number)
    runtime.close()

    restarted = Runtime(runtime.settings)
    try:
        numbers.append(restarted.revocation.crl(record.issuer_id, record.crl_partition).number)
        numbers.append(restarted.revocation.crl(record.issuer_id, record.crl_partition, delta=True).number)
        numbers.append(restarted.revocation.crl(record.issuer_id, None).number)
    finally:
        restarted.close()

    assert numbers == sorted(set(numbers)), numbers


def test_crl_shard_out_of_range_is_not_found(runtime: Runtime) -> None:
    issuer_id = runtime.pki.active_issuer_id()
    partitions = runtime.settings.crl_partitions

    with pytest.raises(
        CertificateNotFound, match=f"^no CRL shard {partitions}: shards are 0..{partitions - 1}"
    ):
        runtime.revocation.crl(issuer_id, partitions)


def test_expired_revoked_certificates_leave_the_crl(runtime: Runtime) -> None:
    record = _issue(runtime)
    runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    # RFC 5280 3.3: kept on at least one CRL issued after the expiry, then dropped.
    just_expired = record.not_after + dt.timedelta(hours=1)
    long_expired = record.not_after + dt.timedelta(days=3)

    listed = []
    for moment in (just_expired, long_expired):
        publisher = RevocationPublisher(
            runtime.pki, runtime.database, runtime.settings, clock=lambda moment=moment: moment
        )
        crl = _crl(publisher.crl(record.issuer_id, record.crl_partition), _issuer(runtime, record))
        listed.append([entry.serial_number for entry in crl])

    assert listed == [[record.serial], []]


# --- OCSP ------------------------------------------------------------------------------------------


def test_ocsp_answers_revoked_as_soon_as_revoke_returns(runtime: Runtime) -> None:
    record = _issue(runtime)
    good = _ocsp(runtime, record)  # signed and cached: the pre-signed answer must not outlive this
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == record.serial
    assert _ocsp(runtime, record).tbs_response_bytes == good.tbs_response_bytes  # served from the cache

    revoked_at = utc_now()
    runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops", now=revoked_at)

    revoked = _ocsp(runtime, record)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_time_utc == revoked_at.replace(microsecond=0)
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    assert revoked.next_update_utc is not None
    assert revoked.next_update_utc - revoked.this_update_utc == dt.timedelta(
        hours=runtime.settings.ocsp_validity_hours
    )


def test_ocsp_for_a_serial_never_issued_is_unknown(runtime: Runtime) -> None:
    record = _issue(runtime)
    issuer = _issuer(runtime, record)
    real = ocsp.load_der_ocsp_request(_ocsp_request(record, issuer))
    never_issued = record.serial ^ (1 << 100)
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(real.issuer_name_hash, real.issuer_key_hash, never_issued, SHA1)
        .build()
    )

    response = _signed_response(runtime.revocation.ocsp(request.public_bytes(DER)), issuer)

    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert response.serial_number == never_issued


def test_ocsp_request_that_is_not_der_gets_malformed_request(runtime: Runtime) -> None:
    response = ocsp.load_der_ocsp_response(runtime.revocation.ocsp(b"\x30\x03not"))

    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_for_another_cas_certificate_is_unauthorized(runtime: Runtime) -> None:
    record = _issue(runtime)
    stranger_key = generate_software_key(Curve.P256)
    stranger_root_key = generate_software_key(Curve.P384)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    stranger_root = create_root(stranger_root_key, name, utc_now())
    stranger = create_issuing(
        stranger_root_key, stranger_root, stranger_key.public_key(), utc_now(), name=name
    )

    der = runtime.revocation.ocsp(_ocsp_request(record, stranger))

    assert ocsp.load_der_ocsp_response(der).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_retired_ca_keeps_answering_for_its_certificates_after_rotation(runtime: Runtime) -> None:
    old = _issue(runtime)
    old_issuer = _issuer(runtime, old)
    runtime.pki.rotate(actor="ops", now=utc_now())
    new = _issue(runtime, "cam-2")
    runtime.pki.revoke(old.serial, RevocationReason.SUPERSEDED, actor="ops")

    old_answer = _ocsp(runtime, old)  # checks the signature with the retired CA's key
    new_answer = _ocsp(runtime, new)

    assert old_answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert new_answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert old_answer.responder_key_hash != new_answer.responder_key_hash
    old_crl = _crl(runtime.revocation.crl(old.issuer_id, old.crl_partition), old_issuer)
    assert old_crl.issuer == old_issuer.subject
    assert old_crl.get_revoked_certificate_by_serial_number(old.serial) is not None


# --- several processes on one database ------------------------------------------------------------


def _poll(check: Callable[[], bool], *, within_s: float) -> float:
    """Return how many seconds it took until ``check()`` held; fail after ``within_s``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within_s:
            pytest.fail(f"not within {within_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_revocation_by_another_process_reaches_the_running_responder_within_a_second(
    runtime: Runtime,
) -> None:
    record = _issue(runtime)
    issuer = _issuer(runtime, record)
    assert _ocsp(runtime, record).certificate_status is ocsp.OCSPCertStatus.GOOD  # pre-signed and cached
    assert _crl(runtime.revocation.crl(record.issuer_id, record.crl_partition), issuer).next_update_utc

    cli = Runtime(runtime.settings)  # e.g. `fleetguard certs revoke` beside `fleetguard up`
    try:
        cli.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    finally:
        cli.close()

    def revoked_everywhere() -> bool:
        shard = _crl(runtime.revocation.crl(record.issuer_id, record.crl_partition), issuer)
        listed = shard.get_revoked_certificate_by_serial_number(record.serial) is not None
        return listed and _ocsp(runtime, record).certificate_status is ocsp.OCSPCertStatus.REVOKED

    assert _poll(revoked_everywhere, within_s=1.0) <= 1.0


def test_rotation_by_another_process_reaches_the_running_issuer_within_seconds(runtime: Runtime) -> None:
    _issue(runtime)  # the server has loaded its issuing CA
    cli = Runtime(runtime.settings)
    try:
        rotated = cli.pki.rotate(actor="ops", now=utc_now())
    finally:
        cli.close()

    # CertificateService re-reads which CA is active every _AUTHORITY_RECHECK_S (1 s).
    assert _poll(lambda: _issue(runtime, "cam-2").issuer_id == rotated.id, within_s=3.0) <= 3.0


# --- pkilint ---------------------------------------------------------------------------------------


def test_every_crl_and_ocsp_response_the_publisher_serves_passes_pkilint(
    runtime: Runtime, pkilint_findings: Lint
) -> None:
    revoked, good = _issue(runtime), _issue(runtime, "cam-2")
    issuer_id = revoked.issuer_id
    empty_shard = runtime.revocation.crl(issuer_id, revoked.crl_partition)
    empty_delta = runtime.revocation.crl(issuer_id, revoked.crl_partition, delta=True)
    runtime.pki.revoke(revoked.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    unspecified = _issue(runtime, "cam-3")
    runtime.pki.revoke(unspecified.serial, RevocationReason.UNSPECIFIED, actor="ops")
    crls = {
        "empty shard": empty_shard,
        "empty delta": empty_delta,
        "shard": runtime.revocation.crl(issuer_id, revoked.crl_partition),
        "delta": runtime.revocation.crl(issuer_id, revoked.crl_partition, delta=True),
        "complete": runtime.revocation.crl(issuer_id, None),
        "complete delta": runtime.revocation.crl(issuer_id, None, delta=True),
    }
    never_issued = ocsp.load_der_ocsp_request(_ocsp_request(good, _issuer(runtime, good)))
    unknown = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            never_issued.issuer_name_hash, never_issued.issuer_key_hash, good.serial ^ 1, SHA1
        )
        .build()
        .public_bytes(DER)
    )
    responses = {
        "good": runtime.revocation.ocsp(_ocsp_request(good, _issuer(runtime, good))),
        "revoked": runtime.revocation.ocsp(_ocsp_request(revoked, _issuer(runtime, revoked))),
        "unspecified": runtime.revocation.ocsp(_ocsp_request(unspecified, _issuer(runtime, unspecified))),
        "unknown": runtime.revocation.ocsp(unknown),
    }

    assert ocsp.load_der_ocsp_response(responses["unknown"]).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    findings = {name: pkilint_findings(crl.der, "crl") for name, crl in crls.items()}
    findings |= {name: pkilint_findings(der, "ocsp") for name, der in responses.items()}
    assert findings == {name: [] for name in findings}
