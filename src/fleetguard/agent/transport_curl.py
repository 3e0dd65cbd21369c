"""EST over curl, for a TLS client key behind an OpenSSL engine (libp11's ``pkcs11`` engine).

Python's ``ssl`` reads client keys only from files; curl names an engine key directly
(``--engine pkcs11 --key-type ENG --key 'pkcs11:...'``). The engine's module path and PIN come from
the OpenSSL configuration file the key store wrote (mode 0600), never from the command line, which
other local users can read in ``/proc``.

Status and headers come back through ``--write-out`` and ``--dump-header``; the body through a file
bounded by ``--max-filesize``. A curl failure (exit code other than 0) is ``EstServerUnreachable``
with curl's own message.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from fleetguard.agent.errors import AgentError, EstServerUnreachable
from fleetguard.agent.transport import MAX_REPLY_BYTES, EstReply, TlsKeyKind, TlsSettings, est_path

__all__ = ["CurlTransport"]

_CURL = "/usr/bin/curl"
_MAX_HEADER_BYTES = 64 * 1024
_CURL_GRACE_S = 5.0  # beyond --max-time: curl's start and the engine's loading


class CurlTransport:
    """Runs curl once per request with the engine key."""

    def __init__(self, settings: TlsSettings, *, curl: str = _CURL) -> None:
        if settings.key is None or settings.key.kind is not TlsKeyKind.ENGINE or settings.certificate is None:
            raise AgentError("CurlTransport is for engine keys")
        self._settings = settings
        self._curl = curl

    def request(
        self, method: str, operation: str, body: bytes | None, headers: Mapping[str, str]
    ) -> EstReply:
        """Send the request with curl; return the reply."""
        with tempfile.TemporaryDirectory(prefix="fleetguard-agent-") as work:
            header_file, body_file = Path(work, "headers"), Path(work, "body")
            deadline_s = self._settings.timeout_s + _CURL_GRACE_S
            try:
                completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    self._argv(method, operation, headers, header_file, body_file, has_body=body is not None),
                    input=body or b"",
                    capture_output=True,
                    env=self._environment(),
                    timeout=deadline_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:  # e.g. an engine or token that never answers
                raise EstServerUnreachable(f"curl did not finish within {deadline_s:g} s") from exc
            except OSError as exc:  # curl missing or not executable
                raise AgentError(
                    f"cannot run {self._curl}: {exc.strerror}",
                    hint="a PKCS#11 key needs curl and libengine-pkcs11-openssl on the device",
                ) from exc
            if completed.returncode != 0:
                message = (
                    completed.stderr.decode(errors="replace").strip()[:300] or f"exit {completed.returncode}"
                )
                raise EstServerUnreachable(f"curl: {message}")
            status = int(completed.stdout.decode().strip() or "0")
            content_type, retry_after = _headers(header_file.read_bytes()[:_MAX_HEADER_BYTES])
            data = body_file.read_bytes() if body_file.exists() else b""
        return EstReply(status, content_type, retry_after, data)

    def _argv(
        self,
        method: str,
        operation: str,
        headers: Mapping[str, str],
        header_file: Path,
        body_file: Path,
        *,
        has_body: bool,
    ) -> list[str]:
        settings = self._settings
        assert settings.key is not None
        assert settings.certificate is not None
        argv = [
            self._curl, "--silent", "--show-error", "--proto", "=https",
            "--max-time", f"{settings.timeout_s:g}", "--max-filesize", str(MAX_REPLY_BYTES),
            "--cacert", str(settings.trust_anchors), "--cert", str(settings.certificate),
            "--engine", "pkcs11", "--key-type", "ENG", "--key", settings.key.reference,
            "--request", method, "--dump-header", str(header_file), "--output", str(body_file),
            "--write-out", "%{http_code}",
        ]  # fmt: skip
        for name, value in headers.items():
            argv += ["--header", f"{name}: {value}"]
        if has_body:
            argv += ["--data-binary", "@-"]
        argv.append(settings.server_url.rstrip("/") + est_path(operation))
        return argv

    def _environment(self) -> dict[str, str]:
        assert self._settings.key is not None
        environment = dict(os.environ)
        environment.update(self._settings.key.environment)
        if self._settings.key.openssl_conf is not None:
            environment["OPENSSL_CONF"] = str(self._settings.key.openssl_conf)
        return environment


def _headers(raw: bytes) -> tuple[str | None, str | None]:
    """Return Content-Type and Retry-After of the last response in ``raw`` (after any 100 Continue)."""
    content_type = retry_after = None
    for line in raw.decode("latin-1").splitlines():
        if line.startswith("HTTP/"):
            content_type = retry_after = None
        name, _, value = line.partition(":")
        match name.strip().lower():
            case "content-type":
                content_type = value.strip()
            case "retry-after":
                retry_after = value.strip()
            case _:
                pass
    return content_type, retry_after
