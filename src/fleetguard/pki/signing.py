"""Sign certificates, CRLs and OCSP responses with any :class:`~fleetguard.pki.keys.SigningKey`.

cryptography's builders sign only with a private key object they hold. A key in a token never
becomes one, so for every other backend the object is signed in two steps:

1. The builder signs with a stand-in key: a throwaway key of the same algorithm (same curve, or RSA
   for RSA), created once per process. The ``signature`` AlgorithmIdentifier inside the
   to-be-signed bytes (RFC 5280 4.1.2.3, 5.1.2.2; RFC 6960 4.2.1) depends only on the algorithm and
   hash, so the TBS bytes are exactly those the real key must sign.
2. The real key signs those TBS bytes, and its signature replaces the stand-in's in the outer
   ``SEQUENCE { tbs, signatureAlgorithm, signatureValue BIT STRING }``. The result is parsed again
   and its signature verified with the real public key before it is returned (fail closed).

``CertificateBuilder.create_unsigned`` (RFC 9925) is not used: its TBS names id-alg-unsigned, so it
would have to be re-encoded, and CRL and OCSP builders have no such call.

An OCSP response also names its responder (RFC 6960 4.2.2.3), and cryptography refuses to sign
unless the responder certificate matches the private key. The draft therefore names a stand-in
responder certificate by key hash, and that ResponderID is replaced by the real responder's before
the real key signs.

A :class:`~fleetguard.pki.keys.SoftwareKey` (which includes ``FileKey``) takes the fast path: the
builder signs with its private key directly, with no stand-in and no second parse.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from fleetguard.pki.errors import SigningFailed
from fleetguard.pki.keys import SigningKey, SoftwareKey, signature_algorithm_oid, verify_signature

__all__ = ["sign_certificate", "sign_crl", "sign_csr", "sign_ocsp_response"]

_SEQUENCE = 0x30
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_CONTEXT_0 = 0xA0  # [0] EXPLICIT, constructed
_BY_NAME = 0xA1  # ResponderID byName [1] EXPLICIT Name
_BY_KEY = 0xA2  # ResponderID byKey [2] EXPLICIT KeyHash
_STAND_IN_RSA_BITS = 2048
_STAND_IN_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetguard stand-in signer")])
_STAND_IN_VALIDITY = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2000, 1, 2, tzinfo=dt.UTC))

_T = TypeVar("_T")
_DER = serialization.Encoding.DER


def sign_certificate(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    """Return the certificate ``builder`` describes, signed by ``key``.

    Raises ``SigningFailed`` if the signature does not verify with ``key.public_key()``, and
    ``KeyBackendError`` if the backend cannot sign now.
    """
    if isinstance(key, SoftwareKey):
        return builder.sign(key.private_key, _hash_of(key))
    draft = builder.sign(_stand_in(key).key, _hash_of(key))
    _require_algorithm(draft.signature_algorithm_oid, key)
    certificate = _parse(x509.load_der_x509_certificate, _resign(draft.public_bytes(_DER), key))
    _verify(key, certificate.signature, certificate.tbs_certificate_bytes, "certificate")
    return certificate


def sign_csr(
    builder: x509.CertificateSigningRequestBuilder, key: SigningKey
) -> x509.CertificateSigningRequest:
    """Return the PKCS#10 request ``builder`` describes, signed by ``key`` (a device's own key).

    A CertificationRequest has the certificate's outer shape (RFC 2986 4.2), so a key in a token
    or a TPM signs it through the same stand-in splice. Raises as :func:`sign_certificate`.
    """
    if isinstance(key, SoftwareKey):
        return builder.sign(key.private_key, _hash_of(key))
    draft = builder.sign(_stand_in(key).key, _hash_of(key))
    _require_algorithm(draft.signature_algorithm_oid, key)
    # The builder put the stand-in's public key in the request; the request must carry the real one.
    spki = _spki(key.public_key())
    signed = _resign(draft.public_bytes(_DER), key, lambda tbs: _replace_request_key(tbs, spki))
    request = _parse(x509.load_der_x509_csr, signed)
    if _spki(request.public_key()) != spki or not request.is_signature_valid:
        raise SigningFailed("the spliced request does not carry or verify with the key that signed it")
    return request


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: SigningKey
) -> x509.CertificateRevocationList:
    """Return the CRL ``builder`` describes, signed by ``key``.

    Raises ``SigningFailed`` if the signature does not verify, ``KeyBackendError`` if the backend fails.
    """
    if isinstance(key, SoftwareKey):
        return builder.sign(key.private_key, _hash_of(key))
    draft = builder.sign(_stand_in(key).key, _hash_of(key))
    _require_algorithm(draft.signature_algorithm_oid, key)
    crl = _parse(x509.load_der_x509_crl, _resign(draft.public_bytes(_DER), key))
    _verify(key, crl.signature, crl.tbs_certlist_bytes, "CRL")
    return crl


def sign_ocsp_response(
    builder: ocsp.OCSPResponseBuilder,
    key: SigningKey,
    responder: x509.Certificate,
    encoding: ocsp.OCSPResponderEncoding = ocsp.OCSPResponderEncoding.HASH,
) -> ocsp.OCSPResponse:
    """Return the successful OCSP response ``builder`` describes, signed by ``key`` as ``responder``.

    ``builder`` holds the responses (and any ``certificates``) but no responder: this function names
    ``responder``, whose certificate must hold ``key``'s public key, by ``encoding``. Raises
    ``SigningFailed`` if the responder does not match ``key`` or the signature does not verify, and
    ``KeyBackendError`` if the backend fails.
    """
    if _spki(responder.public_key()) != _spki(key.public_key()):
        raise SigningFailed("the OCSP responder certificate does not hold the signing key")
    if isinstance(key, SoftwareKey):
        return builder.responder_id(encoding, responder).sign(key.private_key, _hash_of(key))
    stand_in = _stand_in(key)
    draft = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, stand_in.certificate).sign(
        stand_in.key, _hash_of(key)
    )
    _require_algorithm(draft.signature_algorithm_oid, key)
    status, response_type, basic = _unwrap_ocsp(draft.public_bytes(_DER))
    responder_id = _responder_id(responder, encoding)
    resigned = _resign(basic, key, lambda tbs: _replace_responder_id(tbs, responder_id))
    response = _parse(ocsp.load_der_ocsp_response, _wrap_ocsp(status, response_type, resigned))
    _verify(key, response.signature, response.tbs_response_bytes, "OCSP response")
    return response


class _StandIn(NamedTuple):
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    certificate: x509.Certificate  # self-signed; only used to let an OCSP draft be signed


def _stand_in(key: SigningKey) -> _StandIn:
    """Return the throwaway signer whose signatures carry the same AlgorithmIdentifier as ``key``'s."""
    public_key = key.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _stand_in_for(public_key.curve.name)
    return _stand_in_for("rsa")


@functools.cache
def _stand_in_for(kind: str) -> _StandIn:
    curves: dict[str, ec.EllipticCurve] = {
        ec.SECP256R1.name: ec.SECP256R1(),
        ec.SECP384R1.name: ec.SECP384R1(),
    }
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "rsa":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=_STAND_IN_RSA_BITS)
    elif kind in curves:
        private_key = ec.generate_private_key(curves[kind])
    else:
        raise SigningFailed(f"keys on curve {kind} are not supported")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_STAND_IN_NAME)
        .issuer_name(_STAND_IN_NAME)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(_STAND_IN_VALIDITY[0])
        .not_valid_after(_STAND_IN_VALIDITY[1])
        .sign(private_key, hashes.SHA256())
    )
    return _StandIn(private_key, certificate)


def _hash_of(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """Return ``key.hash_algorithm`` narrowed to the hashes fleetguard signs with."""
    algorithm = key.hash_algorithm
    if not isinstance(algorithm, hashes.SHA256 | hashes.SHA384 | hashes.SHA512):
        raise SigningFailed(f"signing key uses hash {algorithm.name}, not SHA-256/384/512")
    return algorithm


def _require_algorithm(oid: x509.ObjectIdentifier, key: SigningKey) -> None:
    expected = signature_algorithm_oid(key)
    if oid != expected:
        raise SigningFailed(f"draft is signed with {oid.dotted_string}, expected {expected.dotted_string}")


def _verify(key: SigningKey, signature: bytes, tbs: bytes, what: str) -> None:
    try:
        verify_signature(key.public_key(), signature, tbs, key.hash_algorithm)
    except InvalidSignature as exc:
        raise SigningFailed(
            f"the {what} signature made by the key backend does not verify with its public key",
            hint="the token may hold another key under this label, or be faulty",
        ) from exc


def _parse(load: Callable[[bytes], _T], der: bytes) -> _T:
    try:
        return load(der)
    except ValueError as exc:
        raise SigningFailed(f"the spliced object does not parse: {exc}") from exc


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _responder_id(responder: x509.Certificate, encoding: ocsp.OCSPResponderEncoding) -> bytes:
    """Return the DER ResponderID naming ``responder`` (RFC 6960 4.2.1)."""
    if encoding is ocsp.OCSPResponderEncoding.NAME:
        return _encode(_BY_NAME, responder.subject.public_bytes())
    # KeyHash: SHA-1 of the subjectPublicKey BIT STRING's value, as RFC 5280 4.2.1.2 method (1).
    key_hash = x509.SubjectKeyIdentifier.from_public_key(responder.public_key()).digest
    return _encode(_BY_KEY, _encode(_OCTET_STRING, key_hash))


# --- DER splicing: X.690 definite-length encoding, only as much as the three shapes need --------


class _Tlv(NamedTuple):
    tag: int
    content: bytes
    encoded: bytes


def _resign(signed: bytes, key: SigningKey, transform: Callable[[bytes], bytes] | None = None) -> bytes:
    """Return ``signed`` (``SEQUENCE { tbs, algorithm, BIT STRING, ...}``) signed again by ``key``.

    ``transform`` may rewrite the TBS first. What follows the signature (a BasicOCSPResponse's
    ``certs [0]``) is kept.
    """
    outer = _read_only_tlv(signed)
    tbs, rest = _read_tlv(outer.content)
    algorithm, rest = _read_tlv(rest)
    old_signature, trailer = _read_tlv(rest)
    if outer.tag != _SEQUENCE or tbs.tag != _SEQUENCE or old_signature.tag != _BIT_STRING:
        raise SigningFailed("the draft is not SEQUENCE { tbs, algorithm, BIT STRING }")
    tbs_bytes = tbs.encoded if transform is None else transform(tbs.encoded)
    # X.690 8.6.2.2: the first content octet counts the unused bits of the last octet, here none.
    signature = _encode(_BIT_STRING, b"\x00" + key.sign(tbs_bytes))
    return _encode(_SEQUENCE, tbs_bytes + algorithm.encoded + signature + trailer)


def _replace_responder_id(tbs: bytes, responder_id: bytes) -> bytes:
    """Return ResponseData with its responderID replaced; the version field is absent (v1 default)."""
    first, rest = _read_tlv(_read_only_tlv(tbs).content)
    if first.tag != _BY_KEY:
        raise SigningFailed("the draft OCSP ResponseData does not start with a byKey responderID")
    return _encode(_SEQUENCE, responder_id + rest)


def _replace_request_key(tbs: bytes, spki: bytes) -> bytes:
    """Return CertificationRequestInfo ``tbs`` with ``spki`` as its subjectPKInfo (RFC 2986 4.1)."""
    outer = _read_only_tlv(tbs)
    version, rest = _read_tlv(outer.content)
    subject, rest = _read_tlv(rest)
    _, attributes = _read_tlv(rest)
    return _encode(_SEQUENCE, version.encoded + subject.encoded + spki + attributes)


def _unwrap_ocsp(response: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (responseStatus, responseType, BasicOCSPResponse) of a DER OCSPResponse (RFC 6960 4.2.1)."""
    status, rest = _read_tlv(_read_only_tlv(response).content)
    if status.tag != _ENUMERATED or not rest:
        raise SigningFailed("the draft OCSP response has no responseBytes")
    explicit = _read_only_tlv(rest)  # responseBytes [0] EXPLICIT ResponseBytes
    response_type, rest = _read_tlv(_read_only_tlv(explicit.content).content)
    basic = _read_only_tlv(rest)  # response OCTET STRING, holding a BasicOCSPResponse
    if explicit.tag != _CONTEXT_0 or basic.tag != _OCTET_STRING:
        raise SigningFailed("the draft OCSP response is not shaped as RFC 6960 4.2.1 says")
    return status.encoded, response_type.encoded, basic.content


def _wrap_ocsp(status: bytes, response_type: bytes, basic: bytes) -> bytes:
    response_bytes = _encode(_SEQUENCE, response_type + _encode(_OCTET_STRING, basic))
    return _encode(_SEQUENCE, status + _encode(_CONTEXT_0, response_bytes))


def _encode(tag: int, content: bytes) -> bytes:
    """Return a DER TLV with a definite length in the fewest octets (X.690 8.1.3, 10.1)."""
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def _read_tlv(data: bytes) -> tuple[_Tlv, bytes]:
    """Return the first DER value in ``data`` and the bytes after it.

    Only single-octet tags and definite lengths of up to four octets occur in what cryptography
    encodes; anything else is refused.
    """
    if len(data) < 2 or data[0] & 0x1F == 0x1F:
        raise SigningFailed("truncated DER, or a multi-octet tag")
    if data[1] < 0x80:
        start, length = 2, data[1]
    else:
        count = data[1] & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            raise SigningFailed("unsupported or truncated DER length")
        start, length = 2 + count, int.from_bytes(data[2 : 2 + count], "big")
    end = start + length
    if end > len(data):
        raise SigningFailed("DER length runs past the end of the data")
    return _Tlv(data[0], data[start:end], data[:end]), data[end:]


def _read_only_tlv(data: bytes) -> _Tlv:
    """Return the one DER value that ``data`` holds; raise ``SigningFailed`` on trailing bytes."""
    tlv, rest = _read_tlv(data)
    if rest:
        raise SigningFailed("trailing bytes after a DER value")
    return tlv
