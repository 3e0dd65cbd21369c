"""Finding containers and filesystems inside a blob: magic numbers plus header sanity checks.

Each signature is a magic at a fixed distance from the container's start and a validator that
parses the header (spec fields, CRCs where the format has one) and returns a :class:`Hit` with
the best-effort size, or None for a false positive. :class:`Carver` walks a buffer (an mmap) in
offset order with ``bytes.find`` per magic, never byte by byte, and can skip ahead past a region
an extractor consumed, so magics inside an extracted filesystem cost one ``find`` each and
nothing more. Candidates examined per format are bounded.
"""

from __future__ import annotations

import enum
import mmap
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Carver", "Format", "Hit", "hit_at", "scan"]

Buffer = bytes | bytearray | memoryview | mmap.mmap
_MAX_CANDIDATES = 200_000  # per format and buffer: a pathological blob cannot make carving quadratic


class Format(enum.StrEnum):
    """The container and filesystem formats carving recognises."""

    SQUASHFS = "squashfs"
    CPIO = "cpio"
    TAR = "tar"
    GZIP = "gzip"
    XZ = "xz"
    LZMA = "lzma"
    BZIP2 = "bzip2"
    ZSTD = "zstd"
    LZ4 = "lz4"
    ZIP = "zip"
    SEVENZIP = "7z"
    UIMAGE = "uimage"
    FDT = "fdt"
    TRX = "trx"
    EXT = "ext"
    JFFS2 = "jffs2"
    UBI = "ubi"
    UBIFS = "ubifs"
    CRAMFS = "cramfs"
    ROMFS = "romfs"


@dataclass(frozen=True, slots=True)
class Hit:
    """A container found at ``offset``; ``size`` is None when only extraction can tell.

    ``variant`` says which flavour (``v4-le``, ``newc``, ``be``, a uImage compression name, ...);
    ``name`` is a name the header carries (uImage name), if any.
    """

    offset: int
    format: Format
    size: int | None
    variant: str = ""
    name: str = ""


Validator = Callable[[Buffer, int], Hit | None]


def _u16le(d: Buffer, o: int) -> int:
    return int(struct.unpack_from("<H", d, o)[0])


def _u32le(d: Buffer, o: int) -> int:
    return int(struct.unpack_from("<I", d, o)[0])


def _u32be(d: Buffer, o: int) -> int:
    return int(struct.unpack_from(">I", d, o)[0])


def _fits(d: Buffer, start: int, need: int) -> bool:
    return start >= 0 and start + need <= len(d)


# --- squashfs: squashfs-tools squashfs_fs.h (v4) and squashfs_compat.h (v1-3 superblocks) ---


def _squashfs(d: Buffer, s: int) -> Hit | None:
    if not _fits(d, s, 96):
        return None
    magic = bytes(d[s : s + 4])
    little = magic in (b"hsqs", b"shsq")
    lzma = magic in (b"shsq", b"qshs")
    e = "<" if little else ">"
    major, minor = struct.unpack_from(e + "HH", d, s + 28)
    end = "le" if little else "be"
    suffix = "-lzma" if lzma else ""
    if major == 4 and minor == 0:
        block_size, _frags, comp, block_log = struct.unpack_from(e + "IIHH", d, s + 12)
        if not 12 <= block_log <= 20 or block_size != 1 << block_log or not 1 <= comp <= 6:
            return None
        (used,) = struct.unpack_from(e + "Q", d, s + 40)
        return Hit(s, Format.SQUASHFS, used if used >= 96 else None, f"v4-{end}{suffix}")
    if major in (2, 3) and minor <= 1:
        if major == 3 and _fits(d, s, 71):
            (used,) = struct.unpack_from(e + "Q", d, s + 63)
        else:
            (used,) = struct.unpack_from(e + "I", d, s + 8)
        return Hit(s, Format.SQUASHFS, used if used > 0 else None, f"v{major}-{end}{suffix}")
    return None


# --- cpio: cpio(5), "New ASCII" (070701/070702) and "Portable ASCII" (070707) formats ---


def _cpio(d: Buffer, s: int) -> Hit | None:
    if not _fits(d, s, 76):
        return None
    magic = bytes(d[s : s + 6])
    if magic == b"070707":
        fields = bytes(d[s + 6 : s + 76])
        ok = all(0x30 <= c <= 0x37 for c in fields)
        return Hit(s, Format.CPIO, None, "odc") if ok else None
    if not _fits(d, s, 110):
        return None
    fields = bytes(d[s + 6 : s + 110])
    try:
        int(fields, 16)
    except ValueError:
        return None
    return Hit(s, Format.CPIO, None, "newc" if magic == b"070701" else "crc")


# --- tar: POSIX.1-2001 ustar header, checksum per pax(1) ---


def _tar(d: Buffer, s: int) -> Hit | None:
    if not _fits(d, s, 512):
        return None
    header = bytes(d[s : s + 512])
    try:
        stored = int(header[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return None
    computed = sum(header[:148]) + 8 * 0x20 + sum(header[156:])
    return Hit(s, Format.TAR, None, "ustar") if stored == computed else None


# --- compression streams ---


def _gzip(d: Buffer, s: int) -> Hit | None:
    # RFC 1952 2.3.1: CM=8 (deflate); FLG reserved bits zero; XFL 0, 2 or 4; OS 0..13 or 255.
    if not _fits(d, s, 18):
        return None
    flags, xfl, os_byte = d[s + 3], d[s + 8], d[s + 9]
    if flags & 0xE0 or xfl not in (0, 2, 4) or (os_byte > 13 and os_byte != 255):
        return None
    return Hit(s, Format.GZIP, None)


def _xz(d: Buffer, s: int) -> Hit | None:
    # xz file format 1.0.4 section 2.1.1: stream flags (00 0X) and their CRC32.
    if not _fits(d, s, 12) or d[s + 6] != 0 or d[s + 7] & 0xF0:
        return None
    if zlib.crc32(bytes(d[s + 6 : s + 8])) != _u32le(d, s + 8):
        return None
    return Hit(s, Format.XZ, None)


def _lzma(d: Buffer, s: int) -> Hit | None:
    # LZMA-Alone (.lzma): properties 0x5d (lc=3 lp=0 pb=2), dictionary size, uncompressed size.
    if not _fits(d, s, 14):
        return None
    dict_size = _u32le(d, s + 1)
    (usize,) = struct.unpack_from("<Q", d, s + 5)
    if not 1 << 12 <= dict_size <= 1 << 28 or (dict_size & (dict_size - 1) and dict_size % 3):
        return None
    if usize != 2**64 - 1 and not 0 < usize < 1 << 32:
        return None
    return Hit(s, Format.LZMA, None)


def _bzip2(d: Buffer, s: int) -> Hit | None:
    # bzip2: "BZh" + level '1'..'9' + block magic pi (31 41 59 26 53 59) or end-of-stream sqrt(pi).
    if not _fits(d, s, 10) or not 0x31 <= d[s + 3] <= 0x39:
        return None
    if bytes(d[s + 4 : s + 10]) not in (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90"):
        return None
    return Hit(s, Format.BZIP2, None)


def _zstd(d: Buffer, s: int) -> Hit | None:
    # RFC 8878 3.1.1.1.1: frame header descriptor reserved bit (3) must be zero.
    if not _fits(d, s, 6) or d[s + 4] & 0x08:
        return None
    return Hit(s, Format.ZSTD, None)


def _lz4(d: Buffer, s: int) -> Hit | None:
    # LZ4 frame format 1.6.x: FLG version bits 01, reserved bit 1 zero; BD reserved bits zero.
    if not _fits(d, s, 7):
        return None
    flg, bd = d[s + 4], d[s + 5]
    if flg >> 6 != 1 or flg & 0x02 or bd & 0x8F or not 4 <= bd >> 4 <= 7:
        return None
    return Hit(s, Format.LZ4, None)


# --- archives ---


def _zip(d: Buffer, s: int) -> Hit | None:
    # APPNOTE.TXT 4.3.7 local file header; the size ends at the end of central directory record.
    if not _fits(d, s, 30) or _u16le(d, s + 4) > 100:
        return None
    eocd = _find(d, b"PK\x05\x06", s)
    if eocd < 0 or not _fits(d, eocd, 22):
        return Hit(s, Format.ZIP, None)
    return Hit(s, Format.ZIP, eocd + 22 + _u16le(d, eocd + 20) - s)


def _find(d: Buffer, needle: bytes, start: int, end: int | None = None) -> int:
    stop = len(d) if end is None else min(end, len(d))
    if isinstance(d, memoryview):
        found = bytes(d[start:stop]).find(needle)
        return found + start if found >= 0 else -1
    return d.find(needle, start, stop)


def _sevenzip(d: Buffer, s: int) -> Hit | None:
    # 7z format (7zFormat.txt): SignatureHeader: version 0.x, start header CRC, next header.
    if not _fits(d, s, 32) or d[s + 6] != 0:
        return None
    if zlib.crc32(bytes(d[s + 12 : s + 32])) != _u32le(d, s + 8):
        return None
    offset, length = struct.unpack_from("<QQ", d, s + 12)
    return Hit(s, Format.SEVENZIP, 32 + offset + length)


# --- boot images ---

# U-Boot include/image.h: IH_COMP_*.
UIMAGE_COMPRESSION = {0: "none", 1: "gzip", 2: "bzip2", 3: "lzma", 4: "lzo", 5: "lz4", 6: "zstd"}


def _uimage(d: Buffer, s: int) -> Hit | None:
    # U-Boot include/image.h: legacy image_header_t, 64 bytes, big-endian, header CRC32.
    if not _fits(d, s, 64):
        return None
    header = bytearray(d[s : s + 64])
    stored = _u32be(header, 4)
    header[4:8] = b"\x00\x00\x00\x00"
    if zlib.crc32(header) != stored:
        return None
    size = _u32be(header, 12)
    comp = UIMAGE_COMPRESSION.get(header[31], f"unknown-{header[31]}")
    name = header[32:64].split(b"\x00", 1)[0].decode("latin-1")
    return Hit(s, Format.UIMAGE, 64 + size, comp, name)


def _fdt(d: Buffer, s: int) -> Hit | None:
    # Devicetree specification 0.4, 5.2: fdt_header (big-endian); versions 16 and 17.
    if not _fits(d, s, 40):
        return None
    total, off_struct, off_strings, _rsv, version, last = struct.unpack_from(">6I", d, s + 4)
    if not 16 <= version <= 17 or last > 17 or not 40 <= off_struct < total or off_strings >= total:
        return None
    return Hit(s, Format.FDT, total)


def _trx(d: Buffer, s: int) -> Hit | None:
    # Broadcom TRX (OpenWrt tools/firmware-utils trx.c): len, crc32, flags, version, offsets.
    if not _fits(d, s, 28):
        return None
    length, _crc, _flags, version = struct.unpack_from("<IIHH", d, s + 4)
    if version not in (1, 2) or length < 28:
        return None
    offsets = struct.unpack_from("<3I", d, s + 16)
    if any(o and (o < 28 or o >= length) for o in offsets):
        return None
    return Hit(s, Format.TRX, length, f"v{version}")


# --- filesystems ---


def _ext(d: Buffer, s: int) -> Hit | None:
    # ext4 disk layout: superblock at 1024, s_magic at 0x38; state, errors and revision sane.
    sb = s + 1024
    if not _fits(d, sb, 1024):
        return None
    inodes, blocks = struct.unpack_from("<II", d, sb)
    log_block = _u32le(d, sb + 24)
    state, errors = struct.unpack_from("<HH", d, sb + 58)
    rev = _u32le(d, sb + 76)
    if not inodes or not blocks or log_block > 6 or not 1 <= state <= 7 or not 1 <= errors <= 3 or rev > 1:
        return None
    return Hit(s, Format.EXT, blocks * (1024 << log_block))


def jffs2_crc(data: bytes) -> int:
    """JFFS2's CRC32 (Linux crc32(0, ...): no pre- or post-inversion)."""
    return zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def _jffs2(d: Buffer, s: int) -> Hit | None:
    # Linux include/uapi/linux/jffs2.h: jffs2_unknown_node, hdr_crc over the first 8 bytes.
    if not _fits(d, s, 12):
        return None
    e = "<" if bytes(d[s : s + 2]) == b"\x85\x19" else ">"
    _magic, _ntype, totlen, crc = struct.unpack_from(e + "HHII", d, s)
    if totlen < 12 or jffs2_crc(bytes(d[s : s + 8])) != crc:
        return None
    return Hit(s, Format.JFFS2, None, "le" if e == "<" else "be")


def ubi_crc(data: bytes) -> int:
    """UBI's CRC32 (Linux crc32(0xffffffff, ...): no post-inversion)."""
    return zlib.crc32(data) ^ 0xFFFFFFFF


def _ubi(d: Buffer, s: int) -> Hit | None:
    # Linux include/uapi/mtd/ubi-media.h: ubi_ec_hdr, version 1, hdr_crc over 60 bytes.
    if not _fits(d, s, 64) or d[s + 4] != 1:
        return None
    if ubi_crc(bytes(d[s : s + 60])) != _u32be(d, s + 60):
        return None
    return Hit(s, Format.UBI, None)


def _ubifs(d: Buffer, s: int) -> Hit | None:
    # Linux fs/ubifs/ubifs-media.h: common header, node type 6 = superblock node.
    if not _fits(d, s, 24) or d[s + 20] != 6:
        return None
    return Hit(s, Format.UBIFS, None)


def _cramfs(d: Buffer, s: int) -> Hit | None:
    # Linux include/uapi/linux/cramfs_fs.h: magic, size, then "Compressed ROMFS" at 16.
    if not _fits(d, s, 48) or bytes(d[s + 16 : s + 32]) != b"Compressed ROMFS":
        return None
    e = "<" if bytes(d[s : s + 4]) == b"\x45\x3d\xcd\x28" else ">"
    (size,) = struct.unpack_from(e + "I", d, s + 4)
    return Hit(s, Format.CRAMFS, size if size >= 76 else None, "le" if e == "<" else "be")


def _romfs(d: Buffer, s: int) -> Hit | None:
    # Linux Documentation/filesystems/romfs.rst: "-rom1fs-", full size (big-endian).
    if not _fits(d, s, 32):
        return None
    size = _u32be(d, s + 8)
    return Hit(s, Format.ROMFS, size) if size >= 32 else None


# (magic, distance of the magic from the container start, validator)
_SIGNATURES: tuple[tuple[bytes, int, Validator], ...] = (
    (b"hsqs", 0, _squashfs),
    (b"sqsh", 0, _squashfs),
    (b"shsq", 0, _squashfs),
    (b"qshs", 0, _squashfs),
    (b"070701", 0, _cpio),
    (b"070702", 0, _cpio),
    (b"070707", 0, _cpio),
    (b"ustar", 257, _tar),
    (b"\x1f\x8b\x08", 0, _gzip),
    (b"\xfd7zXZ\x00", 0, _xz),
    (b"\x5d\x00\x00", 0, _lzma),
    (b"BZh", 0, _bzip2),
    (b"\x28\xb5\x2f\xfd", 0, _zstd),
    (b"\x04\x22\x4d\x18", 0, _lz4),
    (b"PK\x03\x04", 0, _zip),
    (b"7z\xbc\xaf\x27\x1c", 0, _sevenzip),
    (b"\x27\x05\x19\x56", 0, _uimage),
    (b"\xd0\x0d\xfe\xed", 0, _fdt),
    (b"HDR0", 0, _trx),
    (b"\x53\xef", 1080, _ext),
    (b"\x85\x19", 0, _jffs2),
    (b"\x19\x85", 0, _jffs2),
    (b"UBI#", 0, _ubi),
    (b"\x31\x18\x10\x06", 0, _ubifs),
    (b"\x45\x3d\xcd\x28", 0, _cramfs),
    (b"\x28\xcd\x3d\x45", 0, _cramfs),
    (b"-rom1fs-", 0, _romfs),
)


class _Cursor:
    """The next validated hit of one signature in a window; remembers what it already examined."""

    def __init__(self, data: Buffer, magic: bytes, delta: int, validate: Validator) -> None:
        self._data, self._magic, self._delta, self._validate = data, magic, delta, validate
        self._examined = 0
        self._hit: Hit | None = None
        self._scan_from = 0
        self._scanned_to = -1  # no valid hit starts in [_scan_from, _scanned_to)

    def advance(self, pos: int, stop: int) -> Hit | None:
        """The first valid hit starting in [pos, stop), or None."""
        if self._hit is not None and self._hit.offset >= pos:
            return self._hit if self._hit.offset < stop else None
        self._hit = None
        if self._scan_from <= pos <= self._scanned_to:
            at = self._scanned_to
        else:
            self._scan_from = at = pos
        while self._examined < _MAX_CANDIDATES:
            found = _find(self._data, self._magic, at + self._delta, stop + self._delta + len(self._magic))
            if found < 0:
                self._scanned_to = max(at, stop)
                return None
            self._examined += 1
            start = found - self._delta
            hit = self._validate(self._data, start)
            if hit is not None:
                self._hit, self._scanned_to = hit, start
                return hit
            at = start + 1
        self._scanned_to = 1 << 62
        return None


class Carver:
    """Yields hits of ``data`` in offset order; :meth:`skip_to` jumps past a consumed region.

    The buffer is searched in 1 MiB windows, so a region that will be skipped is not searched
    beyond the window its container starts in.
    """

    _WINDOW = 1 << 20

    def __init__(self, data: Buffer, start: int = 0, end: int | None = None) -> None:
        self._stop = len(data) if end is None else min(end, len(data))
        self._cursors = [_Cursor(data, m, delta, v) for m, delta, v in _SIGNATURES]
        self._pos = start

    def skip_to(self, pos: int) -> None:
        """Ignore hits before ``pos`` from now on."""
        self._pos = max(self._pos, pos)

    def __iter__(self) -> Iterator[Hit]:
        while self._pos < self._stop:
            stop = min(self._stop, self._pos + self._WINDOW)
            hits = [h for c in self._cursors if (h := c.advance(self._pos, stop)) is not None]
            if not hits:
                self._pos = stop
                continue
            best = min(hits, key=lambda h: h.offset)
            self._pos = best.offset + 1
            yield best


def scan(data: Buffer, start: int = 0, end: int | None = None) -> list[Hit]:
    """Every hit in ``data[start:end]`` in offset order (overlapping hits included)."""
    return list(Carver(data, start, end))


def hit_at(data: Buffer, offset: int = 0) -> Hit | None:
    """The hit starting exactly at ``offset``, if any (squashfs before cpio before the rest)."""
    for magic, delta, validate in _SIGNATURES:
        at = offset + delta
        if _fits(data, at, len(magic)) and bytes(data[at : at + len(magic)]) == magic:
            hit = validate(data, offset)
            if hit is not None:
                return hit
    return None
