"""Detached CMS signatures of MUD files (RFC 8520 section 13), checked and made with ``openssl cms``.

A MUD file is published with a DER-encoded CMS SignedData whose content is the file's exact bytes,
not embedded (detached; RFC 5652 section 5). :func:`verify_mud_signature` runs the real
``openssl cms -verify`` against a trust store built only from the certificates it is given: the
system's CA directory and store are switched off (``-no-CApath -no-CAstore``), since with only
``-CAfile`` OpenSSL would also trust every public CA in ``/etc/ssl/certs``. The validity check is
made at the caller's ``now`` (``-attime``), and the signer's subject can be pinned to the
``mud-signer`` value of the device's certificate (RFC 8520 section 11). Everything that goes wrong
is :class:`MudSignatureInvalid` with a specific message; nothing fails open.

OpenSSL runs without a shell, with a timeout and a minimal environment, on files in a private
temporary directory (mode 0700, files 0600). Its error output is summarised, never passed on whole.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from fleetguard.segment.errors import MudSignatureInvalid, MudTooLarge, SegmentError
from fleetguard.segment.mud import MAX_MUD_BYTES

__all__ = ["MAX_SIGNATURE_BYTES", "MAX_TRUSTED_CERTIFICATES", "sign_mud", "verify_mud_signature"]

MAX_SIGNATURE_BYTES = 64 * 1024
"""A detached signature holds the signer's chain and a few attributes; a few KiB in practice."""
MAX_TRUSTED_CERTIFICATES = 256
"""Trust anchors for MUD signers: the manufacturers an operator accepts."""
_MAX_STDERR = 300  # characters of OpenSSL's error output quoted in a message
_TIMEOUT_S = 20.0
_OPENSSL = "/usr/bin/openssl"
_HINT = "nothing was applied; fetch the MUD file and its signature again, or check the trusted signers"
_ENVIRONMENT = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}

# OpenSSL's X509 verify messages (X509_verify_cert_error_string) that mean the signer is out of date.
_EXPIRED = ("certificate has expired", "certificate is not yet valid")
# ... and those that mean no path to a trusted certificate exists.
_UNTRUSTED = (
    "unable to get local issuer certificate",
    "unable to get issuer certificate",
    "self-signed certificate",
    "self signed certificate",
    "unable to verify the first certificate",
    "certificate signature failure",
    "invalid ca certificate",
)
# CMS_R_* reasons when the signature does not cover these bytes.
_MODIFIED = ("content verify error", "digest failure", "verification failure", "signature failure")


def verify_mud_signature(
    mud: bytes,
    signature: bytes,
    trusted: Sequence[x509.Certificate] | bytes,
    *,
    signer_subject: str | None = None,
    now: dt.datetime,
    openssl: str = _OPENSSL,
) -> x509.Certificate:
    """Check that ``signature`` is a valid detached CMS signature of ``mud`` by a trusted signer.

    ``trusted`` is the trust anchors (certificates, or a PEM bundle); ``signer_subject``, when
    given, is the RFC 4514 subject the signer must have (RFC 8520 section 11 ``mud-signer``).
    Returns the signer's certificate. Raises :class:`MudTooLarge` when the file or the signature is
    over its limit and :class:`MudSignatureInvalid` for a malformed signature, modified content,
    an untrusted, expired or unexpected signer, or an OpenSSL that cannot be run.
    """
    _require_aware(now)
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise MudTooLarge(f"MUD signature is {len(signature)} bytes, over the limit of {MAX_SIGNATURE_BYTES}")
    if len(mud) > MAX_MUD_BYTES:
        raise MudTooLarge(f"MUD file is {len(mud)} bytes, over the limit of {MAX_MUD_BYTES}")
    if not signature:
        raise _invalid("the MUD signature is empty")
    anchors = _trust_anchors(trusted)
    with tempfile.TemporaryDirectory(prefix="fleetguard-mud-") as work:
        files = {
            name: Path(work, name) for name in ("mud", "signature.der", "trusted.pem", "signer.pem", "out")
        }
        _write_private(files["mud"], mud)
        _write_private(files["signature.der"], signature)
        _write_private(files["trusted.pem"], b"".join(_pem(c) for c in anchors))
        parsed = _openssl(
            openssl, ["cms", "-cmsout", "-noout", "-inform", "DER", "-in", files["signature.der"]]
        )
        if parsed.returncode != 0:
            raise _invalid(f"the MUD signature is not a DER CMS structure: {_summary(parsed)}")
        verified = _openssl(openssl, _verify_argv(files, now))
        if verified.returncode != 0:
            raise _verify_failure(verified, now)
        signer = _signer(files["signer.pem"])
    _check_signer(signer, signer_subject, now)
    return signer


def sign_mud(
    mud: bytes,
    key: PrivateKeyTypes | str | os.PathLike[str],
    certificate: x509.Certificate,
    *,
    chain: Sequence[x509.Certificate] = (),
    openssl: str = _OPENSSL,
) -> bytes:
    """Sign ``mud`` as RFC 8520 section 13 asks: a detached DER CMS SignedData (SHA-256).

    ``key`` is the signer's private key, or the path of its unencrypted PEM file; ``chain`` adds
    intermediate certificates. Returns the DER signature. Raises :class:`MudTooLarge` for a file
    over ``MAX_MUD_BYTES`` and :class:`SegmentError` when OpenSSL refuses (e.g. a key that does
    not match the certificate).
    """
    if len(mud) > MAX_MUD_BYTES:
        raise MudTooLarge(f"MUD file is {len(mud)} bytes, over the limit of {MAX_MUD_BYTES}")
    with tempfile.TemporaryDirectory(prefix="fleetguard-mud-") as work:
        content, signer, out = Path(work, "mud"), Path(work, "signer.pem"), Path(work, "signature.der")
        _write_private(content, mud)
        _write_private(signer, _pem(certificate))
        key_file = Path(key) if isinstance(key, str | os.PathLike) else Path(work, "key.pem")
        if not isinstance(key, str | os.PathLike):
            _write_private(key_file, _key_pem(key))
        argv: list[str | Path] = [
            "cms",
            "-sign",
            "-binary",
            "-outform",
            "DER",
            "-md",
            "sha256",
            "-in",
            content,
        ]
        argv += ["-signer", signer, "-inkey", key_file, "-out", out]
        if chain:
            certfile = Path(work, "chain.pem")
            _write_private(certfile, b"".join(_pem(c) for c in chain))
            argv += ["-certfile", certfile]
        completed = _openssl(openssl, argv)
        if completed.returncode != 0:
            raise SegmentError(f"openssl cms -sign failed: {_summary(completed)}")
        return out.read_bytes()


def _invalid(message: str) -> MudSignatureInvalid:
    return MudSignatureInvalid(message, hint=_HINT)


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _trust_anchors(trusted: Sequence[x509.Certificate] | bytes) -> list[x509.Certificate]:
    """The trust anchors as certificates; an empty set is an error, not "trust nothing in particular"."""
    if isinstance(trusted, bytes):
        try:
            anchors = x509.load_pem_x509_certificates(trusted)
        except ValueError as exc:
            raise _invalid(f"the trusted certificates are not a PEM bundle: {exc}") from exc
    else:
        anchors = list(trusted)
    if not anchors:
        raise _invalid("no trusted certificates were given for MUD signers")
    if len(anchors) > MAX_TRUSTED_CERTIFICATES:
        raise MudTooLarge(
            f"{len(anchors)} trusted certificates, over the limit of {MAX_TRUSTED_CERTIFICATES}"
        )
    return anchors


def _verify_argv(files: dict[str, Path], now: dt.datetime) -> list[str | Path]:
    return [
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        files["signature.der"],
        "-content",
        files["mud"],
        "-CAfile",
        files["trusted.pem"],
        "-no-CApath",  # only the given anchors: see the module docstring
        "-no-CAstore",
        "-purpose",
        "any",
        "-attime",
        str(int(now.timestamp())),
        "-signer",
        files["signer.pem"],
        "-out",
        files["out"],
    ]


def _verify_failure(completed: subprocess.CompletedProcess[bytes], now: dt.datetime) -> MudSignatureInvalid:
    stderr = completed.stderr.decode(errors="replace").lower()
    summary = _summary(completed)
    if any(reason in stderr for reason in _EXPIRED):
        return _invalid(
            f"the MUD signer's certificate is expired or not yet valid at {now.isoformat()}: {summary}"
        )
    if any(reason in stderr for reason in _UNTRUSTED):
        return _invalid(f"the MUD signer is not trusted (no chain to a trusted certificate): {summary}")
    if any(reason in stderr for reason in _MODIFIED):
        return _invalid(f"the MUD file does not match its signature (modified?): {summary}")
    return _invalid(f"the MUD signature does not verify: {summary}")


def _signer(path: Path) -> x509.Certificate:
    try:
        signers = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise _invalid("openssl verified the signature but wrote no signer certificate") from exc
    if len(signers) != 1:
        raise _invalid(f"the MUD signature has {len(signers)} signers; exactly one is expected")
    return signers[0]


def _check_signer(signer: x509.Certificate, subject: str | None, now: dt.datetime) -> None:
    # OpenSSL checked the validity at -attime; checking again here keeps the rule in one readable place.
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        raise _invalid(f"the MUD signer's certificate is expired or not yet valid at {now.isoformat()}")
    actual = signer.subject.rfc4514_string()
    if subject is not None and actual != subject:
        raise _invalid(f"the MUD signer's subject is {actual!r}, not the expected {subject!r}")


def _openssl(openssl: str, argv: Sequence[str | Path]) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(  # noqa: S603 - fixed argv, no shell
            [openssl, *map(str, argv)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_ENVIRONMENT,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _invalid(f"openssl did not finish within {_TIMEOUT_S:g} s") from exc
    except OSError as exc:
        raise _invalid(f"cannot run {openssl}: {exc.strerror}") from exc


def _summary(completed: subprocess.CompletedProcess[bytes]) -> str:
    """OpenSSL's error lines, joined and cut to ``_MAX_STDERR`` characters."""
    lines = [line.strip() for line in completed.stderr.decode(errors="replace").splitlines() if line.strip()]
    text = "; ".join(lines) or f"exit status {completed.returncode}"
    return text if len(text) <= _MAX_STDERR else f"{text[: _MAX_STDERR - 3]}..."


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
