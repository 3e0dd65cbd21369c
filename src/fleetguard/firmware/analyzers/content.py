"""Reading a file of the extracted tree for an analyzer: bounded, regular files only, lines with offsets.

The tree names where each file's bytes are in the work directory; extraction never creates a
device, FIFO or link there, but the reader checks anyway (``O_NOFOLLOW``, ``O_NONBLOCK`` and a
regular-file test), so that a mistake upstream costs a skipped file rather than a hung scan.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from fleetguard.firmware.model import EntryKind, FileEntry

__all__ = [
    "MEDIA_SUFFIXES",
    "TEXT_LIMIT",
    "basename",
    "is_text",
    "lines",
    "read_head",
]

TEXT_LIMIT = 1 << 20  # configuration files are small; a 1 MiB "passwd" is not one
_TEXT_PROBE = 8192

# Files whose format cannot hold a plaintext secret, or that are compressed: not read.
MEDIA_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".svg",
    ".mp3", ".mp4", ".wav", ".ogg", ".aac", ".avi", ".mkv", ".mov",
    ".ttf", ".otf", ".woff", ".woff2", ".eot",
    ".gz", ".xz", ".bz2", ".lzma", ".zst", ".lz4", ".zip", ".7z",
)  # fmt: skip


def basename(path: str) -> str:
    """The last component of an image path (``/etc/shadow`` -> ``shadow``)."""
    return path.rpartition("/")[2]


def read_head(entry: FileEntry, limit: int) -> bytes | None:
    """Return at most ``limit`` bytes of a regular file's content, or None when unreadable.

    None for entries that are not regular files, whose bytes were not written, or whose on-disk
    copy is not a regular file or cannot be opened.
    """
    if entry.kind is not EntryKind.FILE or entry.data is None:
        return None
    try:
        fd = os.open(entry.data, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def is_text(data: bytes) -> bool:
    """True when the first bytes hold no NUL: configuration and scripts, not binaries."""
    return b"\0" not in data[:_TEXT_PROBE]


def lines(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line number from 1, byte offset, line without its end-of-line)`` for each line."""
    offset = 0
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        yield number, offset, line.rstrip(b"\r\n")
        offset += len(line)
