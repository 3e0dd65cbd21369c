"""Where the CA keys live, named by a reference stored with each CA certificate.

A reference is ``file:<path relative to the data directory>`` (an encrypted PKCS#8 file, unlocked
with the passphrase from ``Settings.ca_passphrase_file`` or the environment variable
``Settings.ca_passphrase_env``) or ``pkcs11:<token label>/<key label>`` (a non-extractable key in a
PKCS#11 token, unlocked with the PIN from ``Settings.pkcs11_pin_env``). Keys are loaded on first use
and kept for the life of the process; secrets are never logged or stored.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.config import Settings
from fleetguard.pki.errors import KeyBackendError, KeyExists
from fleetguard.pki.keys import Curve, Passphrase, SigningKey, curve_of
from fleetguard.pki.keys_file import FileKey

if TYPE_CHECKING:  # python-pkcs11 loads only when a token is used
    from fleetguard.pki.keys_pkcs11 import Pkcs11Token

__all__ = ["Keyring"]

_FILE = "file:"
_PKCS11 = "pkcs11:"


class Keyring:
    """Creates and loads CA keys for one installation."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loaded: dict[str, SigningKey] = {}
        self._tokens: dict[str, Pkcs11Token] = {}
        self._lock = threading.Lock()

    def create(self, name: str, curve: Curve, *, hsm: bool = False) -> tuple[str, SigningKey]:
        """Generate a new key called ``name``; return its reference and the key.

        With ``hsm`` the key is generated inside the configured PKCS#11 token and never leaves it.
        Raises ``KeyExists`` if the file exists, ``KeyBackendError`` if the backend is unusable.
        """
        if hsm:
            token_label = self._require_token()
            key: SigningKey = self._token(token_label).generate_key(name, curve)
            ref = f"{_PKCS11}{token_label}/{name}"
        else:
            relative = Path("pki") / f"{name}.key.pem"
            path = self._settings.data_dir / relative
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = FileKey.generate(path, curve, self._passphrase())
            ref = f"{_FILE}{relative.as_posix()}"
        with self._lock:
            self._loaded[ref] = key
        return ref, key

    def create_or_reuse(self, name: str, curve: Curve, *, hsm: bool = False) -> tuple[str, SigningKey]:
        """Like :meth:`create`, but reuse a key of that name left by an interrupted CA set-up.

        The leftover must unlock and be on ``curve``; otherwise ``KeyBackendError`` says so.
        """
        try:
            return self.create(name, curve, hsm=hsm)
        except KeyExists:
            ref = self._ref(name, hsm=hsm)
            key = self.load(ref)
            public = key.public_key()
            if not isinstance(public, ec.EllipticCurvePublicKey) or curve_of(public) is not curve:
                raise KeyBackendError(
                    f"leftover key {name!r} is not on {curve}", hint="remove it, then retry"
                ) from None
            return ref, key

    def _ref(self, name: str, *, hsm: bool) -> str:
        if hsm:
            return f"{_PKCS11}{self._require_token()}/{name}"
        return f"{_FILE}pki/{name}.key.pem"

    def load(self, ref: str) -> SigningKey:
        """Return the key that ``ref`` names, loading it on first use."""
        with self._lock:
            cached = self._loaded.get(ref)
        if cached is not None:
            return cached
        key = self._open(ref)
        with self._lock:
            self._loaded[ref] = key
        return key

    def close(self) -> None:
        """Close every open token session."""
        with self._lock:
            tokens = list(self._tokens.values())
            self._tokens.clear()
            self._loaded.clear()
        for token in tokens:
            token.close()

    def _open(self, ref: str) -> SigningKey:
        if ref.startswith(_FILE):
            relative = Path(ref.removeprefix(_FILE))
            if relative.is_absolute() or ".." in relative.parts:
                raise KeyBackendError(f"key reference {ref!r} leaves the data directory")
            return FileKey.load(self._settings.data_dir / relative, self._passphrase())
        if ref.startswith(_PKCS11):
            token_label, _, key_label = ref.removeprefix(_PKCS11).partition("/")
            return self._token(token_label).key(key_label)
        raise KeyBackendError(f"unknown key reference {ref[:40]!r}", hint="expected file:... or pkcs11:...")

    def _passphrase(self) -> Passphrase:
        if self._settings.ca_passphrase_file is not None:
            return Passphrase.from_file(self._settings.ca_passphrase_file)
        return Passphrase.from_env(self._settings.ca_passphrase_env)

    def _require_token(self) -> str:
        if not self._settings.pkcs11_token:
            raise KeyBackendError("no PKCS#11 token configured", hint="set FLEETGUARD_PKCS11_TOKEN")
        return self._settings.pkcs11_token

    def _token(self, label: str) -> Pkcs11Token:
        from fleetguard.pki.keys_pkcs11 import SOFTHSM2_MODULE, Pkcs11Token

        with self._lock:
            token = self._tokens.get(label)
            if token is None:
                module = self._settings.pkcs11_module or Path(SOFTHSM2_MODULE)
                token = Pkcs11Token.open(module, label, Passphrase.from_env(self._settings.pkcs11_pin_env))
                self._tokens[label] = token
            return token
