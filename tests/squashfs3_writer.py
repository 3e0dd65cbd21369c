"""A test-only squashfs 3.1 writer, in either byte order, with zlib or one of the vendor LZMA framings.

No tool on this machine makes squashfs 3.x (Debian's mksquashfs writes 4.0 only), so the tests of
the native reader build their 3.x images here. The layout follows the Linux 2.6 ``squashfs_fs.h``
of squashfs 3.1 (struct squashfs_super_block, squashfs_*_inode_header, squashfs_dir_header,
squashfs_dir_entry, squashfs_fragment_entry) and mksquashfs 3.x's order: superblock, data blocks,
inode table, directory table, fragment entries and their index, uid and guid arrays.

Bitfields are packed the way GCC lays them out on each byte order: on a little-endian machine the
first field takes the least significant bits, on a big-endian machine the most significant ones
(:func:`_pack`). This is written independently of the reader's bit-position tables so that the
two check each other.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Node", "build"]

_TYPES = {"dir": 1, "file": 2, "symlink": 3, "blk": 4, "chr": 5, "fifo": 6, "socket": 7}
_LDIR, _LREG = 8, 9
_META = 8192
_MAGIC = 0x73717368
_MAGIC_LZMA = 0x71736873  # sqlzma's "shsq"
_RAW_LZMA = {"id": lzma.FILTER_LZMA1, "lc": 3, "lp": 0, "pb": 2, "dict_size": 1 << 16}


@dataclass(frozen=True)
class Node:
    """One entry to write: ``path`` absolute; ``kind`` one of dir/file/symlink/chr/blk/fifo/socket."""

    path: str
    kind: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    target: str = ""
    rdev: int = 0


def _pack(fields: list[tuple[int, int]], big_endian: bool) -> bytes:
    """C bitfields (value, width), declared in this order, as GCC packs them on that byte order."""
    total = sum(width for _, width in fields)
    assert total % 8 == 0
    acc = 0
    if big_endian:
        for value, width in fields:
            assert 0 <= value < 1 << width
            acc = (acc << width) | value
        return acc.to_bytes(total // 8, "big")
    shift = 0
    for value, width in fields:
        assert 0 <= value < 1 << width
        acc |= value << shift
        shift += width
    return acc.to_bytes(total // 8, "little")


def compress(data: bytes, compression: str) -> bytes:
    """One block in the given framing: zlib, lzma-alone, lzma-props (no size field), lzma-raw."""
    if compression == "zlib":
        return zlib.compress(data, 9)
    if compression == "lzma-alone":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    raw = lzma.compress(data, format=lzma.FORMAT_RAW, filters=[_RAW_LZMA])
    if compression == "lzma-raw":
        return raw
    assert compression == "lzma-props"
    return bytes([(2 * 5 + 0) * 9 + 3]) + struct.pack("<I", _RAW_LZMA["dict_size"]) + raw


class _Writer:
    def __init__(
        self,
        *,
        big_endian: bool,
        compression: str,
        block_size: int,
        fragments: bool,
        long_inodes: bool,
        check_data: bool,
        loop_dir: str | None,
    ) -> None:
        self.big, self.e = big_endian, ">" if big_endian else "<"
        self.compression, self.block_size = compression, block_size
        self.fragments, self.long_inodes, self.check_data = fragments, long_inodes, check_data
        self.loop_dir = loop_dir
        self.out = bytearray(119)  # the superblock, filled in last
        self.tables = {"inode": (bytearray(), bytearray()), "dir": (bytearray(), bytearray())}
        self.frag_entries: list[tuple[int, int]] = []
        self.frag_pending = bytearray()
        self.uids: list[int] = []
        self.gids: list[int] = []
        self.inode_count = 0

    # metadata: (done, pending) per table; a reference is (compressed offset of block, offset in it)
    def _meta_block(self, chunk: bytes) -> bytes:
        packed = compress(chunk, self.compression)
        header = len(packed) if len(packed) < len(chunk) else len(chunk) | 0x8000
        body = packed if len(packed) < len(chunk) else chunk
        return struct.pack(self.e + "H", header) + (b"\xff" if self.check_data else b"") + body

    def _meta_append(self, table: str, data: bytes) -> tuple[int, int]:
        done, pending = self.tables[table]
        where = (len(done), len(pending))
        pending += data
        while len(pending) >= _META:
            done += self._meta_block(bytes(pending[:_META]))
            del pending[:_META]
        return where

    def _meta_finish(self, table: str) -> bytes:
        done, pending = self.tables[table]
        if pending:
            done += self._meta_block(bytes(pending))
            pending.clear()
        return bytes(done)

    # data
    def _data_block(self, chunk: bytes) -> int:
        packed = compress(chunk, self.compression)
        if len(packed) < len(chunk):
            self.out += packed
            return len(packed)
        self.out += chunk
        return len(chunk) | 1 << 24

    def _flush_fragment(self) -> None:
        if self.frag_pending:
            start = len(self.out)
            self.frag_entries.append((start, self._data_block(bytes(self.frag_pending))))
            self.frag_pending.clear()

    def _file_data(self, data: bytes) -> tuple[int, list[int], int, int]:
        start, words, bs = len(self.out), [], self.block_size
        full = len(data) // bs if self.fragments else -(-len(data) // bs)
        words = [self._data_block(data[i * bs : (i + 1) * bs]) for i in range(full)]
        tail = data[full * bs :]
        if not (self.fragments and tail):
            return start, words, 0xFFFFFFFF, 0
        if len(self.frag_pending) + len(tail) > bs:
            self._flush_fragment()
        fragment, offset = len(self.frag_entries), len(self.frag_pending)
        self.frag_pending += tail
        return start, words, fragment, offset

    def _id(self, table: list[int], value: int) -> int:
        if value not in table:
            table.append(value)
        return table.index(value)

    # inodes, written children first (mksquashfs 3.x dir_scan2 order)
    def _base(self, itype: int, node: Node) -> list[tuple[int, int]]:
        self.inode_count += 1
        uid, gid = self._id(self.uids, node.uid), self._id(self.gids, node.gid)
        return [(itype, 4), (node.mode & 0o7777, 12), (uid, 8), (gid, 8), (0, 32), (self.inode_count, 32)]

    def write(
        self, path: str, nodes: dict[str, Node], children: dict[str, list[str]]
    ) -> tuple[int, int, int, int]:
        """Write ``path``'s inode (after its children's); return (block, offset, basic type, inode number)."""
        node = nodes[path]
        kind = _TYPES[node.kind]
        if node.kind == "dir":
            fields = self._dir_inode(path, node, nodes, children)
        elif node.kind == "file":
            start, words, fragment, offset = self._file_data(node.data)
            if self.long_inodes:
                fields = [
                    *self._base(_LREG, node),
                    (1, 32),
                    (start, 64),
                    (fragment, 32),
                    (offset, 32),
                    (len(node.data), 64),
                ]
            else:
                fields = [
                    *self._base(kind, node),
                    (start, 64),
                    (fragment, 32),
                    (offset, 32),
                    (len(node.data), 32),
                ]
            block, off = self._meta_append(
                "inode", _pack(fields, self.big) + struct.pack(f"{self.e}{len(words)}I", *words)
            )
            return block, off, kind, self.inode_count
        elif node.kind == "symlink":
            target = node.target.encode()
            fields = [*self._base(kind, node), (1, 32), (len(target), 16)]
            block, off = self._meta_append("inode", _pack(fields, self.big) + target)
            return block, off, kind, self.inode_count
        elif node.kind in ("chr", "blk"):
            fields = [*self._base(kind, node), (1, 32), (node.rdev, 16)]
        else:
            fields = [*self._base(kind, node), (1, 32)]
        block, off = self._meta_append("inode", _pack(fields, self.big))
        return block, off, kind, self.inode_count

    def _dir_inode(
        self, path: str, node: Node, nodes: dict[str, Node], children: dict[str, list[str]]
    ) -> list[tuple[int, int]]:
        refs = []
        for name in children.get(path, []):
            child = path.rstrip("/") + "/" + name
            refs.append((name, *self.write(child, nodes, children)))
        if path == self.loop_dir:  # an entry naming the directory itself: its inode comes next
            done, pending = self.tables["inode"]
            refs.append(("again", len(done), len(pending), 1, self.inode_count + 1))
        listing = self._listing(refs)
        block, offset = self._meta_append("dir", listing)
        size = len(listing) + 3  # 3.x: file_size counts "." and ".."
        if self.long_inodes:
            return [
                *self._base(_LDIR, node),
                (2, 32),
                (size, 27),
                (offset, 13),
                (block, 32),
                (0, 16),
                (0, 32),
            ]
        return [*self._base(1, node), (2, 32), (size, 19), (offset, 13), (block, 32), (0, 32)]

    def _listing(self, refs: list[tuple[str, int, int, int, int]]) -> bytes:
        out = bytearray()
        i = 0
        while i < len(refs):
            block, inumber = refs[i][1], refs[i][4]
            group = list(refs[i : i + 256])
            group = group[: next((k for k, r in enumerate(group) if r[1] != block), len(group))]
            out += _pack([(len(group) - 1, 8), (block, 32), (inumber, 32)], self.big)
            for name, _, offset, kind, number in group:
                encoded = name.encode()
                out += _pack(
                    [(offset, 13), (kind, 3), (len(encoded) - 1, 8), ((number - inumber) & 0xFFFF, 16)],
                    self.big,
                )
                out += encoded
            i += len(group)
        return bytes(out)

    def finish(self, root: tuple[int, int, int, int], magic: int) -> bytes:
        self._flush_fragment()
        inode_start = len(self.out)
        self.out += self._meta_finish("inode")
        dir_start = len(self.out)
        self.out += self._meta_finish("dir")
        entries = b"".join(struct.pack(self.e + "QII", start, word, 0) for start, word in self.frag_entries)
        index = []
        for i in range(0, len(entries), _META):
            index.append(len(self.out))
            self.out += self._meta_block(entries[i : i + _META])
        frag_start = len(self.out)
        self.out += struct.pack(f"{self.e}{len(index)}Q", *index)
        uid_start = len(self.out)
        self.out += struct.pack(f"{self.e}{len(self.uids)}I", *self.uids)
        guid_start = len(self.out)
        self.out += struct.pack(f"{self.e}{len(self.gids)}I", *self.gids)
        used = len(self.out)
        flags = (1 << 2 if self.check_data else 0) | (0 if self.fragments else 1 << 4)
        log = self.block_size.bit_length() - 1
        root_ref = root[0] << 16 | root[1]
        self.out[:119] = struct.pack(
            self.e + "7I4H3BIQ3I7Q",
            magic,
            self.inode_count,
            used,
            uid_start,
            guid_start,
            inode_start,
            dir_start,
            3,
            1,
            self.block_size & 0xFFFF,
            log,
            flags,
            len(self.uids),
            len(self.gids),
            0,
            root_ref,
            self.block_size,
            len(self.frag_entries),
            frag_start,
            used,
            uid_start,
            guid_start,
            inode_start,
            dir_start,
            frag_start,
            (1 << 64) - 1,
        )
        return bytes(self.out) + bytes(-used % 4096)  # mksquashfs pads to 4 KiB; bytes_used excludes it


def build(
    nodes: Iterable[Node],
    *,
    big_endian: bool = False,
    compression: str = "zlib",
    block_size: int = 4096,
    fragments: bool = False,
    long_inodes: bool = False,
    check_data: bool = False,
    lzma_magic: bool = False,
    loop_dir: str | None = None,
) -> bytes:
    """A squashfs 3.1 image of ``nodes`` (missing parent directories are added, mode 0755, root-owned).

    ``long_inodes`` writes every directory and file as LDIR/LREG; ``check_data`` sets SQUASHFS_CHECK
    (a 0xff marker after each metadata length); ``lzma_magic`` writes sqlzma's ``shsq`` magic;
    ``loop_dir`` adds an entry ``again`` to that directory naming the directory itself.
    """
    by_path = {"/": Node("/", "dir")}
    for node in nodes:
        by_path[node.path] = node
    children: dict[str, list[str]] = {}
    for leaf in sorted(by_path):
        path = leaf
        while path != "/":
            parent, _, name = path.rpartition("/")
            parent = parent or "/"
            by_path.setdefault(parent, Node(parent, "dir"))
            if name not in children.setdefault(parent, []):
                children[parent].append(name)
            path = parent
    for names in children.values():
        names.sort()
    writer = _Writer(
        big_endian=big_endian,
        compression=compression,
        block_size=block_size,
        fragments=fragments,
        long_inodes=long_inodes,
        check_data=check_data,
        loop_dir=loop_dir,
    )
    root = writer.write("/", by_path, children)
    return writer.finish(root, _MAGIC_LZMA if lzma_magic else _MAGIC)
