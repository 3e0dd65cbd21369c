"""The one interface every CA signing key implements, and the secret that unlocks a key.

A :class:`SigningKey` signs bytes and says which public key and hash it uses; it never hands out
private key material. Backends: :class:`SoftwareKey` (a key in process memory, here), ``FileKey``
(an encrypted PKCS#8 file, ``keys_file``) and ``Pkcs11Key`` (a non-extractable key in a token,
``keys_pkcs11``). ``fleetguard.pki.signing`` turns any of them into certificates, CRLs and OCSP
responses.

CA keys are ECDSA on P-256 or P-384, each with the hash of matching strength (RFC 5480 section 4):
SHA-256 for P-256 and SHA-384 for P-384.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from fleetguard.pki.errors import InsecureKeyFile, KeyBackendError, KeyUnlockFailed, ProfileInputRejected

__all__ = [
    "MAX_SECRET_SIZE",
    "Curve",
    "Passphrase",
    "SigningKey",
    "SoftwareKey",
    "curve_of",
    "elliptic_curve",
    "generate_software_key",
    "hash_for_curve",
    "read_private_file",
    "signature_algorithm_oid",
    "verify_signature",
]

MAX_SECRET_SIZE = 4096
"""Largest passphrase or PIN accepted, in bytes; a bound, not a recommendation."""


class Curve(enum.StrEnum):
    """The elliptic curves a CA key may use, named as in FIPS 186-5."""

    P256 = "P-256"
    P384 = "P-384"


_CURVE_OBJECTS: dict[Curve, ec.EllipticCurve] = {Curve.P256: ec.SECP256R1(), Curve.P384: ec.SECP384R1()}
_CURVE_HASHES: dict[Curve, hashes.HashAlgorithm] = {Curve.P256: hashes.SHA256(), Curve.P384: hashes.SHA384()}
_CURVE_NAMES = {curve_object.name: curve for curve, curve_object in _CURVE_OBJECTS.items()}

# RFC 5758 3.2 (ECDSA) and RFC 4055 5 (RSA PKCS#1 v1.5), by hash name.
_ECDSA_OIDS = {
    "sha256": SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "sha384": SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    "sha512": SignatureAlgorithmOID.ECDSA_WITH_SHA512,
}
_RSA_OIDS = {
    "sha256": SignatureAlgorithmOID.RSA_WITH_SHA256,
    "sha384": SignatureAlgorithmOID.RSA_WITH_SHA384,
    "sha512": SignatureAlgorithmOID.RSA_WITH_SHA512,
}


class SigningKey(Protocol):
    """A private key that signs without revealing itself."""

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        """Return the public half of the key."""
        ...

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """Return the hash this key signs with: SHA-256 for P-256, SHA-384 for P-384."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return a signature over ``data`` made with ``hash_algorithm``.

        ECDSA signatures are DER ``Ecdsa-Sig-Value`` (RFC 3279 2.2.3); RSA signatures are PKCS#1 v1.5.
        Raises ``KeyBackendError`` if the backend cannot sign now.
        """
        ...


def curve_of(public_key: ec.EllipticCurvePublicKey) -> Curve:
    """Return the :class:`Curve` of ``public_key``; raise ``ProfileInputRejected`` for any other curve."""
    curve = _CURVE_NAMES.get(public_key.curve.name)
    if curve is None:
        raise ProfileInputRejected(
            f"curve {public_key.curve.name} is not allowed for a CA key: use P-256 or P-384"
        )
    return curve


def elliptic_curve(curve: Curve) -> ec.EllipticCurve:
    """Return cryptography's object for ``curve``."""
    return _CURVE_OBJECTS[curve]


def hash_for_curve(curve: Curve) -> hashes.HashAlgorithm:
    """Return the hash that signatures on ``curve`` use (RFC 5480 section 4)."""
    return _CURVE_HASHES[curve]


def signature_algorithm_oid(key: SigningKey) -> x509.ObjectIdentifier:
    """Return the signatureAlgorithm OID of what ``key`` signs: ecdsa-with-SHAn or shaNWithRSAEncryption.

    Raises ``KeyBackendError`` if the key's hash is not SHA-256, SHA-384 or SHA-512.
    """
    table = _ECDSA_OIDS if isinstance(key.public_key(), ec.EllipticCurvePublicKey) else _RSA_OIDS
    oid = table.get(key.hash_algorithm.name)
    if oid is None:
        raise KeyBackendError(f"signing key uses hash {key.hash_algorithm.name}, not SHA-256/384/512")
    return oid


@dataclass(frozen=True, slots=True)
class SoftwareKey:
    """An ECDSA key held in this process's memory: generated in place or loaded from a file.

    ``fleetguard.pki.signing`` signs with ``private_key`` directly (the fast path); every other
    backend goes through :meth:`sign`.
    """

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        curve_of(self.private_key.public_key())

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """Return the public half of the key."""
        return self.private_key.public_key()

    @property
    def curve(self) -> Curve:
        """Return the key's curve."""
        return curve_of(self.private_key.public_key())

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """Return SHA-256 for P-256 and SHA-384 for P-384."""
        return hash_for_curve(self.curve)

    def sign(self, data: bytes) -> bytes:
        """Return a DER ECDSA signature over ``data``."""
        return self.private_key.sign(data, ec.ECDSA(self.hash_algorithm))


def generate_software_key(curve: Curve) -> SoftwareKey:
    """Return a new random key on ``curve``, held in memory only."""
    return SoftwareKey(ec.generate_private_key(elliptic_curve(curve)))


def verify_signature(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    signature: bytes,
    data: bytes,
    hash_algorithm: hashes.HashAlgorithm,
) -> None:
    """Verify ``signature`` over ``data``; raise ``cryptography.exceptions.InvalidSignature`` if it is bad."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
    else:
        public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)


@dataclass(frozen=True, slots=True, eq=False)
class Passphrase:
    """The secret that unlocks a key: a key file's passphrase or a token's user PIN.

    Read it from an environment variable or a file, never from the command line (``ps`` shows
    arguments). The secret is never part of ``repr`` or an error message; ``source`` says where it
    came from so that an error can name the variable or file.
    """

    secret: bytes = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        if not self.secret:
            raise KeyUnlockFailed(f"the passphrase from {self.source} is empty", hint="set a non-empty one")
        if len(self.secret) > MAX_SECRET_SIZE:
            raise KeyUnlockFailed(f"the passphrase from {self.source} is larger than {MAX_SECRET_SIZE} bytes")

    @classmethod
    def from_env(cls, name: str) -> Passphrase:
        """Return the value of environment variable ``name``; raise ``KeyUnlockFailed`` if unset or empty."""
        value = os.environ.get(name)
        if value is None:
            raise KeyUnlockFailed(f"environment variable {name} is not set", hint=f"export {name}=...")
        return cls(value.encode(), source=f"environment variable {name}")

    @classmethod
    def from_file(cls, path: Path) -> Passphrase:
        """Return the contents of ``path`` without one trailing newline.

        Raises ``KeyUnlockFailed`` if the passphrase is empty or too large, ``InsecureKeyFile`` if the
        file is not a regular file or group or others may access it (mode 0o077), and
        ``KeyBackendError`` if it cannot be read.
        """
        data = read_private_file(path, what="passphrase file", limit=MAX_SECRET_SIZE + 2)
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        return cls(data, source=f"file {path}")

    def reveal(self) -> bytes:
        """Return the secret, to hand to the key backend and nowhere else."""
        return self.secret


def read_private_file(path: Path, *, what: str, limit: int) -> bytes:
    """Return the bytes of an owner-only regular file of at most ``limit`` bytes.

    The type and mode are checked on the opened descriptor, so the file cannot be swapped between
    the check and the read. Raises ``InsecureKeyFile`` if it is not private, and ``KeyBackendError``
    if it is missing, unreadable or too large.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyBackendError(f"cannot open {what} {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InsecureKeyFile(f"{what} {path} is not a regular file")
        if mode & 0o077:  # the rule OpenSSH applies to private keys
            raise InsecureKeyFile(
                f"{what} {path} has mode {stat.S_IMODE(mode):04o}: others can access it",
                hint=f"chmod 600 {path}",
            )
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise KeyBackendError(f"cannot read {what} {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise KeyBackendError(f"{what} {path} is larger than {limit} bytes")
    return data
