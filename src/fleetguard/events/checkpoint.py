"""Signed tree heads (checkpoints) of the event log, and the Ed25519 key that signs them.

The text format follows the spirit of the C2SP ``signed-note`` and ``tlog-checkpoint`` specs
(transparency-dev): a body of newline-terminated lines, a blank line, then a signature line that
starts with an em dash (U+2014). The body is what is signed::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <root hash, standard base64 with padding>\\n
    <timestamp, RFC 3339 UTC, microseconds, 'Z'>\\n
    \\n
    \\u2014 <key id> <signature, standard base64 with padding>\\n

The first three body lines are exactly a C2SP checkpoint; the timestamp takes the place of the first
extension line. Unlike C2SP, the signature line carries the raw 64-byte Ed25519 signature and a
16-hex-digit key id (see :func:`checkpoint_key_id`), and a note carries exactly one signature.

Parsing is strict: every field has one accepted spelling, so a note that parses re-serializes to
the same text, and anything else raises :class:`~fleetguard.events.errors.CheckpointError`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetguard.events.errors import CheckpointError
from fleetguard.private_file import PrivateFileWriteFailed, create_private_file

__all__ = [
    "MAX_NOTE_SIZE",
    "CheckpointSigner",
    "SignedTreeHead",
    "TreeHead",
    "checkpoint_key_id",
    "generate_signing_key",
    "load_public_key",
    "load_signing_key",
    "verify_tree_head",
]

MAX_NOTE_SIZE = 4096
"""Largest note accepted by ``SignedTreeHead.from_note``, in UTF-8 bytes."""

_MAX_KEY_FILE_SIZE = 4096  # a PKCS#8 Ed25519 PEM is 119 bytes; anything this large is not one
_HASH_SIZE = 32  # SHA-256 root hash, RFC 9162 2.1
_SIGNATURE_SIZE = 64  # RFC 8032 5.1.6
_MAX_TREE_SIZE = 2**64 - 1  # uint64, as in C2SP tlog-checkpoint
# C2SP signed-note: a signature line starts with U+2014 EM DASH and a space.
_SIGNATURE_PREFIX = "\N{EM DASH} "

# Origin: 1-255 visible ASCII characters except '+' (C2SP signed-note forbids '+' in key names and
# spaces in origins); it never contains a newline, which makes it safe to frame the key id hash.
_ORIGIN = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,255}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_NOTE = re.compile(
    r"(?P<origin>[^\n]*)\n"
    r"(?P<size>0|[1-9][0-9]{0,19})\n"
    r"(?P<root>[A-Za-z0-9+/]{43}=)\n"
    r"(?P<time>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)\n"
    r"\n"
    rf"{_SIGNATURE_PREFIX}(?P<key_id>[0-9a-f]{{16}}) (?P<signature>[A-Za-z0-9+/]{{86}}==)\n"
)


@dataclass(frozen=True, slots=True)
class TreeHead:
    """The state of the log at one size: what a checkpoint signs.

    Raises ``CheckpointError`` on construction if the origin is not 1-255 visible ASCII characters
    without '+', the size is outside 0..2**64-1, the root is not 32 bytes, or the timestamp is not
    timezone-aware UTC.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: dt.datetime

    def __post_init__(self) -> None:
        _require_origin(self.origin)
        if not 0 <= self.tree_size <= _MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {self.tree_size} is out of range 0..{_MAX_TREE_SIZE}")
        if len(self.root_hash) != _HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root_hash)} bytes, expected {_HASH_SIZE}")
        if self.timestamp.tzinfo is None or self.timestamp.utcoffset() != dt.timedelta(0):
            raise CheckpointError(f"timestamp {self.timestamp.isoformat()} is not aware UTC")

    def body(self) -> bytes:
        """Return the canonical signed text: origin, size, base64 root, RFC 3339 time, each + LF."""
        moment = self.timestamp.astimezone(dt.UTC).replace(tzinfo=None)
        lines = (
            self.origin,
            str(self.tree_size),
            base64.b64encode(self.root_hash).decode("ascii"),
            moment.isoformat(timespec="microseconds") + "Z",
        )
        return "".join(line + "\n" for line in lines).encode("ascii")


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A tree head, the id of the key that signed it, and its Ed25519 signature over ``body()``.

    Raises ``CheckpointError`` on construction if the key id is not 16 lowercase hex digits or the
    signature is not 64 bytes. Construction does not verify: call :func:`verify_tree_head`.
    """

    head: TreeHead
    key_id: str
    signature: bytes

    def __post_init__(self) -> None:
        if _KEY_ID.fullmatch(self.key_id) is None:
            raise CheckpointError(f"key id {self.key_id!r} is not 16 lowercase hex digits")
        if len(self.signature) != _SIGNATURE_SIZE:
            raise CheckpointError(f"signature is {len(self.signature)} bytes, expected {_SIGNATURE_SIZE}")

    def to_note(self) -> str:
        """Return the note text: ``body()``, a blank line and one ``— <key id> <sig>`` line."""
        signature = base64.b64encode(self.signature).decode("ascii")
        return f"{self.head.body().decode('ascii')}\n{_SIGNATURE_PREFIX}{self.key_id} {signature}\n"

    @classmethod
    def from_note(cls, text: str) -> SignedTreeHead:
        """Parse a note written by ``to_note``; return it unverified.

        Raises ``CheckpointError`` if the note is over ``MAX_NOTE_SIZE`` bytes or is not exactly
        in the canonical form (one spelling per field, LF line ends, exactly one signature).
        """
        if len(text) > MAX_NOTE_SIZE or len(text.encode("utf-8", "surrogatepass")) > MAX_NOTE_SIZE:
            raise CheckpointError(f"checkpoint note is larger than {MAX_NOTE_SIZE} bytes")
        match = _NOTE.fullmatch(text)
        if match is None:
            raise CheckpointError(
                "checkpoint note is malformed",
                hint="expected origin, size, root, timestamp, a blank line and one signature line",
            )
        head = TreeHead(
            origin=match["origin"],
            tree_size=int(match["size"]),
            root_hash=_decode_base64(match["root"], "root hash"),
            timestamp=_parse_timestamp(match["time"]),
        )
        signed = cls(head, match["key_id"], _decode_base64(match["signature"], "signature"))
        if signed.to_note() != text:
            raise CheckpointError("checkpoint note is not in canonical form")
        return signed


def checkpoint_key_id(origin: str, public_key: Ed25519PublicKey) -> str:
    """Return the key id of ``public_key`` for the log ``origin``.

    Defined as the first 8 bytes, in lowercase hex (16 digits), of
    ``SHA-256(UTF-8(origin) || 0x0A || raw 32-byte Ed25519 public key)``. The newline cannot occur
    in an origin, so the framing is unambiguous; binding the origin means that one key serving two
    logs has two ids. Raises ``CheckpointError`` if the origin is invalid.
    """
    _require_origin(origin)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(origin.encode("ascii") + b"\n" + raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs tree heads of one log (``origin``) with one Ed25519 private key."""

    __slots__ = ("_key", "_key_id", "_origin")

    def __init__(self, private_key: Ed25519PrivateKey, origin: str) -> None:
        """Raise ``CheckpointError`` if ``origin`` is not a valid origin line."""
        self._key = private_key
        self._origin = origin
        self._key_id = checkpoint_key_id(origin, private_key.public_key())

    @property
    def origin(self) -> str:
        """Return the origin line of the log this signer signs for."""
        return self._origin

    @property
    def key_id(self) -> str:
        """Return the key id, as defined by :func:`checkpoint_key_id`."""
        return self._key_id

    def public_key(self) -> Ed25519PublicKey:
        """Return the public half of the signing key."""
        return self._key.public_key()

    def public_key_pem(self) -> bytes:
        """Return the public key as a SubjectPublicKeyInfo PEM (RFC 8410)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, head: TreeHead) -> SignedTreeHead:
        """Return ``head`` signed; raise ``CheckpointError`` if it belongs to another origin."""
        if head.origin != self._origin:
            raise CheckpointError(f"tree head origin {head.origin!r} is not this signer's {self._origin!r}")
        return SignedTreeHead(head, self._key_id, self._key.sign(head.body()))


def verify_tree_head(sth: SignedTreeHead, public_key: Ed25519PublicKey) -> None:
    """Check that ``sth`` was signed by ``public_key`` for its origin.

    Returns ``None``; raises ``CheckpointError`` if the key id is not that of ``public_key`` for
    the head's origin, or if the signature over ``head.body()`` does not verify.
    """
    expected = checkpoint_key_id(sth.head.origin, public_key)
    if sth.key_id != expected:
        raise CheckpointError(f"checkpoint key id {sth.key_id} is not the expected {expected}")
    try:
        public_key.verify(sth.signature, sth.head.body())
    except InvalidSignature as exc:
        raise CheckpointError(
            f"checkpoint signature for {sth.head.origin} at size {sth.head.tree_size} is invalid"
        ) from exc


def generate_signing_key(path: Path) -> None:
    """Create a new Ed25519 signing key at ``path`` as unencrypted PKCS#8 PEM, mode 0600.

    The file is created with ``O_CREAT | O_EXCL`` and mode 0600 in one step, so it is never
    readable by others and an existing file (or symlink) is never overwritten.
    Raises ``CheckpointError`` if ``path`` exists or cannot be written.
    """
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        create_private_file(path, pem)
    except FileExistsError as exc:
        raise CheckpointError(f"signing key {path} already exists", hint="refusing to overwrite it") from exc
    except PrivateFileWriteFailed as exc:
        raise CheckpointError(f"cannot write signing key {path}: {exc.strerror}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot create signing key {path}: {exc.strerror}") from exc


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Return the Ed25519 private key stored at ``path`` as PKCS#8 PEM.

    Fails closed: raises ``CheckpointError`` if the file is missing, not a regular file, readable
    or writable by group or others (any of mode 0o077), larger than 4 KiB, encrypted, malformed,
    or not an Ed25519 key.
    """
    data = _read_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CheckpointError(f"signing key {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Return the Ed25519 public key in a SubjectPublicKeyInfo PEM.

    Raises ``CheckpointError`` if ``pem`` is larger than 4 KiB, malformed, or not Ed25519.
    """
    if len(pem) > _MAX_KEY_FILE_SIZE:
        raise CheckpointError(f"public key PEM is larger than {_MAX_KEY_FILE_SIZE} bytes")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CheckpointError("public key is not a PEM SubjectPublicKeyInfo") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError("public key is not an Ed25519 key")
    return key


def _read_private_file(path: Path) -> bytes:
    """Return the bytes of a small, owner-only regular file; raise ``CheckpointError`` otherwise.

    The type and mode are checked on the opened descriptor, so the file cannot be swapped between
    the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise CheckpointError(f"signing key {path} does not exist", hint="generate one first") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot open signing key {path}: {exc.strerror}") from exc
    try:
        _require_private_mode(path, os.fstat(fd).st_mode)
        data = os.read(fd, _MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read signing key {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise CheckpointError(f"signing key {path} is larger than {_MAX_KEY_FILE_SIZE} bytes")
    return data


def _require_private_mode(path: Path, mode: int) -> None:
    """Raise ``CheckpointError`` unless ``mode`` is a regular file's with no group/other bits."""
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"signing key {path} is not a regular file")
    if mode & 0o077:  # the same rule as OpenSSH applies to private keys
        raise CheckpointError(
            f"signing key {path} has mode {stat.S_IMODE(mode):04o}: others can access it",
            hint=f"chmod 600 {path}",
        )


def _require_origin(origin: str) -> None:
    """Raise ``CheckpointError`` unless ``origin`` is 1-255 visible ASCII characters without '+'."""
    if _ORIGIN.fullmatch(origin) is None:
        raise CheckpointError(f"origin {origin[:64]!r} is not 1-255 visible ASCII characters without '+'")


def _decode_base64(text: str, what: str) -> bytes:
    """Decode standard base64; raise ``CheckpointError`` if it is invalid."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"checkpoint {what} is not valid base64") from exc


def _parse_timestamp(text: str) -> dt.datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; raise ``CheckpointError`` if it is not a real time."""
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint timestamp {text!r} is not a valid time") from exc
