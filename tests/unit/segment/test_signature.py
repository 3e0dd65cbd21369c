"""Detached CMS signatures of MUD files verify only for the exact bytes and a trusted, current signer."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.segment.errors import MudSignatureInvalid, MudTooLarge, SegmentError
from fleetguard.segment.signature import MAX_SIGNATURE_BYTES, sign_mud, verify_mud_signature

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
NOT_BEFORE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MUD = b'{"ietf-mud:mud": {"mud-version": 1, "mud-url": "https://things.example.com/t1"}}\n'
SIGNER_SUBJECT = "CN=MUD signer,O=Example Things"


@dataclass(frozen=True)
class Pki:
    ca: x509.Certificate
    signer: x509.Certificate
    signer_key: ec.EllipticCurvePrivateKey


def name(text: str) -> x509.Name:
    return x509.Name.from_rfc4514_string(text)


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (name(subject), key)
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    usage.update(key_cert_sign=ca, crl_sign=ca, digital_signature=not ca)
    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def make_pki(ca_subject: str) -> Pki:
    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(ca_subject, ca_key, ca=True)
    signer = certificate(SIGNER_SUBJECT, signer_key, issuer=(ca.subject, ca_key))
    return Pki(ca, signer, signer_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki("CN=Example Things MUD CA")


@pytest.fixture(scope="module")
def other_pki() -> Pki:
    return make_pki("CN=Someone Else CA")


@pytest.fixture(scope="module")
def signature(pki: Pki) -> bytes:
    return sign_mud(MUD, pki.signer_key, pki.signer)


def test_a_good_signature_verifies_and_returns_the_signer(pki: Pki, signature: bytes) -> None:
    signer = verify_mud_signature(MUD, signature, [pki.ca], now=NOW)

    assert signer == pki.signer


def test_the_trust_anchors_may_be_a_pem_bundle_and_the_subject_pinned(pki: Pki, signature: bytes) -> None:
    bundle = pki.ca.public_bytes(serialization.Encoding.PEM)

    signer = verify_mud_signature(MUD, signature, bundle, signer_subject=SIGNER_SUBJECT, now=NOW)

    assert signer.subject.rfc4514_string() == SIGNER_SUBJECT


def test_the_signature_is_detached(signature: bytes) -> None:
    assert MUD not in signature


def test_a_key_file_can_sign(pki: Pki, tmp_path: Path) -> None:
    key_file = tmp_path / "signer.key"
    key_file.write_bytes(
        pki.signer_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    signature = sign_mud(MUD, key_file, pki.signer)

    assert verify_mud_signature(MUD, signature, [pki.ca], now=NOW) == pki.signer


def test_a_tampered_mud_file_is_rejected(pki: Pki, signature: bytes) -> None:
    tampered = MUD.replace(b"t1", b"t2")

    with pytest.raises(MudSignatureInvalid, match=r"does not match its signature \(modified\?\)"):
        verify_mud_signature(tampered, signature, [pki.ca], now=NOW)


def test_a_signature_by_another_ca_is_rejected(pki: Pki, other_pki: Pki) -> None:
    signature = sign_mud(MUD, other_pki.signer_key, other_pki.signer)

    with pytest.raises(MudSignatureInvalid, match="the MUD signer is not trusted"):
        verify_mud_signature(MUD, signature, [pki.ca], now=NOW)


def test_a_self_signed_signer_is_rejected(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signature = sign_mud(MUD, key, certificate(SIGNER_SUBJECT, key))

    with pytest.raises(MudSignatureInvalid, match="the MUD signer is not trusted"):
        verify_mud_signature(MUD, signature, [pki.ca], now=NOW)


def test_an_expired_signer_is_rejected(pki: Pki, signature: bytes) -> None:
    later = NOT_AFTER + dt.timedelta(days=1)

    with pytest.raises(MudSignatureInvalid, match="expired or not yet valid at 2026-01-02"):
        verify_mud_signature(MUD, signature, [pki.ca], now=later)


def test_a_signer_not_yet_valid_is_rejected(pki: Pki, signature: bytes) -> None:
    earlier = NOT_BEFORE - dt.timedelta(days=1)

    with pytest.raises(MudSignatureInvalid, match="expired or not yet valid"):
        verify_mud_signature(MUD, signature, [pki.ca], now=earlier)


def test_a_wrong_signer_subject_is_rejected(pki: Pki, signature: bytes) -> None:
    with pytest.raises(
        MudSignatureInvalid, match="subject is 'CN=MUD signer,O=Example Things', not the expected"
    ):
        verify_mud_signature(MUD, signature, [pki.ca], signer_subject="CN=Other signer", now=NOW)


@pytest.mark.parametrize("garbage", [b"\x30\x03\x02\x01", b"not a signature at all", b"\x00" * 100])
def test_garbage_der_is_rejected(pki: Pki, garbage: bytes) -> None:
    with pytest.raises(MudSignatureInvalid, match="not a DER CMS structure") as caught:
        verify_mud_signature(MUD, garbage, [pki.ca], now=NOW)

    assert len(caught.value.message) < 400  # OpenSSL's output is summarised, not dumped


def test_an_empty_signature_is_rejected(pki: Pki) -> None:
    with pytest.raises(MudSignatureInvalid, match="the MUD signature is empty"):
        verify_mud_signature(MUD, b"", [pki.ca], now=NOW)


def test_an_oversize_signature_is_refused_before_openssl_runs(pki: Pki) -> None:
    with pytest.raises(MudTooLarge, match=f"over the limit of {MAX_SIGNATURE_BYTES}"):
        verify_mud_signature(
            MUD, b"\x30" * (MAX_SIGNATURE_BYTES + 1), [pki.ca], now=NOW, openssl="/nonexistent"
        )


@pytest.mark.parametrize(
    "trusted", [[], b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_no_usable_trust_anchors_is_an_error(
    signature: bytes, trusted: list[x509.Certificate] | bytes
) -> None:
    with pytest.raises(MudSignatureInvalid, match="trusted certificates"):
        verify_mud_signature(MUD, signature, trusted, now=NOW)


def test_a_missing_openssl_fails_closed(pki: Pki, signature: bytes) -> None:
    with pytest.raises(MudSignatureInvalid, match="cannot run /nonexistent/openssl"):
        verify_mud_signature(MUD, signature, [pki.ca], now=NOW, openssl="/nonexistent/openssl")


def test_a_naive_now_is_a_programming_error(pki: Pki, signature: bytes) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_mud_signature(MUD, signature, [pki.ca], now=dt.datetime(2025, 6, 1))  # noqa: DTZ001


def test_signing_with_a_key_that_does_not_match_fails(pki: Pki, other_pki: Pki) -> None:
    with pytest.raises(SegmentError, match="openssl cms -sign failed"):
        sign_mud(MUD, other_pki.signer_key, pki.signer)
