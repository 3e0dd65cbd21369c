"""What a factory (IDevID) certificate says about its device: manufacturer, model and serial number.

How each is read (IEEE 802.1AR-2018 8.6 recommends the serialNumber attribute in the subject):

* **manufacturer**: the name under which the operator registered the manufacturer CA that the chain
  verifies to. It is *not* read from the subject's O: any registered manufacturer's CA could write any
  O, so trusting it would let manufacturer A claim manufacturer B's devices.
* **serial**: the subject's ``serialNumber`` (2.5.4.5), exactly one, 1-128 characters. The inventory
  looks the device up by (manufacturer, serial).
* **model**: one subject attribute chosen per manufacturer when its CA is registered
  (:class:`ModelAttribute`, default ``OU``), exactly one, 1-256 characters. Zero-touch rules match on it.

Control characters are refused in both, since they end up in the inventory, the event log and the CLI.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetguard.enroll.errors import FactoryCertificateRefused
from fleetguard.types import Sha256

__all__ = [
    "MAX_MODEL",
    "MAX_SERIAL",
    "MUD_URL_OID",
    "FactoryIdentity",
    "ModelAttribute",
    "factory_identity",
    "mud_url_of",
]

MAX_SERIAL = 128
"""Longest device serial number; the inventory's limit."""

MAX_MODEL = 256
# RFC 8520 section 10: id-pe-mud-url, an IA5String URL; our inventory keeps URLs up to 2048 octets.
MUD_URL_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.25")
MAX_MUD_URL = 2048
_URL = re.compile(r"https://[\x21-\x7e]+")
"""Longest model name; the inventory's limit."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ModelAttribute(enum.StrEnum):
    """The subject attribute of a manufacturer's factory certificates that names the device model."""

    OU = "ou"
    CN = "cn"
    TITLE = "title"
    PSEUDONYM = "pseudonym"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        """The attribute's object identifier (X.520)."""
        return _OIDS[self]


_OIDS = {
    ModelAttribute.OU: NameOID.ORGANIZATIONAL_UNIT_NAME,
    ModelAttribute.CN: NameOID.COMMON_NAME,
    ModelAttribute.TITLE: NameOID.TITLE,
    ModelAttribute.PSEUDONYM: NameOID.PSEUDONYM,
}


@dataclass(frozen=True, slots=True)
class FactoryIdentity:
    """A device identified by a verified factory certificate; ``fingerprint`` is SHA-256 of its DER."""

    manufacturer: str
    model: str
    serial: str
    fingerprint: Sha256
    mud_url: str | None = None


def factory_identity(
    certificate: x509.Certificate, manufacturer: str, attribute: ModelAttribute
) -> FactoryIdentity:
    """Return the identity in ``certificate``'s subject, for a chain verified to ``manufacturer``.

    Raises ``FactoryCertificateRefused`` if the serialNumber or the model attribute is missing,
    repeated, empty, too long or holds control characters.
    """
    serial = _single(certificate.subject, NameOID.SERIAL_NUMBER, "serialNumber", MAX_SERIAL)
    model = _single(certificate.subject, attribute.oid, attribute.value.upper(), MAX_MODEL)
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return FactoryIdentity(manufacturer, model, serial, Sha256(fingerprint), mud_url_of(certificate))


def mud_url_of(certificate: x509.Certificate) -> str | None:
    """Return the certificate's MUD URL extension (RFC 8520 section 10), or None when it has none.

    The extension's value is an IA5String holding an https URL. Raises ``FactoryCertificateRefused``
    for a malformed one: the manufacturer signed it, so it is not guessed at.
    """
    try:
        extension = certificate.extensions.get_extension_for_oid(MUD_URL_OID)
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    der = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    url = _ia5(der)
    if url is None or not url.startswith("https://") or len(url) > MAX_MUD_URL or not _URL.fullmatch(url):
        raise FactoryCertificateRefused(
            "the factory certificate's MUD URL extension is not an https URL (RFC 8520 section 10)"
        )
    return url


def _ia5(der: bytes) -> str | None:
    # X.690: tag 0x16 (IA5String), then a short or long definite length.
    if len(der) < 2 or der[0] != 0x16:
        return None
    length, offset = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2:
            return None
        length, offset = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    body = der[offset:]
    if len(body) != length or not body.isascii():
        return None
    return body.decode("ascii")


def _single(name: x509.Name, oid: x509.ObjectIdentifier, label: str, limit: int) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise FactoryCertificateRefused(f"the subject holds {len(values)} {label} attributes, not one")
    value = values[0].value
    if not isinstance(value, str) or not value.strip():
        raise FactoryCertificateRefused(f"the subject's {label} is empty")
    if len(value) > limit:
        raise FactoryCertificateRefused(f"the subject's {label} is over {limit} characters")
    if _CONTROL.search(value):
        raise FactoryCertificateRefused(f"the subject's {label} holds control characters")
    return value
