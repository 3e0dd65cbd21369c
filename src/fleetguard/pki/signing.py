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

A :class:`~fleetguard.pki.keys.SoftwareKey` (which includes ``FileKey``) takes the fast path: the
builder signs with its private key directly, with no stand-in and no second parse.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from fleetguard.pki.errors import SigningFailed
from fleetguard.pki.keys import SigningKey, SoftwareKey, signature_algorithm_oid, verify_signature

__all__ = ["sign_certificate", "sign_crl", "sign_ocsp_response"]

_SEQUENCE = 0x30
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_CONTEXT_0 = 0xA0  # [0] EXPLICIT, constructed
_STAND_IN_RSA_BITS = 2048

_T = TypeVar("_T")


def sign_certificate(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    """Return the certificate ``builder`` describes, signed by ``key``.

    Raises ``SigningFailed`` if the signature does not verify with ``key.public_key()``, and
    ``KeyBackendError`` if the backend cannot sign now.
    """
    if isinstance(key, SoftwareKey):
        return builder.sign(key.private_key, _hash_of(key))
    draft = builder.sign(_stand_in(key.public_key()), _hash_of(key))
    _require_algorithm(draft.signature_algorithm_oid, key)
    der = _replace_signature(
        draft.public_bytes(serialization.Encoding.DER), key.sign(draft.tbs_certificate_bytes)
    )
    certificate = _parse(x509.load_der_x509_certificate, der)
    _verify(key, certificate.signature, certificate.tbs_certificate_bytes, "certificate")
    return certificate


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: SigningKey
) -> x509.CertificateRevocationList:
    """Return the CRL ``builder`` describes, signed by ``key``.

    Raises ``SigningFailed`` if the signature does not verify, ``KeyBackendError`` if the backend fails.
    """
    if isinstance(key, SoftwareKey):
        return builder.sign(key.private_key, _hash_of(key))
    draft = builder.sign(_stand_in(key.public_key()), _hash_of(key))
    _require_algorithm(draft.signature_algorithm_oid, key)
    der = _replace_signature(
        draft.public_bytes(serialization.Encoding.DER), key.sign(draft.tbs_certlist_bytes)
    )
    crl = _parse(x509.load_der_x509_crl, der)
    _verify(key, crl.signature, crl.tbs_certlist_bytes, "CRL")
    return crl


def sign_ocsp_response(builder: ocsp.OCSPResponseBuilder, key: SigningKey) -> ocsp.OCSPResponse:
    """Return the successful OCSP response ``builder`` describes, signed by ``key``.

    ``builder`` must already name the responder and the responses. Raises ``SigningFailed`` if the
    signature does not verify, ``KeyBackendError`` if the backend fails.
    """
    if isinstance(key, SoftwareKey):
        return builder.sign(key.private_key, _hash_of(key))
    draft = builder.sign(_stand_in(key.public_key()), _hash_of(key))
    _require_algorithm(draft.signature_algorithm_oid, key)
    signature = key.sign(draft.tbs_response_bytes)
    der = _replace_ocsp_signature(draft.public_bytes(serialization.Encoding.DER), signature)
    response = _parse(ocsp.load_der_ocsp_response, der)
    _verify(key, response.signature, response.tbs_response_bytes, "OCSP response")
    return response


@functools.cache
def _stand_in_for_curve(curve_name: str) -> ec.EllipticCurvePrivateKey:
    curve = {ec.SECP256R1.name: ec.SECP256R1(), ec.SECP384R1.name: ec.SECP384R1()}.get(curve_name)
    if curve is None:
        raise SigningFailed(f"no stand-in key for curve {curve_name}")
    return ec.generate_private_key(curve)


@functools.cache
def _stand_in_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_STAND_IN_RSA_BITS)


def _stand_in(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """Return the throwaway key whose signatures carry the same AlgorithmIdentifier as ``public_key``'s."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _stand_in_for_curve(public_key.curve.name)
    return _stand_in_rsa()


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


class _Tlv(NamedTuple):
    tag: int
    content: bytes
    encoded: bytes


def _replace_signature(signed: bytes, signature: bytes) -> bytes:
    """Return ``signed`` (``SEQUENCE { tbs, algorithm, BIT STRING, ...}``) with a new signature value."""
    outer = _read_only_tlv(signed)
    tbs, rest = _read_tlv(outer.content)
    algorithm, rest = _read_tlv(rest)
    old_signature, trailer = _read_tlv(rest)  # BasicOCSPResponse has "certs [0]" after the signature
    if outer.tag != _SEQUENCE or old_signature.tag != _BIT_STRING:
        raise SigningFailed("the draft is not SEQUENCE { tbs, algorithm, BIT STRING }")
    # X.690 8.6.2.2: the first content octet counts the unused bits of the last octet, here none.
    new_signature = _encode(_BIT_STRING, b"\x00" + signature)
    return _encode(_SEQUENCE, tbs.encoded + algorithm.encoded + new_signature + trailer)


def _replace_ocsp_signature(response: bytes, signature: bytes) -> bytes:
    """Return the OCSPResponse with a new signature in its BasicOCSPResponse (RFC 6960 4.2.1)."""
    status, rest = _read_tlv(_read_only_tlv(response).content)
    if status.tag != _ENUMERATED or not rest:
        raise SigningFailed("the draft OCSP response has no responseBytes")
    explicit = _read_only_tlv(rest)  # responseBytes [0] EXPLICIT ResponseBytes
    response_type, rest = _read_tlv(_read_only_tlv(explicit.content).content)
    basic = _read_only_tlv(rest)  # response OCTET STRING, holding a BasicOCSPResponse
    if explicit.tag != _CONTEXT_0 or basic.tag != _OCTET_STRING:
        raise SigningFailed("the draft OCSP response is not shaped as RFC 6960 4.2.1 says")
    response_bytes = response_type.encoded + _encode(
        _OCTET_STRING, _replace_signature(basic.content, signature)
    )
    return _encode(_SEQUENCE, status.encoded + _encode(_CONTEXT_0, _encode(_SEQUENCE, response_bytes)))


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
