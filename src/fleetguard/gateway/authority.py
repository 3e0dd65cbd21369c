"""The gateway's own CA, trusted by the broker's loopback control listener and nothing else.

fleetguard talks to Mosquitto as two kinds of client: the *control* client, which sends
dynamic-security commands, and the *probe*, which connects as a device to check what the broker lets
it do. Both authenticate with short-lived certificates (minutes) from this CA. The broker trusts the
CA only on a listener bound to 127.0.0.1, never on the device listener: a stolen gateway CA key lets
an attacker act as a device only from the gateway host itself, where they could already read the
broker's files. Certificates instead of dynamic-security passwords keep ``dynsec.json`` free of
password hashes and need no password file.

The CA key is a P-256 key in ``<gateway dir>/local-ca.key.pem`` (mode 0600); a new CA is made when the
old one is missing, within :data:`_RENEW_BEFORE` of expiry, or its key file is readable by others (the
broker reads the CA file when it starts). Python's ``ssl`` loads a key only from a file, so
:meth:`GatewayAuthority.client_context` writes the credential to a mode-0600 file in the gateway
directory and removes it once loaded.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetguard.private_file import create_private_file, replace_private_file

__all__ = ["CA_FILE", "CA_KEY_FILE", "Credential", "GatewayAuthority"]

CA_FILE = "local-ca.pem"
CA_KEY_FILE = "local-ca.key.pem"
_CA_LIFETIME = dt.timedelta(days=365)
_RENEW_BEFORE = dt.timedelta(days=30)
_CLIENT_LIFETIME = dt.timedelta(minutes=10)
# Certificates start a minute in the past: the broker and fleetguard share a clock, but not a tick.
_BACKDATE = dt.timedelta(minutes=1)
_PEM = serialization.Encoding.PEM


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate and its private key, both PEM."""

    certificate_pem: bytes
    key_pem: bytes


class GatewayAuthority:
    """Issues the loopback listener's server certificate and short-lived client certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self.certificate = certificate

    @classmethod
    def load_or_create(cls, directory: Path, *, now: dt.datetime) -> GatewayAuthority:
        """Return the CA kept in ``directory``, making a new one if it is missing or nearly expired."""
        cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
        # A key that others could read may have been copied: it is replaced, not used.
        if cert_path.is_file() and key_path.is_file() and not key_path.stat().st_mode & 0o077:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if (
                isinstance(key, ec.EllipticCurvePrivateKey)
                and certificate.not_valid_after_utc - now > _RENEW_BEFORE
            ):
                return cls(key, certificate)
        authority = cls.generate(now=now)
        replace_private_file(key_path, authority._key_pem())
        replace_private_file(cert_path, authority.certificate_pem)
        return authority

    @classmethod
    def generate(cls, *, now: dt.datetime) -> GatewayAuthority:
        """Return a new CA held in memory only."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fleetguard gateway CA {uuid.uuid4()}")])
        certificate = (
            _builder(name, name, key.public_key(), now, now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate, PEM: the control listener's ``cafile``."""
        return self.certificate.public_bytes(_PEM)

    def issue_client(
        self, common_name: str, *, now: dt.datetime, lifetime: dt.timedelta = _CLIENT_LIFETIME
    ) -> Credential:
        """Return a client certificate whose CN (the broker's username for it) is ``common_name``."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, (), now, now + lifetime)

    def issue_server(self, host: str, *, now: dt.datetime) -> Credential:
        """Return a server certificate for the loopback listener at ``host`` (an IP address)."""
        names = [x509.IPAddress(ipaddress.ip_address(host))]
        not_after = self.certificate.not_valid_after_utc
        return self._issue(
            "fleetguard gateway control", ExtendedKeyUsageOID.SERVER_AUTH, names, now, not_after
        )

    def client_context(self, credential: Credential, *, scratch: Path) -> ssl.SSLContext:
        """Return a TLS client context that presents ``credential`` and trusts only this CA.

        ``scratch`` is a directory only this user can read; the key passes through a mode-0600 file
        there, which is removed before returning.
        """
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.certificate_pem.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        path = scratch / f".credential-{uuid.uuid4().hex}.pem"
        create_private_file(path, credential.certificate_pem + credential.key_pem)
        try:
            context.load_cert_chain(path)
        finally:
            path.unlink(missing_ok=True)
        return context

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: Sequence[x509.GeneralName],
        now: dt.datetime,
        not_after: dt.datetime,
    ) -> Credential:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, self.certificate.subject, key.public_key(), now, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return Credential(certificate.public_bytes(_PEM), key_pem)

    def _key_pem(self) -> bytes:
        return self._key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # RFC 5280 4.2.1.3: a CA signs certificates; an ECDSA end entity signs (TLS 1.2/1.3 handshakes).
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
