"""Recording a certificate: the transaction that records it decides on the state as of its own commit.

The checks made before signing (device state, the renewed certificate's status) are made again in the
transaction that records the certificate, which runs on the driver (``fleetguard.store.driver``). A
quarantine or a revocation that commits while the certificate is being signed is simulated by the
serial source, which the service calls between its checks and the recording. On SQLite and (through
scripts/test) PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.errors import IssuanceRefused
from fleetguard.pki.profile import new_serial
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord, CertificateService, FleetView
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """An installation with a CA and the device cam-1, active."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=utc_now())
    runtime.inventory.register(DeviceSpec(id="cam-1", serial="SN-1", manufacturer="Acme"), actor="ops")
    for action in (Action.PROVISION, Action.ACTIVATE):
        runtime.inventory.transition("cam-1", action, actor="ops", reason="in service")
    yield runtime
    runtime.close()


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.DER)


def _service_meanwhile(runtime: Runtime, meanwhile: Callable[[], object]) -> CertificateService:
    """The installation's certificate service, whose serial source first runs ``meanwhile`` once."""
    pending = [meanwhile]

    def serials() -> int:
        while pending:
            pending.pop()()
        return new_serial()

    return CertificateService(
        runtime.database, runtime.log, runtime.inventory, runtime.settings, TRUST_DOMAIN, serials=serials
    )


def _recorded(runtime: Runtime) -> tuple[list[int], int]:
    certificates = runtime.pki.certificates(device_id="cam-1", view=FleetView.ALL)
    return sorted(record.serial for record in certificates), len(runtime.log.entries(action="cert.renewed"))


def _issued(runtime: Runtime, key: ec.EllipticCurvePrivateKey) -> CertificateRecord:
    return runtime.pki.issue_device("cam-1", _csr(key), actor="ops")


def test_a_renewal_records_the_certificate_and_its_event_together(runtime: Runtime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    current = _issued(runtime, key)

    renewed = runtime.pki.renew_device("cam-1", _csr(key), serial=current.serial, actor="device:cam-1")

    assert runtime.pki.find_certificate(renewed.serial) == renewed
    assert renewed.renewed_from == current.serial
    (event,) = runtime.log.entries(action="cert.renewed")
    assert dict(event.details())["serial"] == f"{renewed.serial:040x}"
    assert x509.load_der_x509_certificate(renewed.der).public_key() == key.public_key()


def test_a_revocation_committed_while_the_renewal_is_signed_refuses_it(runtime: Runtime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    current = _issued(runtime, key)
    before = _recorded(runtime)

    def revoke() -> None:
        runtime.pki.revoke(current.serial, RevocationReason.KEY_COMPROMISE, actor="ops")

    service = _service_meanwhile(runtime, revoke)
    with pytest.raises(IssuanceRefused, match=f"^certificate {current.serial:x} is revoked: enrol"):
        service.renew_device("cam-1", _csr(key), serial=current.serial, actor="device:cam-1")

    assert _recorded(runtime) == before


def test_a_quarantine_committed_while_the_renewal_is_signed_refuses_it(runtime: Runtime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    current = _issued(runtime, key)
    before = _recorded(runtime)

    def quarantine() -> None:
        runtime.inventory.transition("cam-1", Action.QUARANTINE, actor="ops", reason="suspicious traffic")

    service = _service_meanwhile(runtime, quarantine)
    with pytest.raises(IssuanceRefused, match=r"^device 'cam-1' is quarantined: no certificate is issued"):
        service.renew_device("cam-1", _csr(key), serial=current.serial, actor="device:cam-1")

    assert _recorded(runtime) == before
