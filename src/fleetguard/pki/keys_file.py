"""A CA key in an encrypted PKCS#8 PEM file, unlocked by a passphrase from the environment or a file.

The file is created once, with ``O_CREAT | O_EXCL`` and mode 0600 in one step, so it is never
readable by others and an existing key is never overwritten. Loading fails closed: a file that
others may read, an unencrypted key, a wrong passphrase or a key on another curve is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.pki.errors import KeyBackendError, KeyExists, KeyUnlockFailed, ProfileInputRejected
from fleetguard.pki.keys import Curve, Passphrase, SoftwareKey, generate_software_key, read_private_file
from fleetguard.private_file import PrivateFileWriteFailed, create_private_file

__all__ = ["MAX_KEY_FILE_SIZE", "FileKey"]

MAX_KEY_FILE_SIZE = 16 * 1024
"""Largest key file read, in bytes; an encrypted P-384 PKCS#8 PEM is under 1 KiB."""


@dataclass(frozen=True, slots=True)
class FileKey(SoftwareKey):
    """A :class:`SoftwareKey` that was loaded from (or written to) ``path``."""

    path: Path

    @classmethod
    def generate(cls, path: Path, curve: Curve, passphrase: Passphrase) -> FileKey:
        """Create a new key on ``curve`` at ``path``, encrypted under ``passphrase``; return it.

        Raises ``KeyExists`` if ``path`` exists (even as a dangling symlink) and ``KeyBackendError``
        if it cannot be written; a partly written file is removed.
        """
        key = generate_software_key(curve)
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.reveal()),
        )
        _write_new_private_file(path, pem)
        return cls(key.private_key, path)

    @classmethod
    def load(cls, path: Path, passphrase: Passphrase) -> FileKey:
        """Return the key stored at ``path``, decrypted with ``passphrase``.

        Raises ``InsecureKeyFile`` if group or others may access the file, ``KeyUnlockFailed`` if the
        passphrase is wrong, and ``KeyBackendError`` if it is missing, unreadable, too large, or not
        an encrypted PKCS#8 EC key on P-256 or P-384.
        """
        pem = read_private_file(path, what="key file", limit=MAX_KEY_FILE_SIZE)
        if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in pem:
            raise KeyBackendError(
                f"key file {path} is not an encrypted PKCS#8 PEM key",
                hint="keys are stored encrypted; re-create it with 'fleetguard ca init'",
            )
        try:
            private_key = serialization.load_pem_private_key(pem, password=passphrase.reveal())
        except ValueError as exc:
            # cryptography says "Bad decrypt. Incorrect password?" and nothing more specific.
            raise KeyUnlockFailed(
                f"cannot decrypt key file {path} with the passphrase from {passphrase.source}",
                hint="check the passphrase",
            ) from exc
        except (TypeError, UnsupportedAlgorithm) as exc:
            raise KeyBackendError(f"key file {path} is not a supported encrypted private key") from exc
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise KeyBackendError(f"key file {path} does not hold an EC key")
        try:
            return cls(private_key, path)
        except ProfileInputRejected as exc:
            raise KeyBackendError(f"key file {path}: {exc.message}") from exc


def _write_new_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` with mode 0600; never follow or replace what is there."""
    try:
        create_private_file(path, data)
    except FileExistsError as exc:
        raise KeyExists(f"key file {path} already exists", hint="refusing to overwrite a key") from exc
    except PrivateFileWriteFailed as exc:
        raise KeyBackendError(f"cannot write key file {path}: {exc.strerror}") from exc
    except OSError as exc:
        raise KeyBackendError(f"cannot create key file {path}: {exc.strerror}") from exc
