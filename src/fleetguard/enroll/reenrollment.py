"""What a re-enrollment CSR must have in common with the certificate it renews.

RFC 7030 4.2.2: "the Subject field and SubjectAltName extension MUST be identical to the
corresponding fields in the certificate being renewed/rekeyed". fleetguard compares the subject
byte for byte (the DER encodings as sent, so a changed string type counts as a change) and, being
stricter than the RFC as issue 4 asks, requires the same public key: ``simplereenroll`` renews a
device's key, it does not replace it (rekeying, RFC 7030 4.2.2's other half, is not offered; a
device with a new key enrolls again). SubjectAltNames in the CSR are ignored, as for every CSR
(:mod:`fleetguard.pki.csr`): the certificate's SAN comes from the inventory.
"""

from __future__ import annotations

import hashlib
import hmac

# asn1crypto ships no type information; only its TLV reader is used, on bytes.
from asn1crypto import parser as asn1_parser  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetguard.enroll.errors import ReenrollRefused
from fleetguard.pki.csr import ValidatedCsr

__all__ = ["require_same_subject_and_key"]


def require_same_subject_and_key(certificate: x509.Certificate, csr: ValidatedCsr, *, device_id: str) -> None:
    """Return if ``csr`` has ``certificate``'s subject (same DER) and public key.

    Raises ``ReenrollRefused`` naming which differs.
    """
    if _certificate_subject(certificate) != _csr_subject(csr.der):
        raise ReenrollRefused(
            "the CSR's subject differs from the certificate's (RFC 7030 4.2.2)",
            device_id=device_id,
            hint=f"request the subject {certificate.subject.rfc4514_string()[:200]!r}",
        )
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not hmac.compare_digest(hashlib.sha256(spki).digest(), csr.spki_sha256):
        raise ReenrollRefused(
            "the CSR's key differs from the certificate's: re-enrollment renews the same key",
            device_id=device_id,
            hint="sign the CSR with the current key, or enroll again to change keys",
        )


# The subjects are compared as encoded, so each is cut out of its structure by walking the
# elements' headers, not by decoding them (that cost more than the rest of this module's work).
_CONTEXT_0 = 0xA0  # TBSCertificate's version, [0] EXPLICIT, absent in v1 (RFC 5280 4.1)


def _certificate_subject(certificate: x509.Certificate) -> bytes:
    # RFC 5280 4.1: TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    # issuer, validity, subject, ... }. cryptography gives the TBS as it was signed.
    tbs = certificate.tbs_certificate_bytes
    elements = _elements(tbs)
    return _element(elements, 5 if elements[0] == _CONTEXT_0 else 4)


def _csr_subject(der: bytes) -> bytes:
    # RFC 2986 4: CertificationRequest ::= SEQUENCE { certificationRequestInfo SEQUENCE { version,
    # subject, ... }, ... }. The CSR was decoded already (validate_csr), so this walk cannot fail on
    # what it accepted, including TPM requests with a NULL in their ECDSA parameters.
    return _element(_elements(_element(_elements(der), 0)), 1)


def _elements(der: bytes) -> bytes:
    """Return the contents of the constructed value ``der`` (a SEQUENCE): its elements, encoded."""
    return bytes(asn1_parser.parse(der)[4])


def _element(contents: bytes, index: int) -> bytes:
    """Return the ``index``-th element of ``contents`` (elements one after another), encoded."""
    offset = 0
    for _ in range(index):
        offset += asn1_parser.peek(contents[offset:])
    return contents[offset : offset + asn1_parser.peek(contents[offset:])]
