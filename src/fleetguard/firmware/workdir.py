"""The work directory extraction writes into, and the budget it writes under.

Every byte an extractor writes goes through :class:`SafeDir`: member paths are normalised and
refused when absolute, escaping (``..``), NUL-bearing or over-long; files are created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0o600, so nothing is written through a symlink. Symlinks and
device nodes are never created: they exist only as :class:`~fleetguard.firmware.model.FileEntry`
metadata. :class:`Budget` counts bytes and files across the whole extraction and raises
:class:`~fleetguard.firmware.errors.ExtractionLimit` at the limit; extractors turn that into a
PARTIAL layer.

:func:`region_entropy` is the Shannon entropy (bits per byte) used for bytes no extractor claimed.
"""

from __future__ import annotations

import collections
import math
import mmap
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleetguard.firmware.errors import ExtractionLimit, UnsafePath

__all__ = ["Budget", "SafeDir", "normalise_member", "region_entropy", "shannon_entropy"]

# POSIX NAME_MAX and PATH_MAX on Linux (limits.h): longer names cannot be created anyway.
_NAME_MAX = 255
_PATH_MAX = 4096
_ENTROPY_BLOCK = 64 * 1024
_ENTROPY_SAMPLES = 64  # blocks sampled per region: bounded time on a region of any size


@dataclass(slots=True)
class Budget:
    """Bytes and files one extraction may still write; shared by every layer (mutable on purpose)."""

    max_bytes: int
    max_files: int
    max_file_bytes: int
    used_bytes: int = 0
    used_files: int = 0

    def charge_file(self) -> None:
        """Count one more file; raise ExtractionLimit past ``max_files``."""
        if self.used_files >= self.max_files:
            raise ExtractionLimit(f"file count limit reached ({self.max_files} files)")
        self.used_files += 1

    def charge_bytes(self, count: int) -> None:
        """Count ``count`` more bytes; raise ExtractionLimit past ``max_bytes``."""
        if self.used_bytes + count > self.max_bytes:
            self.used_bytes = self.max_bytes
            raise ExtractionLimit(f"output size limit reached ({self.max_bytes} bytes)")
        self.used_bytes += count

    @property
    def bytes_left(self) -> int:
        """Bytes that may still be written."""
        return self.max_bytes - self.used_bytes

    @property
    def files_left(self) -> int:
        """Files that may still be written."""
        return self.max_files - self.used_files


def normalise_member(name: str) -> str:
    """Return ``name`` as a relative path without ``.`` parts; raise UnsafePath when it escapes.

    Absolute names, ``..`` parts, NUL bytes and names past NAME_MAX/PATH_MAX are refused. The
    empty result (the root itself) is returned as ``""``.
    """
    if "\x00" in name:
        raise UnsafePath(f"member name contains NUL: {name!r}")
    if name.startswith("/"):
        raise UnsafePath(f"absolute member path: {name!r}")
    if len(name.encode("utf-8", "surrogateescape")) > _PATH_MAX:
        raise UnsafePath(f"member path longer than {_PATH_MAX} bytes")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise UnsafePath(f"member path escapes the work directory: {name!r}")
        if len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise UnsafePath(f"member name longer than {_NAME_MAX} bytes")
    return "/".join(parts)


class SafeDir:
    """A directory that only ever gains directories and regular files (mode 0o700/0o600)."""

    def __init__(self, root: Path, budget: Budget) -> None:
        self.root = root
        self.budget = budget
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dirs: set[str] = {""}

    def place(self, image_path: str) -> Path:
        """Return where member ``image_path`` goes, creating its parent directories.

        Raises UnsafePath when the name is unsafe or a parent exists and is not a directory
        (a symlink planted by an earlier member, for example).
        """
        rel = normalise_member(image_path)
        if not rel:
            raise UnsafePath("member path names the root itself")
        parent, _, _ = rel.rpartition("/")
        self._make_dirs(parent)
        return self.root / rel

    def make_dir(self, image_path: str) -> None:
        """Create directory ``image_path`` (and its parents) inside the root."""
        self._make_dirs(normalise_member(image_path))

    def _make_dirs(self, rel: str) -> None:
        if rel in self._dirs:
            return
        current = ""
        for part in rel.split("/"):
            current = f"{current}/{part}" if current else part
            if current in self._dirs:
                continue
            path = self.root / current
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                if not stat.S_ISDIR(path.lstat().st_mode):
                    raise UnsafePath(f"member parent is not a directory: {current!r}") from None
            self._dirs.add(current)

    def write(self, image_path: str, chunks: Iterable[bytes]) -> tuple[Path, int]:
        """Write ``chunks`` to member ``image_path``; return (path, bytes written).

        Raises UnsafePath for an unsafe name, ExtractionLimit when the file or the whole budget
        would exceed its limit (the bytes written so far stay on disk and are counted).
        """
        path = self.place(image_path)
        self.budget.charge_file()
        fd = self._create(path)
        written = 0
        with os.fdopen(fd, "wb", closefd=True) as out:
            for chunk in chunks:
                if written + len(chunk) > self.budget.max_file_bytes:
                    raise ExtractionLimit(f"file larger than {self.budget.max_file_bytes} bytes")
                self.budget.charge_bytes(len(chunk))
                out.write(chunk)
                written += len(chunk)
        return path, written

    def open_new(self, image_path: str) -> tuple[Path, int]:
        """Create member ``image_path`` empty; return (path, fd open for writing). Counts one file."""
        path = self.place(image_path)
        self.budget.charge_file()
        return path, self._create(path)

    @staticmethod
    def _create(path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileExistsError:
            # A later member of the same name replaces a regular file (tar and cpio semantics);
            # anything else in the way (a directory, a symlink) is refused.
            if not stat.S_ISREG(path.lstat().st_mode):
                raise UnsafePath(f"member would replace a non-file: {path.name!r}") from None
            path.unlink()
            return os.open(path, flags, 0o600)


def shannon_entropy(block: bytes | memoryview) -> float:
    """Shannon entropy of ``block`` in bits per byte (0.0 for an empty block)."""
    total = len(block)
    if not total:
        return 0.0
    counts = collections.Counter(bytes(block))
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def region_entropy(data: bytes | bytearray | memoryview | mmap.mmap, offset: int, size: int) -> float:
    """Mean Shannon entropy of the 64 KiB blocks of ``data[offset:offset+size]``.

    At most 64 blocks, evenly spaced, are measured, so the cost is bounded for any region.
    """
    if size <= 0:
        return 0.0
    view = memoryview(data)[offset : offset + size]
    blocks = max(1, math.ceil(size / _ENTROPY_BLOCK))
    step = max(1, blocks // _ENTROPY_SAMPLES)
    values = [
        shannon_entropy(view[i * _ENTROPY_BLOCK : (i + 1) * _ENTROPY_BLOCK]) for i in range(0, blocks, step)
    ]
    return sum(values) / len(values)
