"""Certificate signing requests (PKCS#10, RFC 2986): accept a public key, and nothing else, from a device.

Theory of operation. A CSR proves that its sender holds the private key for the public key inside
it. That proof is all fleetguard takes from it: :func:`validate_csr` bounds the input, decodes PEM or
DER, refuses keys other than EC P-256, EC P-384 and RSA of 2048 to 8192 bits, verifies the signature
(SHA-256 or stronger), and refuses loudly a request for a CA certificate. The subject, the SANs and
every other requested extension are ignored: a device's identity comes from the inventory, never from
what the device says about itself (no identity injection). :class:`ValidatedCsr` therefore has no
subject or SAN field to be used by mistake.

TPM stacks: some put an explicit ASN.1 NULL in the parameters of ``ecdsa-with-SHA256``, which RFC 5758
3.2 forbids and ``cryptography`` refuses to parse. The signature of a CSR covers only the
CertificationRequestInfo, not the outer AlgorithmIdentifier, so such a request is re-encoded with the
parameters absent and its signature verified as usual; nothing the signature covers changes.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

# asn1crypto ships no type information (one ignore covers the package); its values become bytes/str at once.
from asn1crypto import algos as asn1_algos  # type: ignore[import-untyped]
from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from fleetguard.pki.errors import CsrRejected
from fleetguard.types import Sha256

__all__ = [
    "MAX_CSR_BYTES",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "CsrPublicKey",
    "KeyKind",
    "ValidatedCsr",
    "validate_csr",
]

MAX_CSR_BYTES = 16 * 1024
"""Largest CSR accepted, PEM or DER; an RSA-8192 request with a long subject is about 2 KiB."""

MIN_RSA_BITS = 2048
"""NIST SP 800-131A Rev. 2: RSA keys below 2048 bits are disallowed for signatures."""

MAX_RSA_BITS = 8192
"""Larger RSA keys buy nothing and make every verification slower."""

_PEM_LABELS = frozenset({"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"})  # RFC 7468 7; the old MS label

# RFC 5758 3.2: ecdsa-with-SHA224/256/384/512 "MUST omit the parameters field"; TPM stacks send NULL.
_ECDSA_SIGNATURE_OIDS = frozenset(
    {
        "1.2.840.10045.4.1",
        "1.2.840.10045.4.3.1",
        "1.2.840.10045.4.3.2",
        "1.2.840.10045.4.3.3",
        "1.2.840.10045.4.3.4",
    }
)
_ASN1_NULL = b"\x05\x00"

_STRONG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

# SEC 2 / FIPS 186-4 names, so that a rejection names the curve as an operator knows it.
_CURVE_NAMES = {
    "secp192r1": "P-192",
    "secp224r1": "P-224",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}

CsrPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
"""The public key types a validated CSR can carry."""


class KeyKind(enum.StrEnum):
    """The key types fleetguard certifies."""

    P256 = "p256"
    P384 = "p384"
    RSA = "rsa"


@dataclass(frozen=True, slots=True)
class ValidatedCsr:
    """A CSR whose signature verifies and whose key is acceptable.

    Deliberately without subject, SANs or extensions: identity comes from the inventory. ``der`` is
    the request as received (after PEM decoding), kept for the record; ``spki_sha256`` is the SHA-256
    of the DER SubjectPublicKeyInfo, which identifies the key (a renewal in the grace window must
    present the key of the expired certificate).
    """

    public_key: CsrPublicKey
    key_kind: KeyKind
    key_bits: int
    spki_sha256: Sha256
    der: bytes


def validate_csr(data: bytes, *, max_bytes: int = MAX_CSR_BYTES) -> ValidatedCsr:
    """Decode and check a PEM or DER CSR; return the accepted key.

    Raises :class:`~fleetguard.pki.errors.CsrRejected` when the input is over ``max_bytes``, is not
    one PEM or DER CertificationRequest, carries a key other than EC P-256/P-384 or RSA 2048-8192,
    is signed with SHA-1 or weaker, has a signature that does not verify, has an extension request
    that cannot be parsed, or asks for BasicConstraints CA:TRUE.
    """
    if len(data) > max_bytes:
        raise CsrRejected(f"request is {len(data)} bytes, over the limit of {max_bytes} bytes")
    der = _der_from(data)
    request = _load(der)
    public_key, kind, bits = _classify(_public_key(request, der))
    _require_valid_signature(request)
    _refuse_ca_request(request)
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ValidatedCsr(
        public_key=public_key,
        key_kind=kind,
        key_bits=bits,
        spki_sha256=Sha256(hashlib.sha256(spki).digest()),
        der=der,
    )


def _der_from(data: bytes) -> bytes:
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    try:
        label, _headers, der = asn1_pem.unarmor(data.strip())
    except (ValueError, TypeError) as exc:
        raise CsrRejected(f"malformed PEM: {exc}") from exc
    if label not in _PEM_LABELS:
        raise CsrRejected(f"PEM block is {label!r}, not 'CERTIFICATE REQUEST'")
    return bytes(der)


def _load(der: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:
        repaired = _without_null_ecdsa_parameters(der)
        if repaired is None:
            raise CsrRejected(f"malformed DER: {_parser_reason(exc)}") from exc
    try:
        return x509.load_der_x509_csr(repaired)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CsrRejected(f"malformed DER: {_parser_reason(exc)}") from exc


def _parser_reason(exc: Exception) -> str:
    # cryptography's parser errors carry Rust debug text (ParseError { kind: ShortData ... }); say
    # what a person can act on instead, and keep the location only when it is plain text.
    text = str(exc)
    if "ParseError" in text or "{" in text:
        return "not a DER-encoded PKCS#10 certification request"
    return text


def _without_null_ecdsa_parameters(der: bytes) -> bytes | None:
    """Return the CSR re-encoded without a NULL in its ECDSA AlgorithmIdentifier, or None if n/a."""
    try:
        request = asn1_csr.CertificationRequest.load(der, strict=True)
        algorithm = request["signature_algorithm"]
        oid = algorithm["algorithm"].dotted
        parameters = algorithm["parameters"].dump()
        info = request["certification_request_info"].dump()
        signature = request["signature"].dump()
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return None
    if oid not in _ECDSA_SIGNATURE_OIDS or parameters != _ASN1_NULL:
        return None
    bare_algorithm = asn1_algos.SignedDigestAlgorithm({"algorithm": oid}).dump()
    # The outer SEQUENCE is rebuilt around the untouched CertificationRequestInfo bytes.
    outer = asn1_core.Sequence()
    outer.contents = info + bare_algorithm + signature
    return bytes(outer.dump())


def _public_key(request: x509.CertificateSigningRequest, der: bytes) -> PublicKeyTypes:
    try:
        return request.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejected(f"unsupported key: {_describe_unloadable_key(der)}") from exc


def _describe_unloadable_key(der: bytes) -> str:
    """Name the key of a CSR whose public key ``cryptography`` cannot load (e.g. explicit EC params)."""
    try:
        info = asn1_csr.CertificationRequest.load(der)["certification_request_info"]
        spki = info["subject_pk_info"]
        algorithm = str(spki.algorithm)
        if algorithm == "ec":
            kind, curve = spki.curve
            return f"EC key on {kind} curve {curve if kind == 'named' else '(explicit parameters)'}"
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return "a public key that cannot be decoded"
    return f"{algorithm} key that cannot be loaded"


def _classify(key: PublicKeyTypes) -> tuple[CsrPublicKey, KeyKind, int]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        if curve == "secp256r1":
            return key, KeyKind.P256, 256
        if curve == "secp384r1":
            return key, KeyKind.P384, 384
        name = _CURVE_NAMES.get(curve, curve)
        raise CsrRejected(f"EC key on curve {name} ({key.key_size} bits): only P-256 and P-384 are accepted")
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise CsrRejected(f"RSA-{bits} key is too weak: RSA keys need at least {MIN_RSA_BITS} bits")
        if bits > MAX_RSA_BITS:
            raise CsrRejected(f"RSA-{bits} key is too large: at most {MAX_RSA_BITS} bits are accepted")
        return key, KeyKind.RSA, bits
    raise CsrRejected(f"{_key_type_name(key)} key: only EC P-256, EC P-384 and RSA >= 2048 are accepted")


def _key_type_name(key: PublicKeyTypes) -> str:
    name = type(key).__name__.removesuffix("PublicKey")  # Ed25519PublicKey -> Ed25519, DSAPublicKey -> DSA
    return name or "unknown"


def _require_valid_signature(request: x509.CertificateSigningRequest) -> None:
    try:
        algorithm = request.signature_hash_algorithm
        valid = request.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejected(
            f"unsupported signature algorithm {request.signature_algorithm_oid.dotted_string}"
        ) from exc
    if not isinstance(algorithm, _STRONG_HASHES):
        name = "none" if algorithm is None else algorithm.name.upper()
        raise CsrRejected(f"signature uses hash {name}: SHA-256, SHA-384 or SHA-512 is required")
    if not valid:
        raise CsrRejected("signature does not verify with the request's public key (no proof of possession)")


def _refuse_ca_request(request: x509.CertificateSigningRequest) -> None:
    # Requested extensions are never copied into a certificate; a CA request is still refused loudly,
    # because a device asking for one is misconfigured or hostile.
    try:
        constraints = request.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRejected(f"extension request cannot be parsed: {exc}") from exc
    if constraints.ca:
        raise CsrRejected(
            "request asks for a CA certificate (BasicConstraints CA:TRUE); devices are never CAs"
        )
