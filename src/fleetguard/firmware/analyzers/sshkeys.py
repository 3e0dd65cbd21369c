"""SSH private key formats, parsed and checked for consistency: Dropbear, OpenSSH v1, PuTTY.

``cryptography`` reads PEM and DER keys; the three SSH formats are read here, because a scan must
also say *which public key* an encrypted key or a Dropbear host key has, and because
``cryptography``'s SSH DSA support is deprecated (it warns). Each parser returns a
:class:`SshKey` only when the private half is consistent with the public half (RSA ``p*q == n``,
DSA ``g^x == y``, ECDSA and Ed25519 derive the public point), so random bytes that happen to start
like a key are never reported as one. Encrypted keys are checked structurally (their public half
is clear text in OpenSSH and PuTTY files).

Wire encoding: RFC 4251 section 5 (uint32, string, mpint); key blobs: RFC 4253 6.6 (ssh-rsa,
ssh-dss), RFC 5656 3.1 (ecdsa-sha2-*), RFC 8709 4 (ssh-ed25519). OpenSSH's container:
``PROTOCOL.key`` in the OpenSSH sources. PuTTY's: the PuTTY manual, appendix C ("PPK file format").
Dropbear's: ``buf_put_*_priv_key`` in dropbear's ``rsa.c``, ``dss.c``, ``ecdsa.c``, ``ed25519.c``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["DROPBEAR_MARKERS", "SshKey", "parse_dropbear", "parse_openssh", "parse_ppk"]

_MAX_FIELD = 16_384  # bytes: an 16384-bit RSA modulus is 2 KiB; anything longer is not a key
_CURVES: dict[bytes, ec.EllipticCurve] = {
    b"nistp256": ec.SECP256R1(),
    b"nistp384": ec.SECP384R1(),
    b"nistp521": ec.SECP521R1(),
}
# How a Dropbear key file starts: the length-prefixed algorithm name.
DROPBEAR_MARKERS = (
    b"\x00\x00\x00\x07ssh-rsa",
    b"\x00\x00\x00\x07ssh-dss",
    b"\x00\x00\x00\x13ecdsa-sha2-nistp",
    b"\x00\x00\x00\x0bssh-ed25519",
)


class _Malformed(ValueError):
    """The bytes are not a consistent key of the format (internal: parsers return None)."""


@dataclass(frozen=True, slots=True)
class SshKey:
    """A private key found in an SSH format, described by its public half."""

    algorithm: str  # "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ssh-ed25519"
    public_key: PublicKeyTypes
    encrypted: bool
    ssh_fingerprint: str  # as ssh-keygen -l prints it: SHA256:<base64 without padding>
    end: int  # offset just past the key in the bytes parsed


class _Wire:
    """RFC 4251 section 5 reader over bytes, from ``position``."""

    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data = data
        self.position = position

    def uint32(self) -> int:
        end = self.position + 4
        if end > len(self.data):
            raise _Malformed("truncated uint32")
        value = int.from_bytes(self.data[self.position : end], "big")
        self.position = end
        return value

    def string(self) -> bytes:
        length = self.uint32()
        end = self.position + length
        if length > _MAX_FIELD or end > len(self.data):
            raise _Malformed("string length out of bounds")
        value = self.data[self.position : end]
        self.position = end
        return value

    def mpint(self) -> int:
        value = int.from_bytes(self.string(), "big", signed=True)
        if value <= 0:
            raise _Malformed("a key integer must be positive")
        return value


def _mpint(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return len(raw).to_bytes(4, "big") + raw


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _public_from_blob(blob: bytes) -> tuple[str, PublicKeyTypes]:
    """The algorithm and public key of an RFC 4253/5656/8709 public key blob."""
    wire = _Wire(blob)
    algorithm = wire.string()
    public = _read_public(algorithm, wire)
    if wire.position != len(blob):
        raise _Malformed("trailing bytes in the public key blob")
    return algorithm.decode(), public


def _read_public(algorithm: bytes, wire: _Wire) -> PublicKeyTypes:
    try:
        if algorithm == b"ssh-rsa":
            exponent, modulus = wire.mpint(), wire.mpint()
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        if algorithm == b"ssh-dss":
            p, q, g, y = wire.mpint(), wire.mpint(), wire.mpint(), wire.mpint()
            return dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
        if algorithm.startswith(b"ecdsa-sha2-"):
            curve = _CURVES.get(wire.string())
            if curve is None or algorithm != b"ecdsa-sha2-" + _curve_name(curve):
                raise _Malformed("unknown or mismatched curve")
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, wire.string())
        if algorithm == b"ssh-ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(wire.string())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Malformed(str(exc)) from exc
    raise _Malformed("unknown algorithm")


def _curve_name(curve: ec.EllipticCurve) -> bytes:
    return next(name for name, known in _CURVES.items() if known.name == curve.name)


def _public_blob(algorithm: bytes, public: PublicKeyTypes) -> bytes:
    """The RFC 4253 blob of a public key (for the fingerprint of keys stored without one)."""
    head = _string(algorithm)
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return head + _mpint(numbers.e) + _mpint(numbers.n)
    if isinstance(public, dsa.DSAPublicKey):
        n = public.public_numbers()
        parameters = n.parameter_numbers
        return head + _mpint(parameters.p) + _mpint(parameters.q) + _mpint(parameters.g) + _mpint(n.y)
    if isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return head + _string(_curve_name(public.curve)) + _string(point)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return head + _string(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    raise _Malformed("no SSH blob for this key type")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise _Malformed(what)


def _check_rsa(public: PublicKeyTypes, p: int, q: int) -> None:
    assert isinstance(public, rsa.RSAPublicKey)
    _require(p > 1 and q > 1 and p * q == public.public_numbers().n, "RSA p*q != n")


def _check_dsa(public: PublicKeyTypes, x: int) -> None:
    assert isinstance(public, dsa.DSAPublicKey)
    numbers = public.public_numbers()
    parameters = numbers.parameter_numbers
    _require(pow(parameters.g, x, parameters.p) == numbers.y, "DSA g^x != y")


def _check_ec(public: PublicKeyTypes, secret: int) -> None:
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        derived = ec.derive_private_key(secret, public.curve).public_key()
    except ValueError as exc:
        raise _Malformed("EC scalar out of range") from exc
    _require(derived == public, "EC d*G != Q")


def _check_ed25519(public: PublicKeyTypes, seed: bytes) -> None:
    _require(len(seed) == 32, "Ed25519 seed is 32 bytes")
    derived = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    _require(derived == public, "Ed25519 seed does not give the public key")


# Dropbear ----------------------------------------------------------------------------------------


def parse_dropbear(data: bytes, position: int = 0) -> SshKey | None:
    """Return the Dropbear private key at ``position`` of ``data``, or None when there is none.

    Layouts: ssh-rsa e n d p q; ssh-dss p q g y x; ecdsa-sha2-* curve Q d;
    ssh-ed25519 string(seed || public key).
    """
    wire = _Wire(data, position)
    try:
        algorithm = wire.string()
        public = _dropbear_fields(algorithm, wire)
        blob = _public_blob(algorithm, public)
    except _Malformed:
        return None
    return SshKey(algorithm.decode(), public, False, _fingerprint(blob), wire.position)


def _dropbear_fields(algorithm: bytes, wire: _Wire) -> PublicKeyTypes:
    if algorithm == b"ssh-rsa":
        exponent, modulus, _, p, q = (wire.mpint() for _ in range(5))
        public: PublicKeyTypes = _rsa_public(exponent, modulus)
        _check_rsa(public, p, q)
        return public
    if algorithm == b"ssh-dss":
        public = _read_public(algorithm, wire)
        _check_dsa(public, wire.mpint())
        return public
    if algorithm == b"ssh-ed25519":
        keypair = wire.string()
        _require(len(keypair) == 64, "Dropbear Ed25519 is 64 bytes")
        public = _read_public(algorithm, _Wire(_string(keypair[32:])))
        _check_ed25519(public, keypair[:32])
        return public
    public = _read_public(algorithm, wire)
    _check_ec(public, wire.mpint())
    return public


def _rsa_public(exponent: int, modulus: int) -> rsa.RSAPublicKey:
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError as exc:
        raise _Malformed(str(exc)) from exc


# OpenSSH -----------------------------------------------------------------------------------------

_OPENSSH_MAGIC = b"openssh-key-v1\0"


def parse_openssh(der: bytes) -> SshKey | None:
    """Return the key of an ``openssh-key-v1`` container (the base64-decoded PEM body), or None.

    Unencrypted keys must have equal check integers and a private half matching the public one;
    encrypted keys must name a cipher and KDF and have whole cipher blocks.
    """
    if not der.startswith(_OPENSSH_MAGIC):
        return None
    wire = _Wire(der, len(_OPENSSH_MAGIC))
    try:
        cipher, kdf, _ = wire.string(), wire.string(), wire.string()
        _require(wire.uint32() == 1, "one key per file")
        blob = wire.string()
        algorithm, public = _public_from_blob(blob)
        private = wire.string()
        if cipher == b"none":
            _require(kdf == b"none", "no KDF without a cipher")
            _check_openssh_private(algorithm.encode(), public, _Wire(private))
        else:
            _require(kdf == b"bcrypt" and len(private) % 8 == 0 and private != b"", "encrypted section")
    except _Malformed:
        return None
    return SshKey(algorithm, public, cipher != b"none", _fingerprint(blob), len(der))


def _check_openssh_private(algorithm: bytes, public: PublicKeyTypes, wire: _Wire) -> None:
    _require(wire.uint32() == wire.uint32(), "check integers differ (wrong passphrase or corrupt)")
    _require(wire.string() == algorithm, "private key type differs from the public key's")
    if algorithm == b"ssh-rsa":
        _, _, _, _, p, q = (wire.mpint() for _ in range(6))  # n e d iqmp p q
        _check_rsa(public, p, q)
    elif algorithm == b"ssh-dss":
        _ = [wire.mpint() for _ in range(4)]  # p q g y
        _check_dsa(public, wire.mpint())
    elif algorithm == b"ssh-ed25519":
        wire.string()
        _check_ed25519(public, wire.string()[:32])
    else:
        wire.string(), wire.string()  # curve, Q
        _check_ec(public, wire.mpint())


# PuTTY -------------------------------------------------------------------------------------------

_PPK_RE = re.compile(
    rb"PuTTY-User-Key-File-([23]): ([a-z0-9-]{1,40})\r?\n"
    rb"Encryption: ([a-z0-9-]{1,40})\r?\n"
    rb"Comment: [^\r\n]{0,1024}\r?\n"
    rb"Public-Lines: ([0-9]{1,4})\r?\n"
)
_PPK_LINE_RE = re.compile(rb"([A-Za-z0-9+/=]{1,128})\r?\n")
_PPK_PRIVATE_RE = re.compile(
    rb"((?:Key-Derivation|Argon2-[A-Za-z]+): [^\r\n]{0,256}\r?\n){0,5}Private-Lines: ([0-9]{1,4})\r?\n"
)
_PPK_MAC_RE = re.compile(rb"Private-MAC: ([0-9a-f]{40}|[0-9a-f]{64})\r?\n?")


def parse_ppk(data: bytes, position: int = 0) -> SshKey | None:
    """Return the key of the PuTTY ``.ppk`` text at ``position`` (versions 2 and 3), or None."""
    header = _PPK_RE.match(data, position)
    if header is None:
        return None
    try:
        public_blob, end = _ppk_lines(data, header.end(), int(header.group(4)))
        algorithm, public = _public_from_blob(public_blob)
        _require(algorithm.encode() == header.group(2), "header and blob disagree on the algorithm")
        private_header = _PPK_PRIVATE_RE.match(data, end)
        _require(private_header is not None, "no Private-Lines")
        assert private_header is not None
        private_blob, end = _ppk_lines(data, private_header.end(), int(private_header.group(2)))
        mac = _PPK_MAC_RE.match(data, end)
        _require(mac is not None, "no Private-MAC")
        assert mac is not None
        encrypted = header.group(3) != b"none"
        if not encrypted:
            _check_ppk_private(algorithm.encode(), public, _Wire(private_blob))
    except _Malformed:
        return None
    return SshKey(algorithm, public, encrypted, _fingerprint(public_blob), mac.end())


def _ppk_lines(data: bytes, position: int, count: int) -> tuple[bytes, int]:
    chunks = []
    for _ in range(count):
        line = _PPK_LINE_RE.match(data, position)
        _require(line is not None, "short base64 section")
        assert line is not None
        chunks.append(line.group(1))
        position = line.end()
    try:
        return base64.b64decode(b"".join(chunks), validate=True), position
    except binascii.Error as exc:
        raise _Malformed("bad base64") from exc


def _check_ppk_private(algorithm: bytes, public: PublicKeyTypes, wire: _Wire) -> None:
    if algorithm == b"ssh-rsa":
        _, p, q = wire.mpint(), wire.mpint(), wire.mpint()  # d p q iqmp
        _check_rsa(public, p, q)
    elif algorithm == b"ssh-dss":
        _check_dsa(public, wire.mpint())
    elif algorithm == b"ssh-ed25519":
        _check_ed25519(public, wire.string())
    else:
        _check_ec(public, wire.mpint())
