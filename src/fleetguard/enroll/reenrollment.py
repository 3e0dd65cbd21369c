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

# asn1crypto ships no type information; its values are turned into bytes at once.
from asn1crypto import csr as asn1_csr  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetguard.enroll.errors import ReenrollRefused
from fleetguard.pki.csr import ValidatedCsr

__all__ = ["require_same_subject_and_key"]


def require_same_subject_and_key(certificate: x509.Certificate, csr: ValidatedCsr, *, device_id: str) -> None:
    """Return if ``csr`` has ``certificate``'s subject (same DER) and public key.

    Raises ``ReenrollRefused`` naming which differs.
    """
    certificate_der = certificate.public_bytes(serialization.Encoding.DER)
    if _certificate_subject(certificate_der) != _csr_subject(csr.der):
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


def _certificate_subject(der: bytes) -> bytes:
    return bytes(asn1_x509.Certificate.load(der)["tbs_certificate"]["subject"].dump())


def _csr_subject(der: bytes) -> bytes:
    # The CSR was decoded already (validate_csr), so this parse cannot fail on what it accepted,
    # including TPM requests with a NULL in their ECDSA parameters, which cryptography cannot load.
    return bytes(asn1_csr.CertificationRequest.load(der)["certification_request_info"]["subject"].dump())
