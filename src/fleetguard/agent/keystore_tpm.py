"""A device key inside a TPM 2.0, through the tpm2-openssl provider (OpenSSL 3).

``openssl genpkey -provider tpm2`` makes a P-256 key under the TPM's storage hierarchy. What it
writes (a ``TSS2 PRIVATE KEY`` PEM) is the TPM's own wrapping of the key: the private part is
encrypted under a key that never leaves the TPM, so the file is useless anywhere else, and the key
itself is never in this process's memory. Signing (CSRs) asks the TPM through ``openssl pkeyutl``;
the TLS handshake is signed by the provider in a child process
(:mod:`fleetguard.agent.transport_child`) that loads an OpenSSL configuration
(``tpm2-openssl.cnf`` in the state directory) preferring the provider for key operations.

``tcti`` says how to reach the TPM (tpm2-tss TCTI syntax): ``device:/dev/tpmrm0`` on a device with
the kernel's resource manager, ``tabrmd:...`` through tpm2-abrmd, as the tests do with swtpm. The
TPM needs a resource manager: without one it runs out of object slots in a TLS handshake.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.agent.errors import KeyStoreError
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind
from fleetguard.private_file import replace_private_file

__all__ = ["TPM_WRAPPED_KEY_HEADER", "TpmKey", "TpmKeyStore"]

TPM_WRAPPED_KEY_HEADER = b"-----BEGIN TSS2 PRIVATE KEY-----"
"""How a TPM-wrapped key file begins (the TSS2 key file format of tpm2-tss-engine and tpm2-openssl)."""

_OPENSSL = "/usr/bin/openssl"
_PROVIDER_ARGS = ("-provider", "tpm2", "-provider", "default")
_TIMEOUT_S = 60.0  # RSA-free, but a discrete TPM signs slowly (tens to hundreds of ms)
_MAX_KEY_FILE = 16 * 1024
_CONFIGURATION = b"""openssl_conf = openssl_init
[openssl_init]
providers = provider_section
alg_section = algorithm_section
[provider_section]
default = default_section
tpm2 = tpm2_section
[default_section]
activate = 1
[tpm2_section]
activate = 1
[algorithm_section]
# Key operations go to the TPM; hashing stays in software (faster, and the TPM has few slots).
default_properties = ?provider=tpm2,tpm2.digest!=yes
"""


class TpmKey:
    """The TPM key as a :class:`~fleetguard.pki.keys.SigningKey`."""

    def __init__(self, store: TpmKeyStore, public_key: ec.EllipticCurvePublicKey) -> None:
        self._store = store
        self._public_key = public_key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """Return the public half, as the TPM reported it."""
        return self._public_key

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """Return SHA-256 (P-256)."""
        return hashes.SHA256()

    def sign(self, data: bytes) -> bytes:
        """Return the TPM's DER ECDSA signature over SHA-256(``data``)."""
        digest = hashlib.sha256(data).digest()
        return self._store.run_openssl("pkeyutl", "-sign", "-inkey", str(self._store.path), stdin=digest)


class TpmKeyStore:
    """One TPM-held P-256 key, referenced by its wrapped-key file ``path``."""

    def __init__(self, path: Path, *, provider_conf: Path, tcti: str | None = None) -> None:
        self.path = path
        self._provider_conf = provider_conf
        self._tcti = tcti

    @property
    def kind(self) -> KeyStoreKind:
        """Return ``KeyStoreKind.TPM``."""
        return KeyStoreKind.TPM

    def describe(self) -> str:
        """Return the wrapped-key file and the TCTI."""
        return f"tpm key {self.path} via {self._tcti or 'the default TCTI'}"

    def exists(self) -> bool:
        """Return whether the wrapped-key file exists."""
        return self.path.exists() or self.path.is_symlink()

    def create(self) -> None:
        """Generate the key in the TPM and keep its wrapping (0600); raise ``KeyStoreError`` on failure."""
        if self.exists():
            raise KeyStoreError(f"{self.path} exists; the agent does not overwrite a key")
        temporary = self.path.with_name(f".{self.path.name}.new")
        temporary.unlink(missing_ok=True)
        try:
            self.run_openssl(
                "genpkey", "-algorithm", "EC", "-pkeyopt", "group:P-256", "-out", str(temporary), umask=0o077
            )
            os.chmod(temporary, 0o600)
            os.link(temporary, self.path)  # fails if something appeared at path meanwhile
        except OSError as exc:
            raise KeyStoreError(f"cannot store the TPM key at {self.path}: {exc.strerror}") from exc
        finally:
            temporary.unlink(missing_ok=True)

    def signing_key(self) -> TpmKey:
        """Return the key; raise ``KeyStoreError`` if the file is missing or the TPM refuses it."""
        if not self.path.is_file() or self.path.stat().st_size > _MAX_KEY_FILE:
            raise KeyStoreError(f"no TPM key at {self.path}")
        pem = self.run_openssl("pkey", "-in", str(self.path), "-pubout")
        try:
            public_key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise KeyStoreError(f"the TPM gave no public key for {self.path}") from exc
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise KeyStoreError(f"{self.path} is not a P-256 key")
        return TpmKey(self, public_key)

    def tls_key(self) -> TlsClientKey:
        """Write the provider configuration and return the wrapped-key file for the provider."""
        return self.tls_key_for(self.path)

    def tls_key_for(self, path: Path) -> TlsClientKey:
        """Return the TPM-wrapped key at ``path`` (the device key, or a TPM-held factory key) for TLS."""
        replace_private_file(self._provider_conf, _CONFIGURATION)
        return TlsClientKey(
            TlsKeyKind.PROVIDER,
            str(path),
            openssl_conf=self._provider_conf,
            environment=self._environment(),
        )

    def destroy(self) -> None:
        """Delete the wrapped-key file: the key is loaded into the TPM per operation, never made
        persistent there, so without its wrapping the TPM can no longer use it."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"cannot delete the TPM key file {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Nothing held between operations."""

    def run_openssl(self, command: str, *args: str, stdin: bytes = b"", umask: int | None = None) -> bytes:
        """Run ``openssl command`` with the tpm2 provider; return stdout or raise ``KeyStoreError``."""
        environment = dict(os.environ)
        environment.update(self._environment())
        environment.pop("OPENSSL_CONF", None)
        try:
            completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [_OPENSSL, command, *_PROVIDER_ARGS, *args],
                input=stdin,
                capture_output=True,
                env=environment,
                timeout=_TIMEOUT_S,
                check=False,
                umask=-1 if umask is None else umask,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KeyStoreError(f"cannot run openssl {command} with the tpm2 provider: {exc}") from exc
        if completed.returncode != 0:
            lines = completed.stderr.decode(errors="replace").strip().splitlines()
            raise KeyStoreError(
                f"the TPM refused openssl {command}: {(lines or ['no message'])[-1][:300]}",
                hint="check that the TPM is reachable (TCTI) and that tpm2-openssl is installed",
            )
        return completed.stdout

    def _environment(self) -> dict[str, str]:
        return {} if self._tcti is None else {"TPM2OPENSSL_TCTI": self._tcti}
