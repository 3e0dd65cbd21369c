"""crypt(3) password hashes in pure Python: traditional DES, MD5-crypt, SHA-256/512-crypt.

Python's ``crypt`` module is deprecated (PEP 594) and gone in 3.13, and it only knows what the
host's libc knows; the analyzer must verify the hashes a firmware image carries on any host. The
three schemes here are the ones embedded Linux ships (BusyBox, uClibc, musl, glibc):

* traditional DES crypt (13 characters, 12-bit salt, 25 DES encryptions of zero; Unix V7);
* MD5-crypt ``$1$`` (Poul-Henning Kamp, FreeBSD ``crypt-md5.c``, 1000 rounds);
* SHA-crypt ``$5$``/``$6$`` (Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", 2008).

:func:`parse_hash` classifies a hash field; :func:`verify_password` checks a candidate against a
parsed hash. Work is bounded by the caller through :attr:`CryptHash.rounds`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["CryptHash", "Scheme", "crypt_des", "crypt_md5", "crypt_sha", "parse_hash", "verify_password"]

_ALPHABET = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DECODE = {char: index for index, char in enumerate(_ALPHABET)}


class Scheme(enum.StrEnum):
    """A crypt(3) scheme, by its prefix."""

    DES = "des"
    MD5 = "md5-crypt"
    APR1 = "apr1"  # Apache's MD5-crypt with the magic "$apr1$" (htpasswd)
    SHA256 = "sha256-crypt"
    SHA512 = "sha512-crypt"
    BCRYPT = "bcrypt"  # $2a$/$2b$/$2y$: recognised, not verified
    YESCRYPT = "yescrypt"  # $y$: recognised, not verified
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CryptHash:
    """A parsed hash field: scheme, salt, rounds (the work one verification costs) and the hash."""

    scheme: Scheme
    salt: bytes
    rounds: int
    text: str

    @property
    def verifiable(self) -> bool:
        """True for the schemes :func:`verify_password` implements."""
        return self.scheme in {Scheme.DES, Scheme.MD5, Scheme.APR1, Scheme.SHA256, Scheme.SHA512}


_DES_RE = re.compile(r"[./0-9A-Za-z]{13}")
_MD5_RE = re.compile(r"\$(1|apr1)\$([^$]{0,8})\$[./0-9A-Za-z]{22}")
_SHA_RE = re.compile(r"\$([56])\$(?:rounds=([0-9]{1,10})\$)?([^$]{0,16})\$[./0-9A-Za-z]{43,86}")
_SHA_DEFAULT_ROUNDS = 5000  # Drepper: default, minimum 1000, maximum 999,999,999
_SHA_MIN_ROUNDS = 1000
_SHA_MAX_ROUNDS = 999_999_999


def parse_hash(field: str) -> CryptHash:
    """Return the scheme, salt and rounds of a hash field (``UNKNOWN`` when none matches)."""
    if _DES_RE.fullmatch(field):
        return CryptHash(Scheme.DES, field[:2].encode(), 25, field)
    if match := _MD5_RE.fullmatch(field):
        scheme = Scheme.MD5 if match.group(1) == "1" else Scheme.APR1
        return CryptHash(scheme, match.group(2).encode(), 1000, field)
    if match := _SHA_RE.fullmatch(field):
        scheme = Scheme.SHA256 if match.group(1) == "5" else Scheme.SHA512
        rounds = _SHA_DEFAULT_ROUNDS
        if match.group(2) is not None:
            rounds = min(max(int(match.group(2)), _SHA_MIN_ROUNDS), _SHA_MAX_ROUNDS)
        return CryptHash(scheme, match.group(3).encode(), rounds, field)
    if re.fullmatch(r"\$2[abxy]?\$[0-9]{2}\$.{53}", field):
        return CryptHash(Scheme.BCRYPT, b"", 1 << int(field.split("$")[2]), field)
    if field.startswith("$y$"):
        return CryptHash(Scheme.YESCRYPT, b"", 0, field)
    return CryptHash(Scheme.UNKNOWN, b"", 0, field)


def verify_password(password: bytes, parsed: CryptHash) -> bool:
    """True when ``password`` hashes to ``parsed`` (False for schemes not implemented)."""
    if parsed.scheme is Scheme.DES:
        computed = crypt_des(password, parsed.salt)
    elif parsed.scheme in (Scheme.MD5, Scheme.APR1):
        computed = crypt_md5(password, parsed.salt, apache=parsed.scheme is Scheme.APR1)
    elif parsed.scheme in (Scheme.SHA256, Scheme.SHA512):
        explicit = "$rounds=" in parsed.text
        computed = crypt_sha(password, parsed.salt, parsed.scheme, parsed.rounds if explicit else None)
    else:
        return False
    return hmac.compare_digest(computed.encode(), parsed.text.encode())


def _encode(data: bytes, groups: Sequence[tuple[int, ...]]) -> bytes:
    """The crypt base-64 of ``data`` taken in ``groups`` of byte indexes, low 6 bits first."""
    out = bytearray()
    for group in groups:
        value = 0
        for index in group:
            value = (value << 8) | data[index]
        for _ in range(len(group) + 1):
            out.append(_ALPHABET[value & 0x3F])
            value >>= 6
    return bytes(out)


# MD5-crypt ---------------------------------------------------------------------------------------

_MD5_GROUPS = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5), (11,))


def crypt_md5(password: bytes, salt: bytes, *, apache: bool = False) -> str:
    """Return ``$1$salt$hash`` (FreeBSD crypt-md5.c; salt truncated to 8 bytes); ``$apr1$`` if apache.

    MD5 here reproduces a hash scheme to test known passwords; it protects nothing.
    """
    magic = b"$apr1$" if apache else b"$1$"
    salt = salt[:8]
    alternate = hashlib.md5(password + salt + password, usedforsecurity=False).digest()
    context = password + magic + salt
    for remaining in range(len(password), 0, -16):
        context += alternate[: min(16, remaining)]
    length = len(password)
    while length:
        context += b"\0" if length & 1 else password[:1]
        length >>= 1
    final = hashlib.md5(context, usedforsecurity=False).digest()
    for index in range(1000):
        block = password if index & 1 else final
        if index % 3:
            block += salt
        if index % 7:
            block += password
        block += final if index & 1 else password
        final = hashlib.md5(block, usedforsecurity=False).digest()
    return magic.decode() + salt.decode("latin-1") + "$" + _encode(final, _MD5_GROUPS).decode()


# SHA-crypt ---------------------------------------------------------------------------------------

_SHA256_GROUPS = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29), (31, 30),
)  # fmt: skip
_SHA512_GROUPS = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
    (62, 20, 41), (63,),
)  # fmt: skip


def _repeat(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def crypt_sha(password: bytes, salt: bytes, scheme: Scheme, rounds: int | None = None) -> str:
    """Return ``$5$``/``$6$`` SHA-crypt (Drepper's specification, steps 1-22).

    ``rounds`` None is the default 5000 and leaves ``rounds=`` out of the result, as crypt does.
    """
    new: Callable[[bytes], hashlib._Hash] = hashlib.sha256 if scheme is Scheme.SHA256 else hashlib.sha512
    prefix = "$5$" if scheme is Scheme.SHA256 else "$6$"
    salt = salt[:16]
    count = _SHA_DEFAULT_ROUNDS if rounds is None else min(max(rounds, _SHA_MIN_ROUNDS), _SHA_MAX_ROUNDS)
    size = new(b"").digest_size
    digest_b = new(password + salt + password).digest()  # steps 4-8
    context_a = password + salt + _repeat(digest_b, len(password))  # steps 1-3, 9-10
    length = len(password)
    while length:  # step 11
        context_a += digest_b if length & 1 else password
        length >>= 1
    digest_a = new(context_a).digest()  # step 12
    p_bytes = _repeat(new(password * len(password)).digest(), len(password))  # steps 13-16
    s_bytes = _repeat(new(salt * (16 + digest_a[0])).digest(), len(salt))  # steps 17-20
    current = digest_a
    for index in range(count):  # step 21
        block = p_bytes if index & 1 else current
        if index % 3:
            block += s_bytes
        if index % 7:
            block += p_bytes
        block += current if index & 1 else p_bytes
        current = new(block).digest()
    groups = _SHA256_GROUPS if size == 32 else _SHA512_GROUPS
    rounds_text = "" if rounds is None else f"rounds={count}$"
    return prefix + rounds_text + salt.decode("latin-1") + "$" + _encode(current, groups).decode()


# Traditional DES crypt ---------------------------------------------------------------------------
# FIPS 46-3 tables; bit 1 is the most significant.

_PC1 = (
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3,
    60, 52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37,
    29, 21, 13, 5, 28, 20, 12, 4,
)  # fmt: skip
_PC2 = (
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2,
    41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
)  # fmt: skip
_SHIFTS = (1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1)
_P = (
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
    2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25,
)  # fmt: skip
_FP = (
    40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31,
    38, 6, 46, 14, 54, 22, 62, 30, 37, 5, 45, 13, 53, 21, 61, 29,
    36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27,
    34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25,
)  # fmt: skip
_SBOXES = (
    "14 4 13 1 2 15 11 8 3 10 6 12 5 9 0 7 0 15 7 4 14 2 13 1 10 6 12 11 9 5 3 8 "
    "4 1 14 8 13 6 2 11 15 12 9 7 3 10 5 0 15 12 8 2 4 9 1 7 5 11 3 14 10 0 6 13",
    "15 1 8 14 6 11 3 4 9 7 2 13 12 0 5 10 3 13 4 7 15 2 8 14 12 0 1 10 6 9 11 5 "
    "0 14 7 11 10 4 13 1 5 8 12 6 9 3 2 15 13 8 10 1 3 15 4 2 11 6 7 12 0 5 14 9",
    "10 0 9 14 6 3 15 5 1 13 12 7 11 4 2 8 13 7 0 9 3 4 6 10 2 8 5 14 12 11 15 1 "
    "13 6 4 9 8 15 3 0 11 1 2 12 5 10 14 7 1 10 13 0 6 9 8 7 4 15 14 3 11 5 2 12",
    "7 13 14 3 0 6 9 10 1 2 8 5 11 12 4 15 13 8 11 5 6 15 0 3 4 7 2 12 1 10 14 9 "
    "10 6 9 0 12 11 7 13 15 1 3 14 5 2 8 4 3 15 0 6 10 1 13 8 9 4 5 11 12 7 2 14",
    "2 12 4 1 7 10 11 6 8 5 3 15 13 0 14 9 14 11 2 12 4 7 13 1 5 0 15 10 3 9 8 6 "
    "4 2 1 11 10 13 7 8 15 9 12 5 6 3 0 14 11 8 12 7 1 14 2 13 6 15 0 9 10 4 5 3",
    "12 1 10 15 9 2 6 8 0 13 3 4 14 7 5 11 10 15 4 2 7 12 9 5 6 1 13 14 0 11 3 8 "
    "9 14 15 5 2 8 12 3 7 0 4 10 1 13 11 6 4 3 2 12 9 5 15 10 11 14 1 7 6 0 8 13",
    "4 11 2 14 15 0 8 13 3 12 9 7 5 10 6 1 13 0 11 7 4 9 1 10 14 3 5 12 2 15 8 6 "
    "1 4 11 13 12 3 7 14 10 15 6 8 0 5 9 2 6 11 13 8 1 4 10 7 9 5 0 15 14 2 3 12",
    "13 2 8 4 6 15 11 1 10 9 3 14 5 0 12 7 1 15 13 8 10 3 7 4 12 5 6 11 0 14 9 2 "
    "7 11 4 1 9 12 14 2 0 6 10 13 15 3 5 8 2 1 14 7 4 10 8 13 15 12 9 0 3 5 6 11",
)


def _permute(value: int, table: Sequence[int], width: int) -> int:
    out = 0
    for position in table:
        out = (out << 1) | ((value >> (width - position)) & 1)
    return out


def _sp_tables() -> tuple[tuple[int, ...], ...]:
    """S-box i then P, for each 6-bit input: one lookup per S-box in the round function."""
    tables = []
    for box_index, text in enumerate(_SBOXES):
        box = [int(number) for number in text.split()]
        row = []
        for value in range(64):
            sbox_out = box[(((value >> 4) & 2) | (value & 1)) * 16 + ((value >> 1) & 15)]
            row.append(_permute(sbox_out << (28 - 4 * box_index), _P, 32))
        tables.append(tuple(row))
    return tuple(tables)


_SP = _sp_tables()


def _des_subkeys(key: int) -> list[tuple[int, int]]:
    """The 16 round keys, each as its two 24-bit halves (FIPS 46-3 key schedule)."""
    halves = _permute(key, _PC1, 64)
    left, right = halves >> 28, halves & 0xFFFFFFF
    subkeys = []
    for shift in _SHIFTS:
        left = ((left << shift) | (left >> (28 - shift))) & 0xFFFFFFF
        right = ((right << shift) | (right >> (28 - shift))) & 0xFFFFFFF
        subkey = _permute((left << 28) | right, _PC2, 56)
        subkeys.append((subkey >> 24, subkey & 0xFFFFFF))
    return subkeys


def crypt_des(password: bytes, salt: bytes) -> str:
    """Return the 13-character traditional crypt of ``password`` (first 8 bytes) with a 2-char salt.

    The salt's 12 bits swap E-expansion bits i and i+24 (i < 12); the block of zeros is encrypted
    25 times and the 64 bits (plus two zero bits) are written as 11 characters.
    """
    salt_value = _DECODE.get(salt[0], 0) | (_DECODE.get(salt[1], 0) << 6)
    salt_bits = 0
    for bit in range(12):
        if salt_value & (1 << bit):
            salt_bits |= 1 << (23 - bit)
    key = int.from_bytes((password[:8] + b"\0" * 8)[:8], "big")
    key = int.from_bytes(bytes(((byte << 1) & 0xFF) for byte in key.to_bytes(8, "big")), "big")
    subkeys = _des_subkeys(key)
    sp0, sp1, sp2, sp3, sp4, sp5, sp6, sp7 = _SP
    left = right = 0
    for _ in range(25):
        for key_left, key_right in subkeys:
            # E expansion as eight 6-bit chunks of the 32-bit half (chunk i: bits 4i .. 4i+5).
            e_left = (
                ((((right & 1) << 5) | (right >> 27)) << 18)
                | (((right >> 23) & 0x3F) << 12)
                | (((right >> 19) & 0x3F) << 6)
                | ((right >> 15) & 0x3F)
            )
            e_right = (
                (((right >> 11) & 0x3F) << 18)
                | (((right >> 7) & 0x3F) << 12)
                | (((right >> 3) & 0x3F) << 6)
                | (((right & 0x1F) << 1) | (right >> 31))
            )
            swap = (e_left ^ e_right) & salt_bits
            e_left ^= swap ^ key_left
            e_right ^= swap ^ key_right
            left, right = (
                right,
                left
                ^ (
                    sp0[e_left >> 18]
                    | sp1[(e_left >> 12) & 0x3F]
                    | sp2[(e_left >> 6) & 0x3F]
                    | sp3[e_left & 0x3F]
                    | sp4[e_right >> 18]
                    | sp5[(e_right >> 12) & 0x3F]
                    | sp6[(e_right >> 6) & 0x3F]
                    | sp7[e_right & 0x3F]
                ),
            )
        left, right = right, left
    block = _permute((left << 32) | right, _FP, 64) << 2
    encoded = bytes(_ALPHABET[(block >> (60 - 6 * index)) & 0x3F] for index in range(11))
    return salt[:2].decode("latin-1") + encoded.decode()
