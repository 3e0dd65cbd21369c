"""EST served by worker processes (FLEETGUARD_EST_WORKERS > 1) on a real installation, over TLS.

The workers are real processes started by :class:`EstWorkers`; the client is Python's own TLS
client with the device's certificate. Their rate limits are the parent's, so a device's burst is
shared however its connections are spread over the workers.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import os
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.config import Settings
from fleetguard.enroll.est import decode_certs_only, encode_pkcs10_body
from fleetguard.enroll.est_workers import EstWorkers
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.service import FleetView
from fleetguard.types import utc_now

PEM = serialization.Encoding.PEM
DEVICE_ID = "cam-1"
BURST = 2


@dataclass(frozen=True)
class Served:
    workers: EstWorkers
    runtime: Runtime
    key: ec.EllipticCurvePrivateKey
    context: ssl.SSLContext

    def reenroll(self) -> tuple[int, bytes, str | None]:
        """simplereenroll on a new connection; return the status, the body and Retry-After."""
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, DEVICE_ID)]))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        host, port = self.workers.address
        connection = http.client.HTTPSConnection(host, port, context=self.context, timeout=20)
        try:
            connection.request(
                "POST", "/.well-known/est/simplereenroll", body=encode_pkcs10_body(csr),
                headers={"Content-Type": "application/pkcs10"},
            )  # fmt: skip
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Retry-After")
        finally:
            connection.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """cam-1 with a certificate, and EST served by two workers on a loopback port."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")  # the workers inherit it
    settings = Settings(
        data_dir=tmp_path / "data", pki_base_url="http://127.0.0.1:1/pki", device_renewal_burst=BURST
    )
    initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="test", now=utc_now() - dt.timedelta(days=1))
    runtime.pki.issue_server("est", ["localhost"], [ipaddress.IPv4Address("127.0.0.1")], actor="test")
    runtime.inventory.register(DeviceSpec(serial="SN-1", manufacturer="acme", id=DEVICE_ID), actor="test")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, DEVICE_ID)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    record = runtime.pki.issue_device(DEVICE_ID, csr, actor="test")
    client = tmp_path / "client"
    client.mkdir()
    (client / "device.pem").write_bytes(record.pem())
    (client / "device.key.pem").write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (client / "root.pem").write_bytes(runtime.pki.authorities()[0].certificate.public_bytes(PEM))
    context = ssl.create_default_context(cafile=client / "root.pem")
    context.load_cert_chain(client / "device.pem", client / "device.key.pem")
    workers = EstWorkers(runtime, host="127.0.0.1", port=0, count=2)
    workers.start()
    try:
        yield Served(workers, runtime, key, context)
    finally:
        workers.stop()
        runtime.close()


def _renewed(served: Served) -> list[int]:
    records = served.runtime.pki.certificates(view=FleetView.ALL, device_id=DEVICE_ID, limit=100)
    return [record.serial for record in records if record.renewed_from is not None]


def test_workers_renew_and_share_the_parents_device_burst(served: Served) -> None:
    answers = [served.reenroll() for _ in range(BURST + 1)]

    assert [status for status, _, _ in answers] == [200] * BURST + [503]
    issued = [decode_certs_only(body)[0] for _, body, _ in answers[:BURST]]
    assert sorted(certificate.serial_number for certificate in issued) == sorted(_renewed(served))
    assert all(certificate.public_key() == served.key.public_key() for certificate in issued)
    assert int(answers[-1][2] or 0) >= 1  # Retry-After: the device's bucket is empty
    entries = served.runtime.log.entries(action="cert.renewed", limit=10)
    assert len(entries) == BURST


def test_a_worker_that_dies_is_replaced(served: Served) -> None:
    victim = served.workers.pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (victim in served.workers.pids or len(served.workers.pids) < 2):
        time.sleep(0.1)

    assert victim not in served.workers.pids
    assert len(served.workers.pids) == 2
    assert served.reenroll()[0] == 200


def test_stop_ends_every_worker_and_closes_the_port(served: Served) -> None:
    pids = served.workers.pids
    served.workers.stop()

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        served.reenroll()
