"""CSR validation: only the key is taken from a CSR, and only a good key with a valid signature."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import subprocess
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core  # type: ignore[import-untyped]
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.pki.csr import MAX_CSR_BYTES, KeyKind, ValidatedCsr, validate_csr
from fleetguard.pki.errors import CsrRejected, PkiError

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM

# ECDSA signatures are randomised: the property test needs one fixed request.
_P256_FOR_PROPERTIES = ec.generate_private_key(ec.SECP256R1())
_P256_CSR_DER = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")]))
    .sign(_P256_FOR_PROPERTIES, hashes.SHA256())
    .public_bytes(DER)
)


def _csr(
    key: CertificateIssuerPrivateKeyTypes,
    *,
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    if algorithm is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    return builder.sign(key, algorithm)


def _spki_sha256(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    spki = key.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def _with_null_ecdsa_parameters(der: bytes) -> bytes:
    """Re-encode a CSR the way some TPM stacks do: ecdsa-with-SHA256 with an explicit NULL."""
    request = asn1_csr.CertificationRequest.load(der)
    oid = request["signature_algorithm"]["algorithm"].dotted
    return bytes(
        asn1_csr.CertificationRequest(
            {
                "certification_request_info": request["certification_request_info"],
                "signature_algorithm": {"algorithm": oid, "parameters": asn1_core.Null()},
                "signature": request["signature"],
            }
        ).dump()
    )


def _flip_last_byte(der: bytes) -> bytes:
    # The last byte of a CSR is the last byte of its signature.
    return der[:-1] + bytes([der[-1] ^ 0x01])


def _openssl(tmp_path: Path, *args: str) -> bytes:
    subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    return (tmp_path / "req.pem").read_bytes()


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa2048_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("curve", "kind", "bits"),
    [(ec.SECP256R1(), KeyKind.P256, 256), (ec.SECP384R1(), KeyKind.P384, 384)],
)
def test_ec_csr_is_accepted_in_pem_and_der(curve: ec.EllipticCurve, kind: KeyKind, bits: int) -> None:
    key = ec.generate_private_key(curve)
    request = _csr(key)
    for data in (request.public_bytes(PEM), request.public_bytes(DER)):
        validated = validate_csr(data)
        assert validated.key_kind is kind
        assert validated.key_bits == bits
        assert validated.public_key == key.public_key()
        assert validated.spki_sha256 == _spki_sha256(key)
        assert validated.der == request.public_bytes(DER)


def test_rsa_2048_csr_is_accepted(rsa2048_key: rsa.RSAPrivateKey) -> None:
    validated = validate_csr(_csr(rsa2048_key).public_bytes(DER))
    assert (validated.key_kind, validated.key_bits) == (KeyKind.RSA, 2048)


def test_validated_csr_exposes_no_identity_fields() -> None:
    names = {field.name for field in dataclasses.fields(ValidatedCsr)}
    assert names == {"public_key", "key_kind", "key_bits", "spki_sha256", "der"}


def test_requested_sans_are_accepted_but_never_exposed(p256_key: ec.EllipticCurvePrivateKey) -> None:
    sans = x509.SubjectAlternativeName(
        [
            x509.DNSName("admin.example.org"),
            x509.UniformResourceIdentifier("spiffe://example.org/device/other"),
        ]
    )
    validated = validate_csr(_csr(p256_key, extensions=(sans,)).public_bytes(DER))
    assert validated.key_kind is KeyKind.P256
    assert not hasattr(validated, "subject")
    assert not hasattr(validated, "extensions")


def test_ca_false_request_is_accepted(p256_key: ec.EllipticCurvePrivateKey) -> None:
    request = _csr(p256_key, extensions=(x509.BasicConstraints(ca=False, path_length=None),))
    assert validate_csr(request.public_bytes(DER)).key_kind is KeyKind.P256


def test_ca_true_request_is_refused(p256_key: ec.EllipticCurvePrivateKey) -> None:
    request = _csr(p256_key, extensions=(x509.BasicConstraints(ca=True, path_length=0),))
    with pytest.raises(CsrRejected, match=r"asks for a CA certificate \(BasicConstraints CA:TRUE\)"):
        validate_csr(request.public_bytes(DER))


@pytest.mark.parametrize("kind", ["p256", "rsa"])
def test_bad_signature_is_rejected(
    kind: str, p256_key: ec.EllipticCurvePrivateKey, rsa2048_key: rsa.RSAPrivateKey
) -> None:
    key = p256_key if kind == "p256" else rsa2048_key
    tampered = _flip_last_byte(_csr(key).public_bytes(DER))
    with pytest.raises(CsrRejected, match="signature does not verify"):
        validate_csr(tampered)


def test_subject_changed_after_signing_is_rejected(p256_key: ec.EllipticCurvePrivateKey) -> None:
    der = _csr(p256_key).public_bytes(DER)
    tampered = der.replace(b"device-1", b"device-2")
    with pytest.raises(CsrRejected, match="signature does not verify"):
        validate_csr(tampered)


def test_ecdsa_with_explicit_null_parameters_is_accepted(p256_key: ec.EllipticCurvePrivateKey) -> None:
    der = _with_null_ecdsa_parameters(_csr(p256_key).public_bytes(DER))
    with pytest.raises(ValueError, match="error parsing asn1 value"):
        x509.load_der_x509_csr(der)  # the reason for the fallback: cryptography refuses this encoding
    validated = validate_csr(der)
    assert validated.key_kind is KeyKind.P256
    assert validated.der == der


def test_ecdsa_with_explicit_null_parameters_and_bad_signature_is_rejected(
    p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    der = _flip_last_byte(_with_null_ecdsa_parameters(_csr(p256_key).public_bytes(DER)))
    with pytest.raises(CsrRejected, match="signature does not verify"):
        validate_csr(der)


def test_rsa_with_null_parameters_is_accepted(rsa2048_key: rsa.RSAPrivateKey) -> None:
    der = _csr(rsa2048_key).public_bytes(DER)
    assert b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b\x05\x00" in der  # sha256WithRSAEncryption, NULL
    assert validate_csr(der).key_kind is KeyKind.RSA


def test_rsa_1024_is_rejected_naming_the_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    with pytest.raises(CsrRejected, match=r"RSA-1024 key is too weak: RSA keys need at least 2048 bits"):
        validate_csr(_csr(key).public_bytes(DER))


def test_p224_is_rejected_naming_the_curve() -> None:
    key = ec.generate_private_key(ec.SECP224R1())
    with pytest.raises(CsrRejected, match=r"EC key on curve P-224 \(224 bits\)"):
        validate_csr(_csr(key).public_bytes(DER))


def test_p521_is_rejected_naming_the_curve() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(CsrRejected, match=r"EC key on curve P-521"):
        validate_csr(_csr(key, algorithm=hashes.SHA512()).public_bytes(DER))


def test_ed25519_is_rejected_naming_the_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(CsrRejected, match=r"Ed25519 key: only EC P-256, EC P-384 and RSA >= 2048"):
        validate_csr(_csr(key).public_bytes(DER))


def test_oversized_csr_is_rejected_before_parsing() -> None:
    with pytest.raises(CsrRejected, match=f"request is {MAX_CSR_BYTES + 1} bytes, over the limit"):
        validate_csr(b"0" * (MAX_CSR_BYTES + 1))


def test_size_limit_is_inclusive(p256_key: ec.EllipticCurvePrivateKey) -> None:
    der = _csr(p256_key).public_bytes(DER)
    assert validate_csr(der, max_bytes=len(der)).key_kind is KeyKind.P256
    with pytest.raises(CsrRejected, match="over the limit"):
        validate_csr(der, max_bytes=len(der) - 1)


def test_large_csr_with_padding_extension_is_rejected(p256_key: ec.EllipticCurvePrivateKey) -> None:
    padding = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x04\x82\x40\x00" + bytes(16384)
    )
    request = _csr(p256_key, extensions=(padding,))
    with pytest.raises(CsrRejected, match="over the limit of 16384 bytes"):
        validate_csr(request.public_bytes(PEM))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "malformed DER"),
        (b"garbage", "malformed DER"),
        (b"\x30\x03\x02\x01\x00", "malformed DER"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n", "malformed"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQA=\n", "malformed PEM"),
        (b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n", "PEM block is 'CERTIFICATE'"),
    ],
)
def test_garbage_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(CsrRejected, match=message):
        validate_csr(data)


def test_truncated_csr_is_rejected(p256_key: ec.EllipticCurvePrivateKey) -> None:
    der = _csr(p256_key).public_bytes(DER)
    with pytest.raises(CsrRejected, match="malformed DER"):
        validate_csr(der[:-10])
    with pytest.raises(CsrRejected, match="malformed DER"):
        validate_csr(der + b"\x00")


def test_rejection_is_a_422_pki_error() -> None:
    error = CsrRejected("x")
    assert isinstance(error, PkiError)
    assert error.status == 422
    assert error.code == "csr-rejected"


# Real clients: CSRs made by the openssl command line, as devices and operators make them.


def test_openssl_p256_csr_is_accepted(tmp_path: Path) -> None:
    pem = _openssl(
        tmp_path,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", "key.pem", "-subj", "/CN=device-1", "-out", "req.pem"),
    )
    assert validate_csr(pem).key_kind is KeyKind.P256


def test_openssl_rsa_csr_with_new_label_is_accepted(tmp_path: Path) -> None:
    pem = _openssl(
        tmp_path,
        *("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem"),
        *("-subj", "/CN=device-1", "-addext", "subjectAltName=DNS:evil.example", "-out", "req.pem"),
    )
    relabelled = pem.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
    assert validate_csr(relabelled).key_bits == 2048


def test_openssl_p192_csr_is_rejected_naming_the_curve(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime192v1", "-genkey", "-noout", "-out", "key.pem"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    pem = _openssl(tmp_path, "req", "-new", "-key", "key.pem", "-subj", "/CN=device-1", "-out", "req.pem")
    with pytest.raises(CsrRejected, match=r"EC key on curve P-192 \(192 bits\)"):
        validate_csr(pem)


def test_openssl_sha1_signed_csr_is_rejected(tmp_path: Path) -> None:
    pem = _openssl(
        tmp_path,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha1"),
        *("-keyout", "key.pem", "-subj", "/CN=device-1", "-out", "req.pem"),
    )
    with pytest.raises(
        CsrRejected, match="signature uses hash SHA1: SHA-256, SHA-384 or SHA-512 is required"
    ):
        validate_csr(pem)


def test_openssl_ca_true_csr_is_refused(tmp_path: Path) -> None:
    pem = _openssl(
        tmp_path,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes"),
        *("-keyout", "key.pem", "-subj", "/CN=device-1", "-addext", "basicConstraints=critical,CA:TRUE"),
        *("-out", "req.pem"),
    )
    with pytest.raises(CsrRejected, match="BasicConstraints CA:TRUE"):
        validate_csr(pem)


# Property tests: whatever arrives, the only failure is CsrRejected.


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_csr_rejected(data: bytes) -> None:
    with contextlib.suppress(CsrRejected):
        validate_csr(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_csr_is_accepted_with_its_key_or_rejected(data: st.DataObject) -> None:
    der = bytearray(_P256_CSR_DER)
    index = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
    der[index] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        validated = validate_csr(bytes(der))
    except CsrRejected:
        return
    # A mutation that still verifies cannot have touched the signed key (or anything signed).
    assert validated.public_key == _P256_FOR_PROPERTIES.public_key()
