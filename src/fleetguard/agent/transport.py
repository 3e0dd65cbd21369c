"""How the agent's EST client reaches the server: one request in, one reply out, over TLS.

The EST client (:mod:`fleetguard.agent.est_client`) is sans-I/O apart from one call,
:meth:`EstTransport.request`. Which transport serves it depends on where the TLS client key is,
because OpenSSL must sign the handshake with it (RFC 8446 4.4.3 CertificateVerify):

* a key in a file, or no client key at all: :class:`HttpsTransport`, the standard library's
  ``http.client`` over ``ssl`` in this process;
* a key behind an OpenSSL 3 *provider* (the TPM's ``tpm2`` provider): the same code in a child
  process started with the provider's OpenSSL configuration (:mod:`fleetguard.agent.transport_child`),
  because OpenSSL reads its configuration once per process and the agent's own process must not
  route its other cryptography through the TPM;
* a key behind an OpenSSL *engine* (libp11's ``pkcs11`` engine for an HSM or smart card): curl,
  which can name an engine key (:mod:`fleetguard.agent.transport_curl`); Python's ``ssl`` cannot.

Every reply body is bounded (:data:`MAX_REPLY_BYTES`); every request has a timeout.
"""

from __future__ import annotations

import enum
import http.client
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetguard.agent.errors import AgentConfigInvalid, EstServerUnreachable

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_REPLY_BYTES",
    "EstReply",
    "EstTransport",
    "HttpsTransport",
    "TlsClientKey",
    "TlsKeyKind",
    "TlsSettings",
    "est_path",
    "parse_server_url",
]

MAX_REPLY_BYTES = 1 << 20
"""The largest EST reply body read: a certs-only PKCS#7 of a chain is a few KiB."""

DEFAULT_TIMEOUT_S = 30.0
_EST_PREFIX = "/.well-known/est/"  # RFC 7030 3.2.2


class TlsKeyKind(enum.StrEnum):
    """How OpenSSL reaches a TLS client key."""

    FILE = "file"
    """A PEM private key file that OpenSSL's default provider reads."""
    PROVIDER = "provider"
    """A PEM file only a provider can decode (a TPM-wrapped key); needs ``openssl_conf``."""
    ENGINE = "engine"
    """An engine key named by ``reference`` (a PKCS#11 URI); needs ``openssl_conf``."""


@dataclass(frozen=True, slots=True)
class TlsClientKey:
    """The client key as OpenSSL must be told about it, and the environment that makes it usable."""

    kind: TlsKeyKind
    reference: str
    openssl_conf: Path | None = None
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where the server is, what to trust, and how to authenticate (``certificate`` + ``key``, or neither)."""

    server_url: str
    trust_anchors: Path
    certificate: Path | None = None
    key: TlsClientKey | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parse_server_url(self.server_url)
        if (self.certificate is None) != (self.key is None):
            raise AgentConfigInvalid("a TLS client certificate needs its key, and a key its certificate")


@dataclass(frozen=True, slots=True)
class EstReply:
    """An HTTP answer: status, the two headers EST clients act on, and the (bounded) body."""

    status: int
    content_type: str | None
    retry_after: str | None
    body: bytes


class EstTransport(Protocol):
    """Sends one EST request."""

    def request(
        self, method: str, operation: str, body: bytes | None, headers: Mapping[str, str]
    ) -> EstReply:
        """Return the server's reply; raise ``EstServerUnreachable`` when there is none."""
        ...


def parse_server_url(url: str) -> tuple[str, int]:
    """Return ``(host, port)`` of an ``https://host[:port]`` URL; raise ``AgentConfigInvalid`` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # an unbalanced IPv6 bracket
        raise _not_host_and_port(url) from exc
    # curl is handed the URL itself (transport_curl): a query, a fragment, user info or white space
    # (which urlsplit drops silently) would change what it requests, so only host[:port] is taken.
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or any(character in "?#@" or not character.isprintable() or character.isspace() for character in url)
    ):
        raise _not_host_and_port(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise AgentConfigInvalid(f"bad port in {url!r}") from exc
    if port == 0:  # urlsplit allows 0, which no server listens on
        raise AgentConfigInvalid(f"bad port in {url!r}")
    return parts.hostname, port or 443


def _not_host_and_port(url: str) -> AgentConfigInvalid:
    return AgentConfigInvalid(
        f"the EST server URL must be https://host[:port], not {url!r}",
        hint="RFC 7030 3.2.2: the agent adds /.well-known/est/ itself",
    )


def est_path(operation: str) -> str:
    """Return the request path of EST ``operation`` (``cacerts``, ``simpleenroll``, ...)."""
    return _EST_PREFIX + operation


class HttpsTransport:
    """EST over ``http.client`` and ``ssl`` in this process: one TLS connection per request."""

    def __init__(self, settings: TlsSettings) -> None:
        if settings.key is not None and settings.key.kind is TlsKeyKind.ENGINE:
            raise AgentConfigInvalid("an engine key needs the curl transport")
        self._settings = settings
        self._host, self._port = parse_server_url(settings.server_url)

    def request(
        self, method: str, operation: str, body: bytes | None, headers: Mapping[str, str]
    ) -> EstReply:
        """Send the request on a fresh connection; return the reply."""
        connection = http.client.HTTPSConnection(
            self._host, self._port, timeout=self._settings.timeout_s, context=self._context()
        )
        try:
            connection.request(method, est_path(operation), body=body, headers=dict(headers))
            response = connection.getresponse()
            data = response.read(MAX_REPLY_BYTES + 1)
            if len(data) > MAX_REPLY_BYTES:
                raise EstServerUnreachable(f"the server's reply is larger than {MAX_REPLY_BYTES} bytes")
            return EstReply(
                response.status, response.getheader("Content-Type"), response.getheader("Retry-After"), data
            )
        except (OSError, http.client.HTTPException) as exc:
            raise EstServerUnreachable(
                f"no answer from {self._settings.server_url}: {_describe(exc)}",
                hint="check the server URL, the network and the trust anchors",
            ) from exc
        finally:
            connection.close()

    def _context(self) -> ssl.SSLContext:
        settings = self._settings
        try:
            context = ssl.create_default_context(cafile=str(settings.trust_anchors))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.certificate is not None and settings.key is not None:
                context.load_cert_chain(str(settings.certificate), settings.key.reference)
        except (OSError, ssl.SSLError) as exc:
            raise AgentConfigInvalid(f"cannot load the TLS credentials: {_describe(exc)}") from exc
        return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
