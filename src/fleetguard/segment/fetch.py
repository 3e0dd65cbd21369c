"""Fetching MUD files and their signatures from their URLs, as a MUD manager does (RFC 8520 section 1.3).

Only https is fetched (RFC 8520: MUD URLs use https), with the server certificate checked against
the system's CAs or a given bundle, redirects refused (a MUD file comes from its URL, or not at
all), a timeout, and a size limit enforced while reading. The signature is fetched from the
profile's own ``mud-signature`` URL.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetguard.segment.errors import MudTooLarge, SegmentError
from fleetguard.segment.mud import MAX_MUD_BYTES, parse_mud
from fleetguard.segment.signature import MAX_SIGNATURE_BYTES

__all__ = ["FetchedProfile", "Fetcher", "HttpsFetcher", "fetch_profile"]

_CHUNK = 64 * 1024


class Fetcher(Protocol):
    """Gets the bytes at an https URL, at most ``limit`` of them."""

    def get(self, url: str, *, limit: int) -> bytes:
        """Return the body; raise :class:`SegmentError` (or ``MudTooLarge``) when it cannot."""


@dataclass(frozen=True, slots=True)
class FetchedProfile:
    """A MUD file and, when it names one, its detached signature."""

    document: bytes
    signature: bytes | None


@dataclass(frozen=True, slots=True)
class HttpsFetcher:
    """urllib over TLS; ``ca_file`` replaces the system's CAs (a private MUD server)."""

    ca_file: Path | None = None
    timeout_s: float = 10.0

    def get(self, url: str, *, limit: int) -> bytes:
        """Fetch ``url`` (https only, no redirects) and return at most ``limit`` bytes."""
        if not url.startswith("https://"):
            raise SegmentError(f"refusing to fetch {url[:200]!r}: MUD files are fetched over https only")
        context = ssl.create_default_context(cafile=None if self.ca_file is None else str(self.ca_file))
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirects())
        request = urllib.request.Request(url, headers={"Accept": "application/mud+json, application/json"})  # noqa: S310 - https checked above
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                return _read_bounded(response, url, limit)
        except urllib.error.HTTPError as exc:
            raise SegmentError(f"{url[:200]}: HTTP {exc.code}", hint="check the MUD URL") from exc
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            raise SegmentError(
                f"{url[:200]}: {exc}", hint="check the MUD server and its certificate"
            ) from exc


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


class _Readable(Protocol):
    def read(self, size: int) -> bytes: ...


def _read_bounded(response: _Readable, url: str, limit: int) -> bytes:
    body = bytearray()
    while chunk := response.read(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise MudTooLarge(f"{url[:200]}: more than {limit} bytes; refused")
    return bytes(body)


def fetch_profile(url: str, fetcher: Fetcher) -> FetchedProfile:
    """Fetch the MUD file at ``url`` and its signature; the file must name ``url`` as its MUD URL.

    Raises ``MudInvalid``/``MudTooLarge`` for a bad file, :class:`SegmentError` when the file names
    another URL (RFC 8520 section 3.3: the mud-url is the file's own) or a fetch fails.
    """
    document = fetcher.get(url, limit=MAX_MUD_BYTES)
    profile = parse_mud(document)
    if profile.url != url:
        raise SegmentError(f"the MUD file at {url[:200]!r} says its URL is {profile.url[:200]!r}; refused")
    signature = None
    if profile.signature_url:
        signature = fetcher.get(profile.signature_url, limit=MAX_SIGNATURE_BYTES)
    return FetchedProfile(document, signature)
