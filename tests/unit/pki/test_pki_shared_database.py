"""A revocation made by one process reaches the CRLs and OCSP answers another process serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.revocation import RevocationReason
from fleetguard.types import utc_now


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.DER)


def test_revocation_by_another_process_is_served_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "shared-db-test")
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    server, cli = Runtime(settings), Runtime(settings)
    try:
        server.pki.initialize(actor="t", now=utc_now())
        server.inventory.register(DeviceSpec(id="cam-1", serial="S1", manufacturer="A"), actor="t")
        record = server.pki.issue_device("cam-1", _csr(), actor="t")
        leaf = x509.load_der_x509_certificate(record.der)
        issuer = server.pki.authority().issuing
        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA256()).build()
        der_request = request.public_bytes(serialization.Encoding.DER)
        # The server has answered and cached both before the other process revokes.
        first = ocsp.load_der_ocsp_response(server.revocation.ocsp(der_request))
        assert first.certificate_status is ocsp.OCSPCertStatus.GOOD
        shard = server.revocation.crl(record.issuer_id, record.crl_partition)
        assert (
            x509.load_der_x509_crl(shard.der).get_revoked_certificate_by_serial_number(record.serial) is None
        )

        cli.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="cli")
        time.sleep(0.6)  # one sync interval (0.5 s)

        after = ocsp.load_der_ocsp_response(server.revocation.ocsp(der_request))
        assert after.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert after.revocation_reason is x509.ReasonFlags.key_compromise
        crl = x509.load_der_x509_crl(server.revocation.crl(record.issuer_id, record.crl_partition).der)
        assert crl.get_revoked_certificate_by_serial_number(record.serial) is not None
    finally:
        cli.close()
        server.close()
