"""The EST endpoint (RFC 7030) over TLS with optional client certificates: sockets, TLS and HTTP/1.1.

Theory of operation.

**Why the standard library.** EST authenticates a re-enrolling device, or a device with a factory
(IDevID) certificate, by its TLS client certificate (RFC 7030 3.3.2). An ASGI server does not hand the
application the client certificate, so this edge is ``http.server.ThreadingHTTPServer`` with an
``ssl.SSLContext`` of its own: one thread per connection, HTTP/1.1 keep-alive.

**The verification split.** TLS and the enrollment service each check what they are placed to check:

* The TLS layer proves *possession and a chain*: a client that presents a certificate must sign the
  handshake with its key (TLS 1.3 CertificateVerify / RFC 5246 7.4.8), and the certificate must chain
  to a trust anchor of ``ca_bundle()`` (our root and issuing CAs, and every registered manufacturer
  CA). A certificate that does not chain fails the handshake: ``CERT_OPTIONAL`` only makes
  *presenting* one optional.
* TLS deliberately does **not** judge time: ``X509_V_FLAG_NO_CHECK_TIME`` is set, so that an
  operational certificate that expired while its device was offline still completes the handshake and
  the device can re-enroll within the PKI's grace window. ``VERIFY_X509_PARTIAL_CHAIN`` lets a
  registered manufacturer *intermediate* CA be an anchor (cryptography's verifier in
  ``fleetguard.pki.manufacturer`` treats every registered CA the same way).
* The enrollment service then *decides*: it gets the chain and checks validity at ``now`` and the
  grace window, revocation, which CA (ours for re-enrollment, the claimed manufacturer's for a factory
  certificate: a manufacturer A certificate passes TLS but not the service when it claims B), that the
  certificate is the one recorded for the device, and that the CSR matches it (RFC 7030 3.5 / 4.2.2).
  Nothing the TLS layer accepted is trusted by the service on that account alone.

**What the service is given.** ``EnrollmentRequest.client_chain`` is the leaf first. The standard
library before Python 3.13 exposes only the leaf (``getpeercert(binary_form=True)``); from 3.13,
``SSLSocket.get_unverified_chain()`` also gives the intermediates the client sent, and they are passed
on. On older Pythons a factory certificate issued by an intermediate that the device sends must have
that intermediate registered with the manufacturer.

**Bounds.** A body needs ``Content-Length`` (chunked: 411) of at most ``MAX_BODY_BYTES`` (413), checked
before ``100 Continue`` is sent. Each connection gets ``handshake_timeout_s`` for TLS, then each request
``idle_timeout_s`` for its first byte and ``request_timeout_s`` for the rest (a deadline, not a
per-read timeout, so a client sending a byte at a time cannot hold a thread: slowloris). At most
``max_connections`` connections are served at once; more are closed on accept.

**Reloading.** ``ca_bundle()`` and the server certificate and key files are checked at most every
``reload_interval_s`` seconds on accept; when any changed, new connections get a new ``SSLContext``
(``fleetguard.pki`` renews ``est.pem`` in place; registering a manufacturer CA changes the bundle).

Each request is logged in one line: source, method, path, status, bytes, milliseconds, the client
certificate's serial and the claimed device id; never a token or a CSR.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, assert_never

from cryptography import x509

from fleetguard.enroll.est import (
    MAX_BODY_BYTES,
    EstBodyTooLarge,
    EstLengthRequired,
    EstMalformed,
    EstMethodNotAllowed,
    EstOperation,
    EstResponse,
    cacerts_response,
    csrattrs_response,
    decode_pkcs10_body,
    error_response,
    issued_response,
    parse_basic_authorization,
    parse_est_path,
    pending_response,
)
from fleetguard.enroll.service import EnrollmentOutcome, EnrollmentRequest, Issued, Pending
from fleetguard.errors import FleetguardError
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "MAX_CLIENT_CHAIN",
    "NO_CHECK_TIME",
    "DeviceRoutes",
    "EnrollmentBackend",
    "EstServer",
    "FileResponse",
    "IssuedCertificate",
    "parse_client_chain",
    "peer_chain",
    "server_context",
]

_log = logging.getLogger(__name__)

NO_CHECK_TIME = 0x200000
"""OpenSSL ``X509_V_FLAG_NO_CHECK_TIME`` (``openssl/x509_vfy.h``), which ``ssl.VerifyFlags`` does not name."""

MAX_CLIENT_CHAIN = 9
"""Most certificates taken from a client: a leaf and ``fleetguard.pki.manufacturer``'s 8 intermediates."""


class IssuedCertificate(Protocol):
    """What the edge needs of an issued certificate (``fleetguard.pki.service.CertificateRecord``)."""

    @property
    def der(self) -> bytes:
        """The certificate, DER."""
        ...


class EnrollmentBackend(Protocol):
    """The enrollment decisions (``fleetguard.enroll.service.EnrollmentService``)."""

    def enroll(self, request: EnrollmentRequest, *, now: dt.datetime) -> EnrollmentOutcome:
        """Decide a first enrollment: issued, pending approval, or an error with its HTTP status."""
        ...

    def reenroll(self, request: EnrollmentRequest, *, now: dt.datetime) -> IssuedCertificate:
        """Decide a re-enrollment: issued, or an error with its HTTP status."""
        ...


class DeviceRoutes(Protocol):
    """Other device-facing resources served on this mTLS endpoint (``fleetguard.ota.device_api``).

    Requests whose path starts with :attr:`prefix` go to :meth:`handle` with the client chain that TLS
    verified for possession and chain only (no time check): the handler decides what it accepts.
    """

    prefix: str

    def handle(
        self, method: str, path: str, body: bytes, client_chain: tuple[x509.Certificate, ...]
    ) -> EstResponse | FileResponse:
        """Answer one request; errors are returned as responses, never raised."""
        ...


@dataclass(frozen=True, slots=True)
class FileResponse:
    """A 200 answer whose body is a file, streamed (large OTA images are never read into memory)."""

    content_type: str
    path: Path
    length: int


def server_context(ca_bundle: bytes, certificate: Path, key: Path) -> ssl.SSLContext:
    """Return the server's TLS context: TLS 1.2+, optional client certificates chaining to ``ca_bundle``.

    ``certificate`` is a PEM file with the server certificate first and its chain after it (the PKI's
    ``<name>.chain.pem``), so that clients that trust only the root can build the path. Raises
    ``ssl.SSLError`` or ``OSError`` if the files or the bundle cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 7030 3.3.1 needs TLS 1.1+; RFC 9325 says 1.2+
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client may not restart the handshake mid-connection
    context.load_cert_chain(certificate, key)
    context.verify_mode = ssl.CERT_OPTIONAL
    # See the module docstring: TLS proves key possession and a chain; the service judges time.
    context.verify_flags |= NO_CHECK_TIME | ssl.VERIFY_X509_PARTIAL_CHAIN
    if ca_bundle.strip():
        context.load_verify_locations(cadata=ca_bundle.decode("ascii"))
    return context


class _Contexts:
    """The current ``SSLContext``, rebuilt when the trust bundle or the server's files change."""

    def __init__(
        self, ca_bundle: Callable[[], bytes], certificate: Path, key: Path, *, interval_s: float
    ) -> None:
        self._ca_bundle = ca_bundle
        self._certificate = certificate
        self._key = key
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._inputs: tuple[bytes, tuple[int, ...], tuple[int, ...]] | None = None
        self._context: ssl.SSLContext | None = None
        self._checked_at = 0.0

    def current(self) -> ssl.SSLContext:
        """Return the context to handshake with; raises as :func:`server_context` when a rebuild fails."""
        now = time.monotonic()
        with self._lock:
            if self._context is not None and now - self._checked_at < self._interval_s:
                return self._context
            inputs = (self._ca_bundle(), _stamp(self._certificate), _stamp(self._key))
            if self._context is None or inputs != self._inputs:
                # A failure propagates (no connection is served with a stale trust store) and the next
                # connection tries again, since neither the inputs nor the check time are recorded.
                self._context = server_context(inputs[0], self._certificate, self._key)
                if self._inputs is not None:
                    _log.info("est: trust anchors or server certificate changed; TLS context reloaded")
                self._inputs = inputs
            self._checked_at = now
            return self._context


def _stamp(path: Path) -> tuple[int, ...]:
    status = os.stat(path)
    return (status.st_ino, status.st_size, status.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _Limits:
    handshake_timeout_s: float
    idle_timeout_s: float
    request_timeout_s: float


class _DeadlineReader(io.RawIOBase):
    """Reads a socket against a per-request deadline rather than a per-read timeout (slowloris)."""

    def __init__(self, connection: socket.socket, limits: _Limits) -> None:
        super().__init__()
        self._connection = connection
        self._limits = limits
        self._deadline = 0.0
        self._started = False
        self.next_request()

    def next_request(self) -> None:
        """Start the clock of the next request: ``idle_timeout_s`` until its first byte."""
        self._deadline = time.monotonic() + self._limits.idle_timeout_s
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self._connection.settimeout(remaining)
        count = self._connection.recv_into(buffer)
        if not self._started:
            self._started = True
            self._deadline = time.monotonic() + self._limits.request_timeout_s
        return count


class _Handler(BaseHTTPRequestHandler):
    """One TLS connection: HTTP/1.1 requests, one after another, to the four EST resources."""

    protocol_version = "HTTP/1.1"  # keep-alive (RFC 9112 9.3)
    server_version = "fleetguard-est"
    sys_version = ""
    server: _HttpServer
    connection: ssl.SSLSocket

    def setup(self) -> None:
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = _DeadlineReader(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = self.connection.makefile("wb")  # buffered: headers and body leave in one flush
        self._chain: tuple[x509.Certificate, ...] | None = None
        self._claimed: str | None = None
        self._started = time.perf_counter()

    def handle_one_request(self) -> None:
        self._reader.next_request()
        self._claimed = None
        self._started = time.perf_counter()
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        # RFC 9110 10.1.1: refuse a body we would not read before the client sends it.
        try:
            self._declared_length()
        except FleetguardError as error:
            self._answer(error_response(error), keep_alive=False)
            return False
        accepted = super().handle_expect_100()
        self.wfile.flush()  # wfile is buffered: the client waits for this line before it sends the body
        return accepted

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        try:
            response = self._respond(method)
        except Exception:  # the boundary: answer 500, then let the server log the traceback
            self._answer(EstResponse(500, "text/plain; charset=utf-8", b"internal error\n"), keep_alive=False)
            raise
        if isinstance(response, FileResponse):
            self._send_file(response, keep_alive=not self.close_connection)
        else:
            self._answer(response, keep_alive=not self.close_connection)

    def _respond(self, method: str) -> EstResponse | FileResponse:
        try:
            body = self._read_body()
            routes = self.server.device_routes
            if routes is not None and self.path.startswith(routes.prefix):
                return routes.handle(method, self.path, body, self._client_chain())
            operation = parse_est_path(self.path)
            if method != operation.method:
                raise EstMethodNotAllowed(method, operation.method)
            return self._operate(operation, body)
        except FleetguardError as error:
            if error.status >= 500 and error.status != 503:
                _log.error("est %s %s: %s", self.client_address[0], self.path[:80], error)
            return error_response(error)

    def _operate(self, operation: EstOperation, body: bytes) -> EstResponse:
        service = self.server.service
        match operation:
            case EstOperation.CACERTS:
                return self.server.cacerts()
            case EstOperation.CSRATTRS:
                return csrattrs_response()
            case EstOperation.SIMPLEENROLL:
                outcome = service.enroll(self._enrollment_request(body), now=self.server.clock())
                return _outcome_response(outcome)
            case EstOperation.SIMPLEREENROLL:
                issued = service.reenroll(self._enrollment_request(body), now=self.server.clock())
                return issued_response(issued.der)

    def _enrollment_request(self, body: bytes) -> EnrollmentRequest:
        csr = decode_pkcs10_body(body, self.headers.get("Content-Type"))
        credentials = parse_basic_authorization(self._single_header("Authorization"))
        self._claimed = None if credentials is None else credentials.username
        return EnrollmentRequest(
            csr=csr,
            client_chain=self._client_chain(),
            token=None if credentials is None else credentials.password,
            claimed_device_id=self._claimed,
            source=self.client_address[0],
        )

    def _client_chain(self) -> tuple[x509.Certificate, ...]:
        if self._chain is None:  # one TLS session, one chain: parsed once per connection
            self._chain = parse_client_chain(peer_chain(self.connection))
        return self._chain

    # -- HTTP framing ---------------------------------------------------------------------------

    def _single_header(self, name: str) -> str | None:
        values = self.headers.get_all(name) or []
        if len(values) > 1:
            raise EstMalformed(f"{len(values)} {name} header fields; send one")
        return values[0] if values else None

    def _declared_length(self) -> int:
        """Return ``Content-Length`` (0 when absent); raise 411 for chunked, 400/413 when bad or large."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise EstLengthRequired(
                "chunked request bodies are not accepted", hint="send Content-Length (curl --data-binary)"
            )
        declared = self._single_header("Content-Length")
        if declared is None:
            return 0
        if not declared.isdigit() or not declared.isascii() or len(declared) > 12:
            raise EstMalformed(f"Content-Length {declared[:20]!r} is not a number of bytes")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise EstBodyTooLarge(f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
        return length

    def _read_body(self) -> bytes:
        # An error answered before the body is read leaves it in the stream: the connection closes.
        keep_alive = not self.close_connection  # as parse_request found it (version, Connection)
        self.close_connection = True
        length = self._declared_length()
        if self.command == "POST" and self.headers.get("Content-Length") is None:
            raise EstLengthRequired("a POST needs Content-Length", hint="curl --data-binary sends it")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise EstMalformed(f"the body ended after {len(body)} of {length} bytes")
        self.close_connection = not keep_alive
        return body

    def _answer(self, response: EstResponse, *, keep_alive: bool) -> None:
        self.send_response(response.status)
        for name, value in response.headers():
            self.send_header(name, value)
        if response.status in (200, 202):
            self.send_header("Cache-Control", "no-store")  # RFC 9111 5.2.2.5: certificates are per client
        if not keep_alive:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)
        self._log_line(response.status, len(response.body))

    def _send_file(self, response: FileResponse, *, keep_alive: bool) -> None:
        try:
            file = open(response.path, "rb")  # noqa: SIM115 - closed below, after the headers are chosen
        except OSError:
            self._answer(EstResponse(404, "text/plain; charset=utf-8", b"not found\n"), keep_alive=keep_alive)
            return
        with file:
            self.send_response(200)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(response.length))
            if not keep_alive:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            remaining = response.length
            while remaining > 0 and (chunk := file.read(min(remaining, 1 << 16))):
                self.wfile.write(chunk)
                remaining -= len(chunk)
            if remaining:  # the file shrank under us: the client sees a short body, and we close
                self.close_connection = True
        self._log_line(200, response.length - remaining)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Protocol errors found by http.server itself (bad request line, too many headers, 501):
        # plain text like every other EST error, and the connection closes.
        text = f"{message or self.responses.get(code, ('error',))[0]}\n".encode()
        self._answer(EstResponse(code, "text/plain; charset=utf-8", text), keep_alive=False)

    def _log_line(self, status: int, size: int) -> None:
        # command and path are unset when the request line itself was bad.
        chain = self._chain or ()
        _log.info(
            "est %s %s %s %d %d %.1fms cert=%s device=%r",
            self.client_address[0],
            _printable(getattr(self, "command", None) or "-"),
            _printable((getattr(self, "path", None) or "-").split("?", 1)[0][:120]),
            status,
            size,
            1000 * (time.perf_counter() - self._started),
            f"{chain[0].serial_number:x}" if chain else "-",
            None if self._claimed is None else self._claimed[:64],
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: :meth:`_log_line` writes one line per request, after the body is sent."""

    def log_message(self, format: str, *args: object) -> None:
        _log.info("est %s %s", self.client_address[0], format % args)


def _printable(text: str) -> str:
    # A request line is attacker-chosen: quote anything that could forge or break a log line.
    return text if text.isprintable() else repr(text)


def _outcome_response(outcome: EnrollmentOutcome) -> EstResponse:
    match outcome:
        case Issued(certificate=record):
            return issued_response(record.der)
        case Pending(request_id=request_id, retry_after_s=retry_after_s):
            return pending_response(request_id, retry_after_s)
        case _ as unreachable:
            assert_never(unreachable)


def peer_chain(connection: ssl.SSLSocket) -> list[bytes]:
    """Return the DER certificates the client presented, leaf first; [] when it presented none.

    Python 3.13+ gives the whole chain the client sent; older versions the leaf only.
    """
    unverified_chain = getattr(connection, "get_unverified_chain", None)
    if unverified_chain is not None:
        return [bytes(certificate) for certificate in unverified_chain() or ()]
    leaf = connection.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def parse_client_chain(ders: list[bytes]) -> tuple[x509.Certificate, ...]:
    """Return ``ders`` as certificates; raise ``EstMalformed`` when too many or one cannot be parsed."""
    if len(ders) > MAX_CLIENT_CHAIN:
        raise EstMalformed(f"the client sent {len(ders)} certificates; at most {MAX_CLIENT_CHAIN} are read")
    try:
        return tuple(x509.load_der_x509_certificate(der) for der in ders)
    except ValueError as exc:
        raise EstMalformed("the client certificate cannot be parsed (RFC 5280 DER)") from exc


_REFUSAL_LOG_INTERVAL_S = 10.0


class _CaCertificates:
    """The ``/cacerts`` answer, re-encoded only when the PEM that ``cacerts()`` returns changes."""

    def __init__(self, cacerts: Callable[[], bytes]) -> None:
        self._cacerts = cacerts
        self._cached: tuple[bytes, EstResponse] | None = None

    def __call__(self) -> EstResponse:
        pem = self._cacerts()
        cached = self._cached
        if cached is not None and cached[0] == pem:
            return cached[1]
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise _CacertsUnavailable("the CA certificates to publish cannot be read") from exc
        answer = cacerts_response(certificates)
        self._cached = (pem, answer)  # one tuple, replaced whole: safe to read from other threads
        return answer


class _CacertsUnavailable(FleetguardError):
    status = 500
    code = "est-cacerts-unavailable"


@dataclass(frozen=True, slots=True)
class _Setup:
    service: EnrollmentBackend
    clock: Callable[[], dt.datetime]
    limits: _Limits
    contexts: _Contexts
    cacerts: _CaCertificates
    max_connections: int
    listener: socket.socket | None
    device_routes: DeviceRoutes | None = None


_Request = socket.socket | tuple[bytes, socket.socket]  # socketserver's request: a stream or a datagram


class _HttpServer(ThreadingHTTPServer):
    """Accepts TCP, does the TLS handshake in the connection's own thread, caps concurrent connections."""

    daemon_threads = True
    block_on_close = True  # stop() waits for the connection threads, which it has woken

    def __init__(self, address: tuple[str, int], setup: _Setup) -> None:
        self.service = setup.service
        self.clock = setup.clock
        self.limits = setup.limits
        self.contexts = setup.contexts
        self.cacerts = setup.cacerts
        self.device_routes = setup.device_routes
        self._capacity = setup.max_connections
        self._slots = threading.BoundedSemaphore(setup.max_connections)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._closing = False
        self._refusals = 0
        self._refusal_logged_at = -_REFUSAL_LOG_INTERVAL_S
        if setup.listener is None:
            super().__init__(address, _Handler)
            return
        super().__init__(setup.listener.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        # Other processes accept from this socket too: one that finds the connection taken must not
        # block in accept(). socketserver treats the OSError it gets instead as "no request".
        self.socket = setup.listener
        self.socket.setblocking(False)

    def process_request(self, request: _Request, client_address: tuple[str, int]) -> None:
        if not self._slots.acquire(blocking=False):
            self._refused(client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def _refused(self, source: str) -> None:
        # At most one line per _REFUSAL_LOG_INTERVAL_S: a flood must not write the log at its own pace.
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL_S:
            _log.warning(
                "est: all %d connection slots busy; refused %d connections (latest from %s)",
                self._capacity, self._refusals, source,
            )  # fmt: skip
            self._refusals = 0
            self._refusal_logged_at = now

    def process_request_thread(self, request: _Request, client_address: tuple[str, int]) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: _Request, client_address: tuple[str, int]) -> None:
        assert isinstance(request, socket.socket)  # a stream server's request is its connected socket
        context = self.contexts.current()
        request.settimeout(self.limits.handshake_timeout_s)
        if not self._track(request):
            return
        try:
            connection = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # OSError covers TimeoutError and resets
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            _log.info("est %s: TLS handshake failed: %s", client_address[0], reason)
            return
        finally:
            self._untrack(request)  # detached by wrap_socket, or closed
        if not self._track(connection):
            connection.close()
            return
        try:
            _Handler(connection, client_address, self)
        except (ConnectionError, ssl.SSLError) as exc:  # the client went away mid-request
            _log.info("est %s: connection lost: %s", client_address[0], exc)
        finally:
            self._untrack(connection)
            connection.close()

    def _track(self, connection: socket.socket) -> bool:
        with self._open_lock:
            if self._closing:
                return False
            self._open.add(connection)
            return True

    def _untrack(self, connection: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(connection)

    def wake_connections(self) -> None:
        """Refuse new connections and shut down open ones, so that their threads stop waiting and end."""
        with self._open_lock:
            self._closing = True
            connections = list(self._open)
        for connection in connections:
            # socket.socket.shutdown, not SSLSocket.shutdown: the TLS object stays for its reader,
            # which then sees end of file instead of a closed-socket error.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: _Request, client_address: tuple[str, int]) -> None:
        _log.exception("est %s: request failed", client_address[0])


class EstServer:
    """The EST endpoint under ``/.well-known/est/``, served over TLS from a background thread.

    ``ca_bundle`` returns the PEM trust anchors for client certificates (root, issuing and
    manufacturer CAs); ``cacerts`` returns the PEM CA certificates that ``/cacerts`` publishes;
    ``server_cert`` is the server's PEM certificate followed by its chain, ``server_key`` its key.
    ``listener``, a listening TCP socket, replaces binding ``host`` and ``port``: several processes
    that serve the same one share its connections (``fleetguard.enroll.est_workers``).
    """

    def __init__(
        self,
        service: EnrollmentBackend,
        ca_bundle: Callable[[], bytes],
        cacerts: Callable[[], bytes],
        server_cert: Path,
        server_key: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], dt.datetime] = utc_now,
        max_connections: int = 256,
        handshake_timeout_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        request_timeout_s: float = 10.0,
        reload_interval_s: float = 5.0,
        listener: socket.socket | None = None,
        device_routes: DeviceRoutes | None = None,
    ) -> None:
        self._setup = _Setup(
            service=service,
            clock=clock,
            limits=_Limits(handshake_timeout_s, idle_timeout_s, request_timeout_s),
            contexts=_Contexts(ca_bundle, server_cert, server_key, interval_s=reload_interval_s),
            cacerts=_CaCertificates(cacerts),
            max_connections=max_connections,
            listener=listener,
            device_routes=device_routes,
        )
        self._host = host
        self._port = port
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on; the port is the one bound when 0 was asked for."""
        if self._httpd is None:
            raise RuntimeError("the EST server is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Check the TLS material, bind, and serve from a daemon thread; raise if it cannot."""
        if self._httpd is not None:
            raise RuntimeError("the EST server is started already")
        self._setup.contexts.current()  # bad TLS material fails here, not on the first client
        self._httpd = _HttpServer((self._host, self._port), self._setup)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="est-server", daemon=True
        )
        self._thread.start()
        _log.info("est: serving https://%s:%d/.well-known/est/", *self.address)

    def stop(self) -> None:
        """Stop accepting, close open connections, and wait for their threads."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.shutdown()
        httpd.wake_connections()
        httpd.server_close()
        thread.join()
        self._httpd = self._thread = None
