"""A native reader for squashfs 2.x, 3.x and 4.0, including the vendor variants Debian cannot read.

Debian's ``unsquashfs`` reads squashfs 4.0 (and, without LZMA, 3.x); firmware from Broadcom,
Realtek and old OpenWrt/DD-WRT SDKs uses squashfs 2.x/3.x, often big-endian, with LZMA blocks in
one of several home-made framings and sometimes the ``shsq`` magic. Binwalk and unblob read those
only through the unpackaged ``sasquatch``; this module reads them with the standard library.

Theory of operation
-------------------
A squashfs image is a superblock, data blocks, then metadata tables: inodes, directories,
fragments and owners. Metadata lives in blocks of at most 8 KiB, each prefixed by a 16-bit length
whose top bit says "stored uncompressed" (squashfs_fs.h ``SQUASHFS_COMPRESSED_BIT``); an inode or
directory is addressed by a reference ``(block << 16) | offset``: the byte offset of its metadata
block from the start of its table and the offset inside the decompressed block. Data blocks are
described by 32-bit words whose bit 24 says "stored uncompressed"; a zero word is a sparse block.

The three on-disk generations differ in their structures, not in that scheme, so each is one
declarative :class:`_Layout`: for every structure, the bit position and width of each field, as in
the ``SQUASHFS_SWAP_*`` macros of the Linux 2.6 ``squashfs_fs.h`` (3.1, with the 2.x compatibility
structures). A field is read by :func:`_bits`: on a little-endian image bit 0 is the least
significant bit of the first byte (GCC's bitfield order there), on a big-endian image it is the
most significant one. Version 4.0 is always little-endian and byte-aligned, so the same reader
serves it.

Every offset and length read from the image is checked against the image's size before it is
used; directories are walked with an explicit stack, depth-bounded, and a directory reached twice
(a loop, or a shared subtree that would make the walk exponential) is an error. Corrupt input
raises :class:`~fleetguard.firmware.errors.ImageInvalid` naming the offset; the file-count and
byte limits raise :class:`~fleetguard.firmware.errors.ExtractionLimit`.

Gaps: squashfs 1.x, LZO and LZ4 (no codec in the standard library) are refused with
:class:`UnsupportedSquashfs`; zstd needs the ``zstd`` program. Extended attributes, the export
table and hard-link identity are not reported (a hard-linked file appears once per name, as with
``unsquashfs -lln``). The 2.x layout follows the kernel's compatibility structures but has been
checked only against images this project's test writer produces.
"""

from __future__ import annotations

import lzma
import mmap
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fleetguard.firmware.errors import ExtractionLimit, ImageInvalid
from fleetguard.firmware.model import EntryKind, FileEntry

__all__ = ["SquashfsImage", "UnsupportedSquashfs", "read_squashfs"]

GIB = 1 << 30

# squashfs_fs.h: SQUASHFS_MAGIC 0x73717368 ("hsqs" little-endian, "sqsh" big-endian) and
# SQUASHFS_MAGIC_LZMA 0x71736873 of the sqlzma patches used by Broadcom/DD-WRT/Netgear SDKs.
_MAGICS = frozenset({b"hsqs", b"sqsh", b"shsq", b"qshs"})
_METADATA_SIZE = 8192  # SQUASHFS_METADATA_SIZE
_META_UNCOMPRESSED = 1 << 15  # SQUASHFS_COMPRESSED_BIT
_BLOCK_UNCOMPRESSED = 1 << 24  # SQUASHFS_COMPRESSED_BIT_BLOCK
_NO_FRAGMENT = 0xFFFFFFFF  # SQUASHFS_INVALID_FRAG
_SAME_GID = 255  # SQUASHFS_GUIDS (3.x, 2.x): "the gid is the uid"
_CHECK_FLAG = 1 << 2  # SQUASHFS_CHECK (2.x, 3.x): a 0xff marker byte follows each metadata length
_MAX_DEPTH = 256
_MAX_NAME = 256  # SQUASHFS_NAME_LEN
_MAX_SYMLINK = 65536
_MAX_DIR_COUNT = 256  # entries per directory header (mksquashfs never writes more)
_CACHE_BLOCKS = 1024  # decompressed metadata/fragment blocks kept; bounds memory on hostile images

# Squashfs 4.0 compression ids (squashfs-tools squashfs_fs.h: ZLIB_COMPRESSION ...).
_V4_COMPRESSION = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


class UnsupportedSquashfs(ImageInvalid):
    """A well-formed squashfs this reader cannot decode (version 1.x, LZO, LZ4, zstd without the tool)."""

    code = "firmware-squashfs-unsupported"

    def __init__(self, message: str, *, variant: str) -> None:
        super().__init__(message, hint="extract it with sasquatch or a squashfs-tools build that has it")
        self.variant = variant


# --- bit-packed structures ----------------------------------------------------------------------

_Fields = Mapping[str, tuple[int, int]]  # field name -> (bit position, width)


def _bits(raw: bytes, pos: int, width: int, big_endian: bool) -> int:
    """The field at bit ``pos`` of ``width`` bits, in squashfs_fs.h's ``SQUASHFS_SWAP`` numbering."""
    first, last = pos // 8, (pos + width + 7) // 8
    if big_endian:
        chunk = int.from_bytes(raw[first:last], "big")
        shift = (last - first) * 8 - pos % 8 - width
    else:
        chunk = int.from_bytes(raw[first:last], "little")
        shift = pos % 8
    return (chunk >> shift) & ((1 << width) - 1)


def _unpack(raw: bytes, fields: _Fields, big_endian: bool) -> dict[str, int]:
    return {name: _bits(raw, pos, width, big_endian) for name, (pos, width) in fields.items()}


@dataclass(frozen=True, slots=True)
class _InodeShape:
    """One inode type: what it is, its fixed size in bytes, and the fields this reader needs."""

    kind: EntryKind
    size: int
    fields: _Fields = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Layout:
    """The structures of one squashfs generation (bit positions from squashfs_fs.h)."""

    header: _Fields  # inode_type, mode, uid, gid
    base_size: int
    inodes: Mapping[int, _InodeShape]
    dir_header: tuple[int, _Fields]  # count, start_block
    dir_entry: tuple[int, _Fields]  # offset, size (name length - 1)
    dir_size_bias: int  # a directory's file_size counts "." and ".." as 3 bytes from 3.0 on
    fragment_entry: tuple[int, _Fields]  # start_block, size
    fragment_index_width: int
    gid_is_index_or_same: bool  # 2.x/3.x: gid 255 means "same as uid"; 4.0 indexes one id table


def _dir(
    size: int, file_size: tuple[int, int], offset: tuple[int, int], start: tuple[int, int]
) -> _InodeShape:
    return _InodeShape(
        EntryKind.DIRECTORY, size, {"file_size": file_size, "offset": offset, "start_block": start}
    )


def _reg(
    size: int, start: tuple[int, int], frag: tuple[int, int], off: tuple[int, int], fsize: tuple[int, int]
) -> _InodeShape:
    return _InodeShape(
        EntryKind.FILE, size, {"start_block": start, "fragment": frag, "offset": off, "file_size": fsize}
    )


def _symlink(size: int, length: tuple[int, int]) -> _InodeShape:
    return _InodeShape(EntryKind.SYMLINK, size, {"symlink_size": length})


# squashfs-tools 4.x squashfs_fs.h: squashfs_{dir,reg,symlink,dev,ipc,ldir,lreg,...}_inode_header.
_V4 = _Layout(
    header={"inode_type": (0, 16), "mode": (16, 16), "uid": (32, 16), "gid": (48, 16)},
    base_size=16,
    inodes={
        1: _dir(32, (192, 16), (208, 16), (128, 32)),
        2: _reg(32, (128, 32), (160, 32), (192, 32), (224, 32)),
        3: _symlink(24, (160, 32)),
        4: _InodeShape(EntryKind.DEVICE, 24),
        5: _InodeShape(EntryKind.DEVICE, 24),
        6: _InodeShape(EntryKind.FIFO, 20),
        7: _InodeShape(EntryKind.SOCKET, 20),
        8: _dir(40, (160, 32), (272, 16), (192, 32)),
        9: _reg(56, (128, 64), (352, 32), (384, 32), (192, 64)),
        10: _symlink(24, (160, 32)),
        11: _InodeShape(EntryKind.DEVICE, 28),
        12: _InodeShape(EntryKind.DEVICE, 28),
        13: _InodeShape(EntryKind.FIFO, 24),
        14: _InodeShape(EntryKind.SOCKET, 24),
    },
    dir_header=(12, {"count": (0, 32), "start_block": (32, 32)}),
    dir_entry=(8, {"offset": (0, 16), "size": (48, 16)}),
    dir_size_bias=3,
    fragment_entry=(16, {"start_block": (0, 64), "size": (64, 32)}),
    fragment_index_width=8,
    gid_is_index_or_same=False,
)

# Linux 2.6 squashfs_fs.h (squashfs 3.1): SQUASHFS_SWAP_*_INODE_HEADER, _DIR_HEADER, _DIR_ENTRY.
_V3 = _Layout(
    header={"inode_type": (0, 4), "mode": (4, 12), "uid": (16, 8), "gid": (24, 8)},
    base_size=12,
    inodes={
        1: _dir(28, (128, 19), (147, 13), (160, 32)),
        2: _reg(32, (96, 64), (160, 32), (192, 32), (224, 32)),
        3: _symlink(18, (128, 16)),
        4: _InodeShape(EntryKind.DEVICE, 18),
        5: _InodeShape(EntryKind.DEVICE, 18),
        6: _InodeShape(EntryKind.FIFO, 16),
        7: _InodeShape(EntryKind.SOCKET, 16),
        8: _dir(31, (128, 27), (155, 13), (168, 32)),
        9: _reg(40, (128, 64), (192, 32), (224, 32), (256, 64)),
    },
    dir_header=(9, {"count": (0, 8), "start_block": (8, 32)}),
    dir_entry=(5, {"offset": (0, 13), "size": (16, 8)}),
    dir_size_bias=3,
    fragment_entry=(16, {"start_block": (0, 64), "size": (64, 32)}),
    fragment_index_width=8,
    gid_is_index_or_same=True,
)

# The same header, CONFIG_SQUASHFS_2_0_COMPATIBILITY: squashfs_*_inode_header_2 and friends.
_V2 = _Layout(
    header={"inode_type": (0, 4), "mode": (4, 12), "uid": (16, 8), "gid": (24, 8)},
    base_size=4,
    inodes={
        1: _dir(15, (32, 19), (51, 13), (96, 24)),
        2: _reg(24, (64, 32), (96, 32), (128, 32), (160, 32)),
        3: _symlink(6, (32, 16)),
        4: _InodeShape(EntryKind.DEVICE, 6),
        5: _InodeShape(EntryKind.DEVICE, 6),
        6: _InodeShape(EntryKind.FIFO, 4),
        7: _InodeShape(EntryKind.SOCKET, 4),
        8: _dir(18, (32, 27), (59, 13), (104, 24)),
    },
    dir_header=(4, {"count": (0, 8), "start_block": (8, 24)}),
    dir_entry=(3, {"offset": (0, 13), "size": (16, 8)}),
    dir_size_bias=0,
    fragment_entry=(8, {"start_block": (0, 32), "size": (32, 32)}),
    fragment_index_width=4,
    gid_is_index_or_same=True,
)


# --- compression ----------------------------------------------------------------------------------


class _Codec(Protocol):
    name: str

    def decompress(self, data: bytes, limit: int) -> bytes:
        """Return at most ``limit`` bytes; raise ValueError/zlib.error/LZMAError on bad input."""


def _bounded(out: bytes, limit: int) -> bytes:
    if len(out) > limit:
        raise ValueError(f"block decompresses to more than {limit} bytes")
    return out


class _Zlib:
    name = "gzip"

    def decompress(self, data: bytes, limit: int) -> bytes:
        return _bounded(zlib.decompressobj().decompress(data, limit + 1), limit)


class _Lzma:
    """liblzma in one framing: .xz, lzma-alone (13-byte header), or raw LZMA1 with given filters."""

    def __init__(
        self, name: str, fmt: int, filters: list[dict[str, int]] | None = None, skip: int = 0
    ) -> None:
        self.name, self._format, self._filters, self._skip = name, fmt, filters, skip

    def decompress(self, data: bytes, limit: int) -> bytes:
        decoder = lzma.LZMADecompressor(format=self._format, filters=self._filters)
        return _bounded(decoder.decompress(data[self._skip :], limit + 1), limit)


def _lzma1(props: int, dict_size: int) -> list[dict[str, int]]:
    """LZMA1 filter from the properties byte ``(pb * 5 + lp) * 9 + lc`` (LZMA SDK lzma.txt)."""
    if props >= 9 * 5 * 5:
        raise ValueError(f"bad LZMA properties byte {props:#x}")
    lc, rest = props % 9, props // 9
    return [
        {
            "id": lzma.FILTER_LZMA1,
            "lc": lc,
            "lp": rest % 5,
            "pb": rest // 5,
            "dict_size": max(dict_size, 4096),
        }
    ]


class _SniffedLzma:
    """The LZMA framings of 2.x/3.x vendor images, told apart per block, with zlib blocks mixed in.

    sqlzma (Broadcom, DD-WRT) writes lzma-alone blocks (properties, dictionary size, 64-bit size)
    and keeps zlib blocks where they are smaller; Realtek-style kernels drop the size field, and
    some drop the whole header and assume lc=3 lp=0 pb=2. A range-coded LZMA stream always starts
    with a zero byte (LZMA SDK, RangeEnc_Init), which tells the three framings apart.
    """

    def __init__(self, block_size: int) -> None:
        self.name = "lzma"
        self._dict = max(block_size, _METADATA_SIZE)

    def decompress(self, data: bytes, limit: int) -> bytes:
        return self._codec_for(data).decompress(data, limit)

    def _codec_for(self, data: bytes) -> _Codec:
        if len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
            return _Zlib()  # RFC 1950 2.2: CM=8 and the FCHECK bits
        if data[:1] == b"\x00":
            return _Lzma("lzma-raw", lzma.FORMAT_RAW, _lzma1(0x5D, self._dict))
        if len(data) > 13 and data[13] == 0:
            return _Lzma("lzma-alone", lzma.FORMAT_ALONE)
        if len(data) > 5 and data[5] == 0:
            dict_size = int.from_bytes(data[1:5], "little")
            return _Lzma("lzma-props", lzma.FORMAT_RAW, _lzma1(data[0], min(dict_size, 1 << 26)), skip=5)
        raise ValueError("neither zlib nor a known LZMA framing")

    def variant(self, data: bytes) -> str:
        """The framing of one block, for :attr:`SquashfsImage.compression`."""
        codec = self._codec_for(data)
        return "zlib" if codec.name == "gzip" else codec.name


class _ZstdTool:
    """zstd through the ``zstd`` program: the standard library has no zstd before Python 3.14."""

    name = "zstd"

    def __init__(self, program: str) -> None:
        self._program = program

    def decompress(self, data: bytes, limit: int) -> bytes:
        done = subprocess.run(  # noqa: S603 - a fixed argv of the resolved zstd path, no shell
            [self._program, "-d", "-q", "-c"], input=data, capture_output=True, check=False, timeout=60
        )
        if done.returncode != 0:
            raise ValueError(f"zstd: {done.stderr.decode(errors='replace').strip()}")
        return _bounded(done.stdout, limit)


def _v4_codec(compression: str) -> _Codec:
    if compression == "gzip":
        return _Zlib()
    if compression == "xz":
        return _Lzma("xz", lzma.FORMAT_XZ)
    if compression == "lzma":
        return _Lzma("lzma", lzma.FORMAT_ALONE)  # squashfs-tools lzma_wrapper.c: 13-byte header
    program = shutil.which("zstd") if compression == "zstd" else None
    if program is not None:
        return _ZstdTool(program)
    raise UnsupportedSquashfs(
        f"squashfs 4.0 with {compression} compression is not supported", variant=compression
    )


# --- the image ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Superblock:
    major: int
    minor: int
    big_endian: bool
    block_size: int
    flags: int
    fragments: int
    root_inode: int
    bytes_used: int
    inode_table: int
    directory_table: int
    fragment_table: int
    id_tables: tuple[tuple[int, int], ...]  # (start, count): 4.0 id index; 2.x/3.x uid, guid arrays
    compression_id: int


@dataclass(frozen=True, slots=True)
class _Inode:
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    values: Mapping[str, int]
    tail: tuple[int, int]  # metadata position just after the fixed part: (block, offset)
    where: int  # absolute offset of its metadata block, for errors


def _parse_superblock(raw: bytes) -> _Superblock:
    if raw[:4] not in _MAGICS:
        raise ImageInvalid(f"no squashfs magic: {raw[:4]!r}")
    major_le, major_be = int.from_bytes(raw[28:30], "little"), int.from_bytes(raw[28:30], "big")
    big = not 1 <= major_le <= 4
    major = major_be if big else major_le
    if not 1 <= major <= 4:
        raise ImageInvalid(f"squashfs major version {major_le} is not 1..4")
    if major == 1:
        raise UnsupportedSquashfs("squashfs 1.x is not supported", variant="1.x")
    end = ">" if big else "<"
    if major == 4:
        return _superblock_v4(struct.unpack_from(end + "5I6H8Q", raw), big)
    return _superblock_v3(struct.unpack_from(end + "7I4H3BIQ3I7Q", raw), big)


def _superblock_v4(f: tuple[int, ...], big: bool) -> _Superblock:
    # squashfs-tools squashfs_fs.h struct squashfs_super_block (4.0)
    _magic, _inodes, _mtime, block_size, fragments, comp, _log, flags, no_ids, major, minor = f[:11]
    root, used, id_table, _xattr, inodes, dirs, frags, _lookup = f[11:]
    return _Superblock(
        major,
        minor,
        big,
        block_size,
        flags,
        fragments,
        root,
        used,
        inodes,
        dirs,
        frags,
        ((id_table, no_ids),),
        comp,
    )


def _superblock_v3(f: tuple[int, ...], big: bool) -> _Superblock:
    # Linux 2.6 squashfs_fs.h struct squashfs_super_block (3.1), including the 2.x "_2" fields.
    used2, uid2, guid2, inodes2, dirs2 = f[2:7]
    major, minor, _bs1, _log, flags, no_uids, no_guids, _mtime, root, block_size, fragments, frags2 = f[7:19]
    used, uid, guid, inodes, dirs, frags, _lookup = f[19:26]
    if major == 2:  # squashfs-tools unsquashfs read_super: 2.x has only the 32-bit fields
        used, uid, guid, inodes, dirs, frags = used2, uid2, guid2, inodes2, dirs2, frags2
    ids = ((uid, no_uids), (guid, no_guids))
    return _Superblock(
        major, minor, big, block_size, flags, fragments, root, used, inodes, dirs, frags, ids, 0
    )


class SquashfsImage:
    """One squashfs filesystem, read lazily from a buffer; made by :func:`read_squashfs`.

    ``version`` is (major, minor); ``compression`` is ``gzip``/``xz``/``lzma``/``zstd`` for 4.0 and,
    for 2.x/3.x, ``zlib`` or the LZMA framing of the first inode block (``lzma-alone``,
    ``lzma-props``, ``lzma-raw``; zlib blocks mixed in are read too).
    """

    def __init__(self, view: memoryview, base: int, sb: _Superblock, max_files: int, max_bytes: int) -> None:
        self.version = (sb.major, sb.minor)
        self.big_endian = sb.big_endian
        self._view, self._base, self._sb = view, base, sb
        self._max_files, self._max_bytes, self._bytes_out = max_files, max_bytes, 0
        self._layout = {4: _V4, 3: _V3, 2: _V2}[sb.major]
        self._end = ">" if sb.big_endian else "<"
        self._marker = 1 if sb.major < 4 and sb.flags & _CHECK_FLAG else 0
        self._meta_cache: dict[int, tuple[bytes, int]] = {}
        self._frag_cache: dict[int, bytes] = {}
        self._codec: _Codec
        if sb.major == 4:
            self.compression = _V4_COMPRESSION.get(sb.compression_id, f"unknown-{sb.compression_id}")
            self._codec = _v4_codec(self.compression)
        else:
            sniffed = _SniffedLzma(sb.block_size)
            self._codec = sniffed
            self.compression = self._sniff(sniffed)
        self._uids, self._gids = self._read_ids()

    @property
    def size(self) -> int:
        """Bytes the filesystem occupies from its superblock (``bytes_used``)."""
        return self._sb.bytes_used

    # --- raw access, every range checked -----------------------------------------------------

    def _slice(self, pos: int, length: int, what: str) -> bytes:
        if pos < 0 or length < 0 or pos + length > self._sb.bytes_used:
            raise ImageInvalid(
                f"squashfs {what} at {self._base + pos:#x} (+{length}) lies outside the image "
                f"({self._sb.bytes_used} bytes at {self._base:#x})"
            )
        return bytes(self._view[pos : pos + length])

    def _decompress(self, data: bytes, limit: int, pos: int, what: str) -> bytes:
        try:
            return self._codec.decompress(data, limit)
        except (ValueError, zlib.error, lzma.LZMAError, subprocess.SubprocessError) as exc:
            raise ImageInvalid(
                f"squashfs {what} at {self._base + pos:#x} does not decompress: {exc}"
            ) from exc

    def _sniff(self, codec: _SniffedLzma) -> str:
        """The compression of the first inode block (2.x/3.x say nothing about it)."""
        pos = self._sb.inode_table
        header = self._u16(pos, "inode table")
        if header & _META_UNCOMPRESSED:
            return "none"
        payload = self._slice(pos + 2 + self._marker, self._meta_length(pos), "inode table")
        try:
            return codec.variant(payload)
        except ValueError as exc:
            raise ImageInvalid(f"squashfs inode table at {self._base + pos:#x}: {exc}") from exc

    def _u16(self, pos: int, what: str) -> int:
        return int.from_bytes(self._slice(pos, 2, what), "big" if self.big_endian else "little")

    def _meta_length(self, pos: int) -> int:
        header = self._u16(pos, "metadata header")
        length = header & ~_META_UNCOMPRESSED
        if length == 0 or length > _METADATA_SIZE * 2:
            raise ImageInvalid(f"squashfs metadata block at {self._base + pos:#x} has length {length}")
        return length

    def _metadata(self, pos: int) -> tuple[bytes, int]:
        """The decompressed metadata block at ``pos`` and the position of the next one."""
        cached = self._meta_cache.get(pos)
        if cached is not None:
            return cached
        header = self._u16(pos, "metadata header")
        length = self._meta_length(pos)
        start = pos + 2 + self._marker
        if self._marker and self._slice(pos + 2, 1, "metadata marker") != b"\xff":
            raise ImageInvalid(f"squashfs metadata marker corrupt at {self._base + pos + 2:#x}")
        payload = self._slice(start, length, "metadata block")
        if header & _META_UNCOMPRESSED:
            block = payload[:_METADATA_SIZE]
        else:
            block = self._decompress(payload, _METADATA_SIZE, pos, "metadata block")
        if not block:
            raise ImageInvalid(f"squashfs metadata block at {self._base + pos:#x} is empty")
        if len(self._meta_cache) >= _CACHE_BLOCKS:
            self._meta_cache.clear()
        self._meta_cache[pos] = (block, start + length)
        return block, start + length

    def _read_meta(self, pos: int, offset: int, length: int) -> tuple[bytes, int, int]:
        """``length`` bytes of metadata from (block ``pos``, ``offset``); returns them and where they end."""
        parts: list[bytes] = []
        while length > 0:
            block, following = self._metadata(pos)
            if offset > len(block):
                raise ImageInvalid(f"squashfs metadata offset {offset} past block at {self._base + pos:#x}")
            piece = block[offset : offset + length]
            parts.append(piece)
            length -= len(piece)
            offset += len(piece)
            if offset >= len(block) and length > 0:
                pos, offset = following, 0
        return b"".join(parts), pos, offset

    def _u32s(self, raw: bytes) -> tuple[int, ...]:
        return struct.unpack(f"{self._end}{len(raw) // 4}I", raw)

    # --- tables --------------------------------------------------------------------------------

    def _read_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self._sb.major == 4:
            ((start, count),) = self._sb.id_tables
            ids = self._indexed_table(start, count, 4, 8, "id table")
            return ids, ids
        (ustart, ucount), (gstart, gcount) = self._sb.id_tables
        # 2.x/3.x: plain arrays of 32-bit ids (squashfs_fs_sb.h uid[]), never compressed.
        return self._u32s(self._slice(ustart, 4 * ucount, "uid table")), self._u32s(
            self._slice(gstart, 4 * gcount, "guid table")
        )

    def _indexed_table(
        self, start: int, count: int, width: int, index_width: int, what: str
    ) -> tuple[int, ...]:
        per_block = _METADATA_SIZE // width
        blocks = -(-count // per_block)
        index = self._index(start, blocks, index_width, what)
        values: list[int] = []
        for number, pointer in enumerate(index):
            n = min(per_block, count - number * per_block)
            raw, _, _ = self._read_meta(pointer, 0, n * width)
            values.extend(self._u32s(raw))
        return tuple(values)

    def _index(self, start: int, count: int, width: int, what: str) -> tuple[int, ...]:
        fmt = f"{self._end}{count}{'Q' if width == 8 else 'I'}"
        return struct.unpack(fmt, self._slice(start, count * width, what + " index"))

    def _fragment(self, number: int) -> bytes:
        cached = self._frag_cache.get(number)
        if cached is not None:
            return cached
        if number >= self._sb.fragments:
            raise ImageInvalid(f"squashfs fragment {number} of {self._sb.fragments} does not exist")
        width, fields = self._layout.fragment_entry
        per_block = _METADATA_SIZE // width
        (pointer,) = self._index(
            self._sb.fragment_table + number // per_block * self._layout.fragment_index_width,
            1,
            self._layout.fragment_index_width,
            "fragment table",
        )
        raw, _, _ = self._read_meta(pointer, number % per_block * width, width)
        entry = _unpack(raw, fields, self.big_endian)
        block = self._data_block(entry["start_block"], entry["size"], self._sb.block_size, exact=False)
        if len(self._frag_cache) >= _CACHE_BLOCKS:
            self._frag_cache.clear()
        self._frag_cache[number] = block
        return block

    def _data_block(self, pos: int, word: int, expected: int, *, exact: bool = True) -> bytes:
        length = word & ~_BLOCK_UNCOMPRESSED
        if length > self._sb.block_size:
            raise ImageInvalid(f"squashfs data block at {self._base + pos:#x} claims {length} bytes")
        payload = self._slice(pos, length, "data block")
        if word & _BLOCK_UNCOMPRESSED:
            block = payload
        else:
            block = self._decompress(payload, self._sb.block_size, pos, "data block")
        if exact and len(block) != expected:
            raise ImageInvalid(
                f"squashfs data block at {self._base + pos:#x} holds {len(block)} bytes, expected {expected}"
            )
        return block

    # --- inodes and directories ----------------------------------------------------------------

    def _inode(self, ref: int) -> _Inode:
        block, offset = ref >> 16, ref & 0xFFFF
        pos = self._sb.inode_table + block
        layout = self._layout
        head, _, _ = self._read_meta(pos, offset, layout.base_size)
        header = _unpack(head, layout.header, self.big_endian)
        shape = layout.inodes.get(header["inode_type"])
        if shape is None:
            raise ImageInvalid(f"squashfs inode type {header['inode_type']} at {self._base + pos:#x}")
        raw, tail_pos, tail_off = self._read_meta(pos, offset, shape.size)
        values = _unpack(raw, shape.fields, self.big_endian)
        uid, gid = self._owner(header["uid"], header["gid"], pos)
        size = values.get("file_size", values.get("symlink_size", 0))
        mode = header["mode"] & 0o7777
        return _Inode(shape.kind, mode, uid, gid, size, values, (tail_pos, tail_off), self._base + pos)

    def _owner(self, uid_index: int, gid_index: int, pos: int) -> tuple[int, int]:
        if uid_index >= len(self._uids):
            raise ImageInvalid(f"squashfs inode at {self._base + pos:#x}: uid index {uid_index} out of range")
        uid = self._uids[uid_index]
        if self._layout.gid_is_index_or_same and gid_index == _SAME_GID:
            return uid, uid
        if gid_index >= len(self._gids):
            raise ImageInvalid(f"squashfs inode at {self._base + pos:#x}: gid index {gid_index} out of range")
        return uid, self._gids[gid_index]

    def _children(self, node: _Inode) -> Iterator[tuple[str, int]]:
        """(name, inode reference) of each entry of a directory inode, as stored."""
        layout = self._layout
        remaining = node.size - layout.dir_size_bias
        pos = self._sb.directory_table + node.values["start_block"]
        offset = node.values["offset"]
        (hsize, hfields), (esize, efields) = layout.dir_header, layout.dir_entry
        while remaining > 0:
            raw, pos, offset = self._read_meta(pos, offset, hsize)
            header = _unpack(raw, hfields, self.big_endian)
            count = header["count"] + 1
            remaining -= hsize
            if count > _MAX_DIR_COUNT or remaining < 0:
                raise ImageInvalid(f"squashfs directory header at {node.where:#x} is corrupt")
            for _ in range(count):
                raw, pos, offset = self._read_meta(pos, offset, esize)
                entry = _unpack(raw, efields, self.big_endian)
                name, pos, offset = self._read_meta(pos, offset, entry["size"] + 1)
                remaining -= esize + len(name)
                yield _check_name(name, node.where), (header["start_block"] << 16) | entry["offset"]

    def _symlink_target(self, node: _Inode) -> str:
        if node.size > _MAX_SYMLINK:
            raise ImageInvalid(f"squashfs symlink at {node.where:#x} is {node.size} bytes long")
        raw, _, _ = self._read_meta(*node.tail, node.size)
        return raw.decode("utf-8", "surrogateescape")

    # --- file contents -------------------------------------------------------------------------

    def _file_bytes(self, node: _Inode) -> bytes:
        size, block_size = node.size, self._sb.block_size
        if size > self._max_bytes - self._bytes_out:
            raise ExtractionLimit(f"squashfs file of {size} bytes at {node.where:#x} exceeds the byte limit")
        fragment = node.values["fragment"]
        full, tail = divmod(size, block_size)
        count = full + (1 if tail and fragment == _NO_FRAGMENT else 0)
        words = self._u32s(self._read_meta(*node.tail, 4 * count)[0])
        parts: list[bytes] = []
        pos = node.values["start_block"]
        for number, word in enumerate(words):
            expected = block_size if number < full else tail
            if word & ~_BLOCK_UNCOMPRESSED == 0:
                parts.append(bytes(expected))  # sparse block (squashfs 4.0, 3.3+)
                continue
            parts.append(self._data_block(pos, word, expected))
            pos += word & ~_BLOCK_UNCOMPRESSED
        if tail and fragment != _NO_FRAGMENT:
            offset = node.values["offset"]
            piece = self._fragment(fragment)[offset : offset + tail]
            if len(piece) != tail:
                raise ImageInvalid(
                    f"squashfs fragment {fragment} is too short for the file at {node.where:#x}"
                )
            parts.append(piece)
        self._bytes_out += size
        return b"".join(parts)

    # --- the walk ------------------------------------------------------------------------------

    def entries(self) -> Iterator[tuple[FileEntry, Callable[[], bytes] | None]]:
        """Every entry, directories before their contents, with a reader for regular files.

        The reader returns the file's bytes; it raises ExtractionLimit when the bytes returned in
        total would pass ``max_bytes``. Raises ImageInvalid (corrupt or looping tree) and
        ExtractionLimit (more than ``max_files`` entries).
        """
        root = self._inode(self._sb.root_inode)
        if root.kind is not EntryKind.DIRECTORY:
            raise ImageInvalid(f"squashfs root inode at {root.where:#x} is not a directory")
        yield FileEntry("/", root.kind, root.mode, root.uid, root.gid, root.size), None
        seen_dirs = {self._sb.root_inode}
        stack: list[tuple[str, Iterator[tuple[str, int]]]] = [("", self._children(root))]
        produced = 1
        while stack:
            prefix, children = stack[-1]
            item = next(children, None)
            if item is None:
                stack.pop()
                continue
            produced += 1
            if produced > self._max_files:
                raise ExtractionLimit(f"squashfs has more than {self._max_files} entries")
            name, ref = item
            node, path = self._inode(ref), f"{prefix}/{name}"
            yield self._entry(path, node)
            if node.kind is EntryKind.DIRECTORY:
                if ref in seen_dirs:
                    raise ImageInvalid(f"squashfs directory loop: {path} at {node.where:#x} is visited twice")
                if len(stack) >= _MAX_DEPTH:
                    raise ImageInvalid(f"squashfs directories nest deeper than {_MAX_DEPTH} at {path}")
                seen_dirs.add(ref)
                stack.append((path, self._children(node)))

    def _entry(self, path: str, node: _Inode) -> tuple[FileEntry, Callable[[], bytes] | None]:
        target = self._symlink_target(node) if node.kind is EntryKind.SYMLINK else None
        size = node.size if node.kind in (EntryKind.FILE, EntryKind.SYMLINK, EntryKind.DIRECTORY) else 0
        entry = FileEntry(path, node.kind, node.mode, node.uid, node.gid, size, link_target=target)
        if node.kind is EntryKind.FILE:
            return entry, lambda: self._file_bytes(node)
        return entry, None


def _check_name(raw: bytes, where: int) -> str:
    if not raw or len(raw) > _MAX_NAME or b"/" in raw or b"\x00" in raw or raw in (b".", b".."):
        raise ImageInvalid(f"squashfs directory at {where:#x} holds an invalid name {raw[:64]!r}")
    return raw.decode("utf-8", "surrogateescape")


def read_squashfs(
    data: bytes | memoryview | mmap.mmap,
    *,
    offset: int = 0,
    max_files: int = 200_000,
    max_bytes: int = 2 * GIB,
) -> SquashfsImage:
    """Open the squashfs filesystem at ``offset`` of ``data``; nothing is decompressed but its root.

    Returns a :class:`SquashfsImage` whose :meth:`~SquashfsImage.entries` walks the tree. Raises
    ImageInvalid when there is no squashfs there or its superblock or tables are corrupt (with the
    offset), and UnsupportedSquashfs (an ImageInvalid) for version 1.x, LZO, LZ4, or zstd without the
    ``zstd`` program. ``data`` must stay open while the image is used.
    """
    view = memoryview(data).cast("B")
    if offset < 0 or len(view) - offset < 120:
        raise ImageInvalid(f"no room for a squashfs superblock at {offset:#x} ({len(view)} bytes)")
    sb = _parse_superblock(bytes(view[offset : offset + 120]))
    if sb.bytes_used > len(view) - offset or sb.bytes_used < 96:
        raise ImageInvalid(
            f"squashfs at {offset:#x} claims {sb.bytes_used} bytes, "
            f"{len(view) - offset} are there (truncated?)"
        )
    if sb.block_size & (sb.block_size - 1) or not 4096 <= sb.block_size <= 1 << 20:
        raise ImageInvalid(f"squashfs at {offset:#x} has block size {sb.block_size}")
    return SquashfsImage(view[offset : offset + sb.bytes_used], offset, sb, max_files, max_bytes)
