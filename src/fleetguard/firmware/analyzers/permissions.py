"""File modes of the image: setuid/setgid programs, world-writable files and directories.

Modes come from the filesystem's own metadata in the tree (:class:`FileEntry.mode`), never from
the extracted copy on disk. Symlinks (their mode is meaningless: lstat shows 0777), device nodes,
FIFOs and sockets are not considered; directories with the sticky bit (``/tmp``-like: only a
file's owner may remove it) are not world-writable findings.

Severity depends on where the file is: a setuid-root program in the system directories
(``/bin``, ``/sbin``, ``/usr``, ``/lib``) is expected on many devices (BusyBox ``su``, ``ping``)
and is MEDIUM; anywhere else (``/www/cgi-bin``, ``/opt``, ``/home``) it is HIGH. A world-writable
file or directory in ``/etc`` or a system directory lets any local user replace what root runs or
reads: HIGH; in a scratch area (``/tmp``, ``/var/run``, ...) LOW; elsewhere MEDIUM. A world-writable
setuid/setgid program is CRITICAL.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

from fleetguard.firmware.model import Category, EntryKind, ExtractedTree, FileEntry, Finding, Severity

__all__ = ["PermissionAnalyzer", "mode_findings"]

_SYSTEM_DIRECTORIES = ("/bin/", "/sbin/", "/usr/", "/lib/", "/lib64/")
# "//" is the root directory itself. Paths inside the image, not files this process uses (S108).
_CRITICAL_WRITABLE = (
    "//",
    "/etc/",
    "/bin/",
    "/sbin/",
    "/usr/bin/",
    "/usr/sbin/",
    "/lib/",
    "/usr/lib/",
    "/lib64/",
)
_SCRATCH = ("/tmp/", "/var/tmp/", "/var/run/", "/run/", "/var/lock/", "/dev/", "/var/volatile/")  # noqa: S108 # fmt: skip
_PROGRAM_KINDS = frozenset({EntryKind.FILE, EntryKind.HARDLINK})
_WRITABLE_KINDS = frozenset({EntryKind.FILE, EntryKind.HARDLINK, EntryKind.DIRECTORY})


class PermissionAnalyzer:
    """Finds setuid/setgid programs and world-writable files and directories."""

    name = "permissions"

    def analyze(self, tree: ExtractedTree) -> Iterator[Finding]:
        """Yield the mode findings of every entry of ``tree``."""
        for entry in tree.entries:
            yield from mode_findings(entry)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return (path + "/").startswith(prefixes)


def mode_findings(entry: FileEntry) -> Iterator[Finding]:
    """Yield the findings about one entry's mode bits (none for links, devices, FIFOs, sockets)."""
    privileged = entry.kind in _PROGRAM_KINDS and entry.mode & (stat.S_ISUID | stat.S_ISGID)
    writable = entry.kind in _WRITABLE_KINDS and entry.mode & stat.S_IWOTH
    if writable and entry.kind is EntryKind.DIRECTORY and entry.mode & stat.S_ISVTX:
        writable = False
    if privileged and writable:
        yield _finding(
            entry, "perm.world-writable-setuid", Severity.CRITICAL, "World-writable setuid/setgid program"
        )
        return
    if privileged:
        yield _privileged(entry)
    if writable:
        yield _writable(entry)


def _privileged(entry: FileEntry) -> Finding:
    system = _under(entry.path, _SYSTEM_DIRECTORIES)
    if entry.mode & stat.S_ISUID:
        if entry.uid == 0:
            severity = Severity.MEDIUM if system else Severity.HIGH
        else:
            severity = Severity.LOW if system else Severity.MEDIUM
        return _finding(entry, "perm.setuid", severity, f"Setuid program (runs as uid {entry.uid})")
    severity = Severity.LOW if system else Severity.MEDIUM
    return _finding(entry, "perm.setgid", severity, f"Setgid program (runs as gid {entry.gid})")


def _writable(entry: FileEntry) -> Finding:
    if _under(entry.path, _CRITICAL_WRITABLE):
        severity = Severity.HIGH
    elif _under(entry.path, _SCRATCH):
        severity = Severity.LOW
    else:
        severity = Severity.MEDIUM
    if entry.kind is EntryKind.DIRECTORY:
        return _finding(
            entry, "perm.world-writable-dir", severity, "World-writable directory without sticky bit"
        )
    return _finding(entry, "perm.world-writable-file", severity, "World-writable file")


def _finding(entry: FileEntry, rule: str, severity: Severity, title: str) -> Finding:
    mode = stat.filemode(_type_bits(entry) | (entry.mode & 0o7777))
    return Finding(
        rule=rule,
        category=Category.PERMISSION,
        severity=severity,
        title=title,
        path=entry.path,
        evidence=f"{mode} {entry.uid}:{entry.gid} ({entry.mode & 0o7777:04o})",
        details=(("mode", f"{entry.mode & 0o7777:04o}"), ("uid", str(entry.uid)), ("gid", str(entry.gid))),
    )


def _type_bits(entry: FileEntry) -> int:
    return stat.S_IFDIR if entry.kind is EntryKind.DIRECTORY else stat.S_IFREG
