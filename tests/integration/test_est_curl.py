"""The EST server with real clients, as in RFC 7030's examples: curl speaks HTTP and TLS, openssl makes the
keys and CSRs and reads the certs-only PKCS#7 answers, coreutils' base64 does the transfer encoding.

The installation is real (database, event log, inventory, PKI with its CA and the ``est`` server
certificate) and so is the enrollment service. The CA is created 60 days in the past so that a device
certificate that expired while the device was offline can be issued, and then renewed over TLS.

Skipped when curl, openssl or base64 is missing, except under CI, where that is a failure.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prerequisites import tool

from fleetguard.config import Settings
from fleetguard.enroll.est_server import EstServer
from fleetguard.enroll.service import EnrollmentService
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import ChainFormat
from fleetguard.types import utc_now

PEM = serialization.Encoding.PEM
DEVICE_ID = "dev-1"


@dataclass(frozen=True)
class Est:
    url: str
    runtime: Runtime
    service: EnrollmentService
    workdir: Path

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a client in the work directory; return what it printed."""
        result = subprocess.run(
            [tool(command[0]), *command[1:]],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if check:
            assert result.returncode == 0, (command, result.stdout, result.stderr)
        return result

    def curl(self, operation: str, *args: str, output: str = "reply.b64") -> tuple[int, str]:
        """Call an EST operation with curl, trusting only the root; return the status and headers."""
        self.run(
            "curl", "--silent", "--show-error", "--max-time", "20", "--cacert", "root.pem",
            "--dump-header", "headers.txt", "--output", output, *args, f"{self.url}/{operation}",
        )  # fmt: skip
        headers = (self.workdir / "headers.txt").read_text()
        return int(headers.split(" ", 2)[1]), headers

    def certs_only(self, b64: str, pem: str) -> list[x509.Certificate]:
        """Decode a base64 certs-only PKCS#7 as RFC 7030's examples do: base64 -d | openssl pkcs7."""
        self.run("sh", "-c", f"base64 -d {b64} > {b64}.der")
        self.run("openssl", "pkcs7", "-inform", "DER", "-in", f"{b64}.der", "-print_certs", "-out", pem)
        return x509.load_pem_x509_certificates((self.workdir / pem).read_bytes())

    def csr(self, key: str, out: str, *, new_key: bool) -> None:
        """Make a base64 DER CSR for the device with openssl (``new_key``: a new P-256 key)."""
        keying = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key]
        self.run(
            "openssl", "req", "-new", *(keying if new_key else ["-key", key]), "-subj", f"/CN={DEVICE_ID}",
            "-outform", "DER", "-out", f"{out}.der",
        )  # fmt: skip
        self.run("sh", "-c", f"base64 {out}.der > {out}")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Est]:
    """An installation whose CA began 60 days ago, a registered device, and EST on a loopback port."""
    for program in ("curl", "openssl", "base64", "sh"):
        tool(program)
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data", pki_base_url="http://127.0.0.1:1/pki")
    initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="test", now=utc_now() - dt.timedelta(days=60))
    runtime.pki.issue_server("est", ["localhost"], [ipaddress.IPv4Address("127.0.0.1")], actor="test")
    runtime.inventory.register(DeviceSpec(serial="SN-1", manufacturer="acme", id=DEVICE_ID), actor="test")
    service = runtime.enroll  # the installation's own enrollment service, wired as the API's

    def trust_anchors() -> bytes:
        manufacturers = b"".join(ca.certificate.public_bytes(PEM) for ca in service.manufacturer_cas())
        return runtime.pki.trust_bundle(ChainFormat.PEM) + manufacturers

    servers = settings.data_dir / "pki" / "servers"
    server = EstServer(
        service,
        trust_anchors,
        lambda: runtime.pki.trust_bundle(ChainFormat.PEM),
        servers / "est.chain.pem",
        servers / "est.key.pem",
    )
    server.start()
    workdir = tmp_path / "client"
    workdir.mkdir()
    root = runtime.pki.authorities()[0].certificate
    (workdir / "root.pem").write_bytes(root.public_bytes(PEM))  # what a device is provisioned with
    try:
        yield Est(f"https://127.0.0.1:{server.address[1]}/.well-known/est", runtime, service, workdir)
    finally:
        server.stop()
        runtime.close()


def _token(served: Est) -> str:
    _, text = served.service.create_token(DEVICE_ID, ttl=dt.timedelta(hours=1), actor="test")
    return text


def _enroll(served: Est, token: str, *, output: str = "cert.b64") -> tuple[int, str]:
    return served.curl(
        "simpleenroll",
        "--data-binary", "@csr.b64",
        "--header", "Content-Type: application/pkcs10",
        "--header", "Content-Transfer-Encoding: base64",
        "--user", f"{DEVICE_ID}:{token}",
        output=output,
    )  # fmt: skip


def test_cacerts_piped_through_base64_and_openssl_pkcs7_gives_the_ca_certificates(served: Est) -> None:
    status, headers = served.curl("cacerts")
    assert status == 200, headers
    assert "content-type: application/pkcs7-mime; smime-type=certs-only" in headers.lower()
    certificates = served.certs_only("reply.b64", "cacerts.pem")
    expected = [a.certificate for a in served.runtime.pki.authorities()]
    assert set(certificates) == set(expected)


def test_simpleenroll_with_a_token_then_simplereenroll_with_the_certificate(served: Est) -> None:
    served.csr("dev.key", "csr.b64", new_key=True)
    status, headers = _enroll(served, _token(served))
    assert status == 200, (headers, (served.workdir / "cert.b64").read_text())
    [leaf] = served.certs_only("cert.b64", "dev.pem")
    assert leaf.subject.rfc4514_string() == f"CN={DEVICE_ID}"
    served.curl("cacerts", output="ca.b64")
    served.certs_only("ca.b64", "ca.pem")
    verified = served.run("openssl", "verify", "-CAfile", "ca.pem", "dev.pem")
    assert verified.stdout.strip() == "dev.pem: OK"

    served.csr("dev.key", "renew.b64", new_key=False)
    status, headers = served.curl(
        "simplereenroll",
        "--cert", "dev.pem", "--key", "dev.key",
        "--data-binary", "@renew.b64",
        "--header", "Content-Type: application/pkcs10",
        output="renewed.b64",
    )  # fmt: skip
    assert status == 200, (headers, (served.workdir / "renewed.b64").read_text())
    [renewed] = served.certs_only("renewed.b64", "renewed.pem")
    assert renewed.serial_number != leaf.serial_number
    assert served.runtime.pki.certificate(renewed.serial_number).renewed_from == leaf.serial_number


def test_a_used_token_is_401_with_the_basic_challenge(served: Est) -> None:
    served.csr("dev.key", "csr.b64", new_key=True)
    token = _token(served)
    assert _enroll(served, token)[0] == 200
    status, headers = _enroll(served, token, output="again.txt")
    assert status == 401
    assert 'www-authenticate: basic realm="fleetguard est"' in headers.lower()
    assert "token" in (served.workdir / "again.txt").read_text()


def test_without_credentials_simpleenroll_is_401(served: Est) -> None:
    served.csr("dev.key", "csr.b64", new_key=True)
    status, _ = served.curl(
        "simpleenroll", "--data-binary", "@csr.b64", "--header", "Content-Type: application/pkcs10",
        output="reply.txt",
    )  # fmt: skip
    assert status == 401


def test_a_certificate_that_expired_offline_renews_over_tls_within_the_grace_window(served: Est) -> None:
    served.csr("dev.key", "csr.b64", new_key=True)
    csr = (served.workdir / "csr.b64.der").read_bytes()
    days = served.runtime.settings.device_certificate_days
    expired = served.runtime.pki.issue_device(
        DEVICE_ID, csr, actor="test", now=utc_now() - dt.timedelta(days=days + 5)
    )
    assert expired.not_after < utc_now()
    (served.workdir / "old.pem").write_bytes(expired.pem())
    status, headers = served.curl(
        "simplereenroll",
        "--cert", "old.pem", "--key", "dev.key",
        "--data-binary", "@csr.b64",
        "--header", "Content-Type: application/pkcs10",
        output="renewed.b64",
    )  # fmt: skip
    assert status == 200, (headers, (served.workdir / "renewed.b64").read_text())
    [renewed] = served.certs_only("renewed.b64", "renewed.pem")
    assert renewed.not_valid_after_utc > utc_now()


def test_a_certificate_from_another_ca_fails_the_tls_handshake(served: Est) -> None:
    served.run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "rogue.key", "-out", "rogue.pem", "-subj", f"/CN={DEVICE_ID}", "-days", "1",
    )  # fmt: skip
    served.csr("rogue.key", "csr.b64", new_key=False)
    result = served.run(
        "curl", "--silent", "--max-time", "20", "--cacert", "root.pem", "--cert", "rogue.pem",
        "--key", "rogue.key", "--data-binary", "@csr.b64", "--header", "Content-Type: application/pkcs10",
        "--write-out", "%{http_code}", "--output", "reply.txt", f"{served.url}/simplereenroll", check=False,
    )  # fmt: skip
    # TLS 1.3 sends the client certificate after the client considers the handshake done, so curl
    # reports the server's alert as a TLS (35), send (55) or receive (56) failure: never an HTTP answer.
    assert (result.returncode, result.stdout) in {(35, "000"), (55, "000"), (56, "000")}
