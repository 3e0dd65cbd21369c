"""The PKI served by uvicorn on a loopback port, checked by real clients: ``openssl req`` makes the CSR,
curl enrols the device and fetches the CRL from the URL in its certificate, ``openssl verify -crl_check``
and ``openssl ocsp`` judge the chain, the CRL and the responder before and after a revocation.

Skipped when openssl or curl is missing, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prerequisites import tool

from fleetguard.api.app import create_app
from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.types import utc_now

PEM_CHAIN = "application/pem-certificate-chain"
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Served:
    url: str
    token: str
    runtime: Runtime
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

    def curl(self, path_or_url: str, *args: str, output: str = "reply.bin") -> bytes:
        """Fetch with curl (with the admin token for /v1 paths); fail on an HTTP error; return the body."""
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        token = ["--header", f"Authorization: Bearer {self.token}"] if "/v1/" in url else []
        self.run(
            "curl", "--silent", "--show-error", "--fail", "--max-time", "20", *token, *args, "-o", output, url
        )
        return (self.workdir / output).read_bytes()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A fresh installation with a CA, served by uvicorn in a thread; its PKI URLs name that server."""
    tool("curl")
    tool("openssl")
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    settings = Settings(data_dir=tmp_path / "data", pki_base_url=f"{url}/pki")
    _, token = initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    config = uvicorn.Config(create_app(runtime), log_level="warning", ws="none", http="h11", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.02)
    workdir = tmp_path / "client"
    workdir.mkdir()
    try:
        yield Served(url, token, runtime, workdir)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        runtime.close()


@dataclass(frozen=True)
class Enrolled:
    serial: int
    crl_url: str


def _enrol(served: Served) -> Enrolled:
    """Initialize the CA, register cam-1 and enrol it with an openssl-made key and CSR.

    Leaves dev.pem (the certificate), issuing.pem (its CA) and chain.pem (the trust bundle) behind.
    """
    served.curl("/v1/ca", "--json", "{}")
    served.curl(
        "/v1/devices", "--json", json.dumps({"id": "cam-1", "serial": "SN-1", "manufacturer": "acme"})
    )
    served.run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "dev.key", "-out", "dev.csr", "-subj", "/CN=evil/O=attacker",
    )  # fmt: skip
    chain = served.curl(
        "/v1/devices/cam-1/certificates",
        "--header", "Content-Type: application/x-pem-file",
        "--header", f"Accept: {PEM_CHAIN}",
        "--data-binary", "@dev.csr",
    )  # fmt: skip
    leaf, issuing = x509.load_pem_x509_certificates(chain)
    (served.workdir / "dev.pem").write_bytes(leaf.public_bytes(PEM))
    (served.workdir / "issuing.pem").write_bytes(issuing.public_bytes(PEM))
    served.curl("/v1/ca/chain?format=pem", output="chain.pem")
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    full_name = points[0].full_name
    assert full_name is not None
    crl_url = str(full_name[0].value)
    assert crl_url.startswith(f"{served.url}/pki/ca/issuing-1/crl/")
    assert leaf.subject.rfc4514_string() == "CN=cam-1"
    return Enrolled(leaf.serial_number, crl_url)


def _revoke(served: Served, serial: int) -> None:
    served.curl(f"/v1/certificates/{serial:x}/revocation", "--json", '{"reason": "keyCompromise"}')


def _verify_with_crl(served: Served, crl_url: str) -> subprocess.CompletedProcess[str]:
    served.curl(crl_url, output="crl.der")
    served.run("openssl", "crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem")
    command = ("openssl", "verify", "-crl_check", "-CAfile", "chain.pem", "-CRLfile", "crl.pem", "dev.pem")
    return served.run(*command, check=False)


def _ocsp(served: Served, *target: str) -> str:
    result = served.run(
        "openssl", "ocsp", "-issuer", "issuing.pem", *target, "-url", f"{served.url}/pki/ocsp",
        "-CAfile", "chain.pem", "-no_nonce",
    )  # fmt: skip
    assert "Response verify OK" in result.stderr, result.stderr
    return result.stdout


def test_openssl_verify_checks_the_crl_shard_named_in_the_certificate(served: Served) -> None:
    enrolled = _enrol(served)
    good = _verify_with_crl(served, enrolled.crl_url)
    assert (good.returncode, good.stdout.strip()) == (0, "dev.pem: OK"), good.stderr

    _revoke(served, enrolled.serial)

    revoked = _verify_with_crl(served, enrolled.crl_url)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr


def test_openssl_ocsp_says_good_then_revoked_and_unknown_for_a_serial_never_issued(served: Served) -> None:
    enrolled = _enrol(served)
    assert "dev.pem: good" in _ocsp(served, "-cert", "dev.pem")

    _revoke(served, enrolled.serial)

    answer = _ocsp(served, "-cert", "dev.pem")
    assert "dev.pem: revoked" in answer
    assert "Reason: keyCompromise" in answer
    assert "0x1234: unknown" in _ocsp(served, "-serial", "0x1234")
