"""``sign_csr``: a device's PKCS#10 request signed by a key in memory (fast path) or by a key that
only signs, as a token or TPM does (stand-in draft, real key spliced in, real signature)."""

from __future__ import annotations

import functools

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.pki.csr import KeyKind, validate_csr
from fleetguard.pki.errors import SigningFailed
from fleetguard.pki.keys import Curve, SoftwareKey, generate_software_key
from fleetguard.pki.signing import sign_csr

DER = serialization.Encoding.DER
SPKI = (DER, serialization.PublicFormat.SubjectPublicKeyInfo)
SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet.example.org"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-0001"),
        x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"),
    ]
)
SAN = x509.SubjectAlternativeName([x509.DNSName("dev-1.fleet.example.org")])

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class TokenKey:
    """A signer that never hands out its private key: what a PKCS#11 token or a TPM offers."""

    def __init__(self, private_key: PrivateKey, hash_algorithm: hashes.HashAlgorithm | None = None) -> None:
        self._key = private_key
        self._hash = hash_algorithm or _default_hash(private_key)
        self.signed: list[bytes] = []

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self._key.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._hash

    def sign(self, data: bytes) -> bytes:
        self.signed.append(data)
        return _sign(self._key, data, self._hash)


class SwappedKey(TokenKey):
    """A token that signs with another key than the one it reports (a wrong label, a faulty token)."""

    def __init__(self, reported: PrivateKey, signing: PrivateKey) -> None:
        super().__init__(reported)
        self._signing = signing

    def sign(self, data: bytes) -> bytes:
        return _sign(self._signing, data, self.hash_algorithm)


class FixedSignature(TokenKey):
    def __init__(self, private_key: PrivateKey, signature: bytes) -> None:
        super().__init__(private_key)
        self._signature = signature

    def sign(self, data: bytes) -> bytes:
        return self._signature


def _default_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def _sign(key: PrivateKey, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(algorithm))
    return key.sign(data, padding.PKCS1v15(), algorithm)


@functools.cache
def _rsa(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _builder() -> x509.CertificateSigningRequestBuilder:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(SUBJECT)
        .add_extension(SAN, critical=False)
        .add_attribute(x509.oid.AttributeOID.UNSTRUCTURED_NAME, b"fleetguard-agent")
    )


def _require_request_of(request: x509.CertificateSigningRequest, public_key: object, oid: object) -> None:
    assert request.public_key().public_bytes(*SPKI) == public_key.public_bytes(*SPKI)  # type: ignore[attr-defined]
    assert request.is_signature_valid
    assert request.signature_algorithm_oid == oid
    assert request.subject == SUBJECT
    assert request.subject.public_bytes() == SUBJECT.public_bytes()
    assert request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == SAN
    assert request.attributes.get_attribute_for_oid(x509.oid.AttributeOID.UNSTRUCTURED_NAME).value == (
        b"fleetguard-agent"
    )


# -- the fast path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "oid", "kind"),
    [
        (Curve.P256, SignatureAlgorithmOID.ECDSA_WITH_SHA256, KeyKind.P256),
        (Curve.P384, SignatureAlgorithmOID.ECDSA_WITH_SHA384, KeyKind.P384),
    ],
)
def test_a_key_in_memory_signs_in_the_builder(curve: Curve, oid: object, kind: KeyKind) -> None:
    key = generate_software_key(curve)

    request = sign_csr(_builder(), key)

    _require_request_of(request, key.public_key(), oid)
    accepted = validate_csr(request.public_bytes(DER))
    assert accepted.key_kind is kind
    assert accepted.public_key.public_bytes(*SPKI) == key.public_key().public_bytes(*SPKI)


# -- the stand-in and splice path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_key", "oid", "kind"),
    [
        (
            lambda: ec.generate_private_key(ec.SECP256R1()),
            SignatureAlgorithmOID.ECDSA_WITH_SHA256,
            KeyKind.P256,
        ),
        (
            lambda: ec.generate_private_key(ec.SECP384R1()),
            SignatureAlgorithmOID.ECDSA_WITH_SHA384,
            KeyKind.P384,
        ),
        (lambda: _rsa(2048), SignatureAlgorithmOID.RSA_WITH_SHA256, KeyKind.RSA),
        # a longer key than the 2048-bit stand-in: the request's DER lengths change in the splice
        (lambda: _rsa(3072), SignatureAlgorithmOID.RSA_WITH_SHA256, KeyKind.RSA),
    ],
    ids=["p256", "p384", "rsa2048", "rsa3072"],
)
def test_a_token_key_signs_a_request_that_carries_its_own_public_key(
    make_key: object, oid: object, kind: KeyKind
) -> None:
    key = TokenKey(make_key())  # type: ignore[operator]

    request = sign_csr(_builder(), key)

    _require_request_of(request, key.public_key(), oid)
    assert len(key.signed) == 1  # the real key signed once, over the spliced request info
    assert key.signed[0] == request.tbs_certrequest_bytes
    accepted = validate_csr(request.public_bytes(DER))  # what the CA checks on arrival
    assert accepted.key_kind is kind
    assert accepted.public_key.public_bytes(*SPKI) == key.public_key().public_bytes(*SPKI)


def test_a_token_key_and_the_same_key_in_memory_give_the_same_request_info() -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())

    spliced = sign_csr(_builder(), TokenKey(private_key))
    direct = sign_csr(_builder(), SoftwareKey(private_key))

    assert spliced.tbs_certrequest_bytes == direct.tbs_certrequest_bytes


def test_a_minimal_request_splices_too() -> None:
    key = TokenKey(ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])

    request = sign_csr(x509.CertificateSigningRequestBuilder().subject_name(subject), key)

    assert request.subject == subject
    assert request.is_signature_valid
    assert request.public_key().public_bytes(*SPKI) == key.public_key().public_bytes(*SPKI)


# -- what is never returned -----------------------------------------------------------------------


def test_a_signature_by_another_key_is_refused() -> None:
    key = SwappedKey(ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1()))

    with pytest.raises(
        SigningFailed, match=r"^the spliced request does not carry or verify with the key that signed it$"
    ):
        sign_csr(_builder(), key)


def test_a_signature_by_another_rsa_key_is_refused() -> None:
    key = SwappedKey(_rsa(2048), rsa.generate_private_key(public_exponent=65537, key_size=2048))

    with pytest.raises(SigningFailed, match=r"does not carry or verify with the key that signed it$"):
        sign_csr(_builder(), key)


_PROPERTY_KEY = ec.generate_private_key(ec.SECP256R1())


@settings(max_examples=50, deadline=None)
@given(signature=st.binary(max_size=200))
def test_any_signature_that_does_not_verify_is_refused(signature: bytes) -> None:
    with pytest.raises(SigningFailed):
        sign_csr(_builder(), FixedSignature(_PROPERTY_KEY, signature))


def test_a_key_hashing_with_sha1_is_refused() -> None:
    key = TokenKey(ec.generate_private_key(ec.SECP256R1()), hashes.SHA1())  # noqa: S303 - refused on purpose

    with pytest.raises(SigningFailed, match=r"^signing key uses hash sha1, not SHA-256/384/512$"):
        sign_csr(_builder(), key)


def test_a_key_on_another_curve_is_refused() -> None:
    key = TokenKey(ec.generate_private_key(ec.SECP521R1()), hashes.SHA512())

    with pytest.raises(SigningFailed, match=r"^keys on curve secp521r1 are not supported$"):
        sign_csr(_builder(), key)
