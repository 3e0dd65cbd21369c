"""Versions of embedded components, and one total order over all the schemes firmware uses.

Embedded software is versioned every way there is: semver-ish (``1.31.1``), OpenSSL's letter
releases (``1.0.2k`` < ``1.0.2l`` < ``1.0.2za``), dropbear's years (``2019.78``), OpenSSH's portable
suffix (``7.4p1`` < ``7.4p2`` < ``7.5p1``), pre-releases (``2.9-rc1`` < ``2.9``), kernels
(``4.14.90``), u-boot's dates (``2019.07``). No one scheme's rules fit them all, so a version is read
as a sequence of *tokens* and compared token by token.

The order
---------
1. The text is lower-cased; a leading ``v`` before a digit is dropped; build metadata after ``+``
   (semver 2.0.0 section 10) is dropped.
2. The rest is cut into runs of ASCII digits (numbers) and ASCII letters (words); every other
   character only separates tokens (``1.0.2k`` and ``1-0-2-k`` are the same version).
3. Trailing zeros of the leading numeric run are dropped, so ``3.0`` == ``3.0.0`` and ``2019.07`` ==
   ``2019.7`` (numbers compare as integers).
4. Tokens compare by class first, then by value, and the key ends with an end marker::

       pre-release word  <  end  <  other word  <  number

   Pre-release words are, in this order, ``dev`` < ``alpha`` < ``beta`` < ``pre``/``preview`` <
   ``rc``: ``2.9-rc1`` sorts before ``2.9`` because ``rc`` meets the end marker. Any other word is a
   *post*-release suffix: ``1.0.2`` < ``1.0.2a`` (OpenSSL) and ``7.4`` < ``7.4p1`` (OpenSSH). Words compare as
   strings, which gives OpenSSL's ``z`` < ``za`` < ``zb``. A number beats a word at the same place
   (``1.0.2z`` < ``1.0.2.1``), as in RPM's rpmvercmp.

Keys are tuples of ``(class, number, word)`` triples, so the order is Python's lexicographic tuple
order: total, antisymmetric and transitive on keys by construction. Two texts with the same key
(``v1.0`` and ``1.0.0``) are the same version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeAlias

from fleetguard.errors import InvalidInput
from fleetguard.firmware.errors import FirmwareError

__all__ = ["MAX_VERSION_LENGTH", "Version", "VersionInvalid", "parse_version"]

MAX_VERSION_LENGTH = 128
"""Longer version strings are refused: none of the schemes above needs more."""

# Pre-release words in release order (PEP 440 puts dev before alpha; "pre" is used like "rc").
_PRE_RELEASE = {"dev": 0, "alpha": 1, "beta": 2, "pre": 3, "preview": 3, "rc": 4}
_TOKEN = re.compile(r"[0-9]+|[a-z]+")
_CLASS_PRE, _CLASS_END, _CLASS_WORD, _CLASS_NUMBER = 0, 1, 2, 3

_Token: TypeAlias = tuple[int, int, str]
_END: _Token = (_CLASS_END, 0, "")


class VersionInvalid(InvalidInput, FirmwareError):
    """A version string is empty, too long, or has no digit or letter in it."""

    code = "firmware-version-invalid"


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A parsed version; ordered and hashed by its key only (``1.0`` == ``1.0.0``)."""

    key: tuple[_Token, ...] = field(repr=False)
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> Version:
    """Return the :class:`Version` of ``text``; raise :class:`VersionInvalid` if it has none."""
    if len(text) > MAX_VERSION_LENGTH:
        raise VersionInvalid(f"version is longer than {MAX_VERSION_LENGTH} characters: {text[:32]!r}...")
    body = text.strip().lower().split("+", 1)[0]
    if body.startswith("v") and body[1:2].isdigit():
        body = body[1:]
    tokens = [_token(raw) for raw in _TOKEN.findall(body)]
    if not tokens:
        raise VersionInvalid(f"not a version: {text!r}")
    return Version(key=(*_drop_release_zeros(tokens), _END), text=text.strip())


def _token(raw: str) -> _Token:
    if raw.isdigit():
        return (_CLASS_NUMBER, int(raw), "")
    if raw in _PRE_RELEASE:
        return (_CLASS_PRE, _PRE_RELEASE[raw], raw)
    return (_CLASS_WORD, 0, raw)


def _drop_release_zeros(tokens: list[_Token]) -> list[_Token]:
    """Drop trailing zeros of the leading run of numbers, keeping at least one number."""
    run = 0
    while run < len(tokens) and tokens[run][0] == _CLASS_NUMBER:
        run += 1
    end = run
    while end > 1 and tokens[end - 1] == (_CLASS_NUMBER, 0, ""):
        end -= 1
    return tokens[:end] + tokens[run:]
