"""Where the device's private key lives, behind one interface.

A :class:`KeyStore` creates the device key once (:meth:`KeyStore.create`), signs with it
(:meth:`KeyStore.signing_key`, a :class:`~fleetguard.pki.keys.SigningKey`, used for CSRs) and tells
the TLS client how OpenSSL reaches it (:meth:`KeyStore.tls_key`). The key never leaves the store:
a file store keeps it in a mode-0600 file; the PKCS#11 store generates it on the token,
non-extractable; the TPM store generates it inside the TPM, and the file it keeps is the TPM's own
wrapping of it, usable only by that TPM.

Re-enrollment renews the same key (:mod:`fleetguard.enroll.reenrollment`), so a key is created at
first enrollment and kept for the device's life in the fleet, which ends with :meth:`KeyStore.destroy`
(the ``wipe`` command, :mod:`fleetguard.agent.command`).
"""

from __future__ import annotations

import enum
from typing import Protocol

from fleetguard.agent.transport import TlsClientKey
from fleetguard.pki.keys import SigningKey

__all__ = ["KeyStore", "KeyStoreKind"]


class KeyStoreKind(enum.StrEnum):
    """The key stores the agent has."""

    FILE = "file"
    PKCS11 = "pkcs11"
    TPM = "tpm"


class KeyStore(Protocol):
    """A place that holds one device key."""

    @property
    def kind(self) -> KeyStoreKind:
        """Return which kind of store this is."""
        ...

    def describe(self) -> str:
        """Return where the key is, for status output (no secrets)."""
        ...

    def exists(self) -> bool:
        """Return whether the key has been created."""
        ...

    def create(self) -> None:
        """Create the key (P-256); raise ``KeyStoreError`` if it exists or cannot be made."""
        ...

    def signing_key(self) -> SigningKey:
        """Return the key as a signer; raise ``KeyStoreError`` if it is missing or unusable."""
        ...

    def tls_key(self) -> TlsClientKey:
        """Return how OpenSSL reaches the key for a TLS client handshake."""
        ...

    def destroy(self) -> None:
        """Destroy the key for good (decommissioning); idempotent; raise ``KeyStoreError`` on failure."""
        ...

    def close(self) -> None:
        """Release sessions and handles; idempotent."""
        ...
