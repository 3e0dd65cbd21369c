"""How the update client reaches the OTA server: python-tuf's fetcher over HTTPS with the device's
certificate, and the two POSTs of the device protocol (:mod:`fleetguard.ota.wire`).

Theory of operation. python-tuf's ``ngclient.Updater`` does every TUF check itself and asks a
``FetcherInterface`` only for bytes: ``download_bytes(url, max_length)`` for metadata (the length
from the trusted metadata, or ``UpdaterConfig``'s bound) and ``download_file(url, max_length)`` for a
target (its signed length). :class:`HttpsFetcher` serves both from the installation's mTLS endpoint
(the EST server's port), authenticating with the device's operational certificate, because the
server discloses a device's director metadata only to that device.

* One origin. The fetcher is built for one ``https://host[:port]`` and refuses any other URL: the
  URLs come from the base URL and from signed target paths, so this only catches a bug, never trusts
  a server's redirect (redirects are not followed; a 3xx is an HTTP error).
* Bounded. A download reads at most ``max_length + 1`` bytes: a ``Content-Length`` above the bound
  is refused before the body is read, and a body that runs past it is cut at the first chunk over
  (ngclient's "endless data" defence, TUF spec 5.2.3 and 5.7.3, enforced where the bytes arrive).
  Every socket operation has a timeout.
* ngclient's vocabulary. Failures are ``tuf.api.exceptions`` errors, as ngclient expects:
  ``DownloadHTTPError`` with the status (a 404 or 403 for ``N.root.json`` is how ngclient learns that
  the root chain ends, TUF spec 5.3.3), ``DownloadLengthMismatchError`` past the bound,
  ``SlowRetrievalError`` on a timeout, ``DownloadError`` for anything else (connection refused, TLS
  failure, a connection closed early). The generator translates errors while it streams, since
  ``FetcherInterface.fetch`` wraps only what ``_fetch`` raises before the first chunk.
* Client keys. ``http.client`` over ``ssl`` in this process can use a key in a file only. A TPM key
  (an OpenSSL provider key, reached through a child process for EST) and a PKCS#11 key (an OpenSSL
  engine key, reached through curl for EST) raise :class:`AgentConfigInvalid` for now.

One TLS connection per request, closed when its body has been read.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)
from tuf.ngclient import FetcherInterface

from fleetguard.agent.errors import AgentConfigInvalid
from fleetguard.agent.transport import DEFAULT_TIMEOUT_S, TlsClientKey, TlsKeyKind, parse_server_url

__all__ = ["DEFAULT_CHUNK_BYTES", "MAX_UNBOUNDED_BYTES", "HttpReply", "HttpsFetcher"]

DEFAULT_CHUNK_BYTES: Final = 64 * 1024
MAX_UNBOUNDED_BYTES: Final = 16 * 1024 * 1024
"""The bound of :meth:`HttpsFetcher.fetch`, which ngclient does not call with a length itself."""
_USER_AGENT: Final = "fleetguard-agent-ota"


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A POST's answer: the status, its content type and the (bounded) body."""

    status: int
    content_type: str | None
    body: bytes


class HttpsFetcher(FetcherInterface):
    """GETs for ngclient and POSTs for the device protocol, on one origin (see the module docstring)."""

    def __init__(
        self,
        origin: str,
        context: ssl.SSLContext | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        """Prefer :meth:`with_client_certificate`; ``context=None`` means plain HTTP (tests only)."""
        if not 0 < timeout_s <= 600:
            raise AgentConfigInvalid("the OTA timeout must be between 0 and 600 seconds")
        if not 1024 <= chunk_bytes <= 1 << 24:
            raise AgentConfigInvalid("the OTA download chunk must be between 1 KiB and 16 MiB")
        self._scheme = "http" if context is None else "https"
        self._host, self._port = _origin(origin, self._scheme)
        self._context = context
        self._timeout_s = timeout_s
        self._chunk_bytes = chunk_bytes
        self.origin = origin.rstrip("/")

    @classmethod
    def with_client_certificate(
        cls,
        server_url: str,
        *,
        trust_anchors: Path,
        certificate: Path,
        key: TlsClientKey,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> HttpsFetcher:
        """Return a fetcher for ``https://host[:port]`` authenticating with ``certificate`` and ``key``.

        Raises :class:`AgentConfigInvalid` for a key this fetcher cannot use (TPM, PKCS#11), a bad URL,
        or credentials that do not load.
        """
        if key.kind is not TlsKeyKind.FILE:
            raise AgentConfigInvalid(
                f"the OTA update client cannot use a {key.kind} TLS client key yet",
                hint="updates need the device key in a file (--key-store file) for now",
            )
        try:
            context = ssl.create_default_context(cafile=str(trust_anchors))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(certificate), key.reference)
        except (OSError, ssl.SSLError) as exc:
            raise AgentConfigInvalid(f"cannot load the TLS credentials for OTA: {exc}") from exc
        return cls(server_url, context, timeout_s=timeout_s)

    @classmethod
    def insecure_plain_http(cls, origin: str, *, timeout_s: float = 10.0) -> HttpsFetcher:
        """Return a fetcher for ``http://host:port`` without TLS: for tests against a local server only."""
        return cls(origin, None, timeout_s=timeout_s)

    # -- ngclient -------------------------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._stream(url, MAX_UNBOUNDED_BYTES)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Yield a temporary file with the body of ``url``; raise as the module docstring says."""
        with tempfile.TemporaryFile() as file:
            for chunk in self._stream(url, max_length):
                file.write(chunk)
            file.seek(0)
            yield file

    # -- the device protocol --------------------------------------------------------------------------

    def post(self, path: str, body: bytes, *, max_length: int) -> HttpReply:
        """POST JSON ``body`` to ``path`` on the origin; return the reply with at most ``max_length`` bytes.

        Raises ``DownloadLengthMismatchError`` for a longer reply, ``SlowRetrievalError`` on a timeout,
        ``DownloadError`` when there is no answer. An HTTP error status is returned, not raised.
        """
        target = self._request_target(self.origin + path)
        connection = self._connection()
        try:
            connection.request(
                "POST",
                target,
                body=body,
                headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT},
            )
            response = connection.getresponse()
            self._require_declared_length(response, max_length, path)
            data = response.read(max_length + 1)
            if len(data) > max_length:
                raise DownloadLengthMismatchError(f"the reply to {path} is longer than {max_length} bytes")
            return HttpReply(response.status, response.getheader("Content-Type"), data)
        except (OSError, http.client.HTTPException) as exc:
            raise _download_error(path, exc) from exc
        finally:
            connection.close()

    # -- internals ------------------------------------------------------------------------------------

    def _stream(self, url: str, limit: int) -> Iterator[bytes]:
        target = self._request_target(url)
        connection = self._connection()
        response: http.client.HTTPResponse | None = None
        try:
            connection.request("GET", target, headers={"User-Agent": _USER_AGENT})
            response = connection.getresponse()
            if response.status != 200:
                raise DownloadHTTPError(f"HTTP {response.status} for {target}", response.status)
            self._require_declared_length(response, limit, target)
            received = 0
            while chunk := response.read(min(self._chunk_bytes, limit - received + 1)):
                received += len(chunk)
                if received > limit:
                    raise DownloadLengthMismatchError(
                        f"{target} sent more than the {limit} bytes allowed (endless data)"
                    )
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise _download_error(target, exc) from exc
        finally:
            if response is not None:
                response.close()  # an HTTP/1.0 response holds the socket: a cut stream must end now
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._context is None:
            return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout_s, context=self._context
        )

    def _request_target(self, url: str) -> str:
        """Return the path of ``url`` after checking that it is on this fetcher's origin."""
        parts = urllib.parse.urlsplit(url)
        if (
            parts.scheme != self._scheme
            or parts.hostname != self._host
            or (parts.port or _default_port(self._scheme)) != self._port
            or not parts.path.startswith("/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise DownloadError(f"refusing {url[:200]!r}: not on the OTA server {self.origin}")
        return parts.path

    @staticmethod
    def _require_declared_length(response: http.client.HTTPResponse, limit: int, what: str) -> None:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise DownloadLengthMismatchError(
                f"{what} declares {declared} bytes, more than the {limit} allowed"
            )


def _origin(url: str, scheme: str) -> tuple[str, int]:
    if scheme == "https":
        return parse_server_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise AgentConfigInvalid(f"a plain-HTTP OTA origin must be http://host:port, not {url!r}")
    return parts.hostname, parts.port or 80


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _download_error(what: str, exc: BaseException) -> DownloadError:
    if isinstance(exc, socket.timeout | TimeoutError):
        return SlowRetrievalError(f"{what}: timed out")
    return DownloadError(f"{what}: {str(exc) or type(exc).__name__}")
