"""Files only their owner may read: keys, the event-log signing key, server keys.

:func:`create_private_file` makes a new file with mode 0600 in one step (``O_CREAT | O_EXCL``, never
following a link), so it is never readable by others and never overwrites anything;
:func:`replace_private_file` writes a sibling the same way and renames it over the target, so a
reader sees the old or the new content, whole. Both fsync before returning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["PrivateFileWriteFailed", "create_private_file", "open_private_file", "replace_private_file"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class PrivateFileWriteFailed(OSError):
    """The file was created but could not be written; it has been removed again."""


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 holding ``data``.

    Raises ``FileExistsError`` if anything is at ``path`` (a dangling link included), another
    ``OSError`` if it cannot be created, and :class:`PrivateFileWriteFailed` if writing failed.
    """
    fd = os.open(path, _FLAGS, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise PrivateFileWriteFailed(exc.errno, exc.strerror) from exc


def open_private_file(path: Path) -> BinaryIO:
    """Create ``path`` with mode 0600 as :func:`create_private_file` does; return it open for writing.

    For content written as a stream (a bundle of thousands of entries); the caller writes, fsyncs
    and closes it, and removes it if writing fails. Raises ``FileExistsError`` if anything is at
    ``path``, another ``OSError`` if it cannot be created.
    """
    return os.fdopen(os.open(path, _FLAGS, 0o600), "wb")


def replace_private_file(path: Path, data: bytes) -> None:
    """Atomically replace (or create) ``path`` with mode-0600 content ``data``; raises ``OSError``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    create_private_file(temporary, data)
    os.replace(temporary, path)
