"""One extractor per container format: the bytes of a :class:`~fleetguard.firmware.carving.Hit` in,
files and metadata out.

Every extractor reads the *filesystem's own metadata* (modes with setuid bits, numeric owners,
link targets, device numbers) and records it in :class:`~fleetguard.firmware.model.FileEntry`
values; what lands on disk is only directories and regular files with mode 0o600, written
through :class:`~fleetguard.firmware.workdir.SafeDir` (or, for the tools that write themselves,
into a private staging directory that is normalised afterwards). Symlinks, device nodes, FIFOs
and sockets are never created.

Tools run as argv lists without a shell, with a timeout, a minimal environment and a private
working directory. Formats done natively: cpio, tar (``tarfile``, members validated), gzip, xz,
lzma, bzip2 (Python's stream decompressors), JFFS2, UBI, uImage, TRX, FIT/FDT. By tool:
squashfs (``unsquashfs``), ext2/3/4 (``debugfs``), zip/7z/cramfs (``7z``), zstd and lz4 (their
CLIs). Decompressed payloads, partitions and volumes are returned as streams for the caller to
carve again.

An extractor raises :class:`~fleetguard.firmware.errors.ImageInvalid` when the container is
corrupt (before anything came out, that is a false positive of a weak magic) and lets
:class:`~fleetguard.firmware.errors.ExtractionLimit` through; what it collected until then stays
in its :class:`Collector`.
"""

from __future__ import annotations

import bz2
import contextlib
import itertools
import lzma
import os
import re
import stat
import struct
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from fleetguard.firmware.carving import Buffer, Format, Hit, jffs2_crc, ubi_crc
from fleetguard.firmware.errors import ExtractionLimit, ImageInvalid, UnsafePath
from fleetguard.firmware.model import EntryKind, FileEntry, LayerStatus
from fleetguard.firmware.workdir import SafeDir, normalise_member

__all__ = ["EXTRACTORS", "Collector", "Done", "Source", "Stream"]

_CHUNK = 1 << 20
_TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/nonexistent"}


@dataclass(frozen=True, slots=True)
class Stream:
    """A payload an extractor wrote (decompressed data, a partition, a volume) to carve again."""

    name: str
    path: Path


@dataclass(slots=True)
class Collector:
    """What one layer produced so far: entries (image paths under ``prefix``) and streams."""

    layer: str
    prefix: str = ""
    entries: list[FileEntry] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(
        self,
        rel: str,
        kind: EntryKind,
        mode: int,
        *,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        link: str | None = None,
        data: Path | None = None,
    ) -> None:
        """Record the entry at relative path ``rel`` (already normalised)."""
        path = f"{self.prefix}/{rel}" if rel else (self.prefix or "/")
        self.entries.append(FileEntry(path, kind, mode & 0o7777, uid, gid, size, link, data, self.layer))


@dataclass(frozen=True, slots=True)
class Source:
    """One container to extract: the hit in ``data`` (the bytes of ``path``) and where to write."""

    path: Path
    data: Buffer
    hit: Hit
    out: SafeDir
    scratch: Path
    timeout: float
    collect: Collector


@dataclass(frozen=True, slots=True)
class Done:
    """How an extractor finished: bytes of the source it consumed, status and why."""

    size: int
    status: LayerStatus = LayerStatus.EXTRACTED
    detail: str = ""


class Extractor(Protocol):
    """Extract one container; see the module docstring for what it raises."""

    def __call__(self, src: Source) -> Done: ...


# --- shared pieces -----------------------------------------------------------------------------


def _kind(mode: int) -> EntryKind:
    fmt = stat.S_IFMT(mode)
    kinds = {
        stat.S_IFREG: EntryKind.FILE,
        stat.S_IFDIR: EntryKind.DIRECTORY,
        stat.S_IFLNK: EntryKind.SYMLINK,
        stat.S_IFCHR: EntryKind.DEVICE,
        stat.S_IFBLK: EntryKind.DEVICE,
        stat.S_IFIFO: EntryKind.FIFO,
        stat.S_IFSOCK: EntryKind.SOCKET,
    }
    return kinds.get(fmt, EntryKind.FILE)


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(  # noqa: S603 - argv list, no shell, fixed tool names
            argv, cwd=cwd, env=_TOOL_ENV, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageInvalid(f"{argv[0]} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise ImageInvalid(f"{argv[0]} could not run: {exc.strerror}") from exc


def _tail(output: bytes) -> str:
    lines = [ln for ln in output.decode("utf-8", "replace").splitlines() if ln.strip()]
    return "; ".join(lines[-2:])[:300]


def _end(src: Source) -> int:
    hit = src.hit
    if hit.size is None:
        return len(src.data)
    return min(len(src.data), hit.offset + hit.size)


def _region_file(src: Source) -> Path:
    """A file holding exactly the hit's bytes (the source itself when the hit spans it)."""
    start, end = src.hit.offset, _end(src)
    if start == 0 and end == len(src.data):
        return src.path
    target = src.scratch / f"region-{start:x}.bin"
    with src.path.open("rb") as fin, target.open("wb") as fout:
        fin.seek(start)
        remaining = end - start
        while remaining > 0:
            copied = os.copy_file_range(fin.fileno(), fout.fileno(), remaining)
            if copied <= 0:
                break
            remaining -= copied
    return target


def _entry_rel(name: str) -> str:
    """Normalise a member name from an archive: leading ``./`` is fine, ``/`` and ``..`` are not."""
    stripped = name[2:] if name.startswith("./") else name
    return normalise_member(stripped)


@dataclass(frozen=True, slots=True)
class _Tree:
    files: dict[str, os.stat_result]  # regular files by relative path
    links: dict[str, str]  # symlink targets (the links themselves are removed)


def _strip_tree(root: Path) -> _Tree:
    """Normalise a tool's staging tree: keep directories (0o700) and regular files (0o600) only.

    Symlinks are read and removed, anything else (a device a tool made anyway) is removed.
    """
    tree = _Tree({}, {})
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        rel_dir = os.path.relpath(dirpath, root)
        os.chmod(base, 0o700)
        for name in [n for n in dirnames if (base / n).is_symlink()]:
            dirnames.remove(name)
            filenames.append(name)
        for name in filenames:
            path = base / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                tree.links[rel] = os.readlink(path)
            if not stat.S_ISREG(st.st_mode):
                path.unlink()
                continue
            if st.st_mode & 0o7777 != 0o600:
                os.chmod(path, 0o600, follow_symlinks=False)
            tree.files[rel] = st
    return tree


def _charge_tree(src: Source, tree: _Tree) -> dict[str, os.stat_result]:
    budget = src.out.budget
    budget.used_files += len(tree.files)
    budget.used_bytes += sum(st.st_size for st in tree.files.values())
    return tree.files


# --- squashfs ----------------------------------------------------------------------------------

_LS_LINE = re.compile(
    rb"^([-dlcbps][-rwxsStT]{9}) (\d+)/(\d+) +(\d+|\d+, *\d+) \d{4}-\d\d-\d\d \d\d:\d\d squashfs-root(/.*)?$"
)
_TYPE_CHARS = {
    ord("-"): stat.S_IFREG,
    ord("d"): stat.S_IFDIR,
    ord("l"): stat.S_IFLNK,
    ord("c"): stat.S_IFCHR,
    ord("b"): stat.S_IFBLK,
    ord("p"): stat.S_IFIFO,
    ord("s"): stat.S_IFSOCK,
}


def parse_mode_string(text: bytes) -> int:
    """``-rwsr-xr-x`` -> 0o104755: the st_mode an ``ls -l`` mode string stands for."""
    mode = _TYPE_CHARS.get(text[0], stat.S_IFREG)
    for i, ch in enumerate(text[1:10]):
        if ch != ord("-") and ch not in b"ST":
            mode |= 1 << (8 - i)
    special = {3: (stat.S_ISUID, b"sS"), 6: (stat.S_ISGID, b"sS"), 9: (stat.S_ISVTX, b"tT")}
    for pos, (bit, chars) in special.items():
        if text[pos] in chars:
            mode |= bit
    return mode


@dataclass(frozen=True, slots=True)
class _Listed:
    rel: str
    mode: int
    uid: int
    gid: int
    size: int
    link: str | None


def _parse_unsquashfs_listing(output: bytes) -> list[_Listed]:
    listed: list[_Listed] = []
    for line in output.splitlines():
        m = _LS_LINE.match(line)
        if m is None or m.group(5) is None:
            continue
        mode = parse_mode_string(m.group(1))
        name, link = m.group(5)[1:], None
        if stat.S_ISLNK(mode) and b" -> " in name:
            name, target = name.split(b" -> ", 1)
            link = target.decode("utf-8", "surrogateescape")
        size = int(m.group(4)) if b"," not in m.group(4) else 0
        rel = name.decode("utf-8", "surrogateescape")
        listed.append(_Listed(rel, mode, int(m.group(2)), int(m.group(3)), size, link))
    return listed


def extract_squashfs(src: Source) -> Done:
    """squashfs: ``unsquashfs`` for v4 little-endian (and v2/v3), the native reader otherwise."""
    variant = src.hit.variant
    if variant == "v4-le":
        return _squashfs_tool(src)
    if variant.startswith(("v2-", "v3-")) and not variant.endswith("-lzma"):
        try:
            return _squashfs_tool(src)
        except ImageInvalid:
            pass
    return _squashfs_native(src)


def _squashfs_tool(src: Source) -> Done:
    offset = str(src.hit.offset)
    listed = _native_listing(src)
    if listed is None:
        listing = _run(["unsquashfs", "-lln", "-o", offset, str(src.path)], src.scratch, src.timeout)
        listed = _parse_unsquashfs_listing(listing.stdout)
        if not listed and listing.returncode != 0:
            raise ImageInvalid(f"unsquashfs cannot list it: {_tail(listing.stderr + listing.stdout)}")
    budget = src.out.budget
    regular = [e for e in listed if stat.S_ISREG(e.mode) and e.size <= budget.max_file_bytes]
    over = sum(e.size for e in regular) > budget.bytes_left or len(regular) > budget.files_left
    skip = {e.rel for e in listed if not stat.S_ISDIR(e.mode)} if over else set()
    skip |= {e.rel for e in listed if not stat.S_ISDIR(e.mode) and not stat.S_ISREG(e.mode)}
    skip |= {e.rel for e in listed if stat.S_ISREG(e.mode) and e.size > budget.max_file_bytes}
    exclude = src.scratch / f"exclude-{src.hit.offset:x}"
    exclude.write_bytes(b"".join(r.encode("utf-8", "surrogateescape") + b"\n" for r in sorted(skip)))
    argv = ["unsquashfs", "-q", "-n", "-no-xattrs", "-f", "-no-wild", "-exclude-file", str(exclude)]
    result = _run([*argv, "-d", str(src.out.root), "-o", offset, str(src.path)], src.scratch, src.timeout)
    files = _charge_tree(src, _strip_tree(src.out.root))
    for e in listed:
        on_disk = files.get(e.rel)
        data = src.out.root / e.rel if on_disk is not None and stat.S_ISREG(e.mode) else None
        src.collect.add(
            e.rel, _kind(e.mode), e.mode, uid=e.uid, gid=e.gid, size=e.size, link=e.link, data=data
        )
    size = src.hit.size or len(src.data) - src.hit.offset
    if over:
        return Done(size, LayerStatus.PARTIAL, "contents exceed the extraction limit: metadata only")
    if result.returncode != 0:
        return Done(size, LayerStatus.PARTIAL, f"unsquashfs: {_tail(result.stderr + result.stdout)}")
    return Done(size)


_TYPE_BITS = {
    EntryKind.FILE: stat.S_IFREG, EntryKind.HARDLINK: stat.S_IFREG, EntryKind.DIRECTORY: stat.S_IFDIR,
    EntryKind.SYMLINK: stat.S_IFLNK, EntryKind.DEVICE: stat.S_IFCHR, EntryKind.FIFO: stat.S_IFIFO,
    EntryKind.SOCKET: stat.S_IFSOCK,
}  # fmt: skip


def _native_listing(src: Source) -> list[_Listed] | None:
    """The filesystem's metadata from the native reader (names are exact, newlines included:
    ``unsquashfs -lln`` prints one entry a line, so a name with a newline would split into a
    phantom entry and hide the real file); None when the reader cannot read this image."""
    try:
        from fleetguard.firmware.squashfs_native import read_squashfs
    except ImportError:
        return None
    try:
        image = read_squashfs(
            memoryview(src.data), offset=src.hit.offset, max_files=src.out.budget.files_left
        )
        return [
            _Listed(meta.path.lstrip("/"), _TYPE_BITS[meta.kind] | meta.mode, meta.uid, meta.gid, meta.size,
                    meta.link_target)
            for meta, _ in image.entries()
            if meta.path != "/"
        ]  # fmt: skip
    except (ImageInvalid, ExtractionLimit):
        return None


def _squashfs_native(src: Source) -> Done:
    label = f"squashfs {src.hit.variant}"
    size = src.hit.size or len(src.data) - src.hit.offset
    try:
        from fleetguard.firmware.squashfs_native import read_squashfs
    except ImportError:
        return Done(size, LayerStatus.FAILED, f"{label}: native reader unavailable")
    budget = src.out.budget
    image = read_squashfs(
        memoryview(src.data), offset=src.hit.offset, max_files=budget.files_left, max_bytes=budget.bytes_left
    )
    for meta, read in image.entries():
        rel = _entry_rel(meta.path.lstrip("/"))
        data = src.out.write(rel, [read()])[0] if read is not None and rel else None
        if meta.kind is EntryKind.DIRECTORY and rel:
            _safe_dir(src, rel)
        src.collect.add(
            rel,
            meta.kind,
            meta.mode,
            uid=meta.uid,
            gid=meta.gid,
            size=meta.size,
            link=meta.link_target,
            data=data,
        )
    return Done(image.size, detail=f"{label} {image.compression}: native reader")


# --- cpio (cpio(5)) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CpioHeader:
    mode: int
    uid: int
    gid: int
    size: int
    name: str
    data: int  # where the member's data starts
    next: int  # where the next header starts


def _cpio_header(view: memoryview, pos: int) -> _CpioHeader:
    """The header of the member at ``pos``; raises ImageInvalid or ValueError when corrupt."""
    magic = bytes(view[pos : pos + 6])
    if magic in (b"070701", b"070702"):
        raw = bytes(view[pos + 6 : pos + 110])
        if len(raw) < 104:
            raise ImageInvalid("cpio header truncated")
        f = [int(raw[i : i + 8], 16) for i in range(0, 104, 8)]
        mode, uid, gid, fsize, namesize = f[1], f[2], f[3], f[6], f[11]
        name_start = pos + 110
        data_start = (name_start + namesize + 3) & ~3
        nxt = (data_start + fsize + 3) & ~3
    elif magic == b"070707":
        raw = bytes(view[pos + 6 : pos + 76])
        if len(raw) < 70:
            raise ImageInvalid("cpio header truncated")
        mode, uid, gid = int(raw[12:18], 8), int(raw[18:24], 8), int(raw[24:30], 8)
        namesize, fsize = int(raw[53:59], 8), int(raw[59:70], 8)
        name_start = pos + 76
        data_start = name_start + namesize
        nxt = data_start + fsize
    else:
        raise ImageInvalid(f"cpio: no header at {pos:#x}")
    if nxt > len(view) or namesize == 0:
        raise ImageInvalid(f"cpio member at {pos:#x} runs past the end")
    name = bytes(view[name_start : name_start + namesize - 1]).decode("utf-8", "surrogateescape")
    return _CpioHeader(mode, uid, gid, fsize, name, data_start, nxt)


def extract_cpio(src: Source) -> Done:
    """cpio newc/crc/odc, parsed natively; regular files written, the rest recorded."""
    view = memoryview(src.data)
    pos = src.hit.offset
    while True:
        try:
            header = _cpio_header(view, pos)
        except (ImageInvalid, ValueError) as exc:
            if pos == src.hit.offset:
                raise ImageInvalid(f"cpio: {exc}") from exc
            return Done(pos - src.hit.offset, LayerStatus.PARTIAL, f"cpio truncated at {pos:#x}: {exc}")
        if header.name == "TRAILER!!!":
            return _finish_skips(src, header.next - src.hit.offset)
        _cpio_member(src, view, header)
        pos = header.next


def _cpio_member(src: Source, view: memoryview, h: _CpioHeader) -> None:
    name, mode, fsize, start = h.name, h.mode, h.size, h.data
    try:
        rel = _entry_rel(name)
    except UnsafePath as exc:
        src.collect.skipped.append(str(exc))
        return
    if not rel:
        return
    kind = _kind(mode)
    link = None
    data = None
    if kind is EntryKind.SYMLINK:
        link = bytes(view[start : start + fsize]).decode("utf-8", "surrogateescape")
    elif kind is EntryKind.DIRECTORY:
        _safe_dir(src, rel)
    elif kind is EntryKind.FILE:
        chunks = (
            bytes(view[i : min(i + _CHUNK, start + fsize)]) for i in range(start, start + fsize, _CHUNK)
        )
        try:
            data = src.out.write(rel, chunks)[0]
        except UnsafePath as exc:
            src.collect.skipped.append(str(exc))
            return
    src.collect.add(rel, kind, mode, uid=h.uid, gid=h.gid, size=fsize, link=link, data=data)


def _safe_dir(src: Source, rel: str) -> None:
    try:
        src.out.make_dir(rel)
    except UnsafePath as exc:
        src.collect.skipped.append(str(exc))


def _finish_skips(src: Source, size: int) -> Done:
    skipped = src.collect.skipped
    if not skipped:
        return Done(size)
    return Done(size, LayerStatus.PARTIAL, f"{len(skipped)} unsafe member(s) refused: {skipped[0]}")


# --- tar -------------------------------------------------------------------------------------------


def extract_tar(src: Source) -> Done:
    """tar via ``tarfile``, member by member (never ``extractall``); metadata from TarInfo."""
    with src.path.open("rb") as fileobj:
        fileobj.seek(src.hit.offset)
        try:
            archive = tarfile.open(fileobj=fileobj, mode="r:")  # noqa: SIM115 - closed below
        except tarfile.TarError as exc:
            raise ImageInvalid(f"tar: {exc}") from exc
        try:
            status = _tar_members(src, archive)
        finally:
            archive.close()
        size = min(archive.offset + 1024, len(src.data) - src.hit.offset)
    if status:
        return Done(size, LayerStatus.PARTIAL, status)
    return _finish_skips(src, size)


def _tar_members(src: Source, archive: tarfile.TarFile) -> str:
    try:
        for member in archive:
            _tar_member(src, archive, member)
    except (tarfile.TarError, EOFError, OSError) as exc:
        return f"tar truncated or corrupt: {exc}"
    return ""


def _tar_member(src: Source, archive: tarfile.TarFile, m: tarfile.TarInfo) -> None:
    try:
        rel = _entry_rel(m.name)
    except UnsafePath as exc:
        src.collect.skipped.append(str(exc))
        return
    if not rel:
        return
    add = src.collect.add
    if m.isreg():
        reader = archive.extractfile(m)
        assert reader is not None
        try:
            data = src.out.write(rel, iter(lambda: reader.read(_CHUNK), b""))[0]
        except UnsafePath as exc:
            src.collect.skipped.append(str(exc))
            return
        add(rel, EntryKind.FILE, m.mode, uid=m.uid, gid=m.gid, size=m.size, data=data)
    elif m.isdir():
        _safe_dir(src, rel)
        add(rel, EntryKind.DIRECTORY, m.mode, uid=m.uid, gid=m.gid)
    elif m.issym() or m.islnk():
        kind = EntryKind.SYMLINK if m.issym() else EntryKind.HARDLINK
        add(rel, kind, m.mode, uid=m.uid, gid=m.gid, link=m.linkname)
    else:
        kind = EntryKind.DEVICE if m.isdev() and not m.isfifo() else EntryKind.FIFO
        add(rel, kind, m.mode, uid=m.uid, gid=m.gid)


# --- compression streams ---------------------------------------------------------------------------


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _ZlibAdapter:
    """zlib's decompressobj with the needs_input/eof interface of lzma and bz2."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=31)

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._z.unconsumed_tail

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return self._z.decompress(self._z.unconsumed_tail + data, max(0, max_length))


_DECOMPRESSORS: dict[Format, Callable[[], _Decompressor]] = {
    Format.GZIP: _ZlibAdapter,
    Format.XZ: lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
    Format.LZMA: lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    Format.BZIP2: bz2.BZ2Decompressor,
}
_MULTI_MEMBER = {Format.GZIP: b"\x1f\x8b", Format.XZ: b"\xfd7zXZ", Format.BZIP2: b"BZh"}


def _decompressed(fmt: Format, view: memoryview, consumed: list[int]) -> Iterator[bytes]:
    """Yield the decompressed bytes of the stream(s) at the start of ``view``.

    ``consumed[0]`` is kept at the number of input bytes used. Concatenated members of the same
    format (multi-member gzip, xz, bzip2) are followed. Raises lzma/zlib/OSError/EOFError on
    corrupt or truncated input.
    """
    pos = 0
    while pos < len(view):
        dec = _DECOMPRESSORS[fmt]()
        while not dec.eof:
            if dec.needs_input:
                if pos >= len(view):
                    raise EOFError("compressed stream ended early")
                piece = bytes(view[pos : pos + _CHUNK])
                pos += len(piece)
            else:
                piece = b""
            out = dec.decompress(piece, _CHUNK)
            consumed[0] = pos - (len(dec.unused_data) if dec.eof else 0)
            if out:
                yield out
        pos -= len(dec.unused_data)
        consumed[0] = pos
        magic = _MULTI_MEMBER.get(fmt)
        if magic is None or bytes(view[pos : pos + len(magic)]) != magic:
            return


def _write_stream(src: Source, name: str, chunks: Iterator[bytes]) -> tuple[int, str]:
    """Write a stream file; return (bytes written, error text or "" when complete)."""
    path, fd = src.out.open_new(name)
    src.collect.streams.append(Stream(name, path))
    written = 0
    budget = src.out.budget
    with os.fdopen(fd, "wb") as out:
        try:
            for chunk in chunks:
                if written + len(chunk) > budget.max_file_bytes:
                    raise ExtractionLimit(f"stream larger than {budget.max_file_bytes} bytes")
                budget.charge_bytes(len(chunk))
                out.write(chunk)
                written += len(chunk)
        except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError) as exc:
            return written, str(exc) or type(exc).__name__
    return written, ""


def _stream_name(src: Source, fmt: Format) -> str:
    return f"{fmt.value}-{src.hit.offset:x}.bin"


def extract_compressed(src: Source) -> Done:
    """gzip, xz, lzma, bzip2: stream-decompress, bounded by the budget; the output is a stream."""
    fmt = src.hit.format
    view = memoryview(src.data)[src.hit.offset : _end(src)]
    consumed = [0]
    written, error = _write_stream(src, _stream_name(src, fmt), _decompressed(fmt, view, consumed))
    if error and not written:
        src.collect.streams.pop()
        raise ImageInvalid(f"{fmt.value}: {error}")
    if error:
        return Done(max(consumed[0], 1), LayerStatus.PARTIAL, f"{fmt.value} truncated or corrupt: {error}")
    return Done(consumed[0])


def _zstd_frame_size(d: Buffer, s: int) -> int:
    # RFC 8878 3.1.1: frame header, then blocks (3-byte headers) until Last_Block, then checksum.
    fhd = d[s + 4]
    single = (fhd >> 5) & 1
    header = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
    pos = s + header
    while pos + 3 <= len(d):
        (word,) = struct.unpack_from("<I", bytes(d[pos : pos + 3]) + b"\x00")
        last, btype, bsize = word & 1, (word >> 1) & 3, word >> 3
        pos += 3 + (1 if btype == 1 else bsize)
        if btype == 3:
            raise ImageInvalid("zstd: reserved block type")
        if last:
            return min(len(d), pos + (4 if fhd & 4 else 0)) - s
    raise ImageInvalid("zstd frame truncated")


def _lz4_frame_size(d: Buffer, s: int) -> int:
    # LZ4 frame format: header, blocks with 4-byte sizes up to the EndMark, content checksum.
    flg = d[s + 4]
    pos = s + 7 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    while pos + 4 <= len(d):
        (word,) = struct.unpack_from("<I", d, pos)
        pos += 4
        if word == 0:
            return min(len(d), pos + (4 if flg & 0x04 else 0)) - s
        pos += (word & 0x7FFFFFFF) + (4 if flg & 0x10 else 0)
    raise ImageInvalid("lz4 frame truncated")


def _tool_output(argv: list[str], cwd: Path, timeout: float) -> Iterator[bytes]:
    """Yield a tool's stdout in chunks; kill it on timeout; raise OSError when it fails."""
    proc = subprocess.Popen(  # noqa: S603 - argv list, no shell, fixed tool names
        argv, cwd=cwd, env=_TOOL_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        yield from iter(lambda: _read(proc.stdout), b"")
        stderr = proc.stderr.read() if proc.stderr else b""
        if proc.wait() != 0:
            raise OSError(f"{argv[0]} failed: {_tail(stderr)}")
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _read(pipe: IO[bytes] | None) -> bytes:
    return pipe.read(_CHUNK) if pipe is not None else b""


def extract_zstd_lz4(src: Source) -> Done:
    """zstd and lz4 frames: frame extent parsed natively, decompressed by the CLI, bounded."""
    fmt = src.hit.format
    sizer = _zstd_frame_size if fmt is Format.ZSTD else _lz4_frame_size
    size = sizer(src.data, src.hit.offset)
    src = Source(
        src.path, src.data, Hit(src.hit.offset, fmt, size), src.out, src.scratch, src.timeout, src.collect
    )
    region = _region_file(src)
    argv = (
        ["zstd", "-d", "-c", "-q", "--", str(region)]
        if fmt is Format.ZSTD
        else ["lz4", "-d", "-c", str(region)]
    )
    written, error = _write_stream(src, _stream_name(src, fmt), _tool_output(argv, src.scratch, src.timeout))
    if error and not written:
        src.collect.streams.pop()
        raise ImageInvalid(f"{fmt.value}: {error}")
    return Done(size, LayerStatus.PARTIAL, error) if error else Done(size)


# --- boot containers -------------------------------------------------------------------------------


def extract_uimage(src: Source) -> Done:
    """U-Boot legacy uImage: the payload after the 64-byte header, decompressed per ih_comp."""
    hit = src.hit
    start, end = hit.offset + 64, _end(src)
    comp = hit.variant
    view = memoryview(src.data)[start:end]
    name = f"uimage-{hit.offset:x}-{_slug(hit.name)}.bin"
    fmt = {"gzip": Format.GZIP, "bzip2": Format.BZIP2, "lzma": Format.LZMA}.get(comp)
    if comp == "none" or fmt is None:
        _write_stream(src, name, _slices(view))
        note = "" if comp == "none" else f"payload compression {comp} left as is"
        return Done(end - hit.offset, detail=note)
    consumed = [0]
    written, error = _write_stream(src, name, _decompressed(fmt, view, consumed))
    if error:
        status = LayerStatus.PARTIAL if written else LayerStatus.FAILED
        return Done(end - hit.offset, status, f"{comp} payload: {error}")
    if end - start != hit.size - 64 if hit.size else False:
        return Done(end - hit.offset, LayerStatus.PARTIAL, "payload truncated")
    return Done(end - hit.offset)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:40] or "payload"


def _slices(view: memoryview) -> Iterator[bytes]:
    for i in range(0, len(view), _CHUNK):
        yield bytes(view[i : i + _CHUNK])


def extract_trx(src: Source) -> Done:
    """Broadcom TRX: each partition (by the header's offsets) becomes a stream."""
    hit = src.hit
    end = _end(src)
    count = 4 if hit.variant == "v2" else 3
    offsets = sorted({o for o in struct.unpack_from(f"<{count}I", src.data, hit.offset + 16) if o})
    bounds = [*offsets, end - hit.offset]
    for index, (a, b) in enumerate(itertools.pairwise(bounds)):
        view = memoryview(src.data)[hit.offset + a : hit.offset + b]
        _write_stream(src, f"trx-{hit.offset:x}-part{index}.bin", _slices(view))
    truncated = hit.size is not None and hit.offset + hit.size > len(src.data)
    return Done(end - hit.offset, LayerStatus.PARTIAL if truncated else LayerStatus.EXTRACTED)


def _fdt_walk(d: Buffer, s: int) -> Iterator[tuple[str, str, memoryview]]:
    """(node path, property name, value) of every property; Devicetree spec 0.4, 5.4."""
    off_struct, off_strings = struct.unpack_from(">II", d, s + 8)
    size_struct = struct.unpack_from(">I", d, s + 36)[0]
    pos, stop = s + off_struct, s + off_struct + size_struct
    strings = s + off_strings
    view = memoryview(d)
    path: list[str] = []
    while pos + 4 <= min(stop, len(d)):
        (token,) = struct.unpack_from(">I", d, pos)
        pos += 4
        if token == 1:  # FDT_BEGIN_NODE
            end = _find_nul(d, pos)
            path.append(bytes(view[pos:end]).decode("latin-1"))
            pos = (end + 4) & ~3
        elif token == 2 and path:  # FDT_END_NODE
            path.pop()
        elif token == 3:  # FDT_PROP
            length, nameoff = struct.unpack_from(">II", d, pos)
            name_end = _find_nul(d, strings + nameoff)
            name = bytes(view[strings + nameoff : name_end]).decode("latin-1")
            yield "/".join(path) or "/", name, view[pos + 8 : pos + 8 + length]
            pos = (pos + 8 + length + 3) & ~3
        elif token == 9:  # FDT_END
            return
        elif token not in (2, 4):
            raise ImageInvalid(f"fdt: bad token {token:#x}")


def _find_nul(d: Buffer, pos: int) -> int:
    end = bytes(memoryview(d)[pos : pos + 4096]).find(b"\x00")
    if end < 0:
        raise ImageInvalid("fdt: unterminated string")
    return pos + end


def extract_fdt(src: Source) -> Done:
    """FIT images (FDT with /images): each image's ``data`` (or external data) becomes a stream."""
    hit = src.hit
    total = hit.size or 0
    props: dict[str, dict[str, memoryview]] = {}
    for node, name, value in _fdt_walk(src.data, hit.offset):
        if node.startswith("/images/") and node.count("/") == 2:
            props.setdefault(node.rsplit("/", 1)[1], {})[name] = value
    for image, p in props.items():
        if "data" in p:
            _write_stream(src, f"fit-{_slug(image)}.bin", _slices(p["data"]))
        elif "data-offset" in p and "data-size" in p:
            start = hit.offset + ((total + 3) & ~3) + int.from_bytes(p["data-offset"], "big")
            length = int.from_bytes(p["data-size"], "big")
            _write_stream(
                src, f"fit-{_slug(image)}.bin", _slices(memoryview(src.data)[start : start + length])
            )
    return Done(_end(src) - hit.offset, detail="" if props else "device tree without images")


# --- ext2/3/4 ----------------------------------------------------------------------------------------


def extract_ext(src: Source) -> Done:
    """ext2/3/4: ``debugfs rdump`` for the contents, ``debugfs ls -p`` per directory for metadata."""
    hit = src.hit
    sb = hit.offset + 1024
    blocks, _r, free = struct.unpack_from("<III", src.data, sb + 4)
    block_size = 1024 << struct.unpack_from("<I", src.data, sb + 24)[0]
    if (blocks - free) * block_size > src.out.budget.bytes_left:
        raise ExtractionLimit("ext filesystem larger than the extraction budget left")
    region = _region_file(src)
    stage = src.out.root
    rdump = _run(["debugfs", "-R", f"rdump / {stage}", str(region)], src.scratch, src.timeout)
    dirs = ["/", *sorted("/" + os.path.relpath(d, stage) for d, _, _ in os.walk(stage) if Path(d) != stage)]
    tree = _strip_tree(stage)
    _charge_tree(src, tree)
    commands = src.scratch / f"debugfs-{hit.offset:x}.cmd"
    commands.write_text("".join(f'ls -p "{d}"\n' for d in dirs if '"' not in d and "\n" not in d))
    listing = _run(["debugfs", "-f", str(commands), str(region)], src.scratch, src.timeout)
    _ext_entries(src, listing.stdout, tree)
    size = min(blocks * block_size, len(src.data) - hit.offset)
    if rdump.returncode != 0 or not src.collect.entries:
        detail = f"debugfs: {_tail(rdump.stderr)}"
        if not src.collect.entries:
            raise ImageInvalid(detail)
        return Done(size, LayerStatus.PARTIAL, detail)
    return Done(size)


_DEBUGFS_LS = re.compile(rb"^/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/$")


def _ext_entries(src: Source, output: bytes, tree: _Tree) -> None:
    current = ""
    for line in output.splitlines():
        if line.startswith(b"debugfs: ls -p "):
            current = (
                line[len(b"debugfs: ls -p ") :].strip(b'"').decode("utf-8", "surrogateescape").strip("/")
            )
            continue
        m = _DEBUGFS_LS.match(line)
        if m is None or m.group(1) == b"0" or m.group(5) in (b"", b".", b".."):
            continue
        mode = int(m.group(2), 8)
        name = m.group(5).decode("utf-8", "surrogateescape")
        rel = f"{current}/{name}" if current else name
        if rel == "lost+found" and stat.S_ISDIR(mode):
            continue
        size = int(m.group(6) or 0)
        link = tree.links.get(rel) if stat.S_ISLNK(mode) else None
        data = src.out.root / rel if rel in tree.files and stat.S_ISREG(mode) else None
        src.collect.add(
            rel, _kind(mode), mode, uid=int(m.group(3)), gid=int(m.group(4)), size=size, link=link, data=data
        )


# --- JFFS2 (Linux include/uapi/linux/jffs2.h, fs/jffs2/compr_rtime.c) ---------------------------------

_JFFS2_DIRENT, _JFFS2_INODE = 0xE001, 0xE002


@dataclass(slots=True)
class _Jffs2Inode:
    version: int = -1
    mode: int = 0
    uid: int = 0
    gid: int = 0
    isize: int = 0
    fragments: list[tuple[int, int, int, bytes]] = field(default_factory=list)  # version, offset, dsize, data
    bad: int = 0


def rtime_decompress(data: bytes, dsize: int) -> bytes:
    """JFFS2 rtime (fs/jffs2/compr_rtime.c): byte, repeat count, back-reference by last position."""
    out = bytearray()
    positions = [0] * 256
    pos = 0
    while len(out) < dsize and pos + 1 < len(data):
        value, repeat = data[pos], data[pos + 1]
        pos += 2
        out.append(value)
        back = positions[value]
        positions[value] = len(out)
        for _ in range(repeat):
            out.append(out[back])
            back += 1
    return bytes(out[:dsize])


def _jffs2_data(compr: int, payload: bytes, dsize: int) -> bytes | None:
    if compr == 0:
        return payload[:dsize]
    if compr == 1:
        return bytes(dsize)
    if compr == 2:
        return rtime_decompress(payload, dsize)
    if compr == 6:
        return zlib.decompress(payload)[:dsize]
    return None


def extract_jffs2(src: Source) -> Done:
    """JFFS2 (little- or big-endian), natively: inode and dirent nodes, zlib/rtime/none/zero data."""
    e = "<" if src.hit.variant == "le" else ">"
    magic = b"\x85\x19" if e == "<" else b"\x19\x85"
    d, pos, end = src.data, src.hit.offset, src.hit.offset
    inodes: dict[int, _Jffs2Inode] = {}
    dirents: dict[tuple[int, str], tuple[int, int, int]] = {}
    while pos + 12 <= len(d):
        if bytes(d[pos : pos + 2]) != magic:
            nxt = bytes(memoryview(d)[pos : pos + (1 << 20)]).find(magic)
            gap = bytes(memoryview(d)[pos : pos + nxt]) if nxt >= 0 else b"x"
            if nxt < 0 or gap.strip(b"\xff\x00"):
                break
            pos += nxt
            continue
        _m, ntype, totlen, crc = struct.unpack_from(e + "HHII", d, pos)
        if jffs2_crc(bytes(d[pos : pos + 8])) != crc or totlen < 12 or pos + totlen > len(d):
            pos += 4
            continue
        node = bytes(d[pos : pos + totlen])
        _jffs2_node(e, ntype, node, inodes, dirents)
        pos = (pos + totlen + 3) & ~3
        end = pos
    return _jffs2_build(src, inodes, dirents, end - src.hit.offset)


def _jffs2_node(
    e: str,
    ntype: int,
    node: bytes,
    inodes: dict[int, _Jffs2Inode],
    dirents: dict[tuple[int, str], tuple[int, int, int]],
) -> None:
    if ntype == _JFFS2_DIRENT and len(node) >= 40:
        pino, version, ino, _mctime, nsize, dtype = struct.unpack_from(e + "IIIIBB", node, 12)
        name = node[40 : 40 + nsize].decode("utf-8", "surrogateescape")
        old = dirents.get((pino, name))
        if old is None or old[0] < version:
            dirents[(pino, name)] = (version, ino, dtype)
    elif ntype == _JFFS2_INODE and len(node) >= 68:
        ino, version, mode, uid, gid, isize = struct.unpack_from(e + "IIIHHI", node, 12)
        offset, csize, dsize, compr = struct.unpack_from(e + "IIIB", node, 44)
        inode = inodes.setdefault(ino, _Jffs2Inode())
        if version > inode.version:
            inode.version, inode.mode, inode.uid, inode.gid, inode.isize = version, mode, uid, gid, isize
        if not dsize:
            return
        try:
            data = _jffs2_data(compr, node[68 : 68 + csize], dsize)
        except zlib.error:
            data = None
        if data is None:
            inode.bad += 1
        else:
            inode.fragments.append((version, offset, dsize, data))


def _jffs2_paths(dirents: dict[tuple[int, str], tuple[int, int, int]]) -> list[tuple[str, int]]:
    parent: dict[int, tuple[int, str]] = {}
    for (pino, name), (_v, ino, _t) in dirents.items():
        if ino:
            parent.setdefault(ino, (pino, name))
    result: list[tuple[str, int]] = []
    for (pino, name), (_v, ino, _t) in dirents.items():
        if not ino or "/" in name or name in (".", ".."):
            continue
        parts, cursor, seen = [name], pino, {ino}
        while cursor != 1 and cursor in parent and cursor not in seen:
            seen.add(cursor)
            cursor, up = parent[cursor]
            parts.append(up)
        if cursor == 1:
            result.append(("/".join(reversed(parts)), ino))
    return result


def _jffs2_build(
    src: Source,
    inodes: dict[int, _Jffs2Inode],
    dirents: dict[tuple[int, str], tuple[int, int, int]],
    size: int,
) -> Done:
    if not inodes and not dirents:
        raise ImageInvalid("jffs2: no valid nodes")
    bad = 0
    for rel, ino in sorted(_jffs2_paths(dirents)):
        inode = inodes.get(ino)
        if inode is None:
            continue
        bad += inode.bad
        content = bytearray(inode.isize)
        for _v, off, dsize, data in sorted(inode.fragments):
            content[off : off + dsize] = data[: max(0, min(dsize, inode.isize - off))]
        kind = _kind(inode.mode)
        link = bytes(content).decode("utf-8", "surrogateescape") if kind is EntryKind.SYMLINK else None
        data_path = None
        if kind is EntryKind.FILE:
            try:
                data_path = src.out.write(rel, [bytes(content)])[0]
            except UnsafePath as exc:
                src.collect.skipped.append(str(exc))
        elif kind is EntryKind.DIRECTORY:
            _safe_dir(src, rel)
        src.collect.add(
            rel, kind, inode.mode, uid=inode.uid, gid=inode.gid, size=inode.isize, link=link, data=data_path
        )
    if bad:
        return Done(
            size, LayerStatus.PARTIAL, f"{bad} data node(s) with unsupported compression (lzo/lzma/rubin)"
        )
    return _finish_skips(src, size)


# --- UBI (Linux include/uapi/mtd/ubi-media.h) ------------------------------------------------------

_UBI_LAYOUT_VOLUME = 0x7FFFEFFF


def _ubi_peb_size(d: Buffer, start: int) -> int:
    pos = start + 64
    while True:
        nxt = bytes(memoryview(d)[pos : pos + (4 << 20)]).find(b"UBI#")
        if nxt < 0:
            return len(d) - start
        at = pos + nxt
        if at + 64 <= len(d) and ubi_crc(bytes(d[at : at + 60])) == struct.unpack_from(">I", d, at + 60)[0]:
            return at - start
        pos = at + 1


def _ubi_vid_valid(d: Buffer, vid: int) -> bool:
    if vid + 64 > len(d) or bytes(d[vid : vid + 4]) != b"UBI!":
        return False
    return bool(ubi_crc(bytes(d[vid : vid + 60])) == struct.unpack_from(">I", d, vid + 60)[0])


def extract_ubi(src: Source) -> Done:
    """UBI natively: EC and VID headers, LEBs by the highest sequence number, one stream per volume."""
    d, start = src.data, src.hit.offset
    peb = _ubi_peb_size(d, start)
    lebs: dict[int, dict[int, tuple[int, int, int]]] = {}  # vol -> lnum -> (sqnum, start, length)
    pos = start
    while pos + 64 <= len(d) and bytes(d[pos : pos + 4]) == b"UBI#":
        vid_off, data_off = struct.unpack_from(">II", d, pos + 16)
        vid = pos + vid_off
        if _ubi_vid_valid(d, vid):
            vol_type = d[vid + 5]
            vol_id, lnum, _pad, data_size = struct.unpack_from(">IIII", d, vid + 8)
            (sqnum,) = struct.unpack_from(">Q", d, vid + 40)
            length = data_size if vol_type == 2 else peb - data_off
            old = lebs.setdefault(vol_id, {}).get(lnum)
            if old is None or old[0] < sqnum:
                lebs[vol_id][lnum] = (sqnum, pos + data_off, length)
        pos += peb
    if not lebs:
        raise ImageInvalid("ubi: no volume headers")
    names = _ubi_volume_names(d, lebs.pop(_UBI_LAYOUT_VOLUME, {}))
    for vol_id, table in sorted(lebs.items()):
        name = f"ubi-{start:x}-{_slug(names.get(vol_id, f'vol{vol_id}'))}.bin"
        _write_stream(src, name, _ubi_volume(d, table, peb))
    return Done(pos - start)


def _ubi_volume(d: Buffer, table: dict[int, tuple[int, int, int]], peb: int) -> Iterator[bytes]:
    view = memoryview(d)
    for lnum in range(max(table) + 1):
        leb = table.get(lnum)
        if leb is None:
            yield b"\xff" * peb
        else:
            yield bytes(view[leb[1] : leb[1] + leb[2]])


def _ubi_volume_names(d: Buffer, layout: dict[int, tuple[int, int, int]]) -> dict[int, str]:
    # ubi_vtbl_record: 172 bytes; name_len at 14, name at 16 (UBI_VOL_NAME_MAX 127).
    if 0 not in layout:
        return {}
    _sq, start, length = layout[0]
    names: dict[int, str] = {}
    for index in range(min(128, length // 172)):
        rec = bytes(d[start + index * 172 : start + (index + 1) * 172])
        name_len = struct.unpack_from(">H", rec, 14)[0]
        if 0 < name_len <= 127:
            names[index] = rec[16 : 16 + name_len].decode("latin-1")
    return names


def extract_ubifs(src: Source) -> Done:
    """UBIFS is recognised but its contents are not read (no native reader): a FAILED layer."""
    return Done(
        len(src.data) - src.hit.offset, LayerStatus.FAILED, "UBIFS contents are not extracted: no reader"
    )


# --- zip, 7z, cramfs via 7z ------------------------------------------------------------------------


def _sevenzip_listing(output: bytes) -> list[dict[str, str]]:
    blocks = output.split(b"----------\n", 1)[-1].split(b"\n\n")
    members: list[dict[str, str]] = []
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.decode("utf-8", "surrogateescape").splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                fields[key] = value
        if "Path" in fields:
            members.append(fields)
    return members


def _sevenzip_mode(fields: dict[str, str]) -> int:
    if fields.get("Mode"):
        return parse_mode_string(fields["Mode"].encode())
    attrs = fields.get("Attributes", "")
    m = re.search(r"([0-9A-Fa-f]{8})$", attrs)
    if m and int(m.group(1), 16) & 0x8000:
        return int(m.group(1), 16) >> 16
    if "D" in attrs.split(" ", 1)[0] or fields.get("Folder") == "+":
        return stat.S_IFDIR | 0o755
    return stat.S_IFREG | 0o644


def extract_7z(src: Source) -> Done:
    """zip, 7z and cramfs: ``7z l -slt`` for the members, ``7z x`` of the safe regular ones."""
    region = _region_file(src)
    listing = _run(["7z", "l", "-slt", "-p", str(region)], src.scratch, src.timeout)
    members = _sevenzip_listing(listing.stdout)
    if listing.returncode != 0 and not members:
        raise ImageInvalid(f"7z cannot list it: {_tail(listing.stdout + listing.stderr)}")
    refused: list[str] = []
    metadata: dict[str, tuple[int, int]] = {}
    for fields in members:
        mode = _sevenzip_mode(fields)
        try:
            rel = _entry_rel(fields["Path"])
        except UnsafePath as exc:
            refused.append(fields["Path"])
            src.collect.skipped.append(str(exc))
            continue
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            refused.append(fields["Path"])
        metadata[rel] = (mode, int(fields.get("Size") or 0))
    excludes = src.scratch / f"7z-exclude-{src.hit.offset:x}"
    excludes.write_text("".join(f"{p}\n" for p in refused))
    result = _run(
        ["7z", "x", "-y", "-p", "-spd", f"-x@{excludes}", f"-o{src.out.root}", str(region)],
        src.scratch,
        src.timeout,
    )
    files = _charge_tree(src, _strip_tree(src.out.root))
    for rel, (mode, size) in metadata.items():
        data = src.out.root / rel if rel in files else None
        src.collect.add(rel, _kind(mode), mode, size=size, data=data)
    size = _end(src) - src.hit.offset
    if result.returncode != 0:
        return Done(size, LayerStatus.PARTIAL, f"7z: {_tail(result.stdout + result.stderr)}")
    return _finish_skips(src, size)


def extract_romfs(src: Source) -> Done:
    """romfs (Linux Documentation/filesystems/romfs.rst), natively: file headers from the root."""
    d, base = src.data, src.hit.offset
    end = _end(src)
    name_end = _find_nul(d, base + 16)
    first = base + ((name_end - base + 16) & ~15)
    seen: set[int] = set()
    _romfs_dir(src, _Romfs(d, base, end), first, "", seen)
    return _finish_skips(src, end - base)


_ROMFS_MODES = {
    1: stat.S_IFDIR | 0o755,
    2: stat.S_IFREG | 0o644,
    3: stat.S_IFLNK | 0o777,
    4: stat.S_IFBLK | 0o600,
    5: stat.S_IFCHR | 0o600,
    6: stat.S_IFSOCK | 0o644,
    7: stat.S_IFIFO | 0o644,
}


@dataclass(frozen=True, slots=True)
class _Romfs:
    data: Buffer
    base: int
    end: int


def _romfs_dir(src: Source, fs: _Romfs, header: int, parent: str, seen: set[int]) -> None:
    # File header: next(4, low 4 bits: type/exec), spec.info(4), size(4), checksum(4), name.
    d, base = fs.data, fs.base
    while header and base <= header < fs.end and header not in seen and len(seen) < 100_000:
        seen.add(header)
        nxt, info, size = struct.unpack_from(">III", d, header)
        ftype = nxt & 7
        name_end = _find_nul(d, header + 16)
        name = bytes(memoryview(d)[header + 16 : name_end]).decode("utf-8", "surrogateescape")
        data_at = header + ((name_end - header + 16) & ~15)
        rel = f"{parent}/{name}" if parent else name
        if name not in (".", "..") and ftype != 0:
            mode = _ROMFS_MODES.get(ftype, stat.S_IFREG | 0o644) | (0o111 if nxt & 8 else 0)
            _romfs_entry(src, rel, mode, memoryview(d)[data_at : data_at + size])
            if ftype == 1:
                _romfs_dir(src, fs, base + (info & ~15), rel, seen)
        header = base + (nxt & ~15) if nxt & ~15 else 0


def _romfs_entry(src: Source, rel: str, mode: int, raw: memoryview) -> None:
    try:
        rel = normalise_member(rel)
    except UnsafePath as exc:
        src.collect.skipped.append(str(exc))
        return
    kind = _kind(mode)
    content = bytes(raw)
    size = len(content)
    data = None
    if kind is EntryKind.FILE:
        with contextlib.suppress(UnsafePath):
            data = src.out.write(rel, [content])[0]
    link = content.decode("utf-8", "surrogateescape") if kind is EntryKind.SYMLINK else None
    src.collect.add(rel, kind, mode, size=size if kind is EntryKind.FILE else 0, link=link, data=data)


EXTRACTORS: dict[Format, Extractor] = {
    Format.SQUASHFS: extract_squashfs,
    Format.CPIO: extract_cpio,
    Format.TAR: extract_tar,
    Format.GZIP: extract_compressed,
    Format.XZ: extract_compressed,
    Format.LZMA: extract_compressed,
    Format.BZIP2: extract_compressed,
    Format.ZSTD: extract_zstd_lz4,
    Format.LZ4: extract_zstd_lz4,
    Format.ZIP: extract_7z,
    Format.SEVENZIP: extract_7z,
    Format.CRAMFS: extract_7z,
    Format.UIMAGE: extract_uimage,
    Format.FDT: extract_fdt,
    Format.TRX: extract_trx,
    Format.EXT: extract_ext,
    Format.JFFS2: extract_jffs2,
    Format.UBI: extract_ubi,
    Format.UBIFS: extract_ubifs,
    Format.ROMFS: extract_romfs,
}
