"""How a secret appears in a finding: never in full.

A finding must let an operator recognise a secret (which Wi-Fi passphrase, which key) without
handing it to whoever reads the report. A secret is shown as a short prefix, its length and a
SHA-256 prefix; a key as the SHA-256 fingerprint of its public half.
"""

from __future__ import annotations

import hashlib

__all__ = ["fingerprint", "redact"]

_PREFIX_MIN_LENGTH = 8  # shorter secrets show no prefix: two characters of six are a third of it
_DIGEST_PREFIX = 12  # hex digits: enough to tell secrets apart, too few to look one up


def redact(secret: str | bytes) -> str:
    """Return ``secret`` as ``"ab… (12 chars, sha256:0123456789ab)"``: prefix, length, digest prefix.

    The prefix is the first two characters, or nothing for secrets shorter than eight.
    """
    raw = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
    text = raw.decode("utf-8", "replace")
    prefix = (
        "".join(c if c.isprintable() else "?" for c in text[:2]) if len(text) >= _PREFIX_MIN_LENGTH else ""
    )
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_PREFIX]
    shown = f"{prefix}…" if prefix else "…"
    return f"{shown} ({len(text)} chars, sha256:{digest})"


def fingerprint(data: bytes) -> str:
    """Return ``"sha256:<64 hex digits>"`` of ``data`` (for a key: its DER SubjectPublicKeyInfo)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
