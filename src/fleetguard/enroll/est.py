"""Enrollment over Secure Transport (EST, RFC 7030 with RFC 8951's clarifications): the protocol, sans I/O.

Theory of operation. EST is four resources under ``/.well-known/est/`` (RFC 7030 3.2.2):

* ``GET cacerts`` (4.1): the CA certificates as a certs-only PKCS#7, base64;
* ``POST simpleenroll`` and ``POST simplereenroll`` (4.2): a PKCS#10 request in, base64 of its DER
  (``application/pkcs10``); the issued certificate out as a certs-only PKCS#7, base64
  (``application/pkcs7-mime; smime-type=certs-only``). A request that waits for an operator is
  answered 202 with ``Retry-After`` (4.2.3), and the client polls with the same request;
* ``GET csrattrs`` (4.5): the attributes the server wants in a CSR (``application/csrattrs``).

Every payload is base64 (RFC 4648 section 4) whatever ``Content-Transfer-Encoding`` says or whether it
is there at all (RFC 8951 3.1), and a receiver ignores line breaks and other white space in it. An error
is answered with a 4xx or 5xx status and a human-readable plain text body (RFC 7030 4.2.3); a 401 names
the Basic realm so that a client knows to send its enrollment token (RFC 7030 3.2.3, RFC 7617).

This module only turns bytes into values and values into bytes; ``fleetguard.enroll.est_server`` owns
the sockets. The client half (:func:`encode_pkcs10_body`, :func:`decode_certs_only`) is here too, so
that the agent and the tests speak exactly what the server parses.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# asn1crypto ships no type information; it only encodes two constant OIDs here.
from asn1crypto import core as asn1_core  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from fleetguard.errors import FleetguardError, LimitExceeded

__all__ = [
    "CSR_ATTRIBUTES_DER",
    "EST_PATH",
    "MAX_BODY_BYTES",
    "MAX_CSR_BYTES",
    "REALM",
    "BasicCredentials",
    "EstBodyTooLarge",
    "EstLengthRequired",
    "EstMalformed",
    "EstMethodNotAllowed",
    "EstNotFound",
    "EstOperation",
    "EstResponse",
    "EstUnsupportedMediaType",
    "cacerts_response",
    "csrattrs_response",
    "decode_base64_body",
    "decode_certs_only",
    "decode_pkcs10_body",
    "encode_certs_only",
    "encode_pkcs10_body",
    "error_response",
    "issued_response",
    "parse_basic_authorization",
    "parse_est_path",
    "pending_response",
]

EST_PATH = "/.well-known/est/"
"""RFC 7030 3.2.2: the well-known prefix of every EST resource (RFC 8615)."""

MAX_CSR_BYTES = 16 * 1024
"""Largest decoded PKCS#10 request; the same bound as ``fleetguard.pki.csr.MAX_CSR_BYTES``."""

MAX_BODY_BYTES = 32 * 1024
"""Largest request body read: base64 of ``MAX_CSR_BYTES`` (21,848 bytes) with generous line breaks."""

MAX_CERTS_ONLY_BYTES = 1024 * 1024
"""Largest certs-only response a client decodes (a chain of a few certificates is a few KiB)."""

MAX_AUTHORIZATION_CHARS = 4096
"""Longest ``Authorization`` header parsed: a device id and a token are far shorter."""

REALM = 'Basic realm="fleetguard EST", charset="UTF-8"'
"""The ``WWW-Authenticate`` challenge of a 401 (RFC 7617 2 and 2.1)."""

PKCS10 = "application/pkcs10"  # RFC 7030 4.2.1, RFC 5967
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"  # RFC 7030 4.1.3 and 4.2.3, RFC 5751
CSRATTRS = "application/csrattrs"  # RFC 7030 4.5.2
TEXT = "text/plain; charset=utf-8"  # RFC 7030 4.2.3: "a plaintext human-readable error message"

_WHITESPACE = b" \t\r\n\v\f"
_BASE64_LINE = 64  # RFC 7468 2 line length; any length is legal (RFC 8951 3.1)
_MAX_RETRY_AFTER_S = 86_400

# RFC 7030 4.5.2 CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID, where AttrOrOID is an OID or an
# Attribute { type, SET OF values }. What fleetguard asks for: an EC key on P-256 (the example of
# RFC 7030 4.5.2, with secp256r1 for secp384r1) and a signature with ecdsa-with-SHA256. It is a hint;
# the PKI also accepts P-384 and RSA >= 2048 (fleetguard.pki.csr). Nothing else is asked for, since
# the subject and SANs come from the inventory, never from the CSR.
_ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"  # RFC 5480 2.1.1
_SECP256R1 = "1.2.840.10045.3.1.7"  # RFC 5480 2.1.1.1
_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"  # RFC 5758 3.2


def _constructed(kind: type[asn1_core.Asn1Value], *parts: bytes) -> bytes:
    value = kind()
    value.contents = b"".join(parts)
    return bytes(value.dump())


def _oid(dotted: str) -> bytes:
    return bytes(asn1_core.ObjectIdentifier(dotted).dump())


CSR_ATTRIBUTES_DER = _constructed(
    asn1_core.Sequence,
    _constructed(asn1_core.Sequence, _oid(_ID_EC_PUBLIC_KEY), _constructed(asn1_core.Set, _oid(_SECP256R1))),
    _oid(_ECDSA_WITH_SHA256),
)
"""DER of the CsrAttrs that ``/csrattrs`` returns (RFC 7030 4.5.2)."""


# -- errors ---------------------------------------------------------------------------------------


class EstMalformed(FleetguardError):
    """The request cannot be read as EST: bad base64, a PEM body, a bad ``Authorization`` (400)."""

    status = 400
    code = "est-malformed"


class EstNotFound(FleetguardError):
    """The path names no EST resource of this server (404)."""

    status = 404
    code = "est-not-found"


class EstMethodNotAllowed(FleetguardError):
    """The resource exists but not for this method (405); ``allow`` is the method it takes."""

    status = 405
    code = "est-method-not-allowed"

    def __init__(self, method: str, allow: str) -> None:
        super().__init__(f"{method[:16]} is not allowed here", hint=f"use {allow}")
        self.allow = allow


class EstLengthRequired(FleetguardError):
    """A body without ``Content-Length`` (chunked): refused so that its size is known up front (411)."""

    status = 411
    code = "est-length-required"


class EstBodyTooLarge(LimitExceeded):
    """A body, or the request it decodes to, is over its bound (413)."""

    code = "est-body-too-large"


class EstUnsupportedMediaType(FleetguardError):
    """The body is not ``application/pkcs10`` (415)."""

    status = 415
    code = "est-unsupported-media-type"


# -- requests -------------------------------------------------------------------------------------


class EstOperation(enum.StrEnum):
    """The EST resources this server offers (RFC 7030 3.2.2, table "Operation Path")."""

    CACERTS = "cacerts"
    SIMPLEENROLL = "simpleenroll"
    SIMPLEREENROLL = "simplereenroll"
    CSRATTRS = "csrattrs"

    @property
    def method(self) -> str:
        """Return the one HTTP method the resource takes."""
        match self:
            case EstOperation.CACERTS | EstOperation.CSRATTRS:
                return "GET"
            case EstOperation.SIMPLEENROLL | EstOperation.SIMPLEREENROLL:
                return "POST"


def parse_est_path(path: str) -> EstOperation:
    """Return the operation that the request target ``path`` names (a query string is ignored).

    Raises :class:`EstNotFound` for anything else, including a CA label (RFC 7030 3.2.2 lets a
    server with several CAs offer ``/.well-known/est/<label>/<operation>``; this one has one).
    """
    target = path.split("?", 1)[0]
    if not target.startswith(EST_PATH):
        raise EstNotFound(f"{target[:80]!r} is not under {EST_PATH}")
    name = target.removeprefix(EST_PATH)
    try:
        return EstOperation(name)
    except ValueError:
        raise EstNotFound(
            f"no EST operation {name[:40]!r}", hint="use cacerts, simpleenroll, simplereenroll or csrattrs"
        ) from None


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """HTTP Basic credentials: EST's claimed device id and one-time enrollment token."""

    username: str
    password: str = field(repr=False)


def parse_basic_authorization(value: str | None) -> BasicCredentials | None:
    """Return the credentials of an ``Authorization: Basic`` header, or None when there is none.

    Raises :class:`EstMalformed` for another scheme, bad base64, text that is not UTF-8, no colon,
    an empty user id or password, or a header over ``MAX_AUTHORIZATION_CHARS`` (RFC 7617 2).
    """
    if value is None:
        return None
    if len(value) > MAX_AUTHORIZATION_CHARS:
        raise EstMalformed(f"Authorization header is over {MAX_AUTHORIZATION_CHARS} characters")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":  # RFC 9110 11.1: the scheme is case-insensitive
        raise EstMalformed(
            f"authentication scheme {scheme[:20]!r} is not supported", hint="use HTTP Basic (RFC 7617)"
        )
    try:
        text = binascii.a2b_base64(token.strip().encode("ascii"), strict_mode=True).decode("utf-8")
    except (UnicodeError, binascii.Error) as exc:
        raise EstMalformed("Basic credentials are not base64 of UTF-8 text") from exc
    username, colon, password = text.partition(":")  # RFC 7617 2: the user-id cannot contain a colon
    if not colon or not username or not password:
        raise EstMalformed("Basic credentials must be 'device-id:token', both non-empty")
    if not (username.isprintable() and password.isprintable()):
        raise EstMalformed("Basic credentials contain control characters")  # RFC 7617 2
    return BasicCredentials(username, password)


def decode_base64_body(body: bytes, *, max_decoded: int, what: str) -> bytes:
    """Return the bytes that the base64 ``body`` encodes, ignoring white space (RFC 8951 3.1).

    Raises :class:`EstBodyTooLarge` if ``body`` is over ``MAX_BODY_BYTES`` or would decode to more
    than ``max_decoded`` bytes (checked before decoding), :class:`EstMalformed` if it is empty, PEM,
    or not canonical base64 (characters outside the alphabet, bad padding, data after it).
    """
    if len(body) > MAX_BODY_BYTES:
        raise EstBodyTooLarge(f"{what} body is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}")
    compact = body.translate(None, _WHITESPACE)
    if len(compact) > 4 * math.ceil(max_decoded / 3):
        raise EstBodyTooLarge(f"{what} would decode to over {max_decoded} bytes")
    if not compact:
        raise EstMalformed(f"the {what} body is empty")
    if compact.startswith(b"-----BEGIN"):
        raise EstMalformed(f"the {what} body is PEM", hint="send base64 of the DER, without the PEM armor")
    try:
        decoded = binascii.a2b_base64(compact, strict_mode=True)
    except binascii.Error as exc:
        raise EstMalformed(f"the {what} body is not base64: {exc}", hint="see RFC 7030 4.2.1") from exc
    if len(decoded) > max_decoded:  # the check above is exact only to the last 3-byte quantum
        raise EstBodyTooLarge(f"{what} decodes to {len(decoded)} bytes, over {max_decoded} bytes")
    return decoded


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_pkcs10_body(body: bytes, content_type: str | None) -> bytes:
    """Return the DER PKCS#10 request of a ``simpleenroll``/``simplereenroll`` body (RFC 7030 4.2.1).

    Only the framing is checked here: the request itself (signature, key, size) is judged by
    ``fleetguard.pki.csr.validate_csr`` when the enrollment service uses it. Raises
    :class:`EstUnsupportedMediaType` unless the media type is ``application/pkcs10``, and as
    :func:`decode_base64_body`; a body that does not decode to a DER SEQUENCE is :class:`EstMalformed`.
    """
    media_type = _media_type(content_type)
    if media_type != PKCS10:
        raise EstUnsupportedMediaType(
            f"request body is {media_type[:60] or 'untyped'!r}, not {PKCS10}",
            hint="send the CSR as base64 DER with Content-Type: application/pkcs10",
        )
    der = decode_base64_body(body, max_decoded=MAX_CSR_BYTES, what="CSR")
    if der[0] != 0x30:  # X.690 8.9: a CertificationRequest is a SEQUENCE
        raise EstMalformed("the CSR body does not decode to a DER CertificationRequest")
    return der


def encode_pkcs10_body(der: bytes) -> bytes:
    """Return the body that carries the DER PKCS#10 request ``der`` (client side; RFC 7030 4.2.1)."""
    return _wrapped_base64(der)


def _wrapped_base64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + _BASE64_LINE] + b"\n" for i in range(0, len(text), _BASE64_LINE))


# -- responses ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EstResponse:
    """One answer: status, media type, body, and the headers EST gives a meaning to."""

    status: int
    content_type: str
    body: bytes
    retry_after_s: int | None = None
    authenticate: bool = False
    allow: str | None = None

    def headers(self) -> list[tuple[str, str]]:
        """Return the header fields to send, ``Content-Length`` included."""
        headers = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body)))]
        if self.content_type != TEXT:
            # RFC 7030 4.1.3 and 4.2.3 show it; RFC 8951 3.1 makes it informative only.
            headers.append(("Content-Transfer-Encoding", "base64"))
        if self.retry_after_s is not None:
            headers.append(("Retry-After", str(self.retry_after_s)))  # RFC 9110 10.2.3: delay-seconds
        if self.authenticate:
            headers.append(("WWW-Authenticate", REALM))
        if self.allow is not None:
            headers.append(("Allow", self.allow))  # RFC 9110 15.5.6: a 405 names what is allowed
        return headers


def encode_certs_only(certificates: Sequence[x509.Certificate]) -> bytes:
    """Return base64 of a DER certs-only PKCS#7 SignedData holding ``certificates`` (RFC 5272 4.1).

    The certificates are a DER ``SET OF`` (RFC 5652 5.1), so they come out sorted, not in the order
    given; EST clients build the chain themselves. Raises ``ValueError`` when there are none: EST
    never answers with an empty set.
    """
    if not certificates:
        raise ValueError("a certs-only response needs at least one certificate")
    return _wrapped_base64(pkcs7.serialize_certificates(list(certificates), serialization.Encoding.DER))


def decode_certs_only(body: bytes) -> tuple[x509.Certificate, ...]:
    """Return the certificates of a base64 certs-only PKCS#7 body (client side).

    Raises :class:`EstMalformed` if the body is not base64 of a PKCS#7 with at least one certificate,
    and :class:`EstBodyTooLarge` over ``MAX_CERTS_ONLY_BYTES``.
    """
    if len(body) > 2 * MAX_CERTS_ONLY_BYTES:
        raise EstBodyTooLarge(f"certs-only body is {len(body)} bytes, over {2 * MAX_CERTS_ONLY_BYTES}")
    compact = body.translate(None, _WHITESPACE)
    try:
        der = binascii.a2b_base64(compact, strict_mode=True)
        certificates = pkcs7.load_der_pkcs7_certificates(der)
    except (binascii.Error, ValueError) as exc:
        raise EstMalformed(f"not a base64 certs-only PKCS#7: {exc}") from exc
    if not certificates:
        raise EstMalformed("the certs-only PKCS#7 holds no certificate")
    return tuple(certificates)


def cacerts_response(certificates: Sequence[x509.Certificate]) -> EstResponse:
    """Return the ``/cacerts`` answer: every CA certificate a client should trust (RFC 7030 4.1.3)."""
    return EstResponse(200, CERTS_ONLY, encode_certs_only(certificates))


def csrattrs_response() -> EstResponse:
    """Return the ``/csrattrs`` answer (RFC 7030 4.5.2; base64 per RFC 8951 3.2)."""
    return EstResponse(200, CSRATTRS, _wrapped_base64(CSR_ATTRIBUTES_DER))


def issued_response(certificate_der: bytes) -> EstResponse:
    """Return the answer of a successful enrollment: only the issued certificate (RFC 7030 4.2.3)."""
    return EstResponse(200, CERTS_ONLY, encode_certs_only([x509.load_der_x509_certificate(certificate_der)]))


def pending_response(request_id: str, retry_after_s: float) -> EstResponse:
    """Return 202 with ``Retry-After``: the request waits for approval (RFC 7030 4.2.3)."""
    seconds = _retry_after(retry_after_s)
    text = f"enrollment request {request_id} is pending approval; send it again in {seconds} s\n"
    return EstResponse(202, TEXT, text.encode(), retry_after_s=seconds)


def error_response(error: FleetguardError) -> EstResponse:
    """Return the plain-text answer to ``error`` (RFC 7030 4.2.3), with the headers its status needs.

    A 422 (a CSR or value the service refuses as malformed) is answered 400, the status EST clients
    expect for a bad request; a 401 carries the Basic challenge; a 503 carries ``Retry-After`` when the
    error says when to retry (a throttled client). A 5xx other than 503 is a fault on this side: its
    message may name internals, so the client gets a generic one and the server logs the error.
    """
    status = 400 if error.status == 422 else error.status
    if status >= 500 and status != 503:
        return EstResponse(500, TEXT, b"internal error; the server has logged it\n")
    retry_after = None if error.retry_after_s is None else _retry_after(error.retry_after_s)
    return EstResponse(
        status,
        TEXT,
        f"{error}\n".encode(),
        retry_after_s=retry_after,
        authenticate=status == 401,
        allow=error.allow if isinstance(error, EstMethodNotAllowed) else None,
    )


def _retry_after(seconds: float) -> int:
    # RFC 9110 10.2.3: a non-negative integer of seconds; rounded up so a client never comes back early.
    if not math.isfinite(seconds):
        return _MAX_RETRY_AFTER_S
    return min(_MAX_RETRY_AFTER_S, max(1, math.ceil(seconds)))
