"""The device side of EST (RFC 7030): ``cacerts``, ``simpleenroll``, ``simplereenroll``.

Each call sends one request through an :class:`~fleetguard.agent.transport.EstTransport` and turns
the reply into certificates or a specific error: 202 is :class:`EnrollmentPending` (RFC 7030 4.2.3,
with the server's Retry-After), 503 is :class:`EstServerBusy` (with Retry-After when sent), any other
non-200 is :class:`EstRequestFailed` with the server's one-line reason. A 200 must carry a base64
certs-only PKCS#7 (RFC 7030 4.1.3, 4.2.3) or the reply is refused.
"""

from __future__ import annotations

import base64

from cryptography import x509

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    EnrollmentPending,
    EstRequestFailed,
    EstServerBusy,
    EstServerUnreachable,
)
from fleetguard.agent.transport import EstReply, EstTransport, HttpsTransport, TlsKeyKind, TlsSettings
from fleetguard.agent.transport_child import ProviderTransport
from fleetguard.agent.transport_curl import CurlTransport
from fleetguard.enroll.est import EstMalformed, decode_certs_only, encode_pkcs10_body
from fleetguard.errors import FleetguardError

__all__ = ["EstClient", "parse_retry_after", "transport_for"]

_PKCS7 = "application/pkcs7-mime"
_PKCS10 = "application/pkcs10"
_MAX_REASON = 300
_MAX_RETRY_AFTER_S = 24 * 3600.0
_MAX_RETRY_AFTER_DIGITS = 6  # 999999 s is over the day the delay is capped at


def transport_for(settings: TlsSettings) -> EstTransport:
    """Return the transport that can use ``settings``' client key (see :mod:`fleetguard.agent.transport`)."""
    if settings.key is None:
        return HttpsTransport(settings)
    match settings.key.kind:
        case TlsKeyKind.FILE:
            return HttpsTransport(settings)
        case TlsKeyKind.PROVIDER:
            return ProviderTransport(settings)
        case TlsKeyKind.ENGINE:
            return CurlTransport(settings)


class EstClient:
    """EST operations over one transport."""

    def __init__(self, transport: EstTransport) -> None:
        self._transport = transport

    def cacerts(self) -> tuple[x509.Certificate, ...]:
        """Return the CA certificates the server distributes (RFC 7030 4.1)."""
        return self._certificates("cacerts", self._transport.request("GET", "cacerts", None, {}))

    def simpleenroll(
        self, csr_der: bytes, *, device_id: str | None = None, token: str | None = None
    ) -> x509.Certificate:
        """Enroll with ``csr_der``; with a one-time ``token`` for ``device_id`` (HTTP Basic, RFC 7030 3.2.3).

        Without a token the TLS client certificate (a factory certificate) authenticates.
        Returns the issued certificate; raises ``EnrollmentPending`` when queued for approval.
        """
        headers = {"Content-Type": _PKCS10}
        if token is not None:
            if device_id is None or ":" in device_id:
                raise AgentConfigInvalid("token enrollment needs a device id without ':' (RFC 7617 2)")
            credentials = base64.b64encode(f"{device_id}:{token}".encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        reply = self._transport.request("POST", "simpleenroll", encode_pkcs10_body(csr_der), headers)
        return self._issued("simpleenroll", reply)

    def simplereenroll(self, csr_der: bytes) -> x509.Certificate:
        """Renew the certificate the TLS client presents, for the key in ``csr_der`` (RFC 7030 4.2.2)."""
        reply = self._transport.request(
            "POST", "simplereenroll", encode_pkcs10_body(csr_der), {"Content-Type": _PKCS10}
        )
        return self._issued("simplereenroll", reply)

    def _issued(self, operation: str, reply: EstReply) -> x509.Certificate:
        if reply.status == 202:
            retry_after = parse_retry_after(reply.retry_after) or 60.0
            raise EnrollmentPending(_reason(reply) or "pending approval", retry_after_s=retry_after)
        certificates = self._certificates(operation, reply)
        if len(certificates) != 1:
            raise EstServerUnreachable(f"{operation} answered {len(certificates)} certificates, expected one")
        return certificates[0]

    def _certificates(self, operation: str, reply: EstReply) -> tuple[x509.Certificate, ...]:
        if reply.status == 503:
            raise EstServerBusy(
                f"EST {operation}: the server is busy ({_reason(reply) or 'no reason given'})",
                retry_after_s=parse_retry_after(reply.retry_after),
            )
        if reply.status != 200:
            raise EstRequestFailed(operation, reply.status, _reason(reply) or "no reason given")
        media_type = (reply.content_type or "").split(";")[0].strip().lower()
        if media_type != _PKCS7:
            raise EstServerUnreachable(
                f"EST {operation} answered {media_type or 'no media type'}, not {_PKCS7}"
            )
        try:
            return decode_certs_only(reply.body)
        except (EstMalformed, FleetguardError) as exc:
            raise EstServerUnreachable(f"EST {operation} answered a malformed PKCS#7: {exc}") from exc


def parse_retry_after(value: str | None) -> float | None:
    """Return Retry-After delay-seconds (RFC 9110 10.2.3), at most a day; ``None`` if absent or a date."""
    digits = "" if value is None else value.strip()
    # RFC 9110 10.2.3: 1*DIGIT, and RFC 5234's DIGIT is ASCII; str.isdigit() alone also takes "²" or "٣".
    if not (digits.isascii() and digits.isdigit()):
        return None  # an HTTP-date is legal, but the fleet's server sends seconds; back off instead
    digits = digits.lstrip("0") or "0"
    if len(digits) > _MAX_RETRY_AFTER_DIGITS:
        return _MAX_RETRY_AFTER_S  # and int() is not asked to parse thousands of digits
    return min(float(digits), _MAX_RETRY_AFTER_S)


def _reason(reply: EstReply) -> str:
    text = reply.body[: _MAX_REASON * 4].decode("utf-8", errors="replace").strip()
    first = text.splitlines()[0] if text else ""
    return "".join(character if character.isprintable() else "?" for character in first)[:_MAX_REASON]
