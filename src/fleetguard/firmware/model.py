"""The values every part of firmware analysis shares.

Extraction (``extract``) turns an image into an :class:`ExtractedTree`: every file of every
filesystem found, with the mode, owner and link target the *filesystem's own metadata* gives (not
what the extracting user's umask left on disk), and where its bytes are in the work directory.
Analyzers read the tree and return :class:`Finding` values; component detection returns
:class:`Component` values with the evidence that gave the version; the vulnerability matcher turns
components into findings. Everything here is plain data: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "Analyzer",
    "Category",
    "Component",
    "EntryKind",
    "ExtractedTree",
    "FileEntry",
    "Finding",
    "Layer",
    "LayerStatus",
    "ScanResult",
    "Severity",
    "UnextractedRegion",
]


class Severity(enum.StrEnum):
    """How bad a finding is; ordered by :attr:`rank`."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 (info) .. 4 (critical)."""
        return list(Severity).index(self)


class Category(enum.StrEnum):
    """What kind of problem a finding is."""

    PRIVATE_KEY = "private-key"
    CERTIFICATE = "certificate"
    PASSWORD = "password"  # noqa: S105 - a category name: hashes, empty and default passwords
    CREDENTIAL = "credential"  # secrets in configuration: PPP, SNMP, Wi-Fi, tokens
    SERVICE = "insecure-service"
    PERMISSION = "permission"  # setuid/setgid, world-writable
    HARDENING = "hardening"  # ELF: NX, PIE, RELRO, canary, FORTIFY, stripped
    VULNERABILITY = "vulnerability"
    EXTRACTION = "extraction"  # what could not be extracted (encrypted, unknown, truncated)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem, where it is and why we say so.

    ``path`` is the path inside the image (``/etc/shadow``); ``offset`` the byte offset inside that
    file (None when the finding is about the whole file). ``evidence`` is short and never contains
    a secret in full (keys and passwords are redacted to a prefix and a fingerprint). ``rule`` is a
    stable id (``key.rsa-private``, ``passwd.default-credential``, ...).
    """

    rule: str
    category: Category
    severity: Severity
    title: str
    path: str
    evidence: str
    offset: int | None = None
    details: tuple[tuple[str, str], ...] = ()


class EntryKind(enum.StrEnum):
    """The type of a filesystem entry."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    DEVICE = "device"  # character or block device: recorded, never created on disk
    FIFO = "fifo"
    SOCKET = "socket"
    HARDLINK = "hardlink"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of an extracted filesystem, with the filesystem's own metadata.

    ``path`` is absolute inside the image (``/bin/busybox``), normalised, never containing ``..``.
    ``mode`` holds the permission bits including setuid/setgid/sticky (``0o4755``). ``data`` is where
    the file's bytes are in the work directory (None for non-regular files and for files whose
    bytes were not written, e.g. over a limit). ``link_target`` is the symlink's target as stored.
    ``filesystem`` names the layer it came from (``squashfs@0x40000``).
    """

    path: str
    kind: EntryKind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    link_target: str | None = None
    data: Path | None = None
    filesystem: str = ""


class LayerStatus(enum.StrEnum):
    """What happened to one container or filesystem found in the image."""

    EXTRACTED = "extracted"
    PARTIAL = "partial"  # truncated or a limit hit: some files extracted
    FAILED = "failed"  # recognised but unreadable (corrupt, unsupported variant)
    ENCRYPTED = "encrypted"  # high entropy, no known format


@dataclass(frozen=True, slots=True)
class Layer:
    """One container or filesystem found, at an offset of its parent (``parent`` is a layer name)."""

    name: str
    format: str
    offset: int
    size: int
    status: LayerStatus
    extractor: str
    parent: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class UnextractedRegion:
    """Bytes of the image no extractor claimed, with their entropy (bits per byte, 0..8)."""

    offset: int
    size: int
    entropy: float


@dataclass(frozen=True, slots=True)
class Component:
    """A software component with an exact version, and the evidence the version came from."""

    name: str  # canonical, lower-case: "busybox", "openssl", "linux", "uclibc", ...
    version: str
    path: str
    evidence: str  # e.g. the version string found and its offset
    offset: int | None = None
    purl: str | None = None
    cpe: str | None = None


@dataclass(frozen=True, slots=True)
class ExtractedTree:
    """Everything extraction produced: entries (by path), layers, and what was not extracted."""

    image_sha256: str
    image_size: int
    entries: tuple[FileEntry, ...]
    layers: tuple[Layer, ...]
    unextracted: tuple[UnextractedRegion, ...] = ()
    notes: tuple[str, ...] = ()
    _by_path: dict[str, FileEntry] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_path.update((entry.path, entry) for entry in self.entries)

    def get(self, path: str) -> FileEntry | None:
        """The entry at ``path`` (absolute inside the image), or None."""
        return self._by_path.get(path)

    def files(self) -> Iterator[FileEntry]:
        """Regular files whose bytes are on disk."""
        return (e for e in self.entries if e.kind is EntryKind.FILE and e.data is not None)

    @property
    def empty(self) -> bool:
        """True when no file was extracted: the image is reported as such, never as clean."""
        return not any(e.kind is EntryKind.FILE for e in self.entries)


class Analyzer(Protocol):
    """One analyzer module: reads the tree, returns findings; never raises for odd file content."""

    name: str

    def analyze(self, tree: ExtractedTree) -> Iterable[Finding]:
        """Return the findings about ``tree``."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One scan of one image: what extraction found, the findings, the components, the risk score.

    ``vulnerabilities`` are (component index, vulnerability id) pairs in ``findings`` too; ``risk``
    is 0..100 (``fleetguard.firmware.risk``). Reports (SBOM, SARIF, HTML, JSON) are made from this.
    """

    image_name: str
    image_sha256: str
    image_size: int
    layers: tuple[Layer, ...]
    unextracted: tuple[UnextractedRegion, ...]
    file_count: int
    findings: tuple[Finding, ...]
    components: tuple[Component, ...]
    risk: int
    scanned_at: str  # RFC 3339 UTC
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def extracted_nothing(self) -> bool:
        """True when no file came out: reported as unextracted (with entropy), never as clean."""
        return self.file_count == 0
