"""Fleet views page in their own order (expiry, then serial) without skipping or repeating."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.errors import CaNotInitialized, KeyBackendError, UnknownAuthority
from fleetguard.pki.service import FleetView
from fleetguard.types import utc_now


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "paging-test")
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    return Runtime(settings)


def test_before_ca_init_the_error_says_what_to_do(runtime: Runtime) -> None:
    with pytest.raises(CaNotInitialized, match=r"the CA is not initialized \(run `fleetguard ca init`\)"):
        runtime.pki.authority()
    assert CaNotInitialized.status == 409
    runtime.close()


def test_unknown_authority_is_not_found(runtime: Runtime) -> None:
    runtime.pki.initialize(actor="t", now=utc_now())
    with pytest.raises(UnknownAuthority, match="no CA 'issuing-9'"):
        runtime.pki.issuer("issuing-9")
    assert UnknownAuthority.status == 404
    runtime.close()


def test_pages_follow_expiry_then_serial(runtime: Runtime) -> None:
    start = utc_now()
    runtime.pki.initialize(actor="t", now=start)
    issued = []
    for n in range(7):
        runtime.inventory.register(DeviceSpec(id=f"d{n}", serial=f"S{n}", manufacturer="A"), actor="t")
        # Issue at different times so that expiry order differs from serial order.
        at = start + dt.timedelta(minutes=(n * 5) % 7)
        issued.append(runtime.pki.issue_device(f"d{n}", _csr(), actor="t", now=at))
    expected = [r.serial for r in sorted(issued, key=lambda r: (r.not_after, f"{r.serial:040x}"))]
    seen: list[int] = []
    after = None
    while page := runtime.pki.certificates(view=FleetView.ALL, limit=2, after=after):
        seen.extend(r.serial for r in page)
        after = page[-1].serial
    assert seen == expected
    runtime.close()


def test_an_interrupted_ca_init_can_be_run_again(runtime: Runtime) -> None:
    # The root key was made, then the issuing key failed (no PKCS#11 token is configured).
    with pytest.raises(KeyBackendError, match="no PKCS#11 token configured"):
        runtime.pki.initialize(actor="t", now=utc_now(), hsm=True)
    assert runtime.pki.authorities() == []
    authorities = runtime.pki.initialize(actor="t", now=utc_now())
    assert [(a.id, a.role) for a in authorities] == [("root", "root"), ("issuing-1", "issuing")]
    runtime.close()
