"""Private keys and certificates in the image.

Every regular file (its first :data:`MAX_BYTES`; media and compressed files are skipped) is
searched with ``bytes.find`` for the few byte strings a key or certificate starts with: a PEM
``-----BEGIN``, a PuTTY header, a Dropbear length-prefixed algorithm name. Each candidate is then
*parsed* — PEM and DER with ``cryptography``, the SSH formats with :mod:`.sshkeys` — and reported
only when it is a key: a ``-----BEGIN RSA PRIVATE KEY-----`` in a binary's string table or in a
template has no valid body and is not reported; a PEM block whose base64 body is long but does
not parse is reported as INFO (``key.unparsed``), since it may be a key in a format we do not read.
Small DER files at key-like paths are tried as PKCS#1/PKCS#8 keys and X.509 certificates.

Evidence names the key type, size and the SHA-256 fingerprint of the DER SubjectPublicKeyInfo
(and, for SSH formats, the fingerprint ``ssh-keygen -l`` prints) — never key material.

Certificates are checked for expiry against the ``now`` the analyzer is built with, for being
self-signed (end-entity certificates only: trust anchors are self-signed by definition), for weak
keys (RSA < 2048 bits, DSA, EC < 224 bits; NIST SP 800-131A Rev. 2) and for SHA-1/MD5 signatures
(not on self-signed certificates, whose own signature nobody relies on; RFC 5280 6.1).
"""

from __future__ import annotations

import binascii
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from asn1crypto import core as asn1_core  # type: ignore[import-untyped]
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.utils import CryptographyDeprecationWarning

from fleetguard.firmware.analyzers.content import MEDIA_SUFFIXES
from fleetguard.firmware.analyzers.content import read_head as _read_head
from fleetguard.firmware.analyzers.sshkeys import (
    DROPBEAR_MARKERS,
    SshKey,
    parse_dropbear,
    parse_openssh,
    parse_ppk,
)
from fleetguard.firmware.model import Category, ExtractedTree, Finding, Severity
from fleetguard.firmware.redaction import fingerprint

__all__ = ["MAX_BYTES", "KeyAnalyzer", "scan_key_material"]

MAX_BYTES = 16 << 20  # per file; keys live in small files or near the start of a binary
MAX_CANDIDATES = 4096  # markers tried per file (a CA bundle holds about 150 certificates)
MAX_DER_FILE = 64 << 10  # a DER key or certificate; bigger files are not tried as DER
_MIN_BODY = 64  # base64 characters: below this a PEM block is a marker or a template, not a key
_MIN_RSA_BITS = 2048  # NIST SP 800-131A Rev. 2, table 2
_MIN_EC_BITS = 224

_PEM_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]{1,40})-----\r?\n"
    rb"((?:[A-Za-z-]{1,40}: ?[^\r\n]{0,256}\r?\n){0,8})\s{0,4}"
    rb"([A-Za-z0-9+/=\s]{0,100000}?)"
    rb"-----END \1-----"
)
_PRIVATE_LABELS = frozenset(
    {b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY", b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}
)
_CERTIFICATE_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
_DER_SUFFIXES = (".der", ".key", ".pk8", ".p8", ".priv", ".crt", ".cer", ".cert")
_DER_PATH_HINTS = ("key", "cert", "/ssl/", "/private/", "/pki/")
_WEAK_HASHES = {"sha1": Severity.MEDIUM, "md5": Severity.HIGH, "md2": Severity.HIGH, "md4": Severity.HIGH}


@dataclass(frozen=True, slots=True)
class _Key:
    """A private key found: what it is, where, and its public half (None when encrypted opaquely)."""

    kind: str  # rsa, dsa, ec, ed25519, ed448, or the label of an opaque encrypted key
    bits: int | None
    container: str  # "PKCS#1 PEM", "OpenSSH", "Dropbear", ...
    encrypted: bool
    public_key: PublicKeyTypes | None
    ssh_fingerprint: str | None
    offset: int


class KeyAnalyzer:
    """Finds private keys (parsed, never bare markers) and weak, expired or self-signed certificates."""

    name = "keys"

    def __init__(self, *, now: datetime | None = None, max_bytes: int = MAX_BYTES) -> None:
        """``now`` decides expiry; None means the time each :meth:`analyze` call starts."""
        if now is not None and now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        self._now = now
        self._max_bytes = max_bytes

    def analyze(self, tree: ExtractedTree) -> Iterator[Finding]:
        """Yield the key and certificate findings of every regular file of ``tree``."""
        now = self._now or datetime.now(UTC)
        for entry in tree.files():
            if entry.path.lower().endswith(MEDIA_SUFFIXES):
                continue
            data = _read_head(entry, self._max_bytes)
            if data:
                yield from scan_key_material(entry.path, data, now)


def scan_key_material(path: str, data: bytes, now: datetime) -> Iterator[Finding]:
    """Yield the findings about the keys and certificates in ``data`` (the content of ``path``)."""
    found_pem = False
    for match in _pem_blocks(data):
        found_pem = True
        yield from _pem_findings(path, match, now)
    for key in _ssh_keys(data):
        yield _key_finding(path, key)
    if not found_pem:
        yield from _der_findings(path, data, now)


def _find_all(data: bytes, marker: bytes) -> Iterator[int]:
    position = data.find(marker)
    count = 0
    while position >= 0 and count < MAX_CANDIDATES:
        yield position
        count += 1
        position = data.find(marker, position + 1)


def _pem_blocks(data: bytes) -> Iterator[re.Match[bytes]]:
    end = 0
    for position in _find_all(data, b"-----BEGIN "):
        if position < end:
            continue
        match = _PEM_RE.match(data, position)
        if match is not None:
            end = match.end()
            yield match


def _ssh_keys(data: bytes) -> Iterator[_Key]:
    for position in _find_all(data, b"PuTTY-User-Key-File-"):
        ppk = parse_ppk(data, position)
        if ppk is not None:
            yield _from_ssh(ppk, "PuTTY", position)
    for marker in DROPBEAR_MARKERS:
        for position in _find_all(data, marker):
            key = parse_dropbear(data, position)
            if key is not None:
                yield _from_ssh(key, "Dropbear", position)


def _from_ssh(key: SshKey, container: str, offset: int) -> _Key:
    kind, bits = _describe(key.public_key)
    return _Key(kind, bits, container, key.encrypted, key.public_key, key.ssh_fingerprint, offset)


def _describe(public: PublicKeyTypes | PrivateKeyTypes) -> tuple[str, int | None]:
    if isinstance(public, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "rsa", public.key_size
    if isinstance(public, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return "dsa", public.key_size
    if isinstance(public, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ec", public.curve.key_size
    if isinstance(public, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519", 256
    if isinstance(public, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "ed448", 456
    return "other", None


# PEM ---------------------------------------------------------------------------------------------


def _pem_findings(path: str, match: re.Match[bytes], now: datetime) -> Iterator[Finding]:
    label, headers, body = match.group(1), match.group(2), match.group(3)
    compact = re.sub(rb"\s+", b"", body)
    if len(compact) < _MIN_BODY:
        return  # a marker, a template or an empty block: nothing to parse, nothing to report
    if label in _CERTIFICATE_LABELS:
        yield from _certificate_findings(path, match.group(0), match.start(), now, pem=True)
        return
    if label not in _PRIVATE_LABELS and label != b"OPENSSH PRIVATE KEY":
        return
    key = _parse_pem_key(label, headers, compact, match.group(0), match.start())
    if key is None:
        yield _unparsed(path, label.decode(), match.start())
    else:
        yield _key_finding(path, key)


def _parse_pem_key(label: bytes, headers: bytes, compact: bytes, pem: bytes, offset: int) -> _Key | None:
    try:
        der = binascii.a2b_base64(compact, strict_mode=True)
    except binascii.Error:
        return None
    if label == b"OPENSSH PRIVATE KEY":
        ssh = parse_openssh(der)
        return None if ssh is None else _from_ssh(ssh, "OpenSSH", offset)
    if label == b"ENCRYPTED PRIVATE KEY":
        return _encrypted_pkcs8(der, offset)
    if b"Proc-Type: 4,ENCRYPTED" in headers:
        return _legacy_encrypted(label, headers, der, offset)
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return _structural_key(label, der, offset)
    container = "PKCS#8 PEM" if label == b"PRIVATE KEY" else "PEM"
    return _from_private(private, container, offset)


class _AlgorithmIdentifier(asn1_core.Sequence):  # type: ignore[misc]
    """RFC 5280 4.1.1.2, with parameters of any type (asn1crypto's own refuses unknown OIDs)."""

    _fields = [("algorithm", asn1_core.ObjectIdentifier), ("parameters", asn1_core.Any, {"optional": True})]  # noqa: RUF012


class _OpaquePrivateKeyInfo(asn1_core.Sequence):  # type: ignore[misc]
    """RFC 5958 section 2 OneAsymmetricKey, the private key left as an OCTET STRING."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration
        ("version", asn1_core.Integer),
        ("private_key_algorithm", _AlgorithmIdentifier),
        ("private_key", asn1_core.OctetString),
        ("attributes", asn1_core.Any, {"implicit": 0, "optional": True}),
        ("public_key", asn1_core.Any, {"implicit": 1, "optional": True}),
    ]


def _structural_key(label: bytes, der: bytes, offset: int) -> _Key | None:
    """A key ``cryptography`` will not load (GOST, an EC scalar with a stray leading zero, ...).

    Reported when its ASN.1 structure is valid (RFC 5958 PrivateKeyInfo, RFC 5915 ECPrivateKey);
    there is no public key to fingerprint.
    """
    try:
        if label == b"PRIVATE KEY":
            info = _OpaquePrivateKeyInfo.load(der, strict=True)
            algorithm = str(info["private_key_algorithm"]["algorithm"].native)
            valid = bool(info["private_key"].contents)
            return (
                _Key("other", None, f"PKCS#8 PEM, algorithm {algorithm}", False, None, None, offset)
                if valid
                else None
            )
        if label == b"EC PRIVATE KEY":
            ec_key = asn1_keys.ECPrivateKey.load(der, strict=True)
            valid = ec_key["private_key"].native > 0
            return _Key("ec", None, "SEC1 PEM (structure only)", False, None, None, offset) if valid else None
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _legacy_encrypted(label: bytes, headers: bytes, der: bytes, offset: int) -> _Key | None:
    """RFC 1421 4.6.1 (OpenSSL's legacy PEM encryption): a DEK-Info header, whole cipher blocks."""
    if b"DEK-Info:" not in headers or len(der) % 8 or not der:
        return None
    kind = label.split(b" ")[0].decode().lower()
    return _Key(kind, None, "encrypted PEM", True, None, None, offset)


def _from_private(private: PrivateKeyTypes, container: str, offset: int) -> _Key:
    kind, bits = _describe(private)
    return _Key(kind, bits, container, False, private.public_key(), None, offset)


def _encrypted_pkcs8(der: bytes, offset: int) -> _Key | None:
    """RFC 5958 section 3 EncryptedPrivateKeyInfo, checked structurally (no passphrase)."""
    try:
        info = asn1_keys.EncryptedPrivateKeyInfo.load(der, strict=True)
        algorithm = info["encryption_algorithm"]["algorithm"].native
        if not info["encrypted_data"].native:
            return None
    except (ValueError, TypeError, KeyError):
        return None
    return _Key("pkcs8", None, f"PKCS#8 encrypted ({algorithm})", True, None, None, offset)


# DER ---------------------------------------------------------------------------------------------


def _der_findings(path: str, data: bytes, now: datetime) -> Iterator[Finding]:
    lowered = path.lower()
    if len(data) > MAX_DER_FILE or not data.startswith(b"\x30"):
        return
    if not (lowered.endswith(_DER_SUFFIXES) or any(hint in lowered for hint in _DER_PATH_HINTS)):
        return
    try:
        private = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        yield from _certificate_findings(path, data, 0, now, pem=False)
        return
    yield _key_finding(path, _from_private(private, "DER", 0))


# Findings ----------------------------------------------------------------------------------------


def _public_fingerprint(public: PublicKeyTypes) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return fingerprint(der)


def _key_finding(path: str, key: _Key) -> Finding:
    size = f" {key.bits}-bit" if key.bits else ""
    what = f"{key.kind.upper()}{size} private key ({key.container})"
    details: list[tuple[str, str]] = [("type", key.kind), ("format", key.container)]
    if key.bits:
        details.append(("bits", str(key.bits)))
    evidence = what
    if key.public_key is not None:
        public_fp = _public_fingerprint(key.public_key)
        evidence += f", public key {public_fp}"
        details.append(("public-key-sha256", public_fp))
    if key.ssh_fingerprint:
        details.append(("ssh-fingerprint", key.ssh_fingerprint))
    if key.encrypted:
        return Finding(
            rule="key.encrypted-private",
            category=Category.PRIVATE_KEY,
            severity=Severity.MEDIUM,
            title="Encrypted private key in the image",
            path=path,
            evidence=f"encrypted {evidence}: its passphrase is likely on the device too",
            offset=key.offset,
            details=tuple(details),
        )
    return Finding(
        rule=f"key.{key.kind}-private",
        category=Category.PRIVATE_KEY,
        severity=Severity.HIGH,
        title=f"{key.kind.upper()} private key in the image",
        path=path,
        evidence=f"{evidence}: every device with this image shares it",
        offset=key.offset,
        details=tuple(details),
    )


def _unparsed(path: str, label: str, offset: int) -> Finding:
    return Finding(
        rule="key.unparsed",
        category=Category.PRIVATE_KEY,
        severity=Severity.INFO,
        title="PEM private key block that could not be parsed",
        path=path,
        evidence=f"-----BEGIN {label}----- with a body that is not a key in a format we read",
        offset=offset,
    )


def _certificate_findings(path: str, blob: bytes, offset: int, now: datetime, *, pem: bool) -> list[Finding]:
    with warnings.catch_warnings():
        # A negative serial or a bad extension warns when read; the certificate is still reported.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            certificate = (
                x509.load_pem_x509_certificate(blob) if pem else x509.load_der_x509_certificate(blob)
            )
            return list(_CertificateCheck(path, offset, certificate).findings(now))
        except (ValueError, UnsupportedAlgorithm):
            return []


class _CertificateCheck:
    """The checks of one certificate; :meth:`findings` yields one finding per problem."""

    def __init__(self, path: str, offset: int, certificate: x509.Certificate) -> None:
        self.path = path
        self.offset = offset
        self.certificate = certificate
        self.self_signed = certificate.issuer == certificate.subject
        self.is_ca = _is_ca(certificate)
        self.name = _common_name(certificate)

    def findings(self, now: datetime) -> Iterator[Finding]:
        cert = self.certificate
        if cert.not_valid_after_utc < now:
            severity = Severity.LOW if self.is_ca else Severity.MEDIUM
            yield self._finding(
                "cert.expired",
                severity,
                "Expired certificate",
                f"expired {cert.not_valid_after_utc.isoformat()}",
            )
        if self.self_signed and not self.is_ca:
            yield self._finding(
                "cert.self-signed", Severity.LOW, "Self-signed certificate", "issuer equals subject"
            )
        weak_key = _weak_key(cert.public_key())
        if weak_key is not None:
            yield self._finding("cert.weak-key", Severity.MEDIUM, "Certificate with a weak key", weak_key)
        algorithm = cert.signature_hash_algorithm
        if algorithm is not None and algorithm.name in _WEAK_HASHES and not self.self_signed:
            severity = _WEAK_HASHES[algorithm.name]
            yield self._finding(
                "cert.weak-signature",
                severity,
                "Certificate signed with a weak hash",
                f"{algorithm.name.upper()} signature",
            )

    def _finding(self, rule: str, severity: Severity, title: str, problem: str) -> Finding:
        cert = self.certificate
        digest = fingerprint(cert.public_bytes(serialization.Encoding.DER))
        return Finding(
            rule=rule,
            category=Category.CERTIFICATE,
            severity=severity,
            title=title,
            path=self.path,
            evidence=f"{problem}: {self.name!r} (serial {cert.serial_number:x}), certificate {digest}",
            offset=self.offset,
            details=(
                ("subject", cert.subject.rfc4514_string()),
                ("issuer", cert.issuer.rfc4514_string()),
                ("not-after", cert.not_valid_after_utc.isoformat()),
                ("certificate-sha256", digest),
                ("ca", str(self.is_ca).lower()),
            ),
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else certificate.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _weak_key(public: PublicKeyTypes) -> str | None:
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < _MIN_RSA_BITS:
        return f"RSA {public.key_size}-bit key (< {_MIN_RSA_BITS})"
    if isinstance(public, dsa.DSAPublicKey):
        return f"DSA {public.key_size}-bit key (DSA is withdrawn: FIPS 186-5)"
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size < _MIN_EC_BITS:
        return f"EC {public.curve.key_size}-bit key (< {_MIN_EC_BITS})"
    return None
