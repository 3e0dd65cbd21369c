"""Attacks on the PKI, each named after what the attacker tries.

The attacker is a device (or someone holding a device's key) talking to the certificate service, or a
relying party's peer asking the OCSP responder. Each test goes through the installation's real
services, asserts the exact refusal, and checks that nothing was recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asn1crypto import csr as asn1_csr  # type: ignore[import-untyped]
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select

from fleetguard.config import Settings
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import create_issuing, create_root
from fleetguard.pki.errors import CsrRejected, IssuanceRefused
from fleetguard.pki.keys import Curve, generate_software_key
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord
from fleetguard.store.models import CertificateRow
from fleetguard.types import utc_now

TRUST_DOMAIN = "fleet.example.org"
DER = serialization.Encoding.DER
SHA1 = hashes.SHA1()  # noqa: S303 - the CertID hash OCSP clients send by default (RFC 6960 4.1.1)
UNAUTHORIZED = bytes.fromhex("3003 0a01 06")  # OCSPResponse { responseStatus unauthorized (6) }


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, TRUST_DOMAIN, now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="ops", now=utc_now())
    for device_id in ("cam-1", "cam-admin"):
        runtime.inventory.register(
            DeviceSpec(id=device_id, serial=f"SN-{device_id}", manufacturer="Acme"), actor="ops"
        )
    yield runtime
    runtime.close()


def _csr_der(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    common_name: str = "cam-1",
    extensions: tuple[x509.ExtensionType, ...] = (),
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    signer = key or ec.generate_private_key(ec.SECP256R1())
    return builder.sign(signer, algorithm or hashes.SHA256()).public_bytes(DER)  # type: ignore[arg-type]


def _state(runtime: Runtime) -> tuple[int, int]:
    """(certificate rows, event log size): what a refused request must leave unchanged."""
    with runtime.database.reading() as session:
        rows = int(session.execute(select(func.count()).select_from(CertificateRow)).scalar_one())
    return rows, runtime.log.size()


def _refused(runtime: Runtime, csr: bytes, reason: str) -> None:
    before = _state(runtime)
    with pytest.raises(CsrRejected, match=r"^CSR rejected: ") as rejected:
        runtime.pki.issue_device("cam-1", csr, actor="enrollment")
    assert rejected.value.reason == reason
    assert _state(runtime) == before


def _issue(runtime: Runtime, device_id: str = "cam-1") -> CertificateRecord:
    return runtime.pki.issue_device(device_id, _csr_der(common_name=device_id), actor="enrollment")


# --- identity injection ----------------------------------------------------------------------------


def test_identity_injection_via_csr_subject_and_san_is_ignored(runtime: Runtime) -> None:
    forged = _csr_der(
        common_name="cam-admin",
        extensions=(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/device/cam-admin"),
                    x509.UniformResourceIdentifier("spiffe://other.example/admin"),
                    x509.DNSName("api.fleet.example.org"),
                    x509.RFC822Name("root@fleet.example.org"),
                ]
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]),
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
        ),
    )

    record = runtime.pki.issue_device("cam-1", forged, actor="enrollment")

    certificate = x509.load_der_x509_certificate(record.der)
    assert certificate.subject.rfc4514_string() == "CN=cam-1"
    assert record.device_id == "cam-1"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/device/cam-1")]
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_cert_sign, usage.crl_sign) == (True, False, False)
    [event] = runtime.log.entries(action="cert.issued")
    assert event.subject == "device:cam-1"
    assert runtime.pki.certificates(device_id="cam-admin") == []


def test_ca_true_request_is_refused_and_nothing_is_recorded(runtime: Runtime) -> None:
    csr = _csr_der(extensions=(x509.BasicConstraints(ca=True, path_length=0),))

    _refused(
        runtime, csr, "request asks for a CA certificate (BasicConstraints CA:TRUE); devices are never CAs"
    )


# --- weak keys and broken proofs of possession -----------------------------------------------------


def _sha1_signed_csr() -> bytes:
    # cryptography's builder refuses SHA-1; an attacker's tooling does not, so sign the info by hand.
    key = ec.generate_private_key(ec.SECP256R1())
    request = asn1_csr.CertificationRequest.load(_csr_der(key))
    info = request["certification_request_info"].dump()
    signature = key.sign(info, ec.ECDSA(hashes.SHA1()))  # noqa: S303 - the weak hash under attack
    forged = asn1_csr.CertificationRequest(
        {
            "certification_request_info": request["certification_request_info"],
            "signature_algorithm": {"algorithm": "sha1_ecdsa"},
            "signature": signature,
        }
    )
    return bytes(forged.dump())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: _csr_der(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505
            "RSA-1024 key is too weak: RSA keys need at least 2048 bits",
        ),
        (
            lambda: _csr_der(ec.generate_private_key(ec.SECP192R1())),
            "EC key on curve P-192 (192 bits): only P-256 and P-384 are accepted",
        ),
        (_sha1_signed_csr, "signature uses hash SHA1: SHA-256, SHA-384 or SHA-512 is required"),
    ],
    ids=["rsa-1024", "p-192", "sha1-signature"],
)
def test_weak_keys_and_hashes_are_refused(runtime: Runtime, make: Callable[[], bytes], reason: str) -> None:
    _refused(runtime, make(), reason)


def _with_signature(der: bytes, signature: bytes) -> bytes:
    request = asn1_csr.CertificationRequest.load(der)
    forged = asn1_csr.CertificationRequest(
        {
            "certification_request_info": request["certification_request_info"],
            "signature_algorithm": request["signature_algorithm"],
            "signature": signature,
        }
    )
    return bytes(forged.dump())


def test_signature_stripped_csr_is_refused(runtime: Runtime) -> None:
    stripped = _with_signature(_csr_der(), b"")

    _refused(
        runtime, stripped, "signature does not verify with the request's public key (no proof of possession)"
    )


def test_csr_with_a_signature_transplanted_from_another_key_is_refused(runtime: Runtime) -> None:
    victim_key = ec.generate_private_key(ec.SECP256R1())  # the attacker wants a certificate for this key
    donor = asn1_csr.CertificationRequest.load(_csr_der())
    transplanted = _with_signature(_csr_der(victim_key), bytes(donor["signature"].native))

    _refused(
        runtime,
        transplanted,
        "signature does not verify with the request's public key (no proof of possession)",
    )


def test_bare_certification_request_info_without_a_signature_is_refused(runtime: Runtime) -> None:
    info = asn1_csr.CertificationRequest.load(_csr_der())["certification_request_info"].dump()

    before = _state(runtime)
    with pytest.raises(CsrRejected, match=r"^CSR rejected: malformed DER: "):
        runtime.pki.issue_device("cam-1", bytes(info), actor="enrollment")
    assert _state(runtime) == before


# --- renewal ---------------------------------------------------------------------------------------


def test_revoked_certificate_renewal_attempt_is_refused(runtime: Runtime) -> None:
    stolen = _issue(runtime)
    runtime.pki.revoke(stolen.serial, RevocationReason.KEY_COMPROMISE, actor="ops")
    before = _state(runtime)

    with pytest.raises(IssuanceRefused, match=f"^certificate {stolen.serial:x} is revoked: enrol the device"):
        runtime.pki.renew_device("cam-1", _csr_der(), serial=stolen.serial, actor="device:cam-1")

    assert _state(runtime) == before


def test_renewing_another_devices_certificate_is_refused(runtime: Runtime) -> None:
    admin = _issue(runtime, "cam-admin")
    before = _state(runtime)

    with pytest.raises(
        IssuanceRefused, match=f"^certificate {admin.serial:x} does not belong to device 'cam-1'"
    ):
        runtime.pki.renew_device("cam-1", _csr_der(), serial=admin.serial, actor="device:cam-1")

    assert _state(runtime) == before


# --- OCSP ------------------------------------------------------------------------------------------


def _stranger_ca() -> x509.Certificate:
    root_key, key = generate_software_key(Curve.P384), generate_software_key(Curve.P256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetguard issuing CA 1")])  # a look-alike
    root = create_root(root_key, name, utc_now())
    return create_issuing(root_key, root, key.public_key(), utc_now(), name=name)


def _cert_id(name_hash: bytes, key_hash: bytes, serial: int) -> dict[str, object]:
    return {
        "hash_algorithm": {"algorithm": "sha1"},
        "issuer_name_hash": name_hash,
        "issuer_key_hash": key_hash,
        "serial_number": serial,
    }


def _request(*cert_ids: dict[str, object]) -> bytes:
    tbs = {"request_list": [{"req_cert": cert_id} for cert_id in cert_ids]}
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def _hashes(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    # RFC 6960 4.1.1: SHA-1 of the issuer's DER subject and of its subjectPublicKey bits.
    key = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest  # type: ignore[arg-type]
    return hashlib.sha1(issuer.subject.public_bytes(), usedforsecurity=False).digest(), key


@pytest.mark.parametrize("variant", ["stranger", "our-name-their-key", "their-name-our-key", "mixed"])
def test_ocsp_request_for_another_cas_certificate_gets_unauthorized(runtime: Runtime, variant: str) -> None:
    ours = _issue(runtime)
    our_name, our_key = _hashes(runtime.pki.issuer(ours.issuer_id)[0])
    their_name, their_key = _hashes(_stranger_ca())
    request = {
        "stranger": _request(_cert_id(their_name, their_key, ours.serial)),
        "our-name-their-key": _request(_cert_id(our_name, their_key, ours.serial)),
        "their-name-our-key": _request(_cert_id(their_name, our_key, ours.serial)),
        "mixed": _request(_cert_id(our_name, our_key, ours.serial), _cert_id(their_name, their_key, 7)),
    }[variant]

    response = runtime.revocation.ocsp(request)

    # Unsigned and without any status: the responder says nothing about another CA's certificates.
    assert response == UNAUTHORIZED
    assert ocsp.load_der_ocsp_response(response).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_ocsp_request_for_our_own_certificate_is_answered(runtime: Runtime) -> None:
    """The control for the test above: the same request shape, naming our CA, gets a signed answer."""
    ours = _issue(runtime)
    our_name, our_key = _hashes(runtime.pki.issuer(ours.issuer_id)[0])

    response = ocsp.load_der_ocsp_response(
        runtime.revocation.ocsp(_request(_cert_id(our_name, our_key, ours.serial)))
    )

    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
