"""The CA hierarchy: create the root and issuing CAs, rotate the issuing CA, issue and export.

Theory of operation. The root (P-384, self-signed) is the one trust anchor devices and servers
install; it signs only issuing CAs and its own CRL, so its key can stay offline. The issuing CA
(P-256) signs device and server certificates, CRLs and OCSP responses; its key lives in a PKCS#11
token or an encrypted file. Rotation creates a new issuing CA with a new key and a new name, valid
from ``now`` while the old one is still valid: both chain to the same root, so every certificate
the old CA issued keeps verifying until it expires, and no device loses trust. The names differ so
that a relying party never confuses the two CAs' CRLs (RFC 5280 6.3.3 matches CRLs by issuer name).

:class:`CertificateAuthority` is checked when it is built: the issuing certificate must be a CA
signed by the root, and the signing key must match it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7

from fleetguard.pki.errors import CaError, ChainExportRejected
from fleetguard.pki.keys import SigningKey
from fleetguard.pki.profile import (
    ISSUING_CA_VALIDITY,
    ROOT_CA_VALIDITY,
    DeviceProfile,
    IpAddress,
    IssuingCaProfile,
    RootCaProfile,
    ServerProfile,
    SubjectPublicKey,
    device_certificate_builder,
    issuing_ca_builder,
    new_serial,
    root_ca_builder,
    server_certificate_builder,
)
from fleetguard.pki.signing import sign_certificate

__all__ = [
    "CertificateAuthority",
    "ChainFormat",
    "create_issuing",
    "create_root",
    "export_chain",
    "rotate_issuing",
]


class ChainFormat(enum.StrEnum):
    """How a certificate chain is exported."""

    PEM = "pem"  # every certificate, leaf first, concatenated PEM
    DER = "der"  # exactly one certificate; for a CA, the issuing CA
    PKCS7 = (
        "pkcs7"  # a DER certs-only PKCS#7 SignedData (RFC 2315; what EST /cacerts returns, RFC 7030 4.1.3)
    )


@dataclass(frozen=True, slots=True, eq=False)
class CertificateAuthority:
    """An issuing CA under its root, with the issuing CA's signing key."""

    root: x509.Certificate
    issuing: x509.Certificate
    key: SigningKey

    def __post_init__(self) -> None:
        _require_issued_by(self.root, self.root)
        _require_ca(self.issuing)
        _require_issued_by(self.issuing, self.root)
        _require_key_matches(self.issuing, self.key)

    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        """Return (issuing CA, root CA): the chain a relying party needs above a leaf."""
        return (self.issuing, self.root)

    def issue_device_certificate(
        self,
        profile: DeviceProfile,
        *,
        device_id: str,
        public_key: SubjectPublicKey,
        serial: int,
        now: dt.datetime,
        crl_url: str | None = None,
    ) -> x509.Certificate:
        """Return device ``device_id``'s operational certificate for ``public_key``, signed by this CA.

        Raises ``ProfileInputRejected`` for bad input, ``CaError`` if the issuing CA does not cover
        the validity, and ``KeyBackendError`` or ``SigningFailed`` if signing fails.
        """
        builder = device_certificate_builder(
            profile,
            device_id=device_id,
            public_key=public_key,
            issuer=self.issuing,
            serial=serial,
            now=now,
            crl_url=crl_url,
        )
        return sign_certificate(builder, self.key)

    def issue_server_certificate(
        self,
        profile: ServerProfile,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[IpAddress] = (),
        public_key: SubjectPublicKey,
        serial: int,
        now: dt.datetime,
    ) -> x509.Certificate:
        """Return a TLS server certificate for the names, signed by this CA; raises as above."""
        builder = server_certificate_builder(
            profile,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            public_key=public_key,
            issuer=self.issuing,
            serial=serial,
            now=now,
        )
        return sign_certificate(builder, self.key)

    def export_chain(self, fmt: ChainFormat) -> bytes:
        """Return the chain (issuing CA, root) in ``fmt``; DER holds the issuing CA certificate alone."""
        if fmt is ChainFormat.DER:
            return export_chain([self.issuing], fmt)
        return export_chain(self.chain(), fmt)


def create_root(
    key: SigningKey, name: x509.Name, now: dt.datetime, *, validity: dt.timedelta = ROOT_CA_VALIDITY
) -> x509.Certificate:
    """Return a new self-signed root CA certificate for ``key``, valid from ``now`` for ``validity``.

    Raises ``ProfileInputRejected`` for a bad name or key, and ``KeyBackendError`` or
    ``SigningFailed`` if signing fails.
    """
    profile = RootCaProfile(subject=name, validity=validity)
    builder = root_ca_builder(profile, public_key=key.public_key(), serial=new_serial(), now=now)
    return sign_certificate(builder, key)


def create_issuing(
    root_key: SigningKey,
    root: x509.Certificate,
    public_key: SubjectPublicKey,
    now: dt.datetime,
    *,
    name: x509.Name,
    validity: dt.timedelta = ISSUING_CA_VALIDITY,
    crl_url: str | None = None,
    ca_issuers_url: str | None = None,
) -> x509.Certificate:
    """Return a new issuing CA certificate for ``public_key``, signed by the root.

    ``crl_url`` and ``ca_issuers_url`` say where the root's CRL and certificate are published.
    Raises ``CaError`` if ``root_key`` does not match ``root`` or the validity would outlast the
    root, and ``ProfileInputRejected`` for a bad name, key or URL.
    """
    _require_key_matches(root, root_key)
    profile = IssuingCaProfile(
        subject=name, validity=validity, crl_url=crl_url, ca_issuers_url=ca_issuers_url
    )
    builder = issuing_ca_builder(profile, public_key=public_key, issuer=root, serial=new_serial(), now=now)
    return sign_certificate(builder, root_key)


def rotate_issuing(
    current: CertificateAuthority,
    root_key: SigningKey,
    new_key: SigningKey,
    now: dt.datetime,
    *,
    name: x509.Name,
    validity: dt.timedelta = ISSUING_CA_VALIDITY,
    crl_url: str | None = None,
    ca_issuers_url: str | None = None,
) -> CertificateAuthority:
    """Return a new issuing CA under ``current``'s root, with ``new_key`` and the subject ``name``.

    The new CA is valid from ``now``; the old one stays valid until it expires, so the two overlap
    and certificates from either verify under the root. Raises ``CaError`` if ``name`` or
    ``new_key`` is the current CA's, or ``root_key`` does not match the root.
    """
    if name == current.issuing.subject:
        raise CaError(
            f"the new issuing CA must not reuse the name {name.rfc4514_string()!r}",
            hint="CRLs are matched by issuer name; give the new CA a new one",
        )
    if _spki(new_key.public_key()) == _spki(current.issuing.public_key()):
        raise CaError("the new issuing CA must have a new key")
    issuing = create_issuing(
        root_key,
        current.root,
        new_key.public_key(),
        now,
        name=name,
        validity=validity,
        crl_url=crl_url,
        ca_issuers_url=ca_issuers_url,
    )
    return CertificateAuthority(root=current.root, issuing=issuing, key=new_key)


def export_chain(certificates: Sequence[x509.Certificate], fmt: ChainFormat) -> bytes:
    """Return ``certificates`` encoded as ``fmt``.

    Raises ``ChainExportRejected`` if there are none, or more than one for DER (a DER file holds
    one certificate; use PEM or PKCS#7 for a chain).
    """
    if not certificates:
        raise ChainExportRejected("there is no certificate to export")
    match fmt:
        case ChainFormat.PEM:
            return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
        case ChainFormat.DER:
            if len(certificates) != 1:
                raise ChainExportRejected(
                    f"DER holds one certificate, not {len(certificates)}",
                    hint="export the chain as PEM or PKCS#7",
                )
            return certificates[0].public_bytes(serialization.Encoding.DER)
        case ChainFormat.PKCS7:
            return pkcs7.serialize_certificates(list(certificates), serialization.Encoding.DER)
        case _ as unreachable:
            assert_never(unreachable)


def _require_ca(certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise CaError(f"{certificate.subject.rfc4514_string()} has no basic constraints") from exc
    if not constraints.ca:
        raise CaError(f"{certificate.subject.rfc4514_string()} is not a CA certificate")


def _require_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        subject, issuer_name = certificate.subject.rfc4514_string(), issuer.subject.rfc4514_string()
        raise CaError(f"{subject} is not issued by {issuer_name}: {exc}") from exc


def _require_key_matches(certificate: x509.Certificate, key: SigningKey) -> None:
    if _spki(certificate.public_key()) != _spki(key.public_key()):
        raise CaError(
            f"the signing key does not match the certificate of {certificate.subject.rfc4514_string()}",
            hint="check the key file or token label configured for this CA",
        )


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
