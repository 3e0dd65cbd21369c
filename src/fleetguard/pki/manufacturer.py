"""The trust store of manufacturer CAs, whose factory (IDevID, IEEE 802.1AR) certificates devices
present at enrollment.

A factory certificate proves only that a device came from a manufacturer; it is accepted for
enrollment (claiming a device and issuing its first operational certificate) and never for access
to the broker or the API. The store therefore stays separate from fleetguard's own CA chain, and
each manufacturer's certificates are checked against that manufacturer's CAs only: a certificate
from manufacturer A is refused when the device claims to be from manufacturer B.

Chains are built and checked by cryptography's RFC 5280 path validation. The CA certificates must
meet its Web PKI profile; the leaf may have any extensions, since 802.1AR device certificates
rarely carry an EKU or a SAN and often end in 99991231235959Z (802.1AR 8.5).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from fleetguard.pki.errors import FactoryCertificateRejected, ProfileInputRejected

__all__ = ["MAX_BUNDLE_SIZE", "MAX_CHAIN_DEPTH", "ManufacturerTrustStore"]

MAX_CHAIN_DEPTH = 4
"""Most intermediate CAs between a factory certificate and its manufacturer's root."""

MAX_BUNDLE_SIZE = 1024 * 1024
"""Largest PEM bundle of manufacturer CAs read, in bytes."""

_MAX_INTERMEDIATES = 8
_MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class ManufacturerTrustStore:
    """Trusted CA certificates by manufacturer name."""

    anchors: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen: dict[str, tuple[x509.Certificate, ...]] = {}
        for manufacturer, certificates in self.anchors.items():
            if not 0 < len(manufacturer) <= _MAX_NAME or not manufacturer.isprintable():
                raise ProfileInputRejected(
                    f"manufacturer name {manufacturer[:_MAX_NAME]!r} is not 1-64 printable"
                )
            frozen[manufacturer] = tuple(
                _require_ca(manufacturer, certificate) for certificate in certificates
            )
            if not frozen[manufacturer]:
                raise ProfileInputRejected(f"manufacturer {manufacturer!r} has no CA certificates")
        object.__setattr__(self, "anchors", MappingProxyType(frozen))

    @classmethod
    def from_pem_bundles(cls, bundles: Mapping[str, bytes]) -> ManufacturerTrustStore:
        """Return a store from one PEM bundle of CA certificates per manufacturer.

        Raises ``ProfileInputRejected`` if a bundle is too large, malformed, empty, or holds a
        certificate that is not a CA.
        """
        anchors: dict[str, tuple[x509.Certificate, ...]] = {}
        for manufacturer, pem in bundles.items():
            if len(pem) > MAX_BUNDLE_SIZE:
                raise ProfileInputRejected(
                    f"CA bundle of {manufacturer!r} is larger than {MAX_BUNDLE_SIZE} bytes"
                )
            try:
                anchors[manufacturer] = tuple(x509.load_pem_x509_certificates(pem))
            except ValueError as exc:
                raise ProfileInputRejected(f"CA bundle of {manufacturer!r} is not PEM certificates") from exc
        return cls(anchors)

    def manufacturers(self) -> tuple[str, ...]:
        """Return the names of the trusted manufacturers, sorted."""
        return tuple(sorted(self.anchors))

    def require_factory_certificate(
        self,
        certificate: x509.Certificate,
        manufacturer: str,
        now: dt.datetime,
        *,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        """Return if ``certificate`` chains to one of ``manufacturer``'s CAs and every certificate on
        the path is valid at ``now``; raise ``FactoryCertificateRejected`` otherwise.

        ``intermediates`` are untrusted CA certificates the device sent along (at most 8).
        """
        if now.tzinfo is None:
            raise ProfileInputRejected("now must be a timezone-aware datetime")
        anchors = self.anchors.get(manufacturer)
        if anchors is None:
            raise FactoryCertificateRejected(manufacturer, "the manufacturer is not in the trust store")
        if len(intermediates) > _MAX_INTERMEDIATES:
            raise FactoryCertificateRejected(manufacturer, f"more than {_MAX_INTERMEDIATES} intermediates")
        verifier = (
            PolicyBuilder()
            .store(Store(list(anchors)))
            .time(now)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(certificate, list(intermediates))
        except VerificationError as exc:
            raise FactoryCertificateRejected(manufacturer, str(exc)) from exc


def _require_ca(manufacturer: str, certificate: x509.Certificate) -> x509.Certificate:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        subject = certificate.subject.rfc4514_string()
        raise ProfileInputRejected(f"certificate {subject!r} of manufacturer {manufacturer!r} is not a CA")
    return certificate
