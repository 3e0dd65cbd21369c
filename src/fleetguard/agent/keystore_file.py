"""A device key in a PEM file only the agent's user can read (mode 0600).

For devices with no secure element. The file is created exclusively with mode 0600
(:func:`fleetguard.private_file.create_private_file`), and refused when loaded if its mode lets
anyone else read it (the rule OpenSSH applies to private keys).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.agent.errors import KeyStoreError
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind
from fleetguard.errors import FleetguardError
from fleetguard.pki.keys import SigningKey, SoftwareKey, read_private_file
from fleetguard.private_file import create_private_file

__all__ = ["FileKeyStore"]

_MAX_KEY_FILE = 16 * 1024


class FileKeyStore:
    """One P-256 key in an unencrypted PKCS#8 PEM file, mode 0600."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def kind(self) -> KeyStoreKind:
        """Return ``KeyStoreKind.FILE``."""
        return KeyStoreKind.FILE

    def describe(self) -> str:
        """Return the key file's path."""
        return f"file {self._path}"

    def exists(self) -> bool:
        """Return whether the key file exists."""
        return self._path.exists() or self._path.is_symlink()

    def create(self) -> None:
        """Generate the key and write it; raise ``KeyStoreError`` if anything is at the path."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            create_private_file(self._path, pem)
        except FileExistsError as exc:
            raise KeyStoreError(f"{self._path} exists; the agent does not overwrite a key") from exc
        except OSError as exc:
            raise KeyStoreError(f"cannot write the key file {self._path}: {exc.strerror}") from exc

    def signing_key(self) -> SigningKey:
        """Load the key; raise ``KeyStoreError`` if it is missing, readable by others, or not P-256/P-384."""
        try:
            data = read_private_file(self._path, what="device key", limit=_MAX_KEY_FILE)
        except FleetguardError as exc:
            raise KeyStoreError(str(exc)) from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{self._path} is not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{self._path} is not an EC key")
        try:
            return SoftwareKey(key)
        except FleetguardError as exc:
            raise KeyStoreError(f"{self._path}: {exc}") from exc

    def tls_key(self) -> TlsClientKey:
        """Return the file for OpenSSL's default provider."""
        return TlsClientKey(TlsKeyKind.FILE, str(self._path))

    def destroy(self) -> None:
        """Delete the key file.

        On flash storage the blocks may survive until they are reused (wear levelling); a device that
        must not leave the key behind keeps it in a TPM or a token.
        """
        try:
            self._path.unlink(missing_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"cannot delete the key file {self._path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Nothing to release."""
