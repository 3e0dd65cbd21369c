"""Signing with any SigningKey: the stand-in-and-splice path for keys that never leave their backend,
and the fast path for keys in memory. A signature that does not verify is never returned."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.pki import signing
from fleetguard.pki.ca import CertificateAuthority
from fleetguard.pki.errors import SigningFailed
from fleetguard.pki.keys import Curve, SigningKey, SoftwareKey, generate_software_key, verify_signature
from fleetguard.pki.profile import DeviceProfile, new_serial
from fleetguard.pki.signing import sign_certificate, sign_crl, sign_ocsp_response

DER = serialization.Encoding.DER


class OpaqueKey:
    """A SigningKey that only signs, as a token does: no private key object to hand to a builder."""

    def __init__(self, inner: SoftwareKey) -> None:
        self._inner = inner
        self.calls = 0

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._inner.hash_algorithm

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self._inner.sign(data)


class OpaqueRsaKey:
    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=3072)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA256()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class LyingKey(OpaqueKey):
    """Claims one public key and signs with another: a token with the wrong key under a label."""

    def __init__(self, inner: SoftwareKey, signer: SoftwareKey) -> None:
        super().__init__(inner)
        self._signer = signer

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)


class FixedSignatureKey(OpaqueKey):
    def __init__(self, inner: SoftwareKey, signature: bytes) -> None:
        super().__init__(inner)
        self._signature = signature

    def sign(self, data: bytes) -> bytes:
        return self._signature


class Sha1Key(OpaqueKey):
    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA1()  # noqa: S303 - the weak hash is the point


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(issuer_key: SigningKey, now: dt.datetime) -> x509.CertificateBuilder:
    subject_key = generate_software_key(Curve.P256).public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name("leaf"))
        .issuer_name(_name("issuer"))
        .public_key(subject_key)
        .serial_number(new_serial())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )


def _crl_builder(ca: CertificateAuthority, now: dt.datetime) -> x509.CertificateRevocationListBuilder:
    this_update = now.replace(microsecond=0)
    ski = ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(new_serial())
        .revocation_date(this_update)
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
    )
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.issuing.subject)
        .last_update(this_update)
        .next_update(this_update + dt.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.CRLNumber(7), critical=False)
        .add_revoked_certificate(revoked)
    )


def _ocsp_builder(
    ca: CertificateAuthority, device_profile: DeviceProfile, now: dt.datetime
) -> ocsp.OCSPResponseBuilder:
    this_update = now.replace(microsecond=0)
    device = ca.issue_device_certificate(
        device_profile,
        device_id="dev-1",
        public_key=generate_software_key(Curve.P256).public_key(),
        serial=new_serial(),
        now=now,
    )
    return ocsp.OCSPResponseBuilder().add_response(
        cert=device,
        issuer=ca.issuing,
        algorithm=hashes.SHA1(),  # noqa: S303 - RFC 5019 2.1.1: CertID hashes are SHA-1 for interoperability
        cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=this_update,
        next_update=this_update + dt.timedelta(hours=12),
        revocation_time=None,
        revocation_reason=None,
    )


def _opaque_ca(ca: CertificateAuthority) -> tuple[CertificateAuthority, OpaqueKey]:
    assert isinstance(ca.key, SoftwareKey)
    key = OpaqueKey(ca.key)
    return CertificateAuthority(root=ca.root, issuing=ca.issuing, key=key), key


@pytest.mark.parametrize(
    ("curve", "oid"),
    [
        (Curve.P256, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        (Curve.P384, SignatureAlgorithmOID.ECDSA_WITH_SHA384),
    ],
)
def test_spliced_certificate_is_signed_by_the_real_key(curve: Curve, oid: object, now: dt.datetime) -> None:
    key = OpaqueKey(generate_software_key(curve))
    builder = _builder(key, now)

    certificate = sign_certificate(builder, key)

    assert key.calls == 1
    assert certificate.signature_algorithm_oid == oid
    verify_signature(
        key.public_key(), certificate.signature, certificate.tbs_certificate_bytes, key.hash_algorithm
    )
    assert certificate.subject == _name("leaf")
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).critical


def test_spliced_certificate_with_an_rsa_key(now: dt.datetime) -> None:
    key = OpaqueRsaKey()

    certificate = sign_certificate(_builder(key, now), key)

    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    verify_signature(
        key.public_key(), certificate.signature, certificate.tbs_certificate_bytes, hashes.SHA256()
    )


def test_spliced_device_certificate_chains_and_passes_pkilint(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    pkilint_findings: Callable[..., list[str]],
) -> None:
    opaque_ca, key = _opaque_ca(ca)

    certificate = opaque_ca.issue_device_certificate(
        device_profile,
        device_id="dev-1",
        public_key=generate_software_key(Curve.P256).public_key(),
        serial=new_serial(),
        now=now,
    )

    assert key.calls == 1
    certificate.verify_directly_issued_by(ca.issuing)
    assert pkilint_findings(certificate.public_bytes(DER), "cert") == []


def test_spliced_crl_verifies_and_passes_pkilint(
    ca: CertificateAuthority, now: dt.datetime, pkilint_findings: Callable[..., list[str]]
) -> None:
    _, key = _opaque_ca(ca)

    crl = sign_crl(_crl_builder(ca, now), key)

    assert key.calls == 1
    assert crl.is_signature_valid(ca.issuing.public_key())
    assert crl.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert len(crl) == 1
    assert pkilint_findings(crl.public_bytes(DER), "crl") == []


@pytest.mark.parametrize("encoding", [ocsp.OCSPResponderEncoding.HASH, ocsp.OCSPResponderEncoding.NAME])
@pytest.mark.parametrize("with_certificates", [False, True])
def test_spliced_ocsp_response_names_the_real_responder_and_passes_pkilint(
    *,
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    pkilint_findings: Callable[..., list[str]],
    encoding: ocsp.OCSPResponderEncoding,
    with_certificates: bool,
) -> None:
    _, key = _opaque_ca(ca)
    builder = _ocsp_builder(ca, device_profile, now)
    if with_certificates:
        builder = builder.certificates([ca.issuing])

    response = sign_ocsp_response(builder, key, ca.issuing, encoding)

    assert key.calls == 1
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    if encoding is ocsp.OCSPResponderEncoding.HASH:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca.issuing.public_key())
        assert (response.responder_key_hash, response.responder_name) == (ski.digest, None)
    else:
        assert (response.responder_key_hash, response.responder_name) == (None, ca.issuing.subject)
    assert response.certificates == ([ca.issuing] if with_certificates else [])
    verify_signature(
        ca.issuing.public_key(), response.signature, response.tbs_response_bytes, hashes.SHA256()
    )
    assert pkilint_findings(response.public_bytes(DER), "ocsp") == []


def test_fast_path_ocsp_response_is_the_same_shape(
    ca: CertificateAuthority,
    device_profile: DeviceProfile,
    now: dt.datetime,
    pkilint_findings: Callable[..., list[str]],
) -> None:
    response = sign_ocsp_response(_ocsp_builder(ca, device_profile, now), ca.key, ca.issuing)

    assert (
        response.responder_key_hash
        == x509.SubjectKeyIdentifier.from_public_key(ca.issuing.public_key()).digest
    )
    assert pkilint_findings(response.public_bytes(DER), "ocsp") == []


def test_ocsp_responder_must_hold_the_signing_key(
    ca: CertificateAuthority, device_profile: DeviceProfile, now: dt.datetime
) -> None:
    builder = _ocsp_builder(ca, device_profile, now)
    _, opaque = _opaque_ca(ca)

    for key in (ca.key, opaque):
        with pytest.raises(SigningFailed, match="responder certificate does not hold the signing key"):
            sign_ocsp_response(builder, key, ca.root)


def test_fast_path_signs_in_the_builder(now: dt.datetime) -> None:
    key = generate_software_key(Curve.P256)

    certificate = sign_certificate(_builder(key, now), key)

    verify_signature(
        key.public_key(), certificate.signature, certificate.tbs_certificate_bytes, hashes.SHA256()
    )


def test_a_signature_by_another_key_is_never_returned(
    ca: CertificateAuthority, device_profile: DeviceProfile, now: dt.datetime
) -> None:
    assert isinstance(ca.key, SoftwareKey)
    lying = LyingKey(ca.key, generate_software_key(Curve.P256))

    with pytest.raises(SigningFailed, match="certificate signature made by the key backend does not verify"):
        sign_certificate(_builder(lying, now), lying)
    with pytest.raises(SigningFailed, match="CRL signature made by the key backend does not verify"):
        sign_crl(_crl_builder(ca, now), lying)
    with pytest.raises(
        SigningFailed, match="OCSP response signature made by the key backend does not verify"
    ):
        sign_ocsp_response(_ocsp_builder(ca, device_profile, now), lying, ca.issuing)


@settings(max_examples=50, deadline=None)
@given(signature=st.binary(max_size=300))
def test_any_signature_that_does_not_verify_is_refused(signature: bytes) -> None:
    key = FixedSignatureKey(_PROPERTY_KEY, signature)

    with pytest.raises(SigningFailed):
        sign_certificate(_PROPERTY_BUILDER, key)


def test_keys_hashing_with_sha1_are_refused(now: dt.datetime) -> None:
    key = Sha1Key(generate_software_key(Curve.P256))

    with pytest.raises(SigningFailed, match="uses hash sha1"):
        sign_certificate(_builder(key, now), key)


def test_keys_on_other_curves_have_no_stand_in(now: dt.datetime) -> None:
    class P521Key(OpaqueKey):
        def public_key(self) -> ec.EllipticCurvePublicKey:
            return ec.generate_private_key(ec.SECP521R1()).public_key()

    key = P521Key(generate_software_key(Curve.P256))

    with pytest.raises(SigningFailed, match="keys on curve secp521r1 are not supported"):
        sign_certificate(_builder(key, now), key)


# --- the DER splice itself -----------------------------------------------------------------------

_PROPERTY_KEY = generate_software_key(Curve.P256)
_PROPERTY_BUILDER = _builder(_PROPERTY_KEY, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


@given(tag=st.sampled_from([0x02, 0x03, 0x04, 0x30, 0xA0]), content=st.binary(max_size=70_000))
@settings(max_examples=60, deadline=None)
def test_der_values_read_back_as_written(tag: int, content: bytes) -> None:
    encoded = signing._encode(tag, content)

    value, rest = signing._read_tlv(encoded + b"\x05\x00")

    assert (value.tag, value.content, value.encoded, rest) == (tag, content, encoded, b"\x05\x00")


@given(data=st.binary(max_size=40))
def test_truncated_or_odd_der_is_refused_not_misread(data: bytes) -> None:
    try:
        value, rest = signing._read_tlv(data)
    except SigningFailed:
        return
    assert value.encoded + rest == data
    assert len(value.encoded) >= 2


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30", b"\x30\x05\x00", b"\x1f\x01\x00", b"\x30\x85\x00\x00\x00\x00\x01", b"\x30\x82\x01"],
)
def test_malformed_der_is_refused(data: bytes) -> None:
    with pytest.raises(SigningFailed):
        signing._read_tlv(data)
