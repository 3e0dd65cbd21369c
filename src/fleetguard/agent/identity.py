"""The device's identity: first enrollment, renewal, and the background renewal loop.

Theory of operation.

*Enrollment* (:meth:`DeviceIdentity.enroll`): the key store creates the device key if there is
none; the agent signs a PKCS#10 request (CN = device id) with it and sends it to ``simpleenroll``,
authenticated either by a one-time token (HTTP Basic) or by the factory certificate over TLS. The
server's answer is checked before anything is saved: the certificate must be for this key and be
issued by one of the CA certificates ``cacerts`` returns. Then the chain is saved and the CA
certificates become the trust anchors. A request queued for approval raises ``EnrollmentPending``;
sending the same request again later (same key, same CSR) collects the certificate.

*Renewal* (:meth:`DeviceIdentity.renew`): ``simplereenroll`` over mutual TLS with the current
certificate and key, with a CSR carrying the certificate's subject byte for byte and the same key
(RFC 7030 4.2.2; the server refuses anything else). The new certificate is checked as above and
replaces the old one atomically; until then the old one stays in place, so a failure loses nothing.
A 401/403 answer means the certificate can no longer be renewed (revoked, or expired beyond the
server's grace window): ``RenewalImpossible``.

*The loop* (:class:`RenewalLoop`) sleeps until the renewal time (:mod:`fleetguard.agent.renewal`),
renews, and after a failure backs off with jitter, honouring the server's Retry-After.

*Decommissioning* (:meth:`DeviceIdentity.wipe`, the MQTT ``wipe`` command): the key store destroys
the key, then the certificate and the configuration are deleted. Renewal and wiping take one lock,
so the loop and a command never renew twice at once, and a wipe never races a renewal that would
save a certificate after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    AgentNotEnrolled,
    EstRequestFailed,
    EstServerBusy,
    EstServerUnreachable,
    KeyStoreError,
    RenewalImpossible,
)
from fleetguard.agent.est_client import EstClient, transport_for
from fleetguard.agent.keystore import KeyStore
from fleetguard.agent.keystore_tpm import TPM_WRAPPED_KEY_HEADER, TpmKeyStore
from fleetguard.agent.renewal import RenewalPolicy, phase_of, renew_at, retry_delay
from fleetguard.agent.state import AgentConfig, AgentState
from fleetguard.agent.transport import EstTransport, TlsClientKey, TlsKeyKind, TlsSettings
from fleetguard.pki.keys import SigningKey
from fleetguard.pki.signing import sign_csr

__all__ = ["AgentStatus", "DeviceIdentity", "FactoryCredential", "RenewalLoop"]

_log = logging.getLogger(__name__)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_REFUSED = (401, 403)

_DEFAULT_POLICY = RenewalPolicy()

TransportFactory = Callable[[TlsSettings], EstTransport]


@dataclass(frozen=True, slots=True)
class FactoryCredential:
    """A factory (IDevID) certificate chain file and its key file, presented in the TLS handshake."""

    certificate: str
    key: str


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What ``fleetguard-agent status`` reports."""

    device_id: str | None
    serial: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    renew_at: dt.datetime | None
    phase: str
    key_store: str
    server_url: str


class DeviceIdentity:
    """Enrollment and renewal for one agent state directory."""

    def __init__(
        self,
        state: AgentState,
        config: AgentConfig,
        key_store: KeyStore,
        *,
        transport_factory: TransportFactory = transport_for,
    ) -> None:
        self._state, self._config, self._keys = state, config, key_store
        self._transport_factory = transport_factory
        self._lock = threading.Lock()  # one renewal or wipe at a time (the loop and MQTT commands)

    @property
    def config(self) -> AgentConfig:
        """Return the configuration (with the device id once enrolled)."""
        return self._config

    def enroll(
        self,
        *,
        device_id: str | None = None,
        token: str | None = None,
        factory: FactoryCredential | None = None,
    ) -> x509.Certificate:
        """Enroll with a token for ``device_id``, or with a factory credential; return the certificate."""
        if (token is None) == (factory is None):
            raise AgentConfigInvalid("enroll with either an enrollment token or a factory certificate")
        # The factory key is checked before the device key is created, so a wrong option costs nothing.
        settings = self._settings(
            None if factory is None else factory.certificate,
            None if factory is None else self._factory_key(Path(factory.key)),
        )
        if not self._keys.exists():
            self._keys.create()
        key = self._keys.signing_key()
        subject = device_id or self._config.device_id or "fleetguard-device"
        csr = _request(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        client = EstClient(self._transport_factory(settings))
        issued = client.simpleenroll(csr, device_id=device_id, token=token)
        return self._accept(issued, key, client.cacerts())

    def renew(self) -> x509.Certificate:
        """Re-enroll with the current certificate and key; return the new certificate."""
        with self._lock:
            return self._renew()

    def wipe(self) -> None:
        """Destroy the key, then delete the certificate and the configuration (decommissioning).

        Raises ``KeyStoreError`` when the key cannot be destroyed (then nothing else is deleted), or
        ``AgentConfigInvalid`` naming a file that could not be deleted.
        """
        with self._lock:
            self._keys.destroy()
            self._state.wipe()

    def tls_key(self) -> TlsClientKey:
        """Return how OpenSSL reaches the device key for a TLS client handshake (EST, MQTT)."""
        with self._lock:  # the TPM and PKCS#11 stores rewrite their OpenSSL configuration each time
            return self._keys.tls_key()

    def _renew(self) -> x509.Certificate:
        chain = self._state.certificate_chain()
        if chain is None:
            raise AgentNotEnrolled(str(self._state.directory))
        key = self._keys.signing_key()
        csr = _request(key, chain[0].subject)
        client = EstClient(
            self._transport_factory(self._settings(str(self._state.certificate_path), self._keys.tls_key()))
        )
        try:
            issued = client.simplereenroll(csr)
        except EstRequestFailed as exc:
            if exc.http_status in _REFUSED:
                raise RenewalImpossible(
                    f"the server refuses to renew certificate {chain[0].serial_number:x}: {exc.reason}",
                    hint="enroll again with an enrollment token or the factory certificate",
                ) from exc
            raise
        return self._accept(issued, key, client.cacerts())

    def status(self, now: dt.datetime) -> AgentStatus:
        """Return the certificate's state at ``now``."""
        chain = self._state.certificate_chain()
        if chain is None:
            return AgentStatus(
                self._config.device_id, None, None, None, None, "not-enrolled",
                self._keys.describe(), self._config.server_url,
            )  # fmt: skip
        leaf = chain[0]
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        seed = _seed(self._config.device_id, leaf)
        return AgentStatus(
            self._config.device_id, f"{leaf.serial_number:x}", start, end, renew_at(start, end, seed=seed),
            phase_of(now, start, end, seed=seed).value, self._keys.describe(), self._config.server_url,
        )  # fmt: skip

    def next_renewal(self) -> dt.datetime:
        """Return when the current certificate is due for renewal; raise ``AgentNotEnrolled`` if none."""
        chain = self._state.certificate_chain()
        if chain is None:
            raise AgentNotEnrolled(str(self._state.directory))
        leaf = chain[0]
        return renew_at(
            leaf.not_valid_before_utc, leaf.not_valid_after_utc, seed=_seed(self._config.device_id, leaf)
        )

    def _factory_key(self, path: Path) -> TlsClientKey:
        """Return how TLS reaches the factory key: a PEM file, or a TPM-held IDevID (TCG's TPM IDevID)."""
        try:
            with path.open("rb") as file:
                head = file.read(len(TPM_WRAPPED_KEY_HEADER))
        except OSError as exc:
            raise AgentConfigInvalid(f"cannot read the factory key {path}: {exc.strerror}") from exc
        if head != TPM_WRAPPED_KEY_HEADER:
            return TlsClientKey(TlsKeyKind.FILE, str(path))
        if not isinstance(self._keys, TpmKeyStore):
            raise AgentConfigInvalid("the factory key is held by a TPM: use --key-store tpm")
        return self._keys.tls_key_for(path)

    def _settings(self, certificate: str | None, key: TlsClientKey | None) -> TlsSettings:
        return TlsSettings(
            server_url=self._config.server_url,
            trust_anchors=self._state.trust_anchors,
            certificate=None if certificate is None else Path(certificate),
            key=key,
            timeout_s=self._config.timeout_s,
        )

    def _accept(
        self, issued: x509.Certificate, key: SigningKey, cacerts: tuple[x509.Certificate, ...]
    ) -> x509.Certificate:
        if issued.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
            raise EstServerUnreachable("the server issued a certificate for another key; it was not saved")
        issuers = [ca for ca in cacerts if _issued_by(issued, ca)]
        if not issuers:
            raise EstServerUnreachable(
                "the issued certificate chains to none of the server's CA certificates"
            )
        device_id = _common_name(issued)
        self._state.save_trust_anchors(list(cacerts))
        self._state.save_certificate(issued, _chain_from(issuers[0], list(cacerts)))
        if device_id != self._config.device_id:
            self._config = replace(self._config, device_id=device_id)
            self._state.save_config(self._config)
        return issued


class RenewalLoop:
    """Keeps the certificate renewed until ``wait`` reports a stop.

    ``wait(seconds)`` sleeps and returns ``True`` when the loop should stop (a ``threading.Event``'s
    ``wait``); ``clock`` returns aware UTC time.
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        *,
        clock: Callable[[], dt.datetime],
        wait: Callable[[float], bool],
        policy: RenewalPolicy = _DEFAULT_POLICY,
        max_sleep_s: float = 3600.0,
        rng: random.Random | None = None,
    ) -> None:
        self._identity, self._clock, self._wait, self._policy = identity, clock, wait, policy
        self._max_sleep_s = max_sleep_s
        self._rng = rng or random.Random()  # noqa: S311 - spreading retries, not secrecy

    def run(self) -> None:
        """Renew whenever due; return when stopped. Raises ``RenewalImpossible`` and ``KeyStoreError``."""
        attempt, retry_at = 0, None
        while True:
            due = self._identity.next_renewal()
            if retry_at is not None:  # a backoff (or Retry-After) longer than max_sleep_s spans several waits
                due = max(due, retry_at)
            delay = (due - self._clock()).total_seconds()
            if delay <= 0:
                delay = self._attempt(attempt)
                attempt = 0 if delay == 0 else attempt + 1
                retry_at = self._clock() + dt.timedelta(seconds=delay) if delay else None
            if self._wait(min(max(delay, 0.0), self._max_sleep_s)):
                return

    def _attempt(self, attempt: int) -> float:
        """Renew once; return 0 after success, else the backoff delay."""
        try:
            certificate = self._identity.renew()
        except (EstServerBusy, EstServerUnreachable, EstRequestFailed) as exc:
            retry_after = exc.retry_after_s if isinstance(exc, EstServerBusy) else None
            delay = retry_delay(attempt, retry_after_s=retry_after, rng=self._rng, policy=self._policy)
            _log.warning("renewal failed (%s); retrying in %.0f s", exc, delay)
            return delay
        except (RenewalImpossible, KeyStoreError):
            _log.exception("renewal is impossible; the agent stops renewing")
            raise
        _log.info(
            "renewed: serial %x valid until %s", certificate.serial_number, certificate.not_valid_after_utc
        )
        return 0.0


def _request(key: SigningKey, subject: x509.Name) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return sign_csr(builder, key).public_bytes(serialization.Encoding.DER)


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _chain_from(first: x509.Certificate, pool: list[x509.Certificate]) -> list[x509.Certificate]:
    """Return ``first`` and its issuers from ``pool``, up to a self-signed one (at most ``len(pool)``)."""
    chain = [first]
    while len(chain) <= len(pool) and chain[-1].issuer != chain[-1].subject:
        parents = [ca for ca in pool if ca not in chain and _issued_by(chain[-1], ca)]
        if not parents:
            break
        chain.append(parents[0])
    return [ca for ca in chain if ca.issuer != ca.subject]  # the root is a trust anchor, not sent


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise EstServerUnreachable("the issued certificate has no single common name")
    return names[0].value


def _seed(device_id: str | None, certificate: x509.Certificate) -> str:
    return f"{device_id}:{certificate.serial_number:x}"
