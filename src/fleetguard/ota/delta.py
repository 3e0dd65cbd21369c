"""Binary deltas between firmware releases: zstd ``--patch-from`` or bsdiff4, whichever is smaller.

Theory of operation. A device that runs release A and is offered release B can download a delta
instead of B's full (zstd-compressed) image. :func:`make_delta` builds two candidates on the server:

* ``zstd-patch-from``: B compressed with A as a raw-content dictionary, the library equivalent of
  ``zstd --patch-from=A B`` (RFC 8878 section 5: a raw-content dictionary is history that precedes
  the frame's content). The window covers the larger image, as zstd's CLI sets it (programs/fileio.c,
  ``FIO_adjustParamsForPatchFromMode``). The hash and chain tables are sized to the images (4 to 8
  times the larger image in memory, at most 2 GiB): zstd loads only the last
  ``8 << max(hashLog, chainLog)`` bytes of a dictionary (``ZSTD_loadDictionaryContent``), so a level's
  defaults would see only A's last MiB, and a chain shorter than the images does not reach A's copy of
  the bytes that did not change.
  Long-distance matching is off: when the input is under 6 times the dictionary, zstd starts from the
  dictionary's precomputed tables (``ZSTD_resetCCtx_usingCDict``), which never fills the long-distance
  matcher, and measured it only made deltas larger. (The CLI passes A as a prefix instead, which the
  ``zstandard`` package does not offer; its long-distance matcher then finds A's copy at any distance,
  where the chain used here reaches back at most 2**28 positions: past about 256 MiB, zstd deltas
  get larger than the CLI's.)
* ``bsdiff4``: Colin Percival's bsdiff (suffix sorting, O(n log n) time, about 17 bytes of memory per
  input byte), better where code moved and every pointer in it changed by a constant. Built only for
  images up to :data:`BSDIFF_MAX_INPUT`.

The smaller candidate is kept, and only if its container is smaller than B's full compressed image;
otherwise there is no delta (``None``) and the device downloads B.

:func:`apply_delta` is the device's side: it checks that the base is the one the delta was made for
(SHA-256 and length) before decoding anything, decodes into a buffer no larger than the target's
declared length (a zstd frame or bzip2 block that claims or produces more is refused), and checks the
output's SHA-256 and length. Everything is in memory: an image and its delta are bounded by
:data:`MAX_IMAGE_SIZE`, and applying needs about the base, the target and the delta at once.

Container (all integers big-endian, :data:`HEADER_SIZE` = 100 bytes before the payload)::

    offset  size  field
    0       8     magic b"FGDELTA\\0"
    8       1     container version (1)
    9       1     method: 1 = zstd-patch-from, 2 = bsdiff4
    10      2     reserved, zero
    12      8     source length
    20      32    source SHA-256
    52      8     target length
    60      32    target SHA-256
    92      8     payload length
    100     n     payload (one zstd frame, or a BSDIFF40 patch)
"""

from __future__ import annotations

import bz2
import enum
import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

import bsdiff4.core  # type: ignore[import-untyped]  # no stubs; wrapped here with typed values
import zstandard

from fleetguard.ota.errors import DeltaInvalid, DeltaMismatch, DeltaTooLarge
from fleetguard.private_file import replace_private_file

__all__ = [
    "BSDIFF_MAX_INPUT",
    "FULL_IMAGE_LEVEL",
    "HEADER_SIZE",
    "MAX_IMAGE_SIZE",
    "Delta",
    "DeltaMethod",
    "apply_delta",
    "apply_delta_file",
    "build_delta",
    "compressed_size",
    "make_delta",
    "parse_delta",
]

MAX_IMAGE_SIZE = 1 << 30
"""Largest base or target image (1 GiB): deltas are built and applied in memory."""

BSDIFF_MAX_INPUT = 32 << 20
"""Largest image bsdiff is tried on. Measured on a 2-core machine with structured images: 8 MiB took
2.8 s, 32 MiB 14 s and about 700 MB of memory at its peak; 64 MiB would take over 30 s and 1.2 GiB."""

FULL_IMAGE_LEVEL = 19
"""zstd level of the full image a delta must beat when the caller does not give its size."""

_MAGIC = b"FGDELTA\x00"
_VERSION = 1
_HEADER = struct.Struct(">8sBBHQ32sQ32sQ")
HEADER_SIZE = _HEADER.size
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The "lazy2" strategy: with large tables, a 32 MiB delta came out within 5% of level 19's size in a
# twelfth of its time (1.7 s against 21 s).
_ZSTD_BASE_LEVEL = 9
# Hash and chain tables of 2**(window_log - 1) entries each (4 bytes an entry: 4 to 8 times the larger
# image), at most 2**28 (2 GiB in all). Measured on a 5.8 MB xz squashfs with one file changed: 6 kB
# with these, 1 MB with tables half the size, as the chain no longer reached the base's copy of the
# bytes that did not change. Images over 256 MiB get weaker zstd deltas (see the module docstring).
_ZSTD_TABLE_LOG_MAX = 28
_BSDIFF_MAGIC = b"BSDIFF40"
_BSDIFF_HEADER = 32  # magic and three 8-byte lengths (bsdiff 4.x patch format)
_BSDIFF_TRIPLE = struct.Struct("<QQQ")


class DeltaMethod(enum.StrEnum):
    """How a delta's payload turns the base into the target."""

    ZSTD = "zstd-patch-from"
    BSDIFF = "bsdiff4"


_METHOD_CODES: dict[DeltaMethod, int] = {DeltaMethod.ZSTD: 1, DeltaMethod.BSDIFF: 2}
_CODE_METHODS = {code: method for method, code in _METHOD_CODES.items()}


@dataclass(frozen=True, slots=True)
class Delta:
    """One delta artifact: what it applies to, what it must produce, and the encoded patch."""

    method: DeltaMethod
    source_sha256: str
    source_length: int
    target_sha256: str
    target_length: int
    payload: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.method, DeltaMethod):
            raise DeltaInvalid(f"unknown delta method {self.method!r}")
        for name, digest in (("source", self.source_sha256), ("target", self.target_sha256)):
            if not _SHA256_HEX.fullmatch(digest):
                raise DeltaInvalid(f"delta {name} SHA-256 must be 64 lower-case hex digits")
        for name, length in (("source", self.source_length), ("target", self.target_length)):
            _require_length(f"delta {name}", length)
        if not self.payload:
            raise DeltaInvalid("delta payload is empty")
        _require_length("delta payload", len(self.payload))

    @property
    def size(self) -> int:
        """Return the size of :meth:`to_bytes`, the artifact a device downloads."""
        return HEADER_SIZE + len(self.payload)

    def to_bytes(self) -> bytes:
        """Return the versioned container (see the module docstring)."""
        header = _HEADER.pack(
            _MAGIC,
            _VERSION,
            _METHOD_CODES[self.method],
            0,
            self.source_length,
            bytes.fromhex(self.source_sha256),
            self.target_length,
            bytes.fromhex(self.target_sha256),
            len(self.payload),
        )
        return header + self.payload


def parse_delta(data: bytes) -> Delta:
    """Return the delta in container ``data``.

    Raises :class:`DeltaInvalid` for a bad magic, version, method or reserved field, a truncated
    header or payload, or trailing bytes; :class:`DeltaTooLarge` for lengths over the bounds.
    """
    if len(data) < HEADER_SIZE:
        if not data.startswith(_MAGIC[: len(data)]):
            raise DeltaInvalid("not a fleetguard delta (bad magic)")
        raise DeltaInvalid(f"delta header is truncated ({len(data)} of {HEADER_SIZE} bytes)")
    magic, version, code, reserved, source_length, source_sha, target_length, target_sha, payload_length = (
        _HEADER.unpack_from(data)
    )
    if magic != _MAGIC:
        raise DeltaInvalid("not a fleetguard delta (bad magic)")
    if version != _VERSION:
        raise DeltaInvalid(f"unsupported delta container version {version} (this reader knows {_VERSION})")
    if code not in _CODE_METHODS:
        raise DeltaInvalid(f"unknown delta method code {code}")
    if reserved != 0:
        raise DeltaInvalid("reserved delta header bytes are not zero")
    _require_length("delta payload", payload_length)
    available = len(data) - HEADER_SIZE
    if available < payload_length:
        raise DeltaInvalid(f"delta payload is truncated ({available} of {payload_length} bytes)")
    if available > payload_length:
        raise DeltaInvalid(f"{available - payload_length} bytes of trailing data after the delta payload")
    return Delta(
        method=_CODE_METHODS[code],
        source_sha256=source_sha.hex(),
        source_length=source_length,
        target_sha256=target_sha.hex(),
        target_length=target_length,
        payload=data[HEADER_SIZE:],
    )


def compressed_size(image: bytes) -> int:
    """Return the size of ``image`` in zstd at :data:`FULL_IMAGE_LEVEL`: what a delta must beat."""
    _require_length("image", len(image))
    return len(zstandard.ZstdCompressor(level=FULL_IMAGE_LEVEL, threads=-1).compress(image))


def make_delta(old: bytes, new: bytes, *, full_compressed_size: int | None = None) -> Delta | None:
    """Return the smaller of the zstd and bsdiff4 deltas from ``old`` to ``new``, checked by applying it.

    Returns ``None`` when no delta is smaller than the full compressed image (``full_compressed_size``,
    computed with zstd at :data:`FULL_IMAGE_LEVEL` when not given). bsdiff4 is tried only when both
    images are at most :data:`BSDIFF_MAX_INPUT`. Raises :class:`DeltaTooLarge` for an image over
    :data:`MAX_IMAGE_SIZE`.
    """
    _require_length("base image", len(old))
    _require_length("target image", len(new))
    full = compressed_size(new) if full_compressed_size is None else full_compressed_size
    methods = [DeltaMethod.ZSTD]
    if max(len(old), len(new)) <= BSDIFF_MAX_INPUT:
        methods.append(DeltaMethod.BSDIFF)
    candidates = [delta for method in methods if (delta := _build_or_skip(method, old, new)) is not None]
    best = min(candidates, key=lambda delta: delta.size)
    if best.size >= full:
        return None
    apply_delta(old, best, max_output=len(new))
    return best


def build_delta(method: DeltaMethod, old: bytes, new: bytes) -> Delta:
    """Return the delta from ``old`` to ``new`` made with ``method``, whatever its size.

    Raises :class:`DeltaTooLarge` for an image over :data:`MAX_IMAGE_SIZE`, or a bsdiff4 patch that
    :func:`apply_delta` would refuse (more control entries than its bound).
    """
    _require_length("base image", len(old))
    _require_length("target image", len(new))
    match method:
        case DeltaMethod.ZSTD:
            payload = _zstd_diff(old, new)
        case DeltaMethod.BSDIFF:
            payload = _bsdiff_diff(old, new)
        case _:
            assert_never(method)
    return Delta(
        method=method,
        source_sha256=hashlib.sha256(old).hexdigest(),
        source_length=len(old),
        target_sha256=hashlib.sha256(new).hexdigest(),
        target_length=len(new),
        payload=payload,
    )


def apply_delta(old: bytes, delta: Delta, *, max_output: int) -> bytes:
    """Return the target that ``delta`` makes from ``old``, verified by SHA-256 and length.

    Raises :class:`DeltaTooLarge` if the target is over ``max_output``; :class:`DeltaMismatch` if
    ``old`` is not the delta's base, or the output is not the delta's target; :class:`DeltaInvalid`
    if the payload does not decode.
    """
    if delta.target_length > max_output:
        raise DeltaTooLarge(
            f"delta target is {delta.target_length} bytes, more than the {max_output} allowed"
        )
    _require_base(old, delta)
    match delta.method:
        case DeltaMethod.ZSTD:
            new = _zstd_patch(old, delta)
        case DeltaMethod.BSDIFF:
            new = _bsdiff_patch(old, delta)
        case _:
            assert_never(delta.method)
    _require_target(new, delta)
    return new


def apply_delta_file(old_path: Path, delta: Delta, out_path: Path, *, max_output: int) -> None:
    """Write the target that ``delta`` makes from the file ``old_path`` to ``out_path``, atomically.

    The target goes to a mode-0600 sibling that is fsynced and renamed over ``out_path``, so that
    ``out_path`` holds the old content or the whole verified target, never a part. Raises as
    :func:`apply_delta` does (``out_path`` untouched), and ``OSError`` for I/O failures.
    """
    actual = old_path.stat().st_size
    if actual != delta.source_length:
        raise DeltaMismatch(_base_message(delta, f"a {actual}-byte file"))
    new = apply_delta(old_path.read_bytes(), delta, max_output=max_output)
    replace_private_file(out_path, new)
    _fsync_directory(out_path.parent)


def _build_or_skip(method: DeltaMethod, old: bytes, new: bytes) -> Delta | None:
    try:
        return build_delta(method, old, new)
    except DeltaTooLarge:
        if method is DeltaMethod.ZSTD:
            raise
        return None  # bsdiff's control block over the bound: zstd's candidate stands alone


def _require_length(what: str, length: int) -> None:
    if length < 0:
        raise DeltaInvalid(f"{what} length {length} is negative")
    if length > MAX_IMAGE_SIZE:
        raise DeltaTooLarge(f"{what} is {length} bytes, more than the {MAX_IMAGE_SIZE} allowed")


def _require_base(old: bytes, delta: Delta) -> None:
    if len(old) != delta.source_length:
        raise DeltaMismatch(_base_message(delta, f"a {len(old)}-byte image"))
    digest = hashlib.sha256(old).hexdigest()
    if digest != delta.source_sha256:
        raise DeltaMismatch(_base_message(delta, f"sha256:{digest}"))


def _base_message(delta: Delta, actual: str) -> str:
    return f"delta is for base sha256:{delta.source_sha256} ({delta.source_length} bytes), not {actual}"


def _require_target(new: bytes, delta: Delta) -> None:
    if len(new) != delta.target_length:
        raise DeltaMismatch(f"delta produced {len(new)} bytes, not the target's {delta.target_length}")
    digest = hashlib.sha256(new).hexdigest()
    if digest != delta.target_sha256:
        raise DeltaMismatch(f"delta produced sha256:{digest}, not the target sha256:{delta.target_sha256}")


def _fsync_directory(path: Path) -> None:
    # The rename is durable only once the directory is synced (POSIX fsync on a directory).
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# zstd (RFC 8878) -------------------------------------------------------------------------------


def _window_log(*lengths: int) -> int:
    # zstd's CLI for --patch-from: highbit(max size) + 1, at least ZSTD_WINDOWLOG_MIN.
    return max(zstandard.WINDOWLOG_MIN, max(lengths).bit_length())


def _raw_dictionary(old: bytes) -> zstandard.ZstdCompressionDict | None:
    # Raw content, never "auto": a base that starts with the dictionary magic is still content.
    return zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if old else None


def _zstd_diff(old: bytes, new: bytes) -> bytes:
    window_log = _window_log(len(old), len(new))
    level = zstandard.ZstdCompressionParameters.from_level(
        _ZSTD_BASE_LEVEL, source_size=len(new), dict_size=len(old)
    )
    table_log = min(max(level.hash_log, window_log - 1), _ZSTD_TABLE_LOG_MAX)
    params = zstandard.ZstdCompressionParameters(
        window_log=window_log,
        hash_log=table_log,
        chain_log=table_log,
        search_log=level.search_log,
        min_match=level.min_match,
        target_length=level.target_length,
        strategy=level.strategy,
        write_content_size=1,
        write_checksum=0,  # the container's target SHA-256 is the check
        write_dict_id=0,
    )
    compressor = zstandard.ZstdCompressor(dict_data=_raw_dictionary(old), compression_params=params)
    return compressor.compress(new)


def _zstd_patch(old: bytes, delta: Delta) -> bytes:
    try:
        frame = zstandard.get_frame_parameters(delta.payload)
    except zstandard.ZstdError as exc:
        raise DeltaInvalid("zstd delta does not start with a valid frame header") from exc
    if frame.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise DeltaInvalid("zstd delta frame does not record its content size")
    if frame.content_size > delta.target_length:
        raise DeltaTooLarge(
            f"zstd delta frame claims {frame.content_size} bytes, "
            f"more than the target's {delta.target_length}"
        )
    if frame.content_size != delta.target_length:
        raise DeltaInvalid(
            f"zstd delta frame claims {frame.content_size} bytes, not the target's {delta.target_length}"
        )
    _require_one_frame(delta.payload, frame.has_checksum)
    window = 1 << _window_log(delta.source_length, delta.target_length)
    decompressor = zstandard.ZstdDecompressor(dict_data=_raw_dictionary(old), max_window_size=window)
    try:
        # The frame records its size (checked above), so this allocates exactly the target's length;
        # a frame that decodes to more is a ZstdError.
        return decompressor.decompress(delta.payload, max_output_size=max(delta.target_length, 1))
    except zstandard.ZstdError as exc:
        raise DeltaInvalid(f"zstd delta does not decode: {exc}") from exc


def _require_one_frame(payload: bytes, has_checksum: bool) -> None:
    """Check that ``payload`` is exactly one frame: walk its block headers (RFC 8878 3.1.1.2)."""
    try:
        offset = zstandard.frame_header_size(payload)
    except zstandard.ZstdError as exc:
        raise DeltaInvalid("zstd delta does not start with a valid frame header") from exc
    last = False
    while not last:
        if offset + 3 > len(payload):
            raise DeltaInvalid("zstd delta frame is truncated")
        header = int.from_bytes(payload[offset : offset + 3], "little")
        last, block_type, block_size = bool(header & 1), (header >> 1) & 3, header >> 3
        offset += 3 + (1 if block_type == 1 else block_size)  # an RLE block stores one byte
    offset += 4 if has_checksum else 0
    if offset > len(payload):
        raise DeltaInvalid("zstd delta frame is truncated")
    if offset < len(payload):
        raise DeltaInvalid(f"{len(payload) - offset} bytes of trailing data after the zstd delta frame")


# bsdiff4 (bsdiff 4.x patch format: "BSDIFF40", then control, diff and extra blocks in bzip2) ----------


def _control_bound(target_length: int) -> int:
    # A control entry (x, y, z) starts where bsdiff found a match at least 8 bytes better than the
    # current one (bsdiff.c), so entries are sparse; this bound keeps a crafted control block from
    # growing to 24 bytes per output byte. build_delta refuses to make a patch over it.
    return _BSDIFF_TRIPLE.size * (target_length // 8 + 64)


def _bsdiff_diff(old: bytes, new: bytes) -> bytes:
    control: bytes
    diff: bytes
    extra: bytes
    control, diff, extra = bsdiff4.core.diff(old, new)
    if len(control) > _control_bound(len(new)):
        raise DeltaTooLarge(f"bsdiff4 control block of {len(control)} bytes is over its bound")
    blocks = [bz2.compress(block) for block in (control, diff, extra)]
    lengths = (len(blocks[0]), len(blocks[1]), len(new))
    return _BSDIFF_MAGIC + b"".join(_encode_offset(n) for n in lengths) + b"".join(blocks)


def _bsdiff_patch(old: bytes, delta: Delta) -> bytes:
    payload = delta.payload
    if len(payload) < _BSDIFF_HEADER or not payload.startswith(_BSDIFF_MAGIC):
        raise DeltaInvalid("bsdiff4 delta does not start with a BSDIFF40 header")
    control_size, diff_size, target_length = (
        _decode_offset(payload[offset : offset + 8]) for offset in (8, 16, 24)
    )
    if target_length != delta.target_length:
        raise DeltaInvalid(
            f"bsdiff4 delta makes {target_length} bytes, not the target's {delta.target_length}"
        )
    diff_start = _BSDIFF_HEADER + control_size
    extra_start = diff_start + diff_size
    if control_size < 0 or diff_size < 0 or extra_start > len(payload):
        raise DeltaInvalid("bsdiff4 delta block lengths do not add up to its size")
    control = _bunzip2(payload[_BSDIFF_HEADER:diff_start], _control_bound(target_length), "control")
    diff = _bunzip2(payload[diff_start:extra_start], target_length, "diff")
    extra = _bunzip2(payload[extra_start:], target_length, "extra")
    _require_control(control, len(diff), len(extra), target_length)
    try:
        new: bytes = bsdiff4.core.patch(old, target_length, control, diff, extra)
    except ValueError as exc:
        raise DeltaInvalid(f"bsdiff4 delta does not apply: {exc}") from exc
    return new


def _bunzip2(data: bytes, bound: int, block: str) -> bytes:
    decompressor = bz2.BZ2Decompressor()
    try:
        out = decompressor.decompress(data, max_length=bound + 1)
    except OSError as exc:
        raise DeltaInvalid(f"bsdiff4 {block} block is not valid bzip2") from exc
    if len(out) > bound:
        raise DeltaTooLarge(f"bsdiff4 {block} block decompresses to more than {bound} bytes")
    if not decompressor.eof:
        raise DeltaInvalid(f"bsdiff4 {block} block is truncated")
    if decompressor.unused_data:
        raise DeltaInvalid(f"bsdiff4 {block} block is followed by {len(decompressor.unused_data)} bytes")
    return out


def _require_control(control: bytes, diff_size: int, extra_size: int, target_length: int) -> None:
    """Check that the control entries consume the diff and extra blocks exactly and make the target."""
    if len(control) % _BSDIFF_TRIPLE.size:
        raise DeltaInvalid("bsdiff4 control block is not a whole number of entries")
    copied = added = 0
    for raw in _BSDIFF_TRIPLE.iter_unpack(control):
        diff_count, extra_count = _signed(raw[0]), _signed(raw[1])
        if diff_count < 0 or extra_count < 0:
            raise DeltaInvalid("bsdiff4 control entry has a negative length")
        added += diff_count
        copied += extra_count
        if added > diff_size or copied > extra_size:
            raise DeltaInvalid("bsdiff4 control entries run past the diff or extra block")
    if added != diff_size or copied != extra_size or added + copied != target_length:
        raise DeltaInvalid("bsdiff4 control entries do not make the target's length")


def _signed(value: int) -> int:
    # bsdiff's offtout: sign and magnitude, the sign in the top bit of the last (little-endian) byte.
    magnitude = value & ~(1 << 63)
    return -magnitude if value >> 63 else magnitude


def _decode_offset(raw: bytes) -> int:
    return _signed(int.from_bytes(raw, "little"))


def _encode_offset(value: int) -> bytes:
    return (abs(value) | ((1 << 63) if value < 0 else 0)).to_bytes(8, "little")
