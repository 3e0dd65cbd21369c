"""Build an :class:`ExtractedTree` from a mapping of image paths to contents, for analyzer tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fleetguard.firmware.model import EntryKind, ExtractedTree, FileEntry

__all__ = ["tree_of"]


def tree_of(
    tmp_path: Path,
    files: Mapping[str, tuple[bytes, int]],
    *,
    extra: Iterable[FileEntry] = (),
    uid: int = 0,
) -> ExtractedTree:
    """Write each ``{"/etc/shadow": (content, mode)}`` under ``tmp_path`` and return the tree.

    Regular files get ``mode`` as the filesystem's mode and ``uid``; ``extra`` entries (links,
    directories, devices) are added as given.
    """
    directory = Path(tempfile.mkdtemp(prefix="tree-", dir=tmp_path))
    entries = []
    for index, (path, (content, mode)) in enumerate(sorted(files.items())):
        on_disk = directory / f"{index:06d}"
        on_disk.write_bytes(content)
        entries.append(
            FileEntry(path=path, kind=EntryKind.FILE, mode=mode, uid=uid, size=len(content), data=on_disk)
        )
    return ExtractedTree(image_sha256="0" * 64, image_size=0, entries=(*entries, *extra), layers=())
