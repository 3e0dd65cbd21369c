"""The agent's state directory: configuration, trust anchors, certificate, and key references.

Layout (the directory is mode 0700; files are replaced atomically, so a crash leaves the old or the
new version whole):

``agent.json``            server URL, device id, key store settings, the MQTT broker's URL when
                          there is one (never a PIN or token)
``trust-anchors.pem``     the CA certificates that authenticate the EST server (RFC 7030 4.1.1's
                          explicit trust anchors, given at enrollment), later those from ``cacerts``
``certificate.pem``       the operational certificate followed by its issuing chain
``device-key.pem``        file key store: the private key (0600)
``device-key.tss2.pem``   TPM key store: the TPM's wrapping of the key
``pkcs11-engine.cnf``, ``tpm2-openssl.cnf``  OpenSSL configurations for the TLS client (0600)

The ``wipe`` command (decommissioning) deletes all of it but the trust anchors, which are public
(:meth:`AgentState.wipe`, after the key store destroyed the key).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetguard.agent.errors import AgentConfigInvalid, AgentNotEnrolled
from fleetguard.agent.keystore import KeyStore, KeyStoreKind
from fleetguard.agent.keystore_file import FileKeyStore
from fleetguard.agent.keystore_pkcs11 import Pkcs11KeyStore
from fleetguard.agent.keystore_tpm import TpmKeyStore
from fleetguard.agent.mqtt_session import parse_broker_url
from fleetguard.agent.transport import DEFAULT_TIMEOUT_S, parse_server_url
from fleetguard.pki.keys import Passphrase
from fleetguard.pki.keys_pkcs11 import SOFTHSM2_MODULE
from fleetguard.private_file import replace_private_file

__all__ = ["AgentConfig", "AgentState", "KeyStoreConfig"]

_MAX_FILE = 256 * 1024
_PEM = serialization.Encoding.PEM


@dataclass(frozen=True, slots=True)
class KeyStoreConfig:
    """Which key store holds the device key, and how to reach it (secrets only by reference)."""

    kind: KeyStoreKind = KeyStoreKind.FILE
    pkcs11_module: str = str(SOFTHSM2_MODULE)
    pkcs11_token: str | None = None
    pkcs11_key_label: str = "fleetguard-device"
    pkcs11_pin_env: str = "FLEETGUARD_AGENT_PKCS11_PIN"
    pkcs11_pin_file: str | None = None
    tpm_tcti: str | None = None

    def __post_init__(self) -> None:
        if self.kind is KeyStoreKind.PKCS11 and not self.pkcs11_token:
            raise AgentConfigInvalid("the pkcs11 key store needs a token label (--pkcs11-token)")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the agent needs to talk to its fleet."""

    server_url: str
    key_store: KeyStoreConfig
    device_id: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    mqtt_url: str | None = None
    """The MQTT broker, ``mqtts://host[:port]``; ``None``: the agent does not connect to one."""

    def __post_init__(self) -> None:
        parse_server_url(self.server_url)
        if self.mqtt_url is not None:
            parse_broker_url(self.mqtt_url)
        if not 0 < self.timeout_s <= 600:
            raise AgentConfigInvalid("the timeout must be between 0 and 600 seconds")


class AgentState:
    """The files of one agent under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config_path = directory / "agent.json"
        self.trust_anchors = directory / "trust-anchors.pem"
        self.certificate_path = directory / "certificate.pem"

    def prepare(self) -> None:
        """Create the directory (mode 0700) if missing; raise ``AgentConfigInvalid`` if others may enter."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            raise AgentConfigInvalid(
                f"the state directory {self.directory} is accessible to others",
                hint=f"chmod 700 {self.directory}",
            )

    # -- configuration ---------------------------------------------------------------------------

    def load_config(self) -> AgentConfig:
        """Return the saved configuration; raise ``AgentNotEnrolled`` when there is none."""
        if not self.config_path.exists():
            raise AgentNotEnrolled(str(self.directory))
        try:
            data = json.loads(_read(self.config_path))
            store = data.pop("key_store")
            store["kind"] = KeyStoreKind(store["kind"])
            return AgentConfig(key_store=KeyStoreConfig(**store), **data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: JSON not an object
            raise AgentConfigInvalid(f"{self.config_path} is not a valid agent configuration: {exc}") from exc

    def save_config(self, config: AgentConfig) -> None:
        """Write the configuration atomically."""
        data = asdict(config)
        if data["mqtt_url"] is None:  # an agent rolled back to a version without MQTT reads this file too
            del data["mqtt_url"]
        replace_private_file(self.config_path, json.dumps(data, indent=2, sort_keys=True).encode())

    # -- trust anchors and certificate -----------------------------------------------------------

    def save_trust_anchors(self, certificates: list[x509.Certificate]) -> None:
        """Replace the trust anchors with ``certificates``."""
        if not certificates:
            raise AgentConfigInvalid("no trust anchor given")
        replace_private_file(self.trust_anchors, b"".join(c.public_bytes(_PEM) for c in certificates))

    def load_trust_anchors(self) -> list[x509.Certificate]:
        """Return the trust anchors; raise ``AgentConfigInvalid`` if missing or unreadable."""
        return _certificates(self.trust_anchors, "trust anchors")

    def certificate_chain(self) -> list[x509.Certificate] | None:
        """Return ``[leaf, *issuers]``, or ``None`` before the first enrollment."""
        if not self.certificate_path.exists():
            return None
        return _certificates(self.certificate_path, "certificate")

    def save_certificate(self, leaf: x509.Certificate, issuers: list[x509.Certificate]) -> None:
        """Replace the certificate file with ``leaf`` followed by ``issuers``."""
        replace_private_file(self.certificate_path, b"".join(c.public_bytes(_PEM) for c in [leaf, *issuers]))

    def wipe(self) -> None:
        """Delete the certificate, the OpenSSL configurations (one holds the PKCS#11 PIN) and, last,
        the configuration; raise ``AgentConfigInvalid`` naming the file that could not be deleted."""
        for path in (
            self.certificate_path,
            self.directory / "pkcs11-engine.cnf",
            self.directory / "tpm2-openssl.cnf",
            self.config_path,
        ):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise AgentConfigInvalid(f"cannot delete {path}: {exc.strerror}") from exc

    # -- key store -------------------------------------------------------------------------------

    def key_store(self, config: KeyStoreConfig) -> KeyStore:
        """Return the key store ``config`` describes, with its files in this directory."""
        match config.kind:
            case KeyStoreKind.FILE:
                return FileKeyStore(self.directory / "device-key.pem")
            case KeyStoreKind.TPM:
                return TpmKeyStore(
                    self.directory / "device-key.tss2.pem",
                    provider_conf=self.directory / "tpm2-openssl.cnf",
                    tcti=config.tpm_tcti,
                )
            case KeyStoreKind.PKCS11:
                assert config.pkcs11_token is not None  # checked by KeyStoreConfig
                return Pkcs11KeyStore(
                    module=Path(config.pkcs11_module),
                    token_label=config.pkcs11_token,
                    key_label=config.pkcs11_key_label,
                    pin=_pin(config),
                    engine_conf=self.directory / "pkcs11-engine.cnf",
                )


def _pin(config: KeyStoreConfig) -> Passphrase:
    if config.pkcs11_pin_file is not None:
        return Passphrase.from_file(Path(config.pkcs11_pin_file))
    if not os.environ.get(config.pkcs11_pin_env):
        raise AgentConfigInvalid(
            f"the PKCS#11 PIN is not set: put it in ${config.pkcs11_pin_env} or a file (--pkcs11-pin-file)"
        )
    return Passphrase.from_env(config.pkcs11_pin_env)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE + 1)
    except OSError as exc:
        raise AgentConfigInvalid(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > _MAX_FILE:
        raise AgentConfigInvalid(f"{path} is larger than {_MAX_FILE} bytes")
    return data


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise AgentConfigInvalid(f"the {what} file {path} holds no valid PEM certificate") from exc
    return certificates
