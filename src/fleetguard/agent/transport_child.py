"""EST over TLS in a child process whose OpenSSL loads a provider (the TPM's ``tpm2``).

OpenSSL reads ``OPENSSL_CONF`` once, when the process first uses it, so a provider for the client
key cannot be switched on inside the agent's running process (and should not be: the agent's other
cryptography must not go through the TPM). :class:`ProviderTransport` runs
``python -m fleetguard.agent.transport_child`` with the key's configuration and environment; the
child runs :class:`~fleetguard.agent.transport.HttpsTransport` and answers on stdout.

The exchange is one JSON object each way; bodies are base64. The child's answer is bounded, and a
child that fails, hangs or answers garbage is an ``EstServerUnreachable`` naming what happened.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from fleetguard.agent.errors import AgentError, EstServerUnreachable
from fleetguard.agent.transport import (
    MAX_REPLY_BYTES,
    EstReply,
    HttpsTransport,
    TlsClientKey,
    TlsKeyKind,
    TlsSettings,
)

__all__ = ["ProviderTransport"]

_MAX_CHILD_OUTPUT = 2 * MAX_REPLY_BYTES  # base64 and JSON framing of the largest reply
_STARTUP_ALLOWANCE_S = 15.0  # interpreter start and imports on a slow device


class ProviderTransport:
    """Runs each request in a child process configured for the client key's OpenSSL provider."""

    def __init__(self, settings: TlsSettings) -> None:
        if settings.key is None or settings.key.kind is not TlsKeyKind.PROVIDER:
            raise AgentError("ProviderTransport is for provider keys")
        self._settings = settings
        self._key = settings.key

    def request(
        self, method: str, operation: str, body: bytes | None, headers: Mapping[str, str]
    ) -> EstReply:
        """Send the request from a child process; return its reply."""
        message = {
            "settings": _settings_to_json(self._settings),
            "method": method,
            "operation": operation,
            "body": None if body is None else base64.b64encode(body).decode(),
            "headers": dict(headers),
        }
        environment = dict(os.environ)
        environment.update(self._key.environment)
        if self._key.openssl_conf is not None:
            environment["OPENSSL_CONF"] = str(self._key.openssl_conf)
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "fleetguard.agent.transport_child"],
                input=json.dumps(message).encode(),
                capture_output=True,
                env=environment,
                timeout=self._settings.timeout_s + _STARTUP_ALLOWANCE_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EstServerUnreachable("the TLS child process timed out") from exc
        return _reply_from(completed)


def _reply_from(completed: subprocess.CompletedProcess[bytes]) -> EstReply:
    if len(completed.stdout) > _MAX_CHILD_OUTPUT:
        raise EstServerUnreachable("the TLS child process answered too much")
    try:
        answer = json.loads(completed.stdout)
        if completed.returncode != 0 or "error" in answer:
            raise EstServerUnreachable(str(answer.get("error", "the TLS child process failed"))[:500])
        body = base64.b64decode(answer["body"], validate=True)
        headers = _optional_text(answer["content_type"]), _optional_text(answer["retry_after"])
        return EstReply(int(answer["status"]), *headers, body)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        detail = completed.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise EstServerUnreachable(f"the TLS child process failed: {detail[0][:300]}") from exc


def _optional_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"a header value is {type(value).__name__}, not a string")


def _settings_to_json(settings: TlsSettings) -> dict[str, object]:
    key = settings.key
    return {
        "server_url": settings.server_url,
        "trust_anchors": str(settings.trust_anchors),
        "certificate": None if settings.certificate is None else str(settings.certificate),
        "key": None if key is None else key.reference,
        "timeout_s": settings.timeout_s,
    }


def _settings_from_json(data: Mapping[str, object]) -> TlsSettings:
    certificate, key = data["certificate"], data["key"]
    return TlsSettings(
        server_url=str(data["server_url"]),
        trust_anchors=Path(str(data["trust_anchors"])),
        certificate=None if certificate is None else Path(str(certificate)),
        key=None if key is None else TlsClientKey(TlsKeyKind.FILE, str(key)),
        timeout_s=float(str(data["timeout_s"])),
    )


def _child_main() -> int:
    """Read one request on stdin, send it, print the reply; exit 0, or 1 with ``{"error": ...}``."""
    try:
        message = json.loads(sys.stdin.buffer.read(_MAX_CHILD_OUTPUT))
        body = message["body"]
        transport = HttpsTransport(_settings_from_json(message["settings"]))
        reply = transport.request(
            message["method"],
            message["operation"],
            None if body is None else base64.b64decode(body, validate=True),
            message["headers"],
        )
    except (AgentError, ValueError, KeyError, TypeError) as exc:
        json.dump({"error": str(exc)}, sys.stdout)
        return 1
    json.dump(
        {
            "status": reply.status,
            "content_type": reply.content_type,
            "retry_after": reply.retry_after,
            "body": base64.b64encode(reply.body).decode(),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
