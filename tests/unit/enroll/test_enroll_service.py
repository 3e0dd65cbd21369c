"""First enrollment on a real installation: factory certificates under zero-touch rules, the approval
queue, one-time tokens, flood limits, and the operator's controls.

Each test opens a :class:`~fleetguard.installation.Runtime` on SQLite and (through scripts/test) on
PostgreSQL with an initialized CA, and builds an :class:`EnrollmentService` over it with a fake
monotonic clock for the flood buckets. Manufacturers are made here with ``cryptography``: a root and an
issuing CA, and IDevIDs with ``serialNumber`` and ``OU`` (the model) in their subject. Every refusal
test checks the exact error, that no certificate was issued, and that the refusal is in the event log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.config import Settings
from fleetguard.enroll import (
    BadEnrollmentRequest,
    EnrollmentConflict,
    EnrollmentInputRejected,
    EnrollmentLimits,
    EnrollmentNotFound,
    EnrollmentOutcome,
    EnrollmentRefused,
    EnrollmentRequest,
    EnrollmentService,
    EnrollmentThrottled,
    EnrollmentUnauthenticated,
    FactoryCertificateRefused,
    Issued,
    ModelAttribute,
    Pending,
    RequestStatus,
    RuleMode,
    TokenRejected,
    TokenStatus,
    approvals,
)
from fleetguard.enroll.identity import MUD_URL_OID
from fleetguard.enroll.service import STALE_APPROVAL
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import DeviceFilter, DeviceSpec
from fleetguard.pki.errors import KeyBackendError
from fleetguard.pki.renewal import RateLimit
from fleetguard.pki.service import CertificateRecord, FleetView
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"
PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SOURCE = "192.0.2.10"
FOREVER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # IEEE 802.1AR 8.5


# --- manufacturers, made with cryptography ---------------------------------------------------------


def _ca(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3650))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Manufacturer:
    name: str
    root: x509.Certificate
    issuing: x509.Certificate
    issuing_key: ec.EllipticCurvePrivateKey

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(PEM)

    def idevid(
        self,
        serial: str,
        model: str,
        *,
        signer: ec.EllipticCurvePrivateKey | None = None,
        model_oid: x509.ObjectIdentifier = NameOID.ORGANIZATIONAL_UNIT_NAME,
        mud_url_der: bytes | None = None,
    ) -> tuple[x509.Certificate, ...]:
        """A factory certificate (serialNumber, the model in OU, no EKU or SAN) and its intermediate.

        ``mud_url_der`` is the DER value of an RFC 8520 MUD URL extension to include.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                x509.NameAttribute(model_oid, model),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            ]
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuing.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.issuing.not_valid_before_utc)
            .not_valid_after(FOREVER)
        )
        if mud_url_der is not None:
            leaf = leaf.add_extension(x509.UnrecognizedExtension(MUD_URL_OID, mud_url_der), critical=False)
        return (leaf.sign(signer or self.issuing_key, hashes.SHA256()), self.issuing)


def _manufacturer(name: str, now: dt.datetime) -> Manufacturer:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _ca(_ca_name(name, "IDevID Root"), root_key, None, root_key, now)
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    issuing = _ca(_ca_name(name, "IDevID Issuing"), issuing_key, root, root_key, now)
    return Manufacturer(name, root, issuing, issuing_key)


def _ca_name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} {common_name}"),
        ]
    )


# --- an installation with a CA and an enrollment service --------------------------------------------


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Setup:
    runtime: Runtime
    service: EnrollmentService
    acme: Manufacturer
    now: dt.datetime
    monotonic: FakeMonotonic


def _service(runtime: Runtime, monotonic: FakeMonotonic, limits: EnrollmentLimits) -> EnrollmentService:
    return EnrollmentService(
        runtime.database, runtime.log, runtime.inventory, runtime.pki, runtime.settings,
        on_commit=runtime.relay.pump, limits=limits, monotonic=monotonic,
    )  # fmt: skip


@pytest.fixture(scope="module")
def acme() -> Manufacturer:
    return _manufacturer("Acme", utc_now())


@pytest.fixture(scope="module")
def globex() -> Manufacturer:
    return _manufacturer("Globex", utc_now())


@pytest.fixture
def setup(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, acme: Manufacturer
) -> Iterator[Setup]:
    """Acme's root registered (model in OU), a CA, and device cam-1 (Acme ACME-1, model Cam-X)."""
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    now = utc_now()
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, TRUST_DOMAIN, now=now)
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=now)
    runtime.inventory.register(
        DeviceSpec(id="cam-1", serial="ACME-1", manufacturer="Acme", model="Cam-X"), actor="ops"
    )
    runtime.inventory.register(DeviceSpec(id="cam-2", serial="ACME-2", manufacturer="Acme"), actor="ops")
    monotonic = FakeMonotonic()
    service = _service(runtime, monotonic, EnrollmentLimits())
    service.add_manufacturer_ca("Acme", acme.root_pem, actor="ops", now=now)
    yield Setup(runtime, service, acme, now, monotonic)
    runtime.close()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(key: ec.EllipticCurvePrivateKey | None = None, common_name: str = "anything") -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key or _key(), hashes.SHA256())
    )
    return request.public_bytes(DER)


def _request(
    csr: bytes | None = None,
    *,
    chain: tuple[x509.Certificate, ...] = (),
    token: str | None = None,
    device: str | None = None,
    source: str = SOURCE,
) -> EnrollmentRequest:
    return EnrollmentRequest(
        csr=csr or _csr(), client_chain=chain, token=token, claimed_device_id=device, source=source
    )


def _issued(outcome: EnrollmentOutcome) -> CertificateRecord:
    assert isinstance(outcome, Issued), outcome
    return outcome.certificate


def _certificates(runtime: Runtime) -> list[CertificateRecord]:
    return runtime.pki.certificates(view=FleetView.ALL, limit=1000)


def _events(runtime: Runtime, action: str) -> list[tuple[str, str, str, dict[str, object]]]:
    entries = runtime.log.entries(action=action, limit=1000)
    return [(e.actor, e.subject, e.reason, dict(e.details())) for e in entries]


def _refusals(runtime: Runtime) -> list[str]:
    return [reason for _, _, reason, _ in _events(runtime, "enroll.refused")]


# --- factory certificates and zero-touch rules -----------------------------------------------------


def test_registered_device_with_a_factory_certificate_is_enrolled_automatically(setup: Setup) -> None:
    setup.service.set_rule("Acme", "Cam-X", RuleMode.AUTO, actor="ops", now=setup.now)
    key = _key()

    record = _issued(
        setup.service.enroll(_request(_csr(key), chain=setup.acme.idevid("ACME-1", "Cam-X")), now=setup.now)
    )

    assert record.device_id == "cam-1"
    certificate = x509.load_der_x509_certificate(record.der)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
    assert certificate.public_key() == key.public_key()
    assert setup.runtime.inventory.get("cam-1").state is State.PROVISIONED
    [(actor, subject, reason, data)] = _events(setup.runtime, "enroll.accepted")
    assert (actor, subject) == (f"est:{SOURCE}", "device:cam-1")
    assert reason == "rule Acme/Cam-X: the serial is registered"
    assert (data["method"], data["serial"], data["model"]) == ("factory", "ACME-1", "Cam-X")


def test_unknown_device_is_registered_by_a_rule_that_says_so(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, register_unknown=True, actor="ops", now=setup.now)

    record = _issued(
        setup.service.enroll(_request(chain=setup.acme.idevid("ACME-77", "Cam-Z")), now=setup.now)
    )

    [device] = setup.runtime.inventory.find(DeviceFilter(serial="ACME-77"))
    assert (device.manufacturer, device.model, device.state) == ("Acme", "Cam-Z", State.PROVISIONED)
    assert record.device_id == device.id


def _ia5(text: bytes) -> bytes:
    return bytes([0x16, len(text)]) + text


def test_the_mud_url_of_the_factory_certificate_becomes_the_devices(setup: Setup) -> None:
    # RFC 8520 section 10: the manufacturer puts the MUD URL in the IDevID; a new device gets it,
    # and a pre-registered device (cam-1, no MUD URL) takes it at its first enrollment.
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, register_unknown=True, actor="ops", now=setup.now)
    url = b"https://mud.acme.example/cam-z.json"
    chain = setup.acme.idevid("ACME-78", "Cam-Z", mud_url_der=_ia5(url))
    _issued(setup.service.enroll(_request(chain=chain), now=setup.now))
    [device] = setup.runtime.inventory.find(DeviceFilter(serial="ACME-78"))
    assert device.mud_url == url.decode()

    chain = setup.acme.idevid("ACME-1", "Cam-X", mud_url_der=_ia5(b"https://mud.acme.example/cam-x.json"))
    _issued(setup.service.enroll(_request(chain=chain), now=setup.now))
    assert setup.runtime.inventory.get("cam-1").mud_url == "https://mud.acme.example/cam-x.json"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (_ia5(b"http://mud.acme.example/x.json"), "not https"),
        (bytes([0x0C, 5]) + b"https", "a UTF8String, not an IA5String"),
        (_ia5(b"https://mud.acme.example/x y"), "a space"),
        (bytes([0x16, 40]) + b"https://short", "a length past the end"),
    ],
)
def test_a_malformed_mud_url_extension_refuses_the_enrollment(setup: Setup, value: bytes, why: str) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, register_unknown=True, actor="ops", now=setup.now)
    chain = setup.acme.idevid("ACME-79", "Cam-Z", mud_url_der=value)
    with pytest.raises(FactoryCertificateRefused, match="MUD URL extension is not an https URL"):
        setup.service.enroll(_request(chain=chain), now=setup.now)
    assert setup.runtime.inventory.find(DeviceFilter(serial="ACME-79")) == [], why
    assert _certificates(setup.runtime) == []


def test_unknown_device_is_refused_without_register_unknown(setup: Setup) -> None:
    setup.service.set_rule("Acme", "Cam-X", RuleMode.AUTO, actor="ops", now=setup.now)

    with pytest.raises(EnrollmentRefused, match="serial 'ACME-77' of 'Acme' is not registered") as refused:
        setup.service.enroll(_request(chain=setup.acme.idevid("ACME-77", "Cam-X")), now=setup.now)

    assert refused.value.status == 403
    assert _certificates(setup.runtime) == []
    assert setup.runtime.inventory.find(DeviceFilter(serial="ACME-77")) == []
    assert _refusals(setup.runtime) == ["serial 'ACME-77' of 'Acme' is not registered"]


def test_factory_certificate_from_an_unregistered_manufacturer_ca_is_refused_and_logged(
    setup: Setup, globex: Manufacturer
) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, register_unknown=True, actor="ops", now=setup.now)

    with pytest.raises(FactoryCertificateRefused, match="no registered manufacturer CA issued it"):
        setup.service.enroll(_request(chain=globex.idevid("ACME-1", "Cam-X")), now=setup.now)

    assert _certificates(setup.runtime) == []
    [(actor, subject, reason, data)] = _events(setup.runtime, "enroll.refused")
    assert (actor, subject) == (f"est:{SOURCE}", f"enroll-source:{SOURCE}")
    assert reason.startswith("no registered manufacturer CA issued it (issuer 'CN=Globex IDevID Issuing")
    assert data == {
        "operation": "simpleenroll", "code": "enroll-factory-certificate-refused", "status": 403,
        "source": SOURCE,
    }  # fmt: skip


def test_factory_certificate_with_a_forged_issuer_name_does_not_verify(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, register_unknown=True, actor="ops", now=setup.now)
    forged = setup.acme.idevid("ACME-1", "Cam-X", signer=_key())  # Acme's issuer name, another key

    with pytest.raises(FactoryCertificateRefused, match=r"the chain does not verify \(Acme: "):
        setup.service.enroll(_request(chain=forged), now=setup.now)
    assert _certificates(setup.runtime) == []


def test_manufacturer_ca_removed_is_no_longer_trusted(setup: Setup) -> None:
    setup.service.set_rule("Acme", "Cam-X", RuleMode.AUTO, actor="ops", now=setup.now)
    [ca] = setup.service.manufacturer_cas()

    setup.service.remove_manufacturer_ca(ca.id, actor="ops", now=setup.now)

    with pytest.raises(FactoryCertificateRefused, match="no registered manufacturer CA issued it"):
        setup.service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-X")), now=setup.now)
    assert [e[3]["ca"] for e in _events(setup.runtime, "enroll.manufacturer-ca-removed")] == [ca.id]


def test_factory_certificate_of_another_model_is_refused(setup: Setup) -> None:
    setup.service.set_rule("Acme", "Cam-X", RuleMode.AUTO, actor="ops", now=setup.now)

    with pytest.raises(EnrollmentRefused, match="no enrollment rule for 'Acme' model 'Cam-Y'"):
        setup.service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-Y")), now=setup.now)
    assert _certificates(setup.runtime) == []
    assert setup.runtime.inventory.get("cam-1").state is State.REGISTERED


def test_factory_certificate_that_contradicts_the_inventory_model_is_refused(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, actor="ops", now=setup.now)

    with pytest.raises(
        EnrollmentRefused, match="is for model 'Cam-Y'; the inventory records 'Cam-X'"
    ) as refused:
        setup.service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-Y")), now=setup.now)

    assert refused.value.device_id == "cam-1"
    assert _certificates(setup.runtime) == []
    assert [subject for _, subject, _, _ in _events(setup.runtime, "enroll.refused")] == ["device:cam-1"]


def test_quarantined_device_is_refused_even_with_a_rule(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, actor="ops", now=setup.now)
    for action in (Action.PROVISION, Action.ACTIVATE, Action.QUARANTINE):
        setup.runtime.inventory.transition("cam-1", action, actor="ops")

    with pytest.raises(EnrollmentRefused, match="device 'cam-1' is quarantined"):
        setup.service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-X")), now=setup.now)
    assert _certificates(setup.runtime) == []


def test_idevid_without_a_serial_number_is_refused(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.AUTO, register_unknown=True, actor="ops", now=setup.now)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Cam-X")]))
        .issuer_name(setup.acme.issuing.subject)
        .public_key(_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(setup.acme.issuing.not_valid_before_utc)
        .not_valid_after(FOREVER)
        .sign(setup.acme.issuing_key, hashes.SHA256())
    )

    with pytest.raises(
        FactoryCertificateRefused, match="the subject holds 0 serialNumber attributes, not one"
    ):
        setup.service.enroll(_request(chain=(leaf, setup.acme.issuing)), now=setup.now)
    assert _certificates(setup.runtime) == []


def test_model_attribute_is_chosen_per_manufacturer(setup: Setup, globex: Manufacturer) -> None:
    setup.service.add_manufacturer_ca(
        "Globex", globex.root_pem, actor="ops", model_attribute=ModelAttribute.CN
    )
    setup.service.set_rule("Globex", "Sensor", RuleMode.AUTO, actor="ops")
    setup.runtime.inventory.register(
        DeviceSpec(id="sensor-1", serial="G-1", manufacturer="Globex"), actor="ops"
    )

    chain = globex.idevid("G-1", "Sensor", model_oid=NameOID.COMMON_NAME)
    record = _issued(setup.service.enroll(_request(chain=chain), now=setup.now))

    assert record.device_id == "sensor-1"
    # Globex's certificates name no model in OU, and Acme's rules do not apply to Globex devices.
    with pytest.raises(FactoryCertificateRefused, match="the subject holds 0 CN attributes, not one"):
        setup.service.enroll(_request(chain=globex.idevid("G-1", "Sensor")), now=setup.now)


# --- the approval queue ----------------------------------------------------------------------------


def test_pending_request_is_approved_then_handed_out(setup: Setup) -> None:
    setup.service.set_rule("Acme", "Cam-Q", RuleMode.APPROVE, actor="ops", now=setup.now)
    chain = setup.acme.idevid("ACME-9", "Cam-Q")
    key = _key()

    first = setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now)
    again = setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now)

    assert isinstance(first, Pending)
    assert first.retry_after_s == 60
    assert again == first
    assert _certificates(setup.runtime) == []
    [queued] = setup.service.requests()
    assert (queued.id, queued.status, queued.manufacturer, queued.model, queued.device_serial) == (
        first.request_id, RequestStatus.PENDING, "Acme", "Cam-Q", "ACME-9",
    )  # fmt: skip
    assert queued.source == SOURCE
    assert queued.device_id is None
    assert x509.load_der_x509_csr(queued.csr).public_key() == key.public_key()

    record = setup.service.approve(first.request_id, actor="alice", now=setup.now)

    [device] = setup.runtime.inventory.find(DeviceFilter(serial="ACME-9"))
    assert record.device_id == device.id
    assert device.state is State.PROVISIONED
    assert setup.service.request(first.request_id).certificate_serial == record.serial
    delivered = _issued(setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now))
    assert delivered.serial == record.serial
    assert len(_certificates(setup.runtime)) == 1
    assert [a[0] for a in _events(setup.runtime, "enroll.approved")] == ["alice"]
    assert len(_events(setup.runtime, "enroll.queued")) == 1


def test_concurrent_first_requests_of_one_device_queue_one_request(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.service.set_rule("Acme", "Cam-Q", RuleMode.APPROVE, actor="ops", now=setup.now)
    chain = setup.acme.idevid("ACME-9", "Cam-Q")
    key = _key()
    first = setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now)
    assert isinstance(first, Pending)
    # The second request read the queue before the first committed (PostgreSQL's read committed lets
    # both through): its two lookups see no pending request, so it tries to insert one of its own.
    real = approvals._latest
    blind = iter((None, None))
    monkeypatch.setattr(approvals, "_latest", lambda *args: next(blind, real(*args)))

    second = setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now)

    assert second == first
    assert next(blind, "spent") == "spent"  # the race was taken: both blind lookups were used
    [queued] = setup.service.requests()
    assert queued.id == first.request_id
    assert len(_events(setup.runtime, "enroll.queued")) == 1


def test_pending_request_repeated_with_another_key_conflicts(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.APPROVE, actor="ops", now=setup.now)
    chain = setup.acme.idevid("ACME-9", "Cam-Q")
    setup.service.enroll(_request(chain=chain), now=setup.now)

    with pytest.raises(EnrollmentConflict, match="awaits approval with another key") as conflict:
        setup.service.enroll(_request(chain=chain), now=setup.now)

    assert conflict.value.status == 409
    assert len(setup.service.requests()) == 1


def test_rejected_request_is_refused_from_then_on(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.APPROVE, actor="ops", now=setup.now)
    chain = setup.acme.idevid("ACME-1", "Cam-X")
    pending = setup.service.enroll(_request(chain=chain), now=setup.now)
    assert isinstance(pending, Pending)

    rejected = setup.service.reject(pending.request_id, "not ours", actor="alice", now=setup.now)

    assert (rejected.status, rejected.reason, rejected.decided_by) == (
        RequestStatus.REJECTED,
        "not ours",
        "alice",
    )
    with pytest.raises(
        EnrollmentRefused, match=f"request {pending.request_id} was rejected by an operator: not ours"
    ):
        setup.service.enroll(_request(chain=chain), now=setup.now)
    with pytest.raises(EnrollmentConflict, match="is rejected already"):
        setup.service.approve(pending.request_id, actor="bob", now=setup.now)
    assert _certificates(setup.runtime) == []
    assert setup.service.requests() == []
    [(actor, subject, reason, _)] = _events(setup.runtime, "enroll.rejected")
    assert (actor, subject, reason) == ("alice", "device:cam-1", "not ours")


def test_approval_needs_a_pending_request_and_a_rejection_a_reason(setup: Setup) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.APPROVE, actor="ops", now=setup.now)
    pending = setup.service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-X")), now=setup.now)
    assert isinstance(pending, Pending)

    with pytest.raises(EnrollmentNotFound, match="no enrollment request 'nope'"):
        setup.service.approve("nope", actor="alice")
    with pytest.raises(EnrollmentInputRejected, match="a rejection needs a reason"):
        setup.service.reject(pending.request_id, " ", actor="alice")
    setup.service.approve(pending.request_id, actor="alice", now=setup.now)
    with pytest.raises(EnrollmentConflict, match="is approved already"):
        setup.service.approve(pending.request_id, actor="bob", now=setup.now)
    assert len(_certificates(setup.runtime)) == 1


def test_failed_issuance_on_approval_leaves_the_request_pending(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.service.set_rule("Acme", "*", RuleMode.APPROVE, actor="ops", now=setup.now)
    pending = setup.service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-X")), now=setup.now)
    assert isinstance(pending, Pending)

    def unavailable(*_args: object, **_kwargs: object) -> CertificateRecord:
        raise KeyBackendError("token removed")

    monkeypatch.setattr(setup.runtime.pki, "issue_device", unavailable)
    with pytest.raises(KeyBackendError, match="token removed"):
        setup.service.approve(pending.request_id, actor="alice", now=setup.now)

    assert setup.service.request(pending.request_id).status is RequestStatus.PENDING
    [(_, _, reason, data)] = _events(setup.runtime, "enroll.failed")
    assert (reason, data) == ("token removed", {"error": "KeyBackendError"})


def test_queue_is_bounded(setup: Setup) -> None:
    service = _service(
        setup.runtime, setup.monotonic, EnrollmentLimits(max_pending=1, pending_retry_after_s=7)
    )
    service.set_rule("Acme", "*", RuleMode.APPROVE, actor="ops", now=setup.now)
    service.enroll(_request(chain=setup.acme.idevid("ACME-1", "Cam-X")), now=setup.now)

    with pytest.raises(EnrollmentThrottled, match="1 enrollment requests await approval already") as full:
        service.enroll(_request(chain=setup.acme.idevid("ACME-2", "Cam-X")), now=setup.now)
    assert full.value.retry_after_s == 7


# --- one-time tokens -------------------------------------------------------------------------------


def test_token_enrolls_its_device_once_and_a_replay_is_refused(setup: Setup) -> None:
    info, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)
    assert token.startswith(f"fge_{info.id}_")

    record = _issued(setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now))

    assert record.device_id == "cam-1"
    [listed] = setup.service.tokens(device_id="cam-1")
    assert listed.status(setup.now) is TokenStatus.USED
    assert listed.used_source == SOURCE
    with pytest.raises(TokenRejected, match=r"^enrollment token rejected: already used") as replay:
        setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now)
    assert replay.value.status == 401
    assert [r.serial for r in _certificates(setup.runtime)] == [record.serial]
    assert _refusals(setup.runtime) == ["already used"]
    [(_, subject, _, data)] = _events(setup.runtime, "enroll.accepted")
    assert (subject, data["method"], data["token"]) == ("device:cam-1", "token", info.id)


def test_expired_token_is_refused(setup: Setup) -> None:
    _, token = setup.service.create_token("cam-1", ttl=dt.timedelta(minutes=5), actor="ops", now=setup.now)

    with pytest.raises(TokenRejected, match="expired at "):
        setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now + dt.timedelta(minutes=5))
    assert _certificates(setup.runtime) == []


def test_token_for_another_device_is_refused_and_stays_usable(setup: Setup) -> None:
    _, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)

    with pytest.raises(TokenRejected, match="the token was issued for another device") as refused:
        setup.service.enroll(_request(token=token, device="cam-2"), now=setup.now)

    assert refused.value.device_id == "cam-2"
    assert _certificates(setup.runtime) == []
    assert (
        _issued(setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now)).device_id
        == "cam-1"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("fgt_0123456789ab_" + "A" * 43, "malformed token: expected fge_<id>_<secret>"),
        ("fge_0123456789ab_" + "A" * 43, "unknown token"),
    ],
)
def test_malformed_and_unknown_tokens_are_refused(setup: Setup, text: str, reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        setup.service.enroll(_request(token=text, device="cam-1"), now=setup.now)
    assert _refusals(setup.runtime) == [reason]


def test_token_with_a_wrong_secret_is_unknown(setup: Setup) -> None:
    info, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)
    forged = f"fge_{info.id}_{'B' * 43}"
    assert forged != token

    with pytest.raises(TokenRejected, match="unknown token"):
        setup.service.enroll(_request(token=forged, device="cam-1"), now=setup.now)
    assert setup.service.tokens()[0].status(setup.now) is TokenStatus.ACTIVE


def test_revoked_token_is_refused(setup: Setup) -> None:
    info, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)
    setup.service.revoke_token(info.id, actor="ops", now=setup.now)

    with pytest.raises(TokenRejected, match="revoked"):
        setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now)
    assert _certificates(setup.runtime) == []


def test_token_for_a_quarantined_device_is_refused_and_not_spent(setup: Setup) -> None:
    _, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)
    for action in (Action.PROVISION, Action.ACTIVATE, Action.QUARANTINE):
        setup.runtime.inventory.transition("cam-1", action, actor="ops")

    with pytest.raises(EnrollmentRefused, match="device 'cam-1' is quarantined"):
        setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now)

    assert setup.service.tokens()[0].status(setup.now) is TokenStatus.ACTIVE
    assert _certificates(setup.runtime) == []


def test_bad_csr_is_a_bad_request_and_spends_no_token(setup: Setup) -> None:
    _, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)

    with pytest.raises(BadEnrollmentRequest, match="CSR rejected: malformed DER") as bad:
        setup.service.enroll(_request(b"\x30\x03\x02\x01\x00", token=token, device="cam-1"), now=setup.now)

    assert bad.value.status == 400
    assert setup.service.tokens()[0].status(setup.now) is TokenStatus.ACTIVE


def test_failed_issuance_gives_the_token_back(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    _, token = setup.service.create_token("cam-1", ttl=dt.timedelta(hours=1), actor="ops", now=setup.now)

    def unavailable(*_args: object, **_kwargs: object) -> CertificateRecord:
        raise KeyBackendError("token removed")

    with monkeypatch.context() as patch:
        patch.setattr(setup.runtime.pki, "issue_device", unavailable)
        with pytest.raises(KeyBackendError, match="token removed"):
            setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now)

    assert setup.service.tokens()[0].status(setup.now) is TokenStatus.ACTIVE
    assert len(_events(setup.runtime, "enroll.failed")) == 1
    assert (
        _issued(setup.service.enroll(_request(token=token, device="cam-1"), now=setup.now)).device_id
        == "cam-1"
    )


def test_token_lifetime_and_device_are_checked_at_creation(setup: Setup) -> None:
    with pytest.raises(EnrollmentInputRejected, match="token lifetime must be between"):
        setup.service.create_token("cam-1", ttl=dt.timedelta(days=31), actor="ops")
    setup.runtime.inventory.transition("cam-2", Action.DECOMMISSION, actor="ops")
    with pytest.raises(EnrollmentConflict, match="device 'cam-2' is decommissioned: it may not enroll"):
        setup.service.create_token("cam-2", ttl=dt.timedelta(hours=1), actor="ops")
    assert setup.service.tokens() == []


# --- authentication and floods ---------------------------------------------------------------------


def test_request_without_credentials_is_unauthenticated(setup: Setup) -> None:
    with pytest.raises(
        EnrollmentUnauthenticated, match="no client certificate and no enrollment token"
    ) as caught:
        setup.service.enroll(_request(), now=setup.now)

    assert caught.value.status == 401
    assert _certificates(setup.runtime) == []
    assert _refusals(setup.runtime) == ["no client certificate and no enrollment token"]


def test_flood_from_one_source_is_throttled_with_a_retry_after(setup: Setup) -> None:
    service = _service(
        setup.runtime, setup.monotonic, EnrollmentLimits(per_source=RateLimit(rate_per_s=0.5, burst=3))
    )
    for _ in range(3):
        with pytest.raises(EnrollmentUnauthenticated):
            service.enroll(_request(), now=setup.now)

    for _ in range(5):
        with pytest.raises(
            EnrollmentThrottled, match=f"too many enrollment requests from {SOURCE}"
        ) as throttled:
            service.enroll(_request(), now=setup.now)
        assert throttled.value.status == 503
        assert 0 < (throttled.value.retry_after_s or 0) <= 2.0

    # Another source is not held back, and the flood is logged once, not once per request.
    with pytest.raises(EnrollmentUnauthenticated):
        service.enroll(_request(source="198.51.100.7"), now=setup.now)
    assert len(_events(setup.runtime, "enroll.refused")) == 3 + 1 + 1
    setup.monotonic.now += 2.0
    with pytest.raises(EnrollmentUnauthenticated):
        service.enroll(_request(), now=setup.now)


# --- operator controls -----------------------------------------------------------------------------


def test_manufacturer_ca_input_is_checked(setup: Setup, globex: Manufacturer) -> None:
    with pytest.raises(EnrollmentConflict, match="is registered already"):
        setup.service.add_manufacturer_ca("Acme", setup.acme.root_pem, actor="ops")
    with pytest.raises(EnrollmentConflict, match="names models by ou, not cn"):
        setup.service.add_manufacturer_ca(
            "Acme", setup.acme.issuing.public_bytes(PEM), actor="ops", model_attribute=ModelAttribute.CN
        )
    leaf, _ = globex.idevid("G-1", "Sensor")
    with pytest.raises(EnrollmentInputRejected, match="is not a CA"):
        setup.service.add_manufacturer_ca("Globex", leaf.public_bytes(PEM), actor="ops")
    with pytest.raises(EnrollmentInputRejected, match="is not PEM certificates"):
        setup.service.add_manufacturer_ca("Globex", b"-----BEGIN CERTIFICATE-----\nnope\n", actor="ops")
    with pytest.raises(EnrollmentInputRejected, match="is not 1-64 printable"):
        setup.service.add_manufacturer_ca("G" * 65, globex.root_pem, actor="ops")
    assert [ca.manufacturer for ca in setup.service.manufacturer_cas()] == ["Acme"]


def test_rules_are_set_replaced_and_removed(setup: Setup) -> None:
    setup.service.set_rule("Acme", "Cam-X", RuleMode.APPROVE, actor="ops", now=setup.now)
    replaced = setup.service.set_rule("Acme", "Cam-X", RuleMode.AUTO, register_unknown=True, actor="ops")

    assert [(r.model, r.mode, r.register_unknown) for r in setup.service.rules()] == [
        ("Cam-X", RuleMode.AUTO, True)
    ]
    assert replaced.created_at == setup.now
    with pytest.raises(EnrollmentInputRejected, match="register_unknown applies to auto rules only"):
        setup.service.set_rule("Acme", "Cam-Y", RuleMode.APPROVE, register_unknown=True, actor="ops")
    setup.service.remove_rule("Acme", "Cam-X", actor="ops")
    with pytest.raises(EnrollmentNotFound, match="no enrollment rule for 'Acme' model 'Cam-X'"):
        setup.service.remove_rule("Acme", "Cam-X", actor="ops")
    assert setup.service.rules() == []
    assert len(_events(setup.runtime, "enroll.rule-set")) == 2


def test_an_approval_that_crashed_before_its_certificate_is_finished_by_the_devices_next_request(
    setup: Setup,
) -> None:
    setup.service.set_rule("Acme", "Cam-X", RuleMode.APPROVE, actor="ops", now=setup.now)
    chain = setup.acme.idevid("ACME-1", "Cam-X")
    key = _key()
    pending = setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now)
    assert isinstance(pending, Pending)
    # The operator's approval claims the request, then the process dies before issuing.
    setup.service._queue.claim(pending.request_id, device_id="cam-1", actor="alice", now=setup.now)

    soon = setup.service.enroll(_request(_csr(key), chain=chain), now=setup.now + dt.timedelta(seconds=30))
    assert soon == Pending(pending.request_id, 60)  # the approval may still be issuing: wait
    assert _certificates(setup.runtime) == []

    later = setup.now + STALE_APPROVAL + dt.timedelta(seconds=1)
    record = _issued(setup.service.enroll(_request(_csr(key), chain=chain), now=later))

    assert record.device_id == "cam-1"
    assert x509.load_der_x509_certificate(record.der).public_key() == key.public_key()
    assert setup.service.request(pending.request_id).certificate_serial == record.serial
    assert [s for _, s, _, _ in _events(setup.runtime, "enroll.approval_resumed")] == ["device:cam-1"]
    again = _issued(setup.service.enroll(_request(_csr(key), chain=chain), now=later))
    assert again.serial == record.serial  # handed out again, not issued twice
    assert len(_certificates(setup.runtime)) == 1
