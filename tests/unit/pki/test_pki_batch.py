"""Batch issuance for operator re-issues: all certificates in one transaction, or none."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.errors import DeviceNotFound
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.errors import CsrRejected, IssuanceRefused
from fleetguard.types import utc_now


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "batch-test")
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    rt = Runtime(settings)
    rt.pki.initialize(actor="t", now=utc_now())
    rt.inventory.import_devices(
        [DeviceSpec(id=f"d{n}", serial=f"S{n}", manufacturer="A") for n in range(5)], actor="t"
    )
    return rt


def test_a_batch_records_every_certificate_with_its_event(runtime: Runtime) -> None:
    before = runtime.log.size()
    records = runtime.pki.issue_devices([(f"d{n}", _csr()) for n in range(5)], actor="ops")
    assert [r.device_id for r in records] == [f"d{n}" for n in range(5)]
    assert {r.subject for r in records} == {f"CN=d{n}" for n in range(5)}
    assert len(runtime.pki.certificates(limit=100)) == 5
    issued = [e for e in runtime.log.entries(after_seq=before, limit=100) if e.action == "cert.issued"]
    assert sorted(e.subject for e in issued) == [f"device:d{n}" for n in range(5)]
    runtime.close()


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda batch: batch.append(("d4", b"garbage")), CsrRejected, "malformed DER"),
        (lambda batch: batch.append(("ghost", _csr())), DeviceNotFound, "no device with id 'ghost'"),
    ],
)
def test_one_bad_request_issues_nothing(runtime: Runtime, mutate, error, message) -> None:  # type: ignore[no-untyped-def]
    batch = [(f"d{n}", _csr()) for n in range(3)]
    mutate(batch)
    before = runtime.log.size()
    with pytest.raises(error, match=message):
        runtime.pki.issue_devices(batch, actor="ops")
    assert runtime.pki.certificates(limit=100) == []
    assert runtime.log.size() == before
    runtime.close()


def test_a_quarantined_device_in_the_batch_issues_nothing(runtime: Runtime) -> None:
    for action in (Action.PROVISION, Action.ACTIVATE, Action.QUARANTINE):
        runtime.inventory.transition("d1", action, actor="t")
    with pytest.raises(IssuanceRefused, match="device 'd1' is quarantined"):
        runtime.pki.issue_devices([("d0", _csr()), ("d1", _csr())], actor="ops")
    assert runtime.pki.certificates(limit=100) == []
    runtime.close()
