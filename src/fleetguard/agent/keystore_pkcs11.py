"""A device key on a PKCS#11 token (an HSM, a smart card, SoftHSM2 in tests).

The key pair is generated on the token, sensitive and non-extractable, through the same
:class:`~fleetguard.pki.keys_pkcs11.Pkcs11Token` the CA uses. CSRs are signed through python-pkcs11
in this process. The TLS handshake is signed by OpenSSL's libp11 ``pkcs11`` engine in curl
(:mod:`fleetguard.agent.transport_curl`): the engine's configuration, with the module path and the
PIN, is written to a mode-0600 file in the agent's state directory (``pkcs11-engine.cnf``) so that
the PIN is never on a command line.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pkcs11
from pkcs11 import Attribute

from fleetguard.agent.errors import KeyStoreError
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind
from fleetguard.errors import FleetguardError
from fleetguard.pki.keys import Curve, Passphrase, SigningKey
from fleetguard.pki.keys_pkcs11 import Pkcs11Token
from fleetguard.private_file import replace_private_file

__all__ = ["LIBP11_ENGINE", "Pkcs11KeyStore"]

LIBP11_ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
"""Where Debian's libengine-pkcs11-openssl installs the engine (amd64)."""


class Pkcs11KeyStore:
    """The key labelled ``key_label`` on the token labelled ``token_label`` of ``module``."""

    def __init__(
        self,
        *,
        module: Path,
        token_label: str,
        key_label: str,
        pin: Passphrase,
        engine_conf: Path,
        engine: Path = LIBP11_ENGINE,
    ) -> None:
        for name, value in (("token", token_label), ("key", key_label)):
            if not value or not value.isprintable() or len(value) > 64:
                raise KeyStoreError(f"the PKCS#11 {name} label must be 1-64 printable characters")
        self._module, self._token_label, self._key_label = module, token_label, key_label
        self._pin, self._engine_conf, self._engine = pin, engine_conf, engine
        self._token: Pkcs11Token | None = None

    @property
    def kind(self) -> KeyStoreKind:
        """Return ``KeyStoreKind.PKCS11``."""
        return KeyStoreKind.PKCS11

    def describe(self) -> str:
        """Return the token and key labels and the module."""
        return f"pkcs11 token {self._token_label!r} key {self._key_label!r} ({self._module})"

    def exists(self) -> bool:
        """Return whether the token has the key."""
        try:
            self._open().key(self._key_label)
        except KeyStoreError:
            raise
        except FleetguardError:
            return False
        return True

    def create(self) -> None:
        """Generate the key pair on the token; raise ``KeyStoreError`` if the label is taken."""
        try:
            self._open().generate_key(self._key_label, Curve.P256)
        except FleetguardError as exc:
            raise KeyStoreError(str(exc)) from exc

    def signing_key(self) -> SigningKey:
        """Return the token key; raise ``KeyStoreError`` if it is missing or extractable."""
        try:
            return self._open().key(self._key_label)
        except FleetguardError as exc:
            raise KeyStoreError(str(exc)) from exc

    def tls_key(self) -> TlsClientKey:
        """Write the engine configuration (0600) and return the key's PKCS#11 URI (RFC 7512)."""
        replace_private_file(self._engine_conf, self._engine_configuration())
        uri = "pkcs11:token={};object={};type=private".format(
            urllib.parse.quote(self._token_label, safe=""), urllib.parse.quote(self._key_label, safe="")
        )
        return TlsClientKey(TlsKeyKind.ENGINE, uri, openssl_conf=self._engine_conf)

    def destroy(self) -> None:
        """Destroy every object on the token labelled with the key's label (PKCS#11 C_DestroyObject).

        That is the private and the public key (and a certificate stored beside them). The session
        this store holds is closed first: destruction uses a session of its own.
        """
        self.close()
        try:
            token = pkcs11.lib(str(self._module)).get_token(token_label=self._token_label)
            with token.open(rw=True, user_pin=self._pin.reveal().decode()) as session:
                for found in list(session.get_objects({Attribute.LABEL: self._key_label})):
                    found.destroy()
        except (pkcs11.PKCS11Error, UnicodeDecodeError) as exc:
            raise KeyStoreError(
                f"cannot destroy key {self._key_label!r} on token {self._token_label!r}: {type(exc).__name__}"
            ) from exc

    def close(self) -> None:
        """Log out of the token."""
        if self._token is not None:
            token, self._token = self._token, None
            token.close()

    def _open(self) -> Pkcs11Token:
        if self._token is None:
            try:
                self._token = Pkcs11Token.open(self._module, self._token_label, self._pin)
            except FleetguardError as exc:
                raise KeyStoreError(str(exc)) from exc
        return self._token

    def _engine_configuration(self) -> bytes:
        pin = self._pin.reveal().decode()
        if any(character in pin for character in "\r\n\\$"):
            raise KeyStoreError("the PKCS#11 PIN contains a character OpenSSL's configuration cannot hold")
        return (
            "openssl_conf = openssl_init\n"
            "[openssl_init]\n"
            "engines = engine_section\n"
            "[engine_section]\n"
            "pkcs11 = pkcs11_section\n"
            "[pkcs11_section]\n"
            "engine_id = pkcs11\n"
            f"dynamic_path = {self._engine}\n"
            f"MODULE_PATH = {self._module}\n"
            f"PIN = {pin}\n"
            "init = 0\n"
        ).encode()
